"""Who can reach what: the auditor's question, answered from the conduits.

`reach_to(asset or zone)` lists every identity and zone that can reach it, with which
services, through which conduit and on which terms; `reach_from(identity or zone)` is
the reverse. Roles are expanded to their members. With an instant `at`, only what is
open then (schedule, validity window) is listed; grants are terms, never assumed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from topology.evaluate import FlowError
from topology.instants import rfc3339
from topology.model import Conduit, Identity, TargetKind, Topology
from topology.report import conduit_terms_list


@dataclass(frozen=True)
class Reach:
    source: str  # identity name or SITE/ZONE
    source_kind: str  # "identity" or "zone"
    via: str  # "identity", "role NAME" or "zone"
    conduit: str
    target: str  # SITE/ASSET or SITE/ZONE
    target_kind: str  # "asset" or "zone"
    services: tuple[str, ...]
    terms: tuple[str, ...]  # schedule, approval, emergency, recorded, risk accepted, validity

    def as_dict(self) -> dict[str, object]:
        return {
            "source": self.source,
            "source_kind": self.source_kind,
            "via": self.via,
            "conduit": self.conduit,
            "target": self.target,
            "target_kind": self.target_kind,
            "services": list(self.services),
            "terms": list(self.terms),
        }


FIELDS = ("source", "source_kind", "via", "conduit", "target", "target_kind", "services", "terms")


def _sources(topo: Topology, c: Conduit) -> list[tuple[str, str, str, Identity | None]]:
    """(name, kind, via, identity) for everyone the conduit admits (Sources.admits)."""
    out: list[tuple[str, str, str, Identity | None]] = []
    for ident in sorted(topo.identities.values(), key=lambda i: i.name):
        if c.sources.admits(ident):
            role = next((r for r in ident.roles if r in c.sources.roles), None)
            via = (
                "identity" if ident.name in c.sources.identities or role is None else f"role {role}"
            )
            out.append((ident.name, "identity", via, ident))
    for zone in c.sources.zones:
        out.append((zone, "zone", "zone", None))
    return out


def _validity(ident: Identity | None) -> list[str]:
    if ident is None:
        return []
    parts = []
    if ident.valid_from is not None:
        parts.append(f"valid from {rfc3339(ident.valid_from)}")
    if ident.valid_until is not None:
        parts.append(f"valid until {rfc3339(ident.valid_until)}")
    return parts


def _open(c: Conduit, ident: Identity | None, at: datetime | None) -> bool:
    if at is None:
        return True
    if ident is not None and not ident.valid_at(at):
        return False
    return c.schedule is None or c.schedule.is_open(at)


def _row(c: Conduit, source: tuple[str, str, str, Identity | None], at: datetime | None) -> Reach:
    name, kind, via, ident = source
    terms = conduit_terms_list(c)
    if at is not None:
        terms = [t for t in terms if not t.startswith("schedule")]  # open at `at`
    else:
        terms += _validity(ident)
    return Reach(
        name,
        kind,
        via,
        c.name,
        c.target.ref,
        c.target.kind.value,
        tuple(str(a) for a in c.allow),
        tuple(terms),
    )


def _conduits(topo: Topology) -> list[Conduit]:
    return sorted(topo.conduits.values(), key=lambda c: c.name)


def reach_to(topo: Topology, ref: str, at: datetime | None = None) -> list[Reach]:
    """Everything that can reach the asset or zone `ref` (a zone includes its assets)."""
    asset = topo.asset(ref)
    zone = topo.zone(ref)
    if asset is None and zone is None:
        raise FlowError(f"unknown asset or zone '{ref}' (write SITE/ASSET or SITE/ZONE)")
    rows = []
    for c in _conduits(topo):
        t = c.target
        if asset is not None:
            hit = t.ref == asset.ref if t.kind is TargetKind.ASSET else t.ref == asset.zone_ref
        else:
            target_asset = topo.asset(t.ref) if t.kind is TargetKind.ASSET else None
            hit = t.ref == ref or (target_asset is not None and target_asset.zone_ref == ref)
        if not hit:
            continue
        for source in _sources(topo, c):
            if _open(c, source[3], at):
                rows.append(_row(c, source, at))
    return sorted(rows, key=lambda r: (r.source, r.conduit))


def reach_from(topo: Topology, ref: str, at: datetime | None = None) -> list[Reach]:
    """Everything the identity or zone `ref` can reach."""
    ident = topo.identities.get(ref)
    if ident is None and topo.zone(ref) is None:
        raise FlowError(f"unknown identity or zone '{ref}'")
    rows = []
    for c in _conduits(topo):
        for source in _sources(topo, c):
            if source[0] == ref and _open(c, source[3], at):
                rows.append(_row(c, source, at))
    return sorted(rows, key=lambda r: (r.target, r.conduit))
