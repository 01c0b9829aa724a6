"""Where records go: a rotating JSON-lines file, syslog (RFC 5424), a live stream.

Sinks never block the recorder and never raise into it: a full disk or a dead
syslog server is counted in the sink's stats (shown in `status`), because a recorder
that stops reading netlink loses flows for everyone.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import socket
import time
from collections.abc import Collection
from pathlib import Path
from typing import IO, Any, Protocol

from policyd.flowlog.records import Record, loss_record, parse_ts


class Sink(Protocol):
    name: str

    def write(self, record: Record) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...

    def stats(self) -> dict[str, Any]: ...


def rotated_paths(path: Path) -> list[Path]:
    """The live file and its rotations, oldest first (path.N ... path.1, path)."""
    numbered = []
    for p in path.parent.glob(path.name + ".*"):
        suffix = p.name[len(path.name) + 1 :]
        if suffix.isdigit():
            numbered.append((int(suffix), p))
    out = [p for _, p in sorted(numbered, reverse=True)]
    if path.exists():
        out.append(path)
    return out


class JsonLinesFile:
    """Append records to `path`; rotate to path.1, path.2, ... on size or age.

    Rotation renames (path -> path.1 -> path.2 ...) and keeps `keep` old files, so a
    reader that sorts by suffix sees everything in order; `zonegate flows` does.
    Writes are buffered and flushed after every batch the recorder handles.
    """

    def __init__(
        self,
        path: str | Path,
        max_bytes: int = 64 * 1024 * 1024,
        max_age: float = 24 * 3600.0,
        keep: int = 10,
        events: Collection[str] | None = None,
    ) -> None:
        self.name = f"file:{path}"
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.max_age = max_age
        self.keep = keep
        self.events = frozenset(events) if events is not None else None
        self.written = 0
        self.rotations = 0
        self.errors = 0
        self.last_error = ""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh: IO[str] | None = None
        self._size = 0
        self._opened = 0.0
        self._open()

    def _open(self) -> None:
        self._fh = open(self.path, "a", buffering=1024 * 1024, encoding="utf-8")  # noqa: SIM115
        self._size = self._fh.tell()
        self._opened = _first_record_time(self.path) if self._size else time.time()

    def write(self, record: Record) -> None:
        if self.events is not None and record.kind not in self.events:
            return
        line = record.line + "\n"
        try:
            if self._size and (
                self._size + len(line) > self.max_bytes or time.time() - self._opened > self.max_age
            ):
                self.rotate()
            assert self._fh is not None
            self._fh.write(line)
        except OSError as exc:
            self.errors += 1
            self.last_error = str(exc)
            return
        self._size += len(line)
        self.written += 1

    def rotate(self) -> None:
        if self._fh is not None:
            self._fh.close()
        for n in range(self.keep, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{n}")
            if n == self.keep:
                older.unlink(missing_ok=True)
            elif older.exists():
                older.rename(self.path.with_name(f"{self.path.name}.{n + 1}"))
        if self.keep > 0:
            self.path.rename(self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink()
        self.rotations += 1
        self._open()

    def flush(self) -> None:
        if self._fh is not None:
            try:
                self._fh.flush()
            except OSError as exc:
                self.errors += 1
                self.last_error = str(exc)

    def close(self) -> None:
        if self._fh is not None:
            self.flush()
            self._fh.close()
            self._fh = None

    def stats(self) -> dict[str, Any]:
        return {
            "written": self.written,
            "rotations": self.rotations,
            "errors": self.errors,
            "last_error": self.last_error,
        }


def _first_record_time(path: Path) -> float:
    """When an existing log was started, from its first record; now if unreadable."""
    try:
        with open(path, encoding="utf-8") as fh:
            first = json.loads(fh.readline())
        return parse_ts(str(first["ts"]))
    except (OSError, ValueError, KeyError, TypeError):
        return time.time()


FACILITIES = {"user": 1, "daemon": 3, "auth": 4, "authpriv": 10, "local0": 16, "local7": 23}
SEVERITY = {"flow": 6, "deny": 5, "loss": 4}  # info, notice, warning; audit below


class Syslog5424:
    """Send each record as an RFC 5424 message whose MSG is the record's JSON.

    `address` is "host:port" (UDP, RFC 5426) or a unix datagram socket path such
    as /dev/log. APP-NAME is "zonegate", MSGID the record kind (flow, deny, audit,
    loss), so collectors can route without parsing the JSON. Audit failures are
    warnings, other audit events notices.
    """

    def __init__(
        self,
        address: str,
        facility: str = "local0",
        events: Collection[str] | None = None,
        hostname: str | None = None,
    ) -> None:
        self.name = f"syslog:{address}"
        self.facility = FACILITIES[facility]
        self.events = frozenset(events) if events is not None else None
        self.hostname = (hostname or socket.gethostname() or "-")[:255]
        self.procid = str(os.getpid())
        self.sent = 0
        self.errors = 0
        self.last_error = ""
        if address.startswith("/"):
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._target: Any = address
        else:
            host, _, port = address.rpartition(":")
            info = socket.getaddrinfo(host or "127.0.0.1", int(port), type=socket.SOCK_DGRAM)[0]
            self._sock = socket.socket(info[0], socket.SOCK_DGRAM)
            self._target = info[4]
        self._sock.setblocking(False)

    def format(self, record: Record) -> bytes:
        data = record.data
        if record.kind == "audit":
            severity = 4 if data.get("outcome") == "failure" else 5
        else:
            severity = SEVERITY.get(record.kind, 6)
        pri = self.facility * 8 + severity
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{_usec():06d}Z"
        head = f"<{pri}>1 {stamp} {self.hostname} zonegate {self.procid} {record.kind} - "
        return (head + record.line).encode("utf-8")

    def write(self, record: Record) -> None:
        if self.events is not None and record.kind not in self.events:
            return
        try:
            self._sock.sendto(self.format(record), self._target)
        except OSError as exc:
            self.errors += 1
            self.last_error = str(exc)
            return
        self.sent += 1

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self._sock.close()

    def stats(self) -> dict[str, Any]:
        return {"sent": self.sent, "errors": self.errors, "last_error": self.last_error}


def _usec() -> int:
    return int((time.time() % 1) * 1e6)


class Subscription:
    """One consumer of the live stream: an async iterator of records.

    Bounded: if the consumer falls `maxsize` records behind, the oldest are dropped
    and the next record it gets is a `loss` record saying how many (source "live"),
    so an API client knows its view has a gap while the recorder keeps going.
    """

    def __init__(
        self, stream: LiveStream, maxsize: int, events: Collection[str] | None, gateway: str
    ) -> None:
        self._stream = stream
        self._queue: collections.deque[Record] = collections.deque()
        self._maxsize = maxsize
        self._events = frozenset(events) if events is not None else None
        self._gateway = gateway
        self._wakeup = asyncio.Event()
        self._pending_loss = 0
        self.dropped = 0
        self.closed = False

    def offer(self, record: Record) -> None:
        if self._events is not None and record.kind not in self._events:
            return
        if len(self._queue) >= self._maxsize:
            self._queue.popleft()
            self._pending_loss += 1
            self.dropped += 1
        self._queue.append(record)
        self._wakeup.set()

    def get_nowait(self) -> Record | None:
        if self._pending_loss:
            lost, self._pending_loss = self._pending_loss, 0
            return loss_record(self._gateway, "live", lost, self.dropped)
        return self._queue.popleft() if self._queue else None

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Record:
        while True:
            record = self.get_nowait()
            if record is not None:
                return record
            if self.closed:
                raise StopAsyncIteration
            self._wakeup.clear()
            await self._wakeup.wait()

    def close(self) -> None:
        self.closed = True
        self._wakeup.set()
        self._stream.unsubscribe(self)


class LiveStream:
    """Fan records out to subscribers (the control API's flow stream, tests)."""

    name = "live"

    def __init__(self, gateway: str = "") -> None:
        self.gateway = gateway
        self._subs: list[Subscription] = []
        self.published = 0

    def subscribe(
        self, maxsize: int = 10000, events: Collection[str] | None = None
    ) -> Subscription:
        sub = Subscription(self, maxsize, events, self.gateway)
        self._subs.append(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with contextlib.suppress(ValueError):
            self._subs.remove(sub)

    def write(self, record: Record) -> None:
        self.published += 1
        for sub in self._subs:
            sub.offer(record)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        for sub in list(self._subs):
            sub.close()

    def stats(self) -> dict[str, Any]:
        return {
            "published": self.published,
            "subscribers": len(self._subs),
            "dropped": sum(s.dropped for s in self._subs),
        }
