"""Webhook notifications: approvers hear that a request waits, requesters hear the answer.

Events (`grant_requested`, `grant_approved`, `grant_denied`, `grant_revoked`,
`grant_expired`, `emergency_opened`) go to the webhooks the conduit (or its site) names
in the topology. Two body formats: `json` (the event as is, for any receiver) and
`slack` (`{"text": ...}`, which Slack, Mattermost and Teams' incoming webhooks accept).

Delivery never blocks or breaks the grant path: events go into a bounded queue (full:
the event is dropped and counted), one worker posts them with a timeout and retries
with exponential backoff (attempts bounded), and every outcome is counted and, for
drops and final failures, handed to `on_failure` so the audit trail says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import aiohttp

from topology.model import Topology

log = logging.getLogger("policyd.notify")

Format = Literal["json", "slack"]
QUEUE_SIZE = 1000
ATTEMPTS = 5
FIRST_BACKOFF = 0.5  # seconds; doubles per attempt
TIMEOUT = 5.0


@dataclass(frozen=True)
class Destination:
    """A webhook with its URL resolved on the gateway (`url` or `url_file`)."""

    name: str
    url: str
    format: Format = "json"

    def __repr__(self) -> str:  # URLs often carry a token: keep them out of reprs
        return f"Destination({self.name!r}, format={self.format!r})"


NOTIFY_EVENTS = frozenset(
    {
        "grant_requested",
        "grant_approval_recorded",
        "grant_approved",
        "grant_denied",
        "grant_revoked",
        "grant_expired",
        "emergency_opened",
    }
)


def destinations(
    topo: Topology, conduit: str, on_failure: Callable[[str, dict[str, Any]], None]
) -> tuple[Destination, ...]:
    """The conduit's webhooks, URLs read now (a `url_file` may change without a reload)."""
    c = topo.conduits.get(conduit)
    out = []
    for name in c.notify if c else ():
        hook = topo.webhooks.get(name)
        if hook is None:
            continue
        url = hook.url
        if hook.url_file is not None:
            try:
                url = Path(hook.url_file).read_text().strip()
            except OSError as exc:
                on_failure("notification_failed", {"webhook": name, "reason": str(exc)})
                continue
        if url:
            out.append(Destination(name, url, hook.format))
    return tuple(out)


@dataclass(frozen=True)
class Notice:
    event: str
    data: dict[str, Any]
    hooks: tuple[Destination, ...]


def text_of(event: str, data: dict[str, Any]) -> str:
    """One human line: what happened, to which grant, who did it."""
    g = data.get("grant", {})
    who = data.get("by", g.get("identity", "?"))
    what = f"{g.get('identity', '?')} on conduit {g.get('conduit', '?')}"
    lines = {
        "grant_requested": f"Access request {g.get('id')}: {what} for {g.get('duration')}"
        f' - "{g.get("reason", "")}". Approve in the console or with zonegate grant.',
        "grant_approved": f"Approved by {who}: {what} (grant {g.get('id')}).",
        "grant_denied": f"Denied by {who}: {what} (grant {g.get('id')}).",
        "grant_revoked": f"Revoked by {who}: {what} (grant {g.get('id')}).",
        "grant_expired": f"Expired: {what} (grant {g.get('id')}).",
        "emergency_opened": f"EMERGENCY ACCESS opened by {g.get('identity')} on conduit "
        f'{g.get("conduit")} for {g.get("duration")}: "{g.get("reason", "")}".',
    }
    gateway = data.get("gateway")
    return (f"[{gateway}] " if gateway else "") + lines.get(event, f"{event}: {what}")


def body_of(hook: Destination, event: str, data: dict[str, Any]) -> bytes:
    if hook.format == "slack":
        return json.dumps({"text": text_of(event, data)}).encode()
    return json.dumps({"event": event, **data}, default=str).encode()


@dataclass
class Notifier:
    """Bounded queue plus one delivery worker; `start()` inside the daemon's loop."""

    on_failure: Callable[[str, dict[str, Any]], None] = lambda _e, _d: None
    queue_size: int = QUEUE_SIZE
    attempts: int = ATTEMPTS
    first_backoff: float = FIRST_BACKOFF
    counts: dict[str, int] = field(
        default_factory=lambda: {"sent": 0, "retried": 0, "failed": 0, "dropped": 0}
    )
    _queue: asyncio.Queue[Notice] | None = None
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._queue = asyncio.Queue(self.queue_size)
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def notify(self, event: str, data: dict[str, Any], hooks: tuple[Destination, ...]) -> None:
        """Queue a notice; never blocks. A full queue drops it, counted and reported."""
        if not hooks or self._queue is None:
            return
        try:
            self._queue.put_nowait(Notice(event, data, hooks))
        except asyncio.QueueFull:
            self.counts["dropped"] += 1
            self.on_failure("notification_dropped", {"event": event, "reason": "queue full"})

    async def drained(self) -> None:
        """Wait until every queued notice was delivered or given up (tests, shutdown)."""
        if self._queue is not None:
            await self._queue.join()

    async def _run(self) -> None:
        assert self._queue is not None
        timeout = aiohttp.ClientTimeout(total=TIMEOUT)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                notice = await self._queue.get()
                try:
                    await asyncio.gather(
                        *(self._deliver(session, hook, notice) for hook in notice.hooks)
                    )
                finally:
                    self._queue.task_done()

    async def _deliver(self, session: aiohttp.ClientSession, hook: Destination, n: Notice) -> None:
        body = body_of(hook, n.event, n.data)
        headers = {"Content-Type": "application/json", "User-Agent": "zonegate-policyd"}
        delay = self.first_backoff
        why = ""
        for attempt in range(1, self.attempts + 1):
            try:
                async with session.post(hook.url, data=body, headers=headers) as resp:
                    if resp.status < 300:
                        self.counts["sent"] += 1
                        return
                    why = f"HTTP {resp.status}"
                    if 400 <= resp.status < 500 and resp.status not in (408, 429):
                        break  # the receiver refuses this body: retrying will not help
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                why = type(exc).__name__
            if attempt < self.attempts:
                self.counts["retried"] += 1
                await asyncio.sleep(delay)
                delay *= 2
        self.counts["failed"] += 1
        log.warning("webhook %s: giving up on %s (%s)", hook.name, n.event, why)
        self.on_failure(
            "notification_failed", {"webhook": hook.name, "event": n.event, "reason": why}
        )
