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
from typing import Any, Protocol

from policyd.flowlog.records import Record, loss_record, parse_ts


class Sink(Protocol):
    name: str

    def write(self, record: Record) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...

    def stats(self) -> dict[str, Any]: ...


def rotated_paths(path: Path) -> list[Path]:
    """The rotated files and the live one, oldest first (path.1, path.2, ..., path).

    Rotation renames the live file to the next free number, so a higher number is
    newer and no rotated file is ever renamed or deleted again.
    """
    numbered = []
    for p in path.parent.glob(path.name + ".*"):
        suffix = p.name[len(path.name) + 1 :]
        if suffix.isdigit() and p.is_file():
            numbered.append((int(suffix), p))
    out = [p for _, p in sorted(numbered)]
    if path.exists():
        out.append(path)
    return out


def safe_line(record: Record) -> str:
    """The record's JSON line, or an ASCII-escaped one when the line cannot be encoded
    (a lone surrogate from a client) or the record holds a non-JSON value: no input
    can stop a sink."""
    try:
        line = record.line
        line.encode("utf-8")
        return line
    except (UnicodeEncodeError, TypeError, ValueError):
        return json.dumps(record.data, ensure_ascii=True, separators=(",", ":"), default=str)


FILE_MODE = 0o640
RETRY_OPEN = 1.0  # seconds between attempts to reopen a log file that failed to open
MAX_PENDING = 4 * 1024 * 1024  # bytes buffered before a flush is forced


class JsonLinesFile:
    """Append records to `path`; rotate to path.N (the next free number) on size or age.

    Nothing is ever deleted: archiving old files is the operator's choice. Records are
    buffered and written with `os.write` at every flush; when the disk is full the
    file is cut back to its last whole line, exactly the records that did not fit are
    counted as lost, and a `loss` record saying how many (and which audit sequence
    numbers) is written first once space returns. A file that cannot be opened is
    retried every second; its records meanwhile are counted the same way. Files are
    created 0640.
    """

    def __init__(
        self,
        path: str | Path,
        max_bytes: int = 64 * 1024 * 1024,
        max_age: float = 24 * 3600.0,
        events: Collection[str] | None = None,
        gateway: str = "",
    ) -> None:
        self.name = f"file:{path}"
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.max_age = max_age
        self.events = frozenset(events) if events is not None else None
        self.gateway = gateway
        self.written = 0
        self.rotations = 0
        self.errors = 0
        self.lost = 0  # records that never reached the file
        self.last_error = ""
        self._fd: int | None = None
        self._size = 0
        self._opened = 0.0
        self._next_open = 0.0
        self._pending: list[tuple[bytes, int | None]] = []  # line, audit seq
        self._pending_bytes = 0
        self._unreported = 0  # lost, not yet announced in the file
        self._unreported_seqs: list[int] = []
        self._open()

    def _fail(self, exc: OSError) -> None:
        self.errors += 1
        self.last_error = str(exc)

    def _open(self) -> bool:
        self._next_open = time.monotonic() + RETRY_OPEN
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
            fd = os.open(self.path, flags, FILE_MODE)
        except OSError as exc:
            self._fail(exc)
            return False
        try:
            os.fchmod(fd, FILE_MODE)
            self._size = os.fstat(fd).st_size
        except OSError as exc:
            os.close(fd)
            self._fail(exc)
            return False
        self._fd = fd
        self._opened = _first_record_time(self.path) if self._size else time.time()
        return True

    def write(self, record: Record) -> None:
        if self.events is not None and record.kind not in self.events:
            return
        line = (safe_line(record) + "\n").encode("utf-8")
        seq = record.data.get("seq") if record.kind == "audit" else None
        self._pending.append((line, seq if isinstance(seq, int) else None))
        self._pending_bytes += len(line)
        if self._pending_bytes >= MAX_PENDING:
            self.flush()

    def flush(self) -> None:
        if not self._pending and not self._unreported:
            return
        if self._fd is None and (time.monotonic() < self._next_open or not self._open()):
            if self._pending_bytes >= MAX_PENDING:  # bounded while the file stays away
                self._drop(self._pending)
                self._pending, self._pending_bytes = [], 0
            return
        if self._unreported:
            if not self._write_line(self._loss_line()):
                self._drop(self._pending)
                self._pending, self._pending_bytes = [], 0
                return
            self._unreported, self._unreported_seqs = 0, []
        batch, self._pending, self._pending_bytes = self._pending, [], 0
        for i, (line, _seq) in enumerate(batch):
            if not self._write_line(line):
                self._drop(batch[i:])
                return
            self.written += 1

    def _write_line(self, line: bytes) -> bool:
        if self._size and (
            self._size + len(line) > self.max_bytes or time.time() - self._opened > self.max_age
        ):
            self.rotate()
        return self._fd is not None and self._append(line)

    def _append(self, line: bytes) -> bool:
        """Write one whole line or nothing (a partial write is cut back)."""
        assert self._fd is not None
        done = 0
        try:
            while done < len(line):
                done += os.write(self._fd, line[done:])
        except OSError as exc:
            self._fail(exc)
            if done:
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, self._size)
            return False
        self._size += done
        return True

    def _drop(self, lines: list[tuple[bytes, int | None]]) -> None:
        self.lost += len(lines)
        self._unreported += len(lines)
        self._unreported_seqs.extend(seq for _line, seq in lines if seq is not None)

    def _loss_line(self) -> bytes:
        extra = {"audit_seqs_lost": self._unreported_seqs} if self._unreported_seqs else None
        rec = loss_record(self.gateway, self.name, self._unreported, self.lost, extra)
        return (safe_line(rec) + "\n").encode()

    def rotate(self) -> None:
        """Rename the live file to the next number and open a new one; a failure keeps
        writing to the old file (rotation is retried at the next write)."""
        suffixes = [p.name[len(self.path.name) + 1 :] for p in rotated_paths(self.path)]
        number = max((int(n) for n in suffixes if n.isdigit()), default=0) + 1
        try:
            os.rename(self.path, self.path.with_name(f"{self.path.name}.{number}"))
        except OSError as exc:
            self._fail(exc)
            self._opened = time.time()  # do not retry on every record
            return
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
        self.rotations += 1
        self._open()

    def close(self) -> None:
        """Flush and close; never raises (a full disk at stop is counted, not a crash)."""
        try:
            self.flush()
        except Exception as exc:  # the last word at stop must not be a traceback
            self.errors += 1
            self.last_error = str(exc)
        if self._pending:
            self._drop(self._pending)
            self._pending = []
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def stats(self) -> dict[str, Any]:
        return {
            "written": self.written,
            "rotations": self.rotations,
            "errors": self.errors,
            "lost": self.lost,
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
        return (head + safe_line(record)).encode("utf-8")

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
