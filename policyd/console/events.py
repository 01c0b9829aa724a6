"""Live updates for open consoles: grant events fanned out to subscribers.

The daemon publishes every audited grant event; each subscriber (one per open console
page, via server-sent events) gets those it may see. Queues are bounded: a console that
stops reading loses updates (it reloads on the next one), never the daemon's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

QUEUE = 64


@dataclass(eq=False)
class Subscriber:
    sees: Callable[[dict[str, Any]], bool]
    queue: asyncio.Queue[dict[str, Any]] = field(default_factory=lambda: asyncio.Queue(QUEUE))


@dataclass
class Broadcaster:
    subscribers: set[Subscriber] = field(default_factory=set)
    dropped: int = 0

    def subscribe(self, sees: Callable[[dict[str, Any]], bool]) -> Subscriber:
        sub = Subscriber(sees)
        self.subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)

    def publish(self, event: dict[str, Any]) -> None:
        for sub in list(self.subscribers):
            if not sub.sees(event):
                continue
            try:
                sub.queue.put_nowait(event)
            except asyncio.QueueFull:
                self.dropped += 1
                with contextlib.suppress(asyncio.QueueEmpty):
                    sub.queue.get_nowait()  # keep the newest: the page reloads anyway
                sub.queue.put_nowait(event)
