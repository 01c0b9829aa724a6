"""What keeps the control API up under abuse: connection caps, timeouts, cross-site.

- Connections: at most `per_source` from one source (an address; a uid on the unix
  socket) and `total` overall, never more than the fd budget leaves room for; extra
  connections are closed at once, before aiohttp reads a byte.
- Header timeout: aiohttp's keep-alive timer closes a connection that has not sent a
  complete request head within `header_timeout` (also between keep-alive requests);
  bodies have their own timeout (policyd/api/errors.py).
- Requests: at most `in_flight` open at once per source (a held-open flow stream
  counts), so one identity cannot occupy every slot.
- Cross-site: a request with a foreign `Origin` or `Sec-Fetch-Site: cross-site/
  same-site` is refused, whatever its method (a same-origin web console passes).

The same `Guard` serves every listener (unix socket, overlay address, a later console).
"""

from __future__ import annotations

import asyncio
import resource
import socket
import struct
from collections import Counter
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from policyd.api.errors import ApiError, Handler

FD_RESERVE = 256  # files, netlink sockets, log files, pcap writers


@dataclass(frozen=True)
class Limits:
    total: int = 1024
    per_source: int = 64
    in_flight: int = 16
    header_timeout: float = 10.0


def fd_budget(limits: Limits) -> int:
    """The total connection cap the process's fd limit allows."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(16, min(limits.total, soft - FD_RESERVE))


def source_of(transport: Any) -> str:
    """Who is at the other end: 'uid:N' on a unix socket, the address on TCP."""
    sock = transport.get_extra_info("socket") if transport else None
    if sock is not None and sock.family == socket.AF_UNIX:
        try:
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        except OSError:
            return "uid:?"
        return f"uid:{struct.unpack('3i', creds)[1]}"
    peer = transport.get_extra_info("peername") if transport else None
    return str(peer[0]) if isinstance(peer, tuple) and peer else "?"


class Guard:
    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self.total_cap = fd_budget(self.limits)
        self.open: Counter[str] = Counter()
        self.in_flight: Counter[str] = Counter()
        self._sources: dict[int, str] = {}
        self.refused_connections = 0
        self.refused_requests = 0

    def install(self, server: web.Server) -> None:
        """Wrap the server's connection bookkeeping (per instance; aiohttp calls it from
        every connection's `connection_made`/`connection_lost`)."""
        made, lost = server.connection_made, server.connection_lost

        def connection_made(handler: Any, transport: asyncio.Transport) -> None:
            made(handler, transport)
            source = source_of(transport)
            total = sum(self.open.values())
            if total >= self.total_cap or self.open[source] >= self.limits.per_source:
                self.refused_connections += 1
                # after the handler's task has started, so it sees a plain lost connection
                asyncio.get_running_loop().call_soon(transport.abort)
                return
            self.open[source] += 1
            self._sources[id(handler)] = source

        def connection_lost(handler: Any, exc: BaseException | None = None) -> None:
            source = self._sources.pop(id(handler), None)
            if source is not None:
                self.open[source] -= 1
                if self.open[source] <= 0:
                    del self.open[source]
            lost(handler, exc)

        server.connection_made = connection_made  # type: ignore[method-assign]
        server.connection_lost = connection_lost  # type: ignore[method-assign]

    def runner_kwargs(self) -> dict[str, Any]:
        return {"keepalive_timeout": self.limits.header_timeout, "access_log": None}

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        refuse_cross_site(request)
        source = source_of(request.transport)
        if self.in_flight[source] >= self.limits.in_flight:
            self.refused_requests += 1
            raise ApiError(429, f"too many requests open at once from {source}")
        self.in_flight[source] += 1
        try:
            return await handler(request)
        finally:
            self.in_flight[source] -= 1
            if self.in_flight[source] <= 0:
                del self.in_flight[source]

    def stats(self) -> dict[str, int]:
        return {
            "connections": sum(self.open.values()),
            "connection_cap": self.total_cap,
            "refused_connections": self.refused_connections,
            "refused_requests": self.refused_requests,
        }


def refuse_cross_site(request: web.Request) -> None:
    fetch_site = request.headers.get("Sec-Fetch-Site", "").lower()
    if fetch_site and fetch_site not in ("same-origin", "none"):
        raise ApiError(403, f"cross-site request refused (Sec-Fetch-Site: {fetch_site})")
    origin = request.headers.get("Origin")
    if origin is not None and origin != f"{request.scheme}://{request.host}":
        raise ApiError(403, f"cross-site request refused (Origin: {origin})")
