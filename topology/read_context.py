"""Shared state of topology reading: the names collected from every file, and
reference checks that report at the place the reference is written."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from topology.diagnostics import Diagnostics, Location
from topology.fields import Reader, suggest
from topology.model import (
    Identity,
    Role,
    Service,
    Site,
)
from topology.services import BUILTIN_SERVICES
from topology.yamlnodes import YMap, YNode

SECTIONS = (
    "version",
    "sites",
    "roles",
    "identities",
    "services",
    "conduits",
    "webhooks",
    "tests",
)
NAMED_SECTIONS = ("sites", "roles", "identities", "services", "conduits", "webhooks")
FORMAT_VERSION = 1


@dataclass
class Entry:
    """One named definition as written: its name, where, and its YAML node."""

    name: str
    location: Location
    node: YNode
    base: Path  # directory of the file it came from, for relative paths


class ReadContext:
    """What the readers share: diagnostics, typed field readers, names and built parts."""

    def __init__(self, diags: Diagnostics) -> None:
        self.diags = diags
        self.r = Reader(diags)
        self.entries: dict[str, dict[str, Entry]] = {s: {} for s in NAMED_SECTIONS}
        self.tests: list[tuple[YNode, Path]] = []
        self.files: list[str] = []
        # Filled while building, used to check references.
        self.services: dict[str, Service] = dict(BUILTIN_SERVICES)
        self.sites: dict[str, Site] = {}
        self.roles: dict[str, Role] = {}
        self.identities: dict[str, Identity] = {}

    def _named_map(self, e: Entry, what: str, allowed: tuple[str, ...]) -> YMap | None:
        if not self.r.name(e.name, e.location, what):
            return None
        node = self.r.mapping(e.node, f"{what} '{e.name}'")
        if node is not None:
            self.r.keys(node, allowed, f"{what} '{e.name}'")
        return node

    def _children(self, node: YMap, key: str, what: str) -> dict[str, tuple[Location, YNode]]:
        block = self.r.mapping(node.get(key), f"{what} {key}")
        return block.entries if block else {}

    def _hint_role(self, role: str) -> str:
        hint = suggest(role, self.entries["roles"])
        return hint or "declare it under 'roles:'"

    def _refs(self, m: YMap, key: str, names: dict[str, Entry], what: str) -> list[str]:
        out = []
        for ref, loc in self.r.string_list(m.get(key), key):
            if ref in names:
                out.append(ref)
            else:
                hint = self._hint_role(ref) if what == "role" else suggest(ref, names)
                self.diags.error(loc, f"unknown {what} '{ref}'", hint)
        return out

    def _time_zone(self, node: YMap) -> str | None:
        """A site's `tz` (IANA name, default UTC); None after reporting a bad one."""
        tz = self.r.string(node.get("tz"), "tz") or "UTC"
        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            self.diags.error(
                node.key_location("tz"),
                f"unknown time zone '{tz}'",
                "use an IANA name such as Europe/Berlin or UTC",
            )
            return None
        return tz

    def _day_tz(self, site: str | None) -> str | None:
        """The time zone a date alone is read in: the site's, or the one all sites share.

        None when the sites disagree (a user is not tied to a site): then a date is
        ambiguous and must be written as a date-time.
        """
        if site is not None and site in self.sites:
            return self.sites[site].tz
        zones = {s.tz for s in self.sites.values()}
        if len(zones) > 1:
            return None
        return zones.pop() if zones else "UTC"

    def _declared(self, site: str, section: str) -> dict[str, object] | None:
        """The zone or asset names a site writes, built or not; None for an unknown site.

        A definition with an error of its own is reported there; references to it are
        not errors too (one mistake, one error).
        """
        entry = self.entries["sites"].get(site)
        if entry is None:
            return None
        node = entry.node.get(section) if isinstance(entry.node, YMap) else None
        return dict(node.entries) if isinstance(node, YMap) else {}

    def _place_ref(self, ref: str, loc: Location, section: str) -> bool:
        kind = section[:-1]
        site, sep, name = ref.partition("/")
        if not sep:
            self.diags.error(loc, f"{kind} reference '{ref}' must be SITE/{kind.upper()}")
            return False
        declared = self._declared(site, section)
        if declared is None:
            hint = suggest(site, self.entries["sites"])
            self.diags.error(loc, f"unknown site '{site}' in '{ref}'", hint)
            return False
        s = self.sites.get(site)
        built = (s.zones if section == "zones" else s.assets) if s else {}
        if name in built:
            return True
        if name not in declared:
            self.diags.error(loc, f"site '{site}' has no {kind} '{name}'", suggest(name, declared))
        return False  # else: the site or the zone/asset has an error of its own

    def _zone_ref(self, ref: str, loc: Location) -> bool:
        return self._place_ref(ref, loc, "zones")

    def _asset_ref(self, ref: str, loc: Location) -> bool:
        return self._place_ref(ref, loc, "assets")
