"""What each console page shows to whom: pure functions of the book and the topology.

Visibility: operators (policyd --operator) see everything; any other identity sees the
grants it holds or may decide (the grant book's rule) and the flows of its own source
or of conduits it approves.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from policyd.grants import Grant, GrantBook, GrantState
from topology.model import Conduit, TargetKind, Topology
from topology.report import conduit_terms


@dataclass(frozen=True)
class Viewer:
    identity: str
    operator: bool


@dataclass(frozen=True)
class GrantRow:
    grant: Grant
    opens: dict[str, Any]  # what the grant would open (or opens)
    approvals: str  # "1 of 2"
    may_decide: bool  # the viewer can approve or deny it now
    may_revoke: bool
    second_factor: bool  # the viewer's action needs a TOTP code


def opens(topo: Topology, conduit: Conduit) -> dict[str, Any]:
    """Exactly what a grant on this conduit opens: target, address, services, terms."""
    t = conduit.target
    if t.kind is TargetKind.ASSET:
        asset = topo.asset(t.ref)
        where = f"{asset.address}" if asset else "?"
    else:
        zone = topo.zone(t.ref)
        where = f"{zone.cidr}" if zone else "?"
    return {
        "conduit": conduit.name,
        "target": str(t),
        "address": where,
        "services": [str(a) for a in conduit.allow],
        "terms": conduit_terms(conduit),
        "recorded": conduit.record,
    }


def visible_grants(book: GrantBook, viewer: Viewer) -> list[Grant]:
    grants = list(book.grants.values()) if viewer.operator else book.visible_to(viewer.identity)
    return sorted(grants, key=lambda g: g.requested_at)


PAGE = 200  # rows per page: a person reads a page, not 10,000 rows


@dataclass(frozen=True)
class Page:
    rows: list[GrantRow]
    total: int
    first: int  # 1-based index of the first row shown
    number: int
    pages: int


def page_of(
    book: GrantBook,
    viewer: Viewer,
    states: Iterable[GrantState],
    number: int = 1,
    newest_first: bool = False,
) -> Page:
    """One page of the viewer's grants in these states, oldest request first."""
    wanted = set(states)
    grants = [g for g in visible_grants(book, viewer) if g.state in wanted]
    if newest_first:
        grants.reverse()
    pages = max(1, -(-len(grants) // PAGE))
    number = min(max(1, number), pages)
    start = (number - 1) * PAGE
    shown = grants[start : start + PAGE]
    return Page(rows(book, viewer, shown), len(grants), start + 1, number, pages)


def rows(book: GrantBook, viewer: Viewer, grants: Iterable[Grant]) -> list[GrantRow]:
    out = []
    topo = book.topology
    for g in grants:
        conduit = topo.conduits.get(g.conduit)
        if conduit is None:
            continue
        count = conduit.approval.count if conduit.approval else 1
        decider = book.may_decide(g, viewer.identity) and viewer.identity != g.identity
        out.append(
            GrantRow(
                grant=g,
                opens=opens(topo, conduit),
                approvals=f"{len(g.approvals)} of {count}",
                may_decide=decider and viewer.identity not in g.approvals,
                may_revoke=viewer.operator or decider or viewer.identity == g.identity,
                second_factor=conduit.second_factor is not None,
            )
        )
    return out


def requestable(topo: Topology, identity: str) -> list[Conduit]:
    """Approval conduits this identity may ask for (emergency ones are the API's: loud)."""
    who = topo.identities.get(identity)
    if who is None:
        return []
    return sorted(
        (c for c in topo.conduits.values() if c.approval and c.sources.admits(who)),
        key=lambda c: c.name,
    )


def grant_visible(book: GrantBook, viewer: Viewer, grant: dict[str, Any]) -> bool:
    """For live updates: may this viewer see an event about this grant?"""
    if viewer.operator or grant.get("identity") == viewer.identity:
        return True
    conduit = book.topology.conduits.get(str(grant.get("conduit")))
    who = book.topology.identities.get(viewer.identity)
    return bool(conduit and conduit.approval and who and conduit.approval.names(who))


def approved_conduits(topo: Topology, identity: str) -> set[str]:
    who = topo.identities.get(identity)
    if who is None:
        return set()
    return {c.name for c in topo.conduits.values() if c.approval and c.approval.names(who)}


def flow_visible(rec: dict[str, Any], viewer: Viewer, approves: set[str]) -> bool:
    if viewer.operator:
        return True
    return rec.get("identity") == viewer.identity or rec.get("conduit") in approves


def tail_records(path: Path | None, limit: int, chunk: int = 1 << 18) -> list[dict[str, Any]]:
    """The last `limit` records of a JSON-lines log, newest first, reading only its end."""
    if path is None or not path.exists():
        return []
    with open(path, "rb") as fh:
        size = fh.seek(0, os.SEEK_END)
        fh.seek(max(0, size - chunk))
        data = fh.read()
    lines = data.split(b"\n")
    if size > chunk:
        lines = lines[1:]  # the first line may be cut
    return list(_parse(reversed(lines), limit))


def _parse(lines: Iterable[bytes], limit: int) -> Iterator[dict[str, Any]]:
    n = 0
    for line in lines:
        if n >= limit:
            return
        try:
            rec = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            continue
        if isinstance(rec, dict):
            n += 1
            yield rec


def when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%SZ") if value else "-"
