"""A grant kernel in memory, for the service and API tests (the namespace tests use nft).

Behaves like the nftables side where it matters to the service: one element per
(conduit, address), the comment tag, expiry by the injected clock, and faults on
demand (refuse adds or deletes, or "succeed" at a delete that leaves the element).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from policyd.grant_service import KernelGrant, KernelRefused
from policyd.grants import Grant
from topology.model import Topology


@dataclass
class FakeKernel:
    topology: Callable[[], Topology]
    clock: Callable[[], datetime]
    table: dict[tuple[str, str], tuple[str | None, datetime]] = field(default_factory=dict)
    applied: bool = True
    refuse_add: bool = False
    refuse_delete: bool = False
    deaf_delete: bool = False  # a delete that "works" but leaves the element
    sessions_ended: list[tuple[str, str]] = field(default_factory=list)
    calls: list[tuple[str, str, str]] = field(default_factory=list)
    gen: int = 0  # +1 per change, like nf_tables' generation

    def generation(self) -> int | None:
        return self.gen

    def ready(self) -> bool:
        return self.applied

    def _live(self) -> None:
        now = self.clock()
        for key, (_tag, until) in list(self.table.items()):
            if until <= now:
                del self.table[key]

    def elements(self, conduit: str | None = None) -> list[KernelGrant]:
        self._live()
        now = self.clock()
        return [
            KernelGrant(c, a, tag, max(1, int((until - now).total_seconds())))
            for (c, a), (tag, until) in sorted(self.table.items())
            if conduit is None or c == conduit
        ]

    def element_at(self, conduit: str, address: str) -> KernelGrant | None:
        return next((e for e in self.elements(conduit) if e.address == address), None)

    def address_of(self, conduit: str, identity: str) -> str | None:
        topo = self.topology()
        c, ident = topo.conduits.get(conduit), topo.identities.get(identity)
        if c is None or ident is None or ident.overlay is None:
            return None
        if (c.approval is None and c.emergency is None) or not c.sources.admits(ident):
            return None
        return str(ident.overlay)

    def add(self, grant: Grant, timeout: timedelta) -> None:
        address = self.address_of(grant.conduit, grant.identity)
        if self.refuse_add or address is None:
            raise KernelRefused("refused (test)")
        self.table[(grant.conduit, address)] = (grant.id, self.clock() + timeout)
        self.gen += 1
        self.calls.append(("add", grant.conduit, address))

    def delete(self, conduit: str, address: str) -> None:
        if self.refuse_delete:
            raise KernelRefused("refused (test)")
        self.calls.append(("delete", conduit, address))
        if not self.deaf_delete and self.table.pop((conduit, address), None) is not None:
            self.gen += 1

    async def end_sessions(self, conduit: str, address: str, reason: str = "revoked") -> int:
        self.sessions_ended.append((conduit, address))
        return 0

    def put(self, conduit: str, address: str, tag: str | None, seconds: int) -> None:
        """An element someone else (or an earlier policyd) put in the kernel."""
        self.table[(conduit, address)] = (tag, self.clock() + timedelta(seconds=seconds))
        self.gen += 1
