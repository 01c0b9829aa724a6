"""Connection slots for the handshake listener: per-source and total caps with eviction.

A connection is *unproven* until one of its frames was accepted by the state machine
(which for an InitHello means a valid MAC1) and was not a copy of one already answered
(a replayed recording proves nothing). When a source is at its cap, or the
listener at its total, a new connection evicts the oldest unproven connection (of that
source, or of the source holding most slots); only when every slot is proven is the new
connection refused. So a keyless flood, however many connections it opens or holds
idle, only ever churns through unproven slots, and a genuine handshake, whose first
frame proves its connection within one round trip, is never locked out by it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

MAX_CONNECTIONS = 256
MAX_PER_SOURCE = 8


@dataclass(eq=False)
class Slot:
    source: str
    opened: float
    close: Callable[[], None] = field(repr=False)
    proven: bool = False


class Slots:
    def __init__(self, total: int = MAX_CONNECTIONS, per_source: int = MAX_PER_SOURCE) -> None:
        self.total = total
        self.per_source = per_source
        self._by_source: dict[str, list[Slot]] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def admit(self, slot: Slot) -> str:
        """'accepted', 'evicted' (an unproven slot was closed for it) or 'refused'."""
        outcome = "accepted"
        mine = self._by_source.get(slot.source, [])
        if len(mine) >= self.per_source:
            if not self._evict(mine):
                return "refused"
            outcome = "evicted"
        if self._count >= self.total:
            biggest = max(self._by_source.values(), key=len)
            if not self._evict(biggest) and not any(
                self._evict(s) for s in self._by_source.values()
            ):
                return "refused"
            outcome = "evicted"
        self._by_source.setdefault(slot.source, []).append(slot)
        self._count += 1
        return outcome

    def release(self, slot: Slot) -> None:
        mine = self._by_source.get(slot.source)
        if mine is None or slot not in mine:
            return
        mine.remove(slot)
        self._count -= 1
        if not mine:
            del self._by_source[slot.source]

    def _evict(self, slots: list[Slot]) -> bool:
        for s in slots:  # oldest first
            if not s.proven:
                self.release(s)
                s.close()
                return True
        return False
