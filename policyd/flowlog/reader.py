"""Reading the flow log back: rotated files in order, filters, and follow mode.

Kept apart from the CLI so the control API (a later issue) can serve the same
filtered history that `zonegate flows` prints.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from policyd.flowlog.records import parse_ts
from policyd.flowlog.sinks import rotated_paths

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str, now: float | None = None) -> float:
    """`--since`: an ISO 8601 time, or an age such as 30s, 10m, 2h, 1d."""
    m = _RELATIVE.match(text.strip())
    if m:
        return (time.time() if now is None else now) - float(m.group(1)) * _UNITS[m.group(2)]
    try:
        return parse_ts(text)
    except ValueError:
        raise ValueError(
            f"'{text}' is neither a time (2026-11-25T10:00+01:00) nor an age (10m, 2h, 1d)"
        ) from None


@dataclass(frozen=True)
class RecordFilter:
    """What `zonegate flows` shows. Every given criterion must hold."""

    identity: str | None = None
    conduit: str | None = None
    asset: str | None = None  # source or destination asset ("site/asset" or "asset")
    verdict: str | None = None  # allow | deny
    since: float | None = None
    events: frozenset[str] | None = None
    service: str | None = None  # e.g. modbus: its flows, denials and transaction records

    def matches(self, rec: dict[str, Any]) -> bool:
        if self.events is not None and rec.get("event") not in self.events:
            return False
        if self.service is not None and rec.get("service") != self.service:
            return False
        if self.identity is not None and self.identity not in (
            rec.get("identity"),
            rec.get("dst_identity"),
            rec.get("actor"),
        ):
            return False
        if self.conduit is not None and rec.get("conduit") != self.conduit:
            details = rec.get("details")
            if not (isinstance(details, dict) and details.get("conduit") == self.conduit):
                return False
        if self.asset is not None and not any(
            _asset_matches(self.asset, rec.get(k)) for k in ("src_asset", "dst_asset")
        ):
            return False
        if self.verdict is not None and rec.get("verdict") != self.verdict:
            return False
        if self.since is not None:
            last = rec.get("ts_end") or rec.get("ts")
            try:
                if last is None or parse_ts(str(last)) < self.since:
                    return False
            except ValueError:
                return False
        return True


def _asset_matches(wanted: str, value: object) -> bool:
    if not isinstance(value, str):
        return False
    return value == wanted or ("/" not in wanted and value.endswith("/" + wanted))


def _records_of(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    for line in lines:
        line = line.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a torn last line while the recorder writes; the next read has it
        if isinstance(rec, dict):
            yield rec


def read_records(path: Path) -> Iterator[dict[str, Any]]:
    """Every record in the log and its rotations, oldest file first."""
    for p in rotated_paths(path):
        with open(p, encoding="utf-8", errors="replace") as fh:
            yield from _records_of(iter(fh))


def follow_records(
    path: Path, poll: float = 0.25, stop_after: float | None = None
) -> Iterator[dict[str, Any]]:
    """Everything so far, then new records as they are written, across rotations.

    A rotation shows up as a new inode at `path`; we finish the old file first, so
    nothing written just before the rotation is skipped. `stop_after` (seconds of
    following) exists for tests.
    """
    yield from read_records(path)
    fh = None
    deadline = None if stop_after is None else time.monotonic() + stop_after
    try:
        while fh is None:
            if path.exists():
                fh = open(path, encoding="utf-8", errors="replace")  # noqa: SIM115
                fh.seek(0, os.SEEK_END)
            elif deadline is not None and time.monotonic() > deadline:
                return
            else:
                time.sleep(poll)
        inode = os.fstat(fh.fileno()).st_ino
        pending = ""
        while deadline is None or time.monotonic() < deadline:
            chunk = fh.read()
            if chunk:
                pending += chunk
                *complete, pending = pending.split("\n")
                yield from _records_of(iter(complete))
                continue
            try:
                rotated = os.stat(path).st_ino != inode
            except FileNotFoundError:
                rotated = False
            if rotated:
                fh.close()
                fh = open(path, encoding="utf-8", errors="replace")  # noqa: SIM115
                inode = os.fstat(fh.fileno()).st_ino
                continue
            time.sleep(poll)
    finally:
        if fh is not None:
            fh.close()
