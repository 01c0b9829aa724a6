"""The reference policy: would this flow pass, which conduit decides, on what terms.

A pure function of the model. `zonegate check` and `explain` use it directly, and the
compiled nftables ruleset is tested against it: both must give the same verdict.
Default deny: only a conduit opens anything.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from ipaddress import IPv4Address
from typing import Literal

from topology.instants import rfc3339
from topology.model import Conduit, Identity, Target, TargetKind, Topology, Zone, format_duration
from topology.refs import ServiceSpec, parse_service_spec

ALL_GRANTS: Literal["all"] = "all"


@dataclass(frozen=True)
class Endpoint:
    """A resolved flow end: the address the gateway sees, and what it belongs to."""

    label: str
    address: IPv4Address | None
    identity: Identity | None = None
    zone: Zone | None = None
    asset: str | None = None  # "site/asset"


@dataclass(frozen=True)
class Flow:
    source: str  # identity, SITE/ZONE, SITE/ASSET or IPv4 address
    target: str  # SITE/ASSET, SITE/ZONE or IPv4 address
    service: str  # "ssh", "modbus/write", "tcp/502"
    at: datetime | None = None  # None: time-dependent rules become stated conditions
    grants: Collection[str] | Literal["all"] = ()  # conduits with an active grant


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    conduit: str | None  # the deciding conduit; for a deny, the one whose terms failed
    reason: str
    conditions: tuple[str, ...] = ()

    @property
    def word(self) -> str:
        return "allow" if self.allowed else "deny"

    def as_dict(self) -> dict[str, object]:
        return {
            "verdict": self.word,
            "conduit": self.conduit,
            "reason": self.reason,
            "conditions": list(self.conditions),
        }


class FlowError(ValueError):
    """The flow names something the topology does not have."""


def resolve_source(topo: Topology, ref: str) -> Endpoint:
    ident = topo.identities.get(ref)
    if ident is not None:
        return Endpoint(ref, ident.overlay, identity=ident)
    return _resolve_place(topo, ref, source=True)


def resolve_target(topo: Topology, ref: str) -> Endpoint:
    return _resolve_place(topo, ref, source=False)


def _resolve_place(topo: Topology, ref: str, source: bool) -> Endpoint:
    asset = topo.asset(ref)
    if asset is not None:
        return Endpoint(ref, asset.address, zone=topo.zone(asset.zone_ref), asset=asset.ref)
    zone = topo.zone(ref)
    if zone is not None:
        return Endpoint(ref, None, zone=zone)
    try:
        address = IPv4Address(ref)
    except ValueError:
        kind = "identity, zone, asset or address" if source else "zone, asset or address"
        raise FlowError(f"unknown {kind} '{ref}'") from None
    if source:
        for ident in topo.identities.values():
            if ident.overlay == address:
                return Endpoint(ref, address, identity=ident)
    for site in topo.sites.values():
        for a in site.assets.values():
            if a.address == address:
                return Endpoint(ref, address, zone=topo.zone(a.zone_ref), asset=a.ref)
        for z in site.zones.values():
            if address in z.cidr:
                return Endpoint(ref, address, zone=z)
    return Endpoint(ref, address)


def _source_matches(topo: Topology, conduit: Conduit, src: Endpoint) -> bool:
    s = conduit.sources
    if src.identity is not None:
        if s.admits(src.identity):
            return True
        if src.identity.kind == "site":
            return False
    return src.zone is not None and src.zone.ref in s.zones


def _target_matches(topo: Topology, target: Target, dst: Endpoint) -> bool:
    if target.kind is TargetKind.ASSET:
        asset = topo.asset(target.ref)
        return asset is not None and (dst.asset == asset.ref or dst.address == asset.address)
    return dst.zone is not None and dst.zone.ref == target.ref


def _service_matches(conduit: Conduit, spec: ServiceSpec) -> bool:
    for ref in conduit.allow:
        if ref.service != spec.service:
            continue
        if not ref.classes or spec.function_class in ref.classes:
            return True
    return False


def _granted(conduit: Conduit, grants: Collection[str] | Literal["all"]) -> bool:
    return grants == ALL_GRANTS or conduit.name in grants


def evaluate(topo: Topology, flow: Flow) -> Verdict:
    """Decide a flow. Raises FlowError if the flow names something unknown."""
    src = resolve_source(topo, flow.source)
    dst = resolve_target(topo, flow.target)
    spec = parse_service_spec(flow.service, topo.services)
    if isinstance(spec, tuple):
        raise FlowError(spec[0] + (f" ({spec[1]})" if spec[1] else ""))

    if src.identity is not None and flow.at is not None and not src.identity.valid_at(flow.at):
        return Verdict(
            False, None, f"identity {src.identity.name} is not valid at {rfc3339(flow.at)}"
        )

    candidates = [
        c
        for c in sorted(topo.conduits.values(), key=lambda c: c.name)
        if _source_matches(topo, c, src)
        and _target_matches(topo, c.target, dst)
        and _service_matches(c, spec)
    ]
    if not candidates:
        return Verdict(
            False,
            None,
            f"default deny: no conduit lets {src.label} reach {dst.label} with {spec}",
        )

    open_ones: list[tuple[Conduit, tuple[str, ...]]] = []
    refusals: list[tuple[Conduit, str]] = []
    for c in candidates:
        conditions: list[str] = []
        if c.schedule is not None:
            if flow.at is None:
                conditions.append(f"schedule {c.schedule.describe()}")
            elif not c.schedule.is_open(flow.at):
                refusals.append((c, f"closed at this time (schedule {c.schedule.describe()})"))
                continue
        if c.approval is not None:
            if not _granted(c, flow.grants):
                refusals.append((c, f"needs a grant: {c.approval.describe()}"))
                continue
            conditions.append(f"granted ({c.approval.describe()})")
        if c.emergency is not None:
            if not _granted(c, flow.grants):
                refusals.append(
                    (
                        c,
                        f"emergency only: open with an emergency grant, "
                        f"at most {format_duration(c.emergency.max_duration)}",
                    )
                )
                continue
            conditions.append("emergency access (audited)")
        if src.identity is not None and flow.at is None:
            validity = _validity(src.identity)
            if validity:
                conditions.append(validity)
        if c.record:
            conditions.append("recorded")
        open_ones.append((c, tuple(conditions)))

    if open_ones:
        best, terms = min(open_ones, key=lambda oc: (len(oc[1]), oc[0].name))
        return Verdict(True, best.name, f"conduit {best.name}", terms)
    conduit, why = refusals[0]
    return Verdict(False, conduit.name, f"conduit {conduit.name} {why}")


def _validity(ident: Identity) -> str:
    parts = []
    if ident.valid_from is not None:
        parts.append(f"from {rfc3339(ident.valid_from)}")
    if ident.valid_until is not None:
        parts.append(f"until {rfc3339(ident.valid_until)}")
    return f"identity valid {' '.join(parts)}" if parts else ""
