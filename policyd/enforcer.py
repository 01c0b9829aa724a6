"""The kernel side of grants over netlink, and how the API tells a tunnel caller.

A grant is one set element with a timeout and the grant id as its comment
(policyd/kernel.py, policyd/grant_service.py), so it closes even if policyd is dead.
Closing a grant deletes the element, so the identity's open sessions on that conduit
stop at their next packet (the established path checks it); their conntrack entries
are then deleted, each flow ending with reason `revoked` or `grant_expired`. Nothing
here blocks the event loop: route lookups are pyroute2's asyncio netlink sockets,
conntrack deletion runs in a worker thread, element changes are one nfnetlink batch.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from datetime import timedelta
from ipaddress import IPv4Address
from typing import TYPE_CHECKING, Any

from pyroute2 import AsyncConntrack, AsyncIPRoute

from policyd import kernel
from policyd.conventions import TABLE_FAMILY, TABLE_NAME
from policyd.grant_service import KernelGrant, KernelRefused
from policyd.grants import Grant
from policyd.nfnetlink import NfnlError
from policyd.setelems import ElementWriter

if TYPE_CHECKING:
    from policyd.compiler import ConduitPlan
    from policyd.daemon import Daemon

log = logging.getLogger("policyd")


async def list_sessions(source: IPv4Address, mark: int) -> list[dict[str, Any]]:
    """The live conntrack entries of `source` attributed to one conduit (the kernel's
    view: what the console shows as a grant's sessions)."""
    ct = AsyncConntrack()
    out: list[dict[str, Any]] = []
    try:
        async for e in await ct.dump_entries(mark=mark):
            t = e.tuple_orig
            if t.saddr != str(source):
                continue
            proto = {6: "tcp", 17: "udp"}.get(int(t.proto or 0), str(t.proto))
            out.append(
                {"proto": proto, "src": t.saddr, "sport": t.sport, "dst": t.daddr, "dport": t.dport}
            )
    finally:
        ct.close()
    return out


async def route_device(address: IPv4Address) -> str:
    """The interface the route back to `address` leaves through ('' if none)."""
    async with AsyncIPRoute() as ipr:
        routes = await ipr.route("get", dst=str(address))
        for r in routes:
            oif = r.get("RTA_OIF")
            if oif:
                return socket.if_indextoname(int(oif))
    return ""


async def arrived_via_tunnel(address: IPv4Address, prefixes: tuple[str, ...]) -> bool:
    """True when the route back to `address` leaves through one of our tunnels.

    WireGuard admits a packet only from its peer's allowed IPs, and the route to an
    identity's overlay address goes through its tunnel: a spoofed overlay source on
    another interface fails this check (and the kernel's input chain before it).
    """
    try:
        dev = await route_device(address)
    except OSError:
        return False
    return bool(dev) and dev.startswith(prefixes)


class KernelGrants:
    """`GrantKernel` on the daemon's nft handle and its applied ruleset."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        # Listings get their own netlink socket: reconciliation runs them in a worker
        # thread (a 100k-element dump takes seconds) while the loop uses the daemon's.
        self._reader = ElementWriter(TABLE_FAMILY, TABLE_NAME)

    def ready(self) -> bool:
        return self.daemon.current is not None

    def _plan(self, conduit: str) -> ConduitPlan | None:
        rs = self.daemon.current
        plan = rs.conduits.get(conduit) if rs else None
        if plan is None or not plan.needs_grant or not plan.identity_set:
            return None
        return plan

    def address_of(self, conduit: str, identity: str) -> str | None:
        plan = self._plan(conduit)
        addr = plan.identities.get(identity) if plan else None
        return str(addr) if addr is not None else None

    def elements(self, conduit: str | None = None) -> list[KernelGrant]:
        rs = self.daemon.current
        if rs is None:
            return []
        names = [conduit] if conduit is not None else sorted(rs.conduits)
        out: list[KernelGrant] = []
        for name in names:
            plan = self._plan(name)
            if plan is None or plan.identity_set is None:
                continue
            try:
                listed = self._reader.dump(plan.identity_set)
            except NfnlError as exc:
                raise KernelRefused(f"listing {plan.identity_set}: {exc}") from None
            out.extend(KernelGrant(name, addr, tag, left) for addr, tag, left in listed)
        return out

    def generation(self) -> int | None:
        try:
            return self._reader.generation()
        except NfnlError:
            return None

    def element_at(self, conduit: str, address: str) -> KernelGrant | None:
        plan = self._plan(conduit)
        if plan is None or plan.identity_set is None:
            return None
        try:
            found = self.daemon.nft.element(plan.identity_set, address)
        except kernel.NftError as exc:
            raise KernelRefused(f"reading {plan.identity_set}: {exc}") from None
        return None if found is None else KernelGrant(conduit, address, found[0], found[1])

    def add(self, grant: Grant, timeout: timedelta) -> None:
        rs = self.daemon.current
        if rs is None:
            raise KernelRefused("no policy is applied yet")
        try:
            self.daemon.nft.add_grant(rs, grant.conduit, grant.identity, timeout, tag=grant.id)
        except (kernel.ElementRefused, kernel.NftError) as exc:
            raise KernelRefused(str(exc)) from None

    def delete(self, conduit: str, address: str) -> None:
        plan = self._plan(conduit)
        if plan is None or plan.identity_set is None:
            return  # the set is gone with the conduit: so is the element
        try:
            self.daemon.nft.delete_elements(plan.identity_set, [address])
        except kernel.NftError as exc:
            if "No such file" not in str(exc):
                raise KernelRefused(str(exc)) from None

    async def sessions(self, conduit: str, address: str) -> list[dict[str, Any]]:
        plan = self.daemon.current.conduits.get(conduit) if self.daemon.current else None
        if plan is None:
            return []
        try:
            return await list_sessions(IPv4Address(address), plan.mark)
        except OSError as exc:
            log.warning("listing sessions of %s on %s: %s", address, conduit, exc)
            return []

    async def end_sessions(self, conduit: str, address: str, reason: str = "revoked") -> int:
        """Delete the conntrack entries of `address` on `conduit` (the kernel already
        drops their next packets: the element is gone); each flow's end record carries
        `reason`. Run in a worker thread: a conntrack dump is a blocking netlink read."""
        plan = self.daemon.current.conduits.get(conduit) if self.daemon.current else None
        if plan is None:
            return 0
        source, why = IPv4Address(address), f"{address} on {conduit}"
        return await asyncio.to_thread(self.daemon.end_flows_from, plan.mark, source, reason, why)
