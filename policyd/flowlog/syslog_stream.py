"""Syslog over TCP (RFC 6587 octet counting) and TLS (RFC 5425) to a SIEM.

UDP syslog loses records without telling anyone; a SOC that must keep every audit
record takes them over TLS. Each record is one RFC 5424 message, formatted exactly
as the UDP sink formats it (`Syslog5424.format`: MSG is the record's JSON line,
unchanged, so a hash-chained audit record still verifies at the SIEM), framed as
"LEN SP MSG" (RFC 6587 3.4.1 / RFC 5425 4.3). The connection, the server certificate
check, reconnection with backoff and the bounded queue are `StreamSender`'s.
"""

from __future__ import annotations

import os
import socket
import ssl
from collections.abc import Collection
from typing import Any

from policyd.flowlog.records import Record
from policyd.flowlog.sinks import FACILITIES, Syslog5424
from policyd.flowlog.stream import StreamSender, parse_endpoint, tls_context


def octet_counted(message: bytes) -> bytes:
    """RFC 6587 octet-counting framing: the length in decimal, a space, the message."""
    return b"%d %s" % (len(message), message)


class SyslogStream(Syslog5424):
    """RFC 5424 records to "tcp://HOST:PORT" or "tls://HOST:PORT" (default port 6514).

    TLS verifies the server's certificate against `cafile` (the system's CAs when
    None) and its name against `server_name` (default: HOST); a client certificate
    is sent when `certfile` is given. Queue full: the record is counted lost and
    the recorder writes a `loss` record naming this sink.
    """

    def __init__(
        self,
        address: str,
        facility: str = "local0",
        events: Collection[str] | None = None,
        hostname: str | None = None,
        cafile: str | None = None,
        server_name: str | None = None,
        certfile: str | None = None,
        keyfile: str | None = None,
        max_queue: int = 65536,
    ) -> None:
        transport, host, port = parse_endpoint(address, default_transport="tls")
        if transport not in ("tcp", "tls"):
            raise ValueError(f"syslog stream transport must be tcp or tls: {address}")
        self.name = f"syslog:{transport}://{host}:{port}"
        self.facility = FACILITIES[facility]
        self.events = frozenset(events) if events is not None else None
        self.hostname = (hostname or socket.gethostname() or "-")[:255]
        self.procid = str(os.getpid())
        self.errors = 0
        self.last_error = ""
        self._lost_reported = 0
        context: ssl.SSLContext | None = None
        if transport == "tls":
            context = tls_context(cafile, certfile, keyfile)
        self._stream = StreamSender(
            host, port, tls=context, server_name=server_name, max_frames=max_queue
        )

    def write(self, record: Record) -> None:
        if self.events is not None and record.kind not in self.events:
            return
        self._stream.put(octet_counted(self.format(record)))

    def flush(self) -> None:
        pass  # the sender thread writes as soon as a frame is queued

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued for up to `timeout` seconds; what is left is counted lost."""
        self._stream.close(timeout)

    def stats(self) -> dict[str, Any]:
        return self._stream.stats()

    def take_lost(self) -> int:
        total = self._stream.lost
        delta, self._lost_reported = total - self._lost_reported, total
        return delta
