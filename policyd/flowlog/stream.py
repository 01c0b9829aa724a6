"""One TCP or TLS connection to a collector, kept up by a thread, fed from a bounded queue.

The recorder must never wait for a SIEM: `put` only appends a frame to a bounded
queue (or counts it lost when the queue is full); a thread connects, verifies the
server's certificate (TLS), sends a greeting (IPFIX templates) on every new
connection, writes frames, and reconnects with exponential backoff when the
connection breaks.

What "sent" means: TCP acknowledges bytes, not records. Frames stay in a resend
window until the peer's kernel has acknowledged them (SIOCOUTQ: bytes not yet
acked); if the connection breaks, the window is sent again on the next
connection. Delivery is therefore at least once: a record may arrive twice after a
reconnection (the hash-chained audit records make that visible and harmless), and
one is only lost when the queue overflows or the sender is closed while
disconnected, and then it is counted.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

SIOCOUTQ = 0x5411  # TIOCOUTQ: bytes in the send queue not yet acknowledged by the peer
TRANSPORTS = ("udp", "tcp", "tls")


@runtime_checkable
class ReportsLoss(Protocol):
    """A sink that can lose records it accepted (a network peer): the recorder polls
    `take_lost` every tick and writes a `loss` record naming the sink."""

    name: str

    def take_lost(self) -> int: ...


def parse_endpoint(address: str, default_transport: str) -> tuple[str, str, int]:
    """ "tls://host:port", "tcp://[::1]:601", "host:port" -> (transport, host, port)."""
    transport, sep, rest = address.partition("://")
    if not sep:
        transport, rest = default_transport, address
    if transport not in TRANSPORTS:
        raise ValueError(f"unknown transport {transport!r} in {address!r} (udp, tcp or tls)")
    host, colon, port = rest.rpartition(":")
    if not colon or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{address!r}: expected HOST:PORT with a port number")
    host = host.strip("[]") or "127.0.0.1"
    return transport, host, int(port)


def tls_context(
    cafile: str | None, certfile: str | None = None, keyfile: str | None = None
) -> ssl.SSLContext:
    """Client context: the server's certificate must chain to `cafile` (or the system's
    CAs) and name the host we dial; TLS 1.2 at least; optional client certificate."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if certfile:
        ctx.load_cert_chain(certfile, keyfile)
    return ctx


class StreamSender:
    """Frames to one TCP/TLS peer, in order, from a bounded queue, by a thread."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        tls: ssl.SSLContext | None = None,
        server_name: str | None = None,
        greeting: Callable[[], bytes] | None = None,
        max_frames: int = 65536,
        backoff: tuple[float, float] = (0.2, 30.0),
        connect_timeout: float = 5.0,
    ) -> None:
        self.host, self.port = host, port
        self.tls = tls
        self.server_name = server_name or host
        self.greeting = greeting
        self.max_frames = max_frames
        self.backoff = backoff
        self.connect_timeout = connect_timeout
        self.sent = 0  # records whose bytes the peer acknowledged, or written on close
        self.lost = 0  # records dropped: queue full, or still queued when closed
        self.resent = 0  # records sent again after a reconnection (may be duplicates)
        self.connects = 0
        self.failures = 0
        self.last_error = ""
        self._queue: collections.deque[tuple[bytes, int]] = collections.deque()
        self._window: collections.deque[tuple[bytes, int, int]] = collections.deque()
        self._written = 0  # bytes written on the current connection
        self._cond = threading.Condition()
        self._closing = False
        self._deadline = 0.0
        self._sock: socket.socket | None = None
        self._thread = threading.Thread(target=self._run, name=f"stream-{host}:{port}")
        self._thread.daemon = True
        self._thread.start()

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def put(self, frame: bytes, records: int = 1) -> bool:
        """Queue a frame; False (and counted lost) when the queue is full."""
        with self._cond:
            if len(self._queue) >= self.max_frames or self._closing:
                self.lost += records
                return False
            self._queue.append((frame, records))
            self._cond.notify()
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued (for up to `timeout` s), then stop; the rest is lost."""
        with self._cond:
            self._closing = True
            self._deadline = time.monotonic() + timeout
            self._cond.notify()
        self._thread.join(timeout + self.connect_timeout + 1.0)
        with self._cond:
            self.lost += sum(r for _, r in self._queue) + sum(r for _, r, _ in self._window)
            self._queue.clear()
            self._window.clear()

    def stats(self) -> dict[str, Any]:
        return {
            "connected": self.connected,
            "sent": self.sent,
            "lost": self.lost,
            "resent": self.resent,
            "queued": len(self._queue) + len(self._window),
            "connects": self.connects,
            "connect_failures": self.failures,
            "last_error": self.last_error,
        }

    # -- the thread ------------------------------------------------------------

    def _run(self) -> None:
        delay = self.backoff[0]
        while True:
            with self._cond:
                while not (self._closing or self._queue or (self._sock is None and self._window)):
                    self._cond.wait(1.0)
                    self._check()
                self._check()
                if self._closing and (
                    time.monotonic() > self._deadline
                    or not (self._queue or (self._sock is None and self._window))
                ):
                    break
            if self._sock is None:
                try:
                    self._connect()
                    delay = self.backoff[0]
                except (OSError, ssl.SSLError) as exc:
                    self.failures += 1
                    self.last_error = f"connect {self.host}:{self.port}: {exc}"
                    with self._cond:
                        if self._closing and time.monotonic() + delay > self._deadline:
                            break
                        self._cond.wait(delay)
                    delay = min(delay * 2, self.backoff[1])
                    continue
            try:
                self._send_queued()
            except (OSError, ssl.SSLError) as exc:
                self.last_error = f"send {self.host}:{self.port}: {exc}"
                self._disconnect()
        if self._sock is not None:
            self._finish()

    def _connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.tls is not None:
                sock = self.tls.wrap_socket(sock, server_hostname=self.server_name)
            sock.settimeout(30.0)
            hello = self.greeting() if self.greeting is not None else b""
            sock.sendall(hello)
        except BaseException:
            sock.close()
            raise
        self._written = len(hello)
        with self._cond:
            # Frames the broken connection had not got acknowledged go first, again.
            for frame, records, _ in reversed(self._window):
                self._queue.appendleft((frame, records))
                self.resent += records
            self._window.clear()
        self._sock = sock
        self.connects += 1

    def _send_queued(self) -> None:
        assert self._sock is not None
        with self._cond:
            batch = list(self._queue)
            self._queue.clear()
        data = b"".join(f for f, _ in batch)
        for frame, records in batch:
            self._written += len(frame)
            self._window.append((frame, records, self._written))
        self._sock.sendall(data)
        with self._cond:
            self._acked()

    def _check(self) -> None:
        """Notice a connection the peer closed or reset, even while we have nothing to send,
        so its unacknowledged frames are sent again on a new one; then trim the window."""
        sock = self._sock
        if sock is None:
            return
        if select.select([sock], [], [], 0)[0]:  # collectors never talk: EOF, RST or TLS
            try:
                sock.setblocking(False)
                alive = bool(sock.recv(4096))  # b"": the peer closed
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                alive = True  # TLS housekeeping (e.g. session tickets), no data
            except (OSError, ssl.SSLError) as exc:
                self.last_error = f"connection {self.host}:{self.port}: {exc}"
                alive = False
            if not alive:
                self._disconnect()
                return
            sock.settimeout(30.0)
        self._acked()

    def _acked(self) -> None:
        """Move frames the peer's kernel acknowledged out of the resend window."""
        if self._sock is None or not self._window:
            return
        try:
            acked = self._written - self._outq(self._sock)
        except OSError:
            return
        while self._window and self._window[0][2] <= acked:
            self.sent += self._window.popleft()[1]

    @staticmethod
    def _outq(sock: socket.socket) -> int:
        raw = fcntl.ioctl(sock.fileno(), SIOCOUTQ, b"\0\0\0\0")
        return int(struct.unpack("=i", raw)[0])

    def _finish(self) -> None:
        """Closing: wait (bounded) for the peer to acknowledge, then close cleanly."""
        while self._window and time.monotonic() < self._deadline:
            self._acked()
            time.sleep(0.01)
        with self._cond:
            self._acked()
        self._disconnect(clean=True)

    def _disconnect(self, clean: bool = False) -> None:
        sock, self._sock = self._sock, None
        if sock is None:
            return
        with contextlib.suppress(OSError, ssl.SSLError):
            if clean and isinstance(sock, ssl.SSLSocket):
                sock.unwrap()
        with contextlib.suppress(OSError):
            sock.close()
