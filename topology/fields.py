"""Typed readers for YAML nodes: each returns a value or None plus a diagnostic.

A reader never raises on bad input; it reports what was expected, what was found and
where, so one pass over a file reports every problem in it.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from datetime import UTC, date, datetime, time, timedelta
from ipaddress import AddressValueError, IPv4Address, IPv4Network, NetmaskValueError
from zoneinfo import ZoneInfo

from topology.diagnostics import Diagnostics, Location
from topology.yamlnodes import YAML11_BOOLEANS, YMap, YNode, YScalar, YSeq, describe

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
DATE_RE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
DURATION_RE = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


def parse_duration(text: str) -> timedelta | None:
    """'4h', '30m', '1h30m', '2d', '90s' to a timedelta; None when not a duration."""
    m = DURATION_RE.match(text.strip())
    if not m or not any(m.groups()):
        return None
    d, h, mi, s = (int(g or 0) for g in m.groups())
    return timedelta(days=d, hours=h, minutes=mi, seconds=s)


def suggest(word: str, choices: Iterable[str]) -> str:
    """A 'did you mean' hint, or a list of the valid choices when nothing is close."""
    options = sorted(set(choices))
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    if close:
        return f"did you mean '{close[0]}'?"
    if not options:
        return ""
    shown = ", ".join(options[:12]) + (", ..." if len(options) > 12 else "")
    return f"expected one of: {shown}"


def as_text(node: YNode) -> str | None:
    """A scalar as a string: strings as they are, and any other plain scalar as written
    (where text is expected, a name like `2024`, `1e3`, `true` or `null` means itself);
    None for an empty value, a list or a mapping."""
    if not isinstance(node, YScalar):
        return None
    if isinstance(node.value, str):
        return node.value
    return node.raw or None


class Reader:
    """Reads typed values out of located YAML nodes, reporting into one collector."""

    def __init__(self, diags: Diagnostics) -> None:
        self.diags = diags

    def error(self, where: Location, message: str, hint: str = "") -> None:
        self.diags.error(where, message, hint)

    def mapping(self, node: YNode | None, what: str) -> YMap | None:
        if node is None:
            return None
        if isinstance(node, YMap):
            return node
        if isinstance(node, YScalar) and node.value is None:
            return YMap(node.location)  # "zones:" with nothing under it is an empty map
        self.error(node.location, f"{what} must be a mapping, found {describe(node)}")
        return None

    def keys(self, node: YMap, allowed: Iterable[str], what: str) -> None:
        allowed = tuple(allowed)
        for key, (loc, _) in node.entries.items():
            if key not in allowed:
                self.error(loc, f"unknown key '{key}' in {what}", suggest(key, allowed))

    def required(self, node: YMap, key: str, what: str) -> YNode | None:
        value = node.get(key)
        if value is None:
            self.error(node.location, f"{what} needs '{key}'")
        return value

    def string(self, node: YNode | None, what: str) -> str | None:
        if node is None:
            return None
        text = as_text(node)
        if text is not None and text.strip():
            return text.strip()
        self.error(node.location, f"{what} must be a non-empty string, found {describe(node)}")
        return None

    def name(self, value: str, where: Location, what: str) -> bool:
        if NAME_RE.match(value):
            return True
        self.error(
            where,
            f"{what} '{value}' is not a valid name",
            "names use lower-case letters, digits, '-' and '_', start with a letter or "
            "digit and are at most 63 characters",
        )
        return False

    def boolean(self, node: YNode | None, what: str) -> bool | None:
        if node is None:
            return None
        if isinstance(node, YScalar) and isinstance(node.value, bool):
            return node.value
        hint = ""
        if isinstance(node, YScalar) and node.value in YAML11_BOOLEANS:
            word = "true" if str(node.value).lower() in ("y", "yes", "on") else "false"
            hint = (
                f"'{node.value}' is a string in YAML 1.2 (YAML 1.1 made it a boolean); write {word}"
            )
        self.error(node.location, f"{what} must be true or false, found {describe(node)}", hint)
        return None

    def integer(self, node: YNode | None, what: str, lo: int, hi: int) -> int | None:
        if node is None:
            return None
        if isinstance(node, YScalar) and type(node.value) is int:
            if lo <= node.value <= hi:
                return node.value
            self.error(node.location, f"{what} must be between {lo} and {hi}, found {node.value}")
            return None
        self.error(node.location, f"{what} must be an integer, found {describe(node)}")
        return None

    def string_list(self, node: YNode | None, what: str) -> list[tuple[str, Location]]:
        """A list of strings; a single string is accepted as a list of one."""
        if node is None:
            return []
        text = as_text(node)
        if text is not None:
            return [(text, node.location)]
        if not isinstance(node, YSeq):
            self.error(node.location, f"{what} must be a list of names, found {describe(node)}")
            return []
        out: list[tuple[str, Location]] = []
        for item in node.items:
            value = self.string(item, f"each entry of {what}")
            if value is not None:
                out.append((value, item.location))
        return out

    def address(self, node: YNode | None, what: str) -> IPv4Address | None:
        text = self._text(node, what)
        if text is None or node is None:
            return None
        try:
            return IPv4Address(text)
        except AddressValueError:
            self.error(node.location, f"{what} '{text}' is not an IPv4 address")
            return None

    def network(self, node: YNode | None, what: str) -> IPv4Network | None:
        text = self._text(node, what)
        if text is None or node is None:
            return None
        try:
            return IPv4Network(text, strict=True)
        except (AddressValueError, NetmaskValueError):
            self.error(node.location, f"{what} '{text}' is not an IPv4 network like 10.1.2.0/24")
        except ValueError:
            fixed = IPv4Network(text, strict=False)
            self.error(
                node.location,
                f"{what} '{text}' has host bits set",
                f"did you mean '{fixed}'?",
            )
        return None

    def duration(self, node: YNode | None, what: str) -> timedelta | None:
        text = self._text(node, what)
        if text is None or node is None:
            return None
        m = DURATION_RE.match(text)
        if not m or not any(m.groups()):
            self.error(
                node.location, f"{what} '{text}' is not a duration", "write e.g. 4h, 30m, 1h30m"
            )
            return None
        d, h, mi, s = (int(g or 0) for g in m.groups())
        value = timedelta(days=d, hours=h, minutes=mi, seconds=s)
        if value <= timedelta(0):
            self.error(node.location, f"{what} must be longer than zero")
            return None
        return value

    def clock(self, text: str, where: Location, what: str) -> time | None:
        try:
            hh, mm = text.split(":")
            if len(mm) != 2:
                raise ValueError
            if hh == "24" and mm == "00":
                return time.max  # end of day
            return time(int(hh), int(mm))
        except ValueError:
            self.error(where, f"{what} '{text}' is not a time of day", "write HH:MM, e.g. 07:00")
            return None

    def moment(
        self, node: YNode | None, what: str, day_tz: str | None = "UTC", end_of_day: bool = False
    ) -> datetime | None:
        """A point in time. A naive date-time is UTC. A date alone is the start of that
        day in `day_tz` (its end, i.e. the next midnight, with `end_of_day`); when
        `day_tz` is None the day is ambiguous and the date is an error asking for a time.
        """
        if node is None:
            return None
        value = node.value if isinstance(node, YScalar) else None
        day: date | None = None
        if isinstance(value, str) and DATE_RE.match(value.strip()):
            day = date.fromisoformat(value.strip())
        elif isinstance(value, date) and not isinstance(value, datetime):
            day = value
        if day is not None:
            if day_tz is None:
                self.error(
                    node.location,
                    f"{what} {day} means a whole day, but the sites are in different time "
                    "zones, so it is unclear when that day ends",
                    f"write a date-time with an offset, e.g. {day}T23:59:59-05:00",
                )
                return None
            start = datetime(day.year, day.month, day.day, tzinfo=ZoneInfo(day_tz))
            if end_of_day:
                nxt = day + timedelta(days=1)
                start = datetime(nxt.year, nxt.month, nxt.day, tzinfo=ZoneInfo(day_tz))
            return start.astimezone(UTC)
        if isinstance(value, str):
            try:
                value = datetime.fromisoformat(value)
            except ValueError:
                value = None
        if isinstance(value, datetime):
            return value if value.tzinfo else value.replace(tzinfo=UTC)
        self.error(
            node.location,
            f"{what} must be a date or date-time, found {describe(node)}",
            "write e.g. 2026-12-31 or 2026-11-25T10:00:00+01:00",
        )
        return None

    def _text(self, node: YNode | None, what: str) -> str | None:
        if node is None:
            return None
        if isinstance(node, YScalar) and isinstance(node.value, str | int | float):
            return str(node.value).strip()
        self.error(node.location, f"{what} must be a string, found {describe(node)}")
        return None
