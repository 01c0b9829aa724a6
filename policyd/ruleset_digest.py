"""A fingerprint of a gateway's policy as nftables holds it, for evidence reports.

The digest is SHA-256 over the canonical text `zonegate diff` compares (handles,
expiry and element order taken out), with the members of grant sets left out: those
hold the live just-in-time grants, which are state, not policy. Equal digests of the
compiled ruleset and the kernel's table mean the kernel enforces what the topology says.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from policyd.compiler import Json, Ruleset
from policyd.render import canonical, render_text


def grant_sets(rs: Ruleset) -> frozenset[str]:
    """Names of the sets that hold live grants (conduits with approval or emergency)."""
    names: set[str] = set()
    for plan in rs.conduits.values():
        if plan.needs_grant:
            names.update(n for n in (plan.identity_set, plan.zone_set) if n)
    return frozenset(names)


def _without_members(objects: Iterable[Json], sets: frozenset[str]) -> list[Json]:
    out: list[Json] = []
    for o in canonical(objects):
        body: Any = o.get("set")
        if isinstance(body, dict) and body.get("name") in sets:
            o = {"set": {k: v for k, v in body.items() if k != "elem"}}
        out.append(o)
    return out


def policy_text(objects: Iterable[Json], sets: frozenset[str]) -> str:
    return render_text(_without_members(objects, sets))


def digest(objects: Iterable[Json], sets: frozenset[str]) -> str:
    return "sha256:" + hashlib.sha256(policy_text(objects, sets).encode()).hexdigest()


@dataclass(frozen=True)
class DigestCheck:
    gateway: str
    compiled: str
    running: str | None  # None: no zonegate table in this kernel

    @property
    def matches(self) -> bool:
        return self.running == self.compiled


def compare(rs: Ruleset, running: list[Json] | None) -> DigestCheck:
    """The compiled ruleset's digest against the running table's (from NftHandle.list_table)."""
    sets = grant_sets(rs)
    return DigestCheck(
        rs.gateway,
        digest(rs.objects, sets),
        digest(running, sets) if running is not None else None,
    )
