"""Who and what a flow is: identity, roles, zones, assets, conduit and service.

The kernel gives us addresses, ports and a ct mark; the topology turns them into
names. Address resolution reuses `topology.evaluate.resolve_source`/`resolve_target`
(the same rules `zonegate explain` uses), cached per address because a gateway sees
the same few hundred addresses millions of times.
"""

from __future__ import annotations

from dataclasses import dataclass

from policyd.conventions import MARK_TAG, MARK_TAG_MASK
from topology.evaluate import FlowError, resolve_source, resolve_target
from topology.model import Conduit, Service, Topology

PROTO_TRANSPORT = {6: "tcp", 17: "udp"}
_CACHE_LIMIT = 65536


@dataclass(frozen=True, slots=True)
class Place:
    """One flow end, named: at most one identity, or a zone and maybe an asset."""

    identity: str | None = None
    roles: tuple[str, ...] = ()
    zone: str | None = None  # "site/zone"
    asset: str | None = None  # "site/asset"


UNKNOWN = Place()


class Attributor:
    """Names flow ends, conduits and services for one gateway's topology."""

    def __init__(self, topology: Topology, gateway: str) -> None:
        if gateway not in topology.sites:
            known = ", ".join(sorted(topology.sites)) or "none"
            raise ValueError(f"no site '{gateway}' in the topology (sites: {known})")
        self.topology = topology
        self.gateway = gateway
        self._by_mark: dict[int, Conduit] = {c.mark: c for c in topology.conduits.values()}
        self._sources: dict[str, Place] = {}
        self._targets: dict[str, Place] = {}
        self._services: dict[tuple[int, int, str | None], Service | None] = {}

    def source(self, address: str) -> Place:
        place = self._sources.get(address)
        if place is None:
            place = self._resolve(address, source=True)
            if len(self._sources) >= _CACHE_LIMIT:
                self._sources.clear()
            self._sources[address] = place
        return place

    def target(self, address: str) -> Place:
        place = self._targets.get(address)
        if place is None:
            place = self._resolve(address, source=False)
            if len(self._targets) >= _CACHE_LIMIT:
                self._targets.clear()
            self._targets[address] = place
        return place

    def _resolve(self, address: str, source: bool) -> Place:
        try:
            ep = (resolve_source if source else resolve_target)(self.topology, address)
        except FlowError:  # not an IPv4 address the model can hold (e.g. IPv6)
            return UNKNOWN
        if ep.identity is not None:
            return Place(identity=ep.identity.name, roles=ep.identity.roles)
        if not source:
            # A reply path or a site-to-site flow may target an identity's overlay.
            for ident in self.topology.identities.values():
                if ident.overlay is not None and str(ident.overlay) == address:
                    return Place(identity=ident.name, roles=ident.roles)
        return Place(zone=ep.zone.ref if ep.zone else None, asset=ep.asset)

    def conduit(self, mark: int) -> Conduit | None:
        """The conduit whose ct mark this is; None for marks that are not a conduit's."""
        return self._by_mark.get(mark)

    @staticmethod
    def is_zonegate_mark(mark: int) -> bool:
        return mark & MARK_TAG_MASK == MARK_TAG

    def service(self, proto: int, dport: int, conduit: Conduit | None, payload: bytes = b"") -> str:
        """The catalog name of what the flow speaks, with a function class when seen.

        The conduit's own services are preferred (two services may share a port);
        a denied packet's payload names the function class ("modbus/write") when the
        service has classes and the packet carries that byte. Unknown: "tcp/4711".
        """
        transport = PROTO_TRANSPORT.get(proto)
        if transport is None:
            return {1: "icmp", 58: "ipv6-icmp"}.get(proto, f"ip/{proto}")
        key = (proto, dport, conduit.name if conduit else None)
        if key in self._services:
            svc = self._services[key]
        else:
            svc = self._lookup(transport, dport, conduit)
            self._services[key] = svc
        if svc is None:
            return f"{transport}/{dport}"
        if payload and svc.classes and svc.payload_offset is not None:
            index = svc.payload_offset // 8
            if len(payload) > index:
                code = payload[index]
                for cls in svc.classes.values():
                    if code in cls.codes:
                        return f"{svc.name}/{cls.name}"
        return svc.name

    def _lookup(self, transport: str, dport: int, conduit: Conduit | None) -> Service | None:
        services = self.topology.services
        if conduit is not None:
            for ref in conduit.allow:
                svc = services.get(ref.service)
                if svc is not None and svc.transport == transport and dport in svc.ports:
                    return svc
        for svc in services.values():
            if svc.transport == transport and dport in svc.ports:
                return svc
        return None
