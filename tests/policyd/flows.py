"""A tiny, independent model-level oracle for the ruleset cross-check.

It restates the policy semantics directly over the `Topology` (which conduit admits
which source, destination, service and function code, when), without any of the
compiler's machinery, so the compiled JSON and this code can disagree only if one of
them is wrong. `topology.evaluate` (the lead's reference evaluator) is the other oracle.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from ipaddress import IPv4Address

from policyd.ruleset_eval import Packet, payload_with_code
from topology.model import Conduit, TargetKind, Topology
from topology.services import BUILTIN_SERVICES


@dataclass(frozen=True)
class Flow:
    saddr: IPv4Address
    daddr: IPv4Address
    proto: str
    dport: int
    code: int | None  # function code of the first ADU, when the service has classes
    via_tunnel: bool
    out_tunnel: bool
    at: datetime

    def packet(self, offset: int | None) -> Packet:
        payload = b""
        if self.code is not None and offset is not None:
            payload = payload_with_code(offset, self.code)
        return Packet(
            iif="zg0" if self.via_tunnel else "lan0",
            oif="zg1" if self.out_tunnel else "lan1",
            saddr=self.saddr,
            daddr=self.daddr,
            proto=self.proto,
            dport=self.dport,
            payload=payload,
        )


def code_offset(topo: Topology, proto: str, port: int) -> int | None:
    for svc in (*topo.services.values(), *BUILTIN_SERVICES.values()):
        if svc.transport == proto and port in svc.ports and svc.payload_offset is not None:
            return svc.payload_offset
    return None


def _in_target(topo: Topology, c: Conduit, addr: IPv4Address) -> bool:
    if c.target.kind is TargetKind.ASSET:
        asset = topo.asset(c.target.ref)
        return asset is not None and asset.address == addr
    zone = topo.zone(c.target.ref)
    return zone is not None and addr in zone.cidr


def _service_ok(topo: Topology, c: Conduit, f: Flow) -> bool:
    for ref in c.allow:
        svc = topo.services.get(ref.service) or BUILTIN_SERVICES[ref.service]
        if svc.transport != f.proto or f.dport not in svc.ports:
            continue
        if not ref.classes or f.code is None or svc.payload_offset is None:
            return True
        if any(f.code in svc.classes[cls].codes for cls in ref.classes):
            return True
    return False


def _source_ok(
    topo: Topology, gw: str, c: Conduit, f: Flow, compiled_at: datetime, granted: Collection[str]
) -> bool:
    if c.needs_grant and c.name not in granted:
        return False
    ingress = c.target.site == gw
    for ref in c.sources.zones:
        zone = topo.zone(ref)
        if zone is None or f.saddr not in zone.cidr:
            continue
        local = zone.site == gw
        if ingress and local != f.via_tunnel:
            return True
        if not ingress and local and not f.via_tunnel and f.out_tunnel:
            return True
    if not ingress or not f.via_tunnel:
        return False
    names = set(c.sources.identities)
    for role in c.sources.roles:
        names.update(i.name for i in topo.members(role))
    for name in names:
        ident = topo.identities[name]
        if ident.overlay == f.saddr and ident.valid_at(compiled_at) and ident.valid_at(f.at):
            return True
    return False


def model_allows(
    topo: Topology, gw: str, f: Flow, compiled_at: datetime, granted: Collection[str] = ()
) -> bool:
    """Would some conduit enforced at gateway `gw` admit flow `f`?

    Identities count as valid when valid both at compile time and at the flow's time (a
    compiled ruleset adds newly valid identities only when recompiled). A granted
    conduit is open for every source it names.
    """
    site = topo.sites[gw]
    if f.via_tunnel and any(f.saddr in z.cidr for z in site.zones.values()):
        return False  # a local source arriving through a tunnel is spoofed
    for c in topo.conduits.values():
        if c.schedule is not None and not c.schedule.is_open(f.at):
            continue
        if not _in_target(topo, c, f.daddr) or not _service_ok(topo, c, f):
            continue
        if _source_ok(topo, gw, c, f, compiled_at, granted):
            return True
    return False
