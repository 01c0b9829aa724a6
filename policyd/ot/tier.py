"""The OT transaction tier: a transparent Modbus/TCP proxy that checks every request.

The kernel steers each new connection of a conduit with a Modbus service here (TPROXY,
see policyd/compile_ot.py) only after its own conduit check admitted it; the accepted
socket carries the admitting conduit's mark (SO_MARK, via net.ipv4.tcp_fwmark_accept),
so the tier enforces exactly the conduit the kernel chose. For each connection the tier
opens its own connection to the device from the client's address (IP_TRANSPARENT: the
PLC still sees who asked), frames both byte streams (policyd/ot/framing.py) and
forwards a request only when the conduit's Modbus entries allow it; a forbidden one is
answered with a Modbus exception (or the connection is reset, if the conduit says so),
malformed framing resets. At most `max_outstanding` requests per connection wait for
the device; past that the tier stops reading, so TCP flow control holds the client.
Each transaction becomes one `modbus` record. If the tier is down, nothing listens, and
the kernel drops the steered packets: those conduits carry nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from policyd.flowlog.attribution import Attributor
from policyd.flowlog.records import Record
from policyd.ot.framing import Adu, FrameError, Framer, Refusal, check_reply, decode_request
from policyd.ot.records import ConnInfo, modbus_record
from topology.modbus import ModbusRequest, conduit_scopes, decide
from topology.model import ModbusScope, Topology

log = logging.getLogger("policyd.ot")

IP_TRANSPARENT = 19  # linux/in.h; socket module lacks it on some builds
SO_MARK = 36
DEFAULT_PORT = 15020
DEFAULT_OUTSTANDING = 16
CONNECT_TIMEOUT = 5.0
READ_SIZE = 16384


@dataclass(frozen=True)
class ConduitRules:
    name: str
    scopes: tuple[ModbusScope, ...]


@dataclass
class TierStats:
    connections: int = 0
    open: int = 0
    requests: int = 0
    allowed: int = 0
    denied: int = 0
    resets: int = 0
    frame_errors: int = 0
    unknown_mark: int = 0
    upstream_failures: int = 0
    max_outstanding_seen: int = 0
    ended: int = 0  # connections reset because the kernel ended their flow

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))


class Reset(Exception):
    """End the connection with a TCP reset (policy says so, or the framing is broken)."""


@dataclass(eq=False)
class _Conn:
    info: ConnInfo
    cid: str
    mark: int
    client: asyncio.StreamWriter
    slots: asyncio.Semaphore
    pending: dict[int, deque[tuple[int, int, ModbusRequest, float]]] = field(default_factory=dict)
    outstanding: int = 0
    upstream: asyncio.StreamWriter | None = None


def rules_by_mark(topology: Topology) -> dict[int, ConduitRules]:
    """The Modbus entries of every conduit, keyed by the conduit's mark."""
    return {
        c.mark: ConduitRules(c.name, conduit_scopes(c.allow))
        for c in topology.conduits.values()
        if any(ref.service == "modbus" for ref in c.allow)
    }


def _reset(writer: asyncio.StreamWriter | None) -> None:
    if writer is None:
        return
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class OtTier:
    def __init__(
        self,
        topology: Topology,
        gateway: str,
        emit: Callable[[Record], None],
        *,
        port: int = DEFAULT_PORT,
        bind: str = "127.0.0.1",
        max_outstanding: int = DEFAULT_OUTSTANDING,
    ) -> None:
        self.gateway = gateway
        self.emit = emit
        self.port, self.bind = port, bind
        self.max_outstanding = max_outstanding
        self.stats = TierStats()
        self.server: asyncio.Server | None = None
        self.conns: set[_Conn] = set()
        self.update_topology(topology)

    def update_topology(self, topology: Topology) -> None:
        """Check requests against a reloaded policy from the next request on."""
        self.rules = rules_by_mark(topology)
        self.attr = Attributor(topology, self.gateway)

    def end(self, flows: Iterable[tuple[str, int, str, int]]) -> int:
        """Reset the proxied connections of client flows the kernel no longer admits
        (revoke, expiry, a reload): both legs, so the device-side connection ends too
        and no half-open session to the PLC stays behind. Flows are (client address,
        port, device address, port) as conntrack holds the client leg."""
        doomed = set(flows)
        ended = 0
        for c in list(self.conns):
            i = c.info
            if (i.orig_h, i.orig_p, i.resp_h, i.resp_p) in doomed:
                _reset(c.upstream)
                _reset(c.client)
                ended += 1
        self.stats.ended += ended
        return ended

    async def start(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
        sock.bind((self.bind, self.port))
        sock.listen(4096)
        sock.setblocking(False)
        self.server = await asyncio.start_server(self._serve, sock=sock, limit=READ_SIZE)
        log.info("OT tier (Modbus/TCP) listening on %s:%d", self.bind, self.port)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for c in list(self.conns):
            _reset(c.upstream)
            _reset(c.client)
        if self.server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)

    # -- one connection ---------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        peer = writer.get_extra_info("peername")
        local = writer.get_extra_info("sockname")  # the original destination (TPROXY)
        mark = sock.getsockopt(socket.SOL_SOCKET, SO_MARK)
        self.stats.connections += 1
        rules = self.rules.get(mark)
        if rules is None:
            self.stats.unknown_mark += 1
            log.warning("connection %s -> %s with mark %#x: no Modbus conduit", peer, local, mark)
            _reset(writer)
            return
        ident = self.attr.source(peer[0]).identity
        asset = self.attr.target(local[0]).asset
        info = ConnInfo(
            self.gateway, peer[0], peer[1], local[0], local[1], ident, rules.name, asset
        )
        conn = _Conn(info, info.community_id, mark, writer, asyncio.Semaphore(self.max_outstanding))
        self.conns.add(conn)
        self.stats.open += 1
        try:
            up_reader = await self._connect(conn)
            if up_reader is None:
                return
            down = asyncio.ensure_future(self._from_device(conn, up_reader))
            try:
                await self._from_client(conn, reader)
                await asyncio.wait_for(self._drained(conn), CONNECT_TIMEOUT)
            finally:
                down.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await down
        except (Reset, FrameError) as exc:
            if isinstance(exc, FrameError):
                self.stats.frame_errors += 1
                log.info("%s -> %s: %s; reset", peer[0], local[0], exc)
            self.stats.resets += 1
            _reset(conn.upstream)
            _reset(writer)
        except (ConnectionError, OSError, TimeoutError):
            _reset(conn.upstream)
            _reset(writer)
        finally:
            self._unanswered(conn)
            self.conns.discard(conn)
            self.stats.open -= 1
            if conn.upstream is not None:
                conn.upstream.close()
            writer.close()

    async def _connect(self, conn: _Conn) -> asyncio.StreamReader | None:
        info = conn.info
        up = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            up.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
            up.setsockopt(socket.SOL_SOCKET, SO_MARK, conn.mark)
            up.bind((info.orig_h, 0))
            up.setblocking(False)
            loop = asyncio.get_running_loop()
            await asyncio.wait_for(
                loop.sock_connect(up, (info.resp_h, info.resp_p)), CONNECT_TIMEOUT
            )
        except (OSError, TimeoutError) as exc:
            up.close()
            self.stats.upstream_failures += 1
            log.info(
                "%s -> %s:%d: device unreachable (%s)", info.orig_h, info.resp_h, info.resp_p, exc
            )
            _reset(conn.client)
            return None
        reader, writer = await asyncio.open_connection(sock=up, limit=READ_SIZE)
        conn.upstream = writer
        return reader

    async def _drained(self, conn: _Conn) -> None:
        while conn.outstanding:
            await asyncio.sleep(0.01)

    async def _from_client(self, conn: _Conn, reader: asyncio.StreamReader) -> None:
        framer = Framer()
        client, upstream = conn.client, conn.upstream
        assert upstream is not None
        while True:
            data = await reader.read(READ_SIZE)
            if not data:
                return
            for adu, raw in framer.feed(data):
                if await self._request(conn, adu, raw):
                    continue
                await client.drain()
            await upstream.drain()
            await client.drain()

    async def _request(self, conn: _Conn, adu: Adu, raw: bytes) -> bool:
        """Check one request; True if it was forwarded."""
        self.stats.requests += 1
        rules = self.rules.get(conn.mark)
        if rules is None:  # the conduit is gone since the connection opened
            raise Reset
        fc = adu.pdu[0]
        req = decode_request(adu)
        code: int | None
        request: ModbusRequest | None
        if isinstance(req, Refusal):
            code, reason, request, on_deny = req.exception, req.reason, None, "exception"
        else:
            verdict = decide(rules.scopes, req)
            if verdict.allowed:
                await conn.slots.acquire()
                conn.outstanding += 1
                if conn.outstanding > self.stats.max_outstanding_seen:
                    self.stats.max_outstanding_seen = conn.outstanding
                conn.pending.setdefault(adu.tid, deque()).append((adu.unit, fc, req, time.time()))
                assert conn.upstream is not None
                conn.upstream.write(raw)
                self.stats.allowed += 1
                return True
            code, reason, request, on_deny = (
                verdict.exception,
                verdict.reason,
                req,
                verdict.on_deny,
            )
        self.stats.denied += 1
        assert code is not None
        self.emit(
            modbus_record(
                conn.info,
                conn.cid,
                adu.tid,
                adu.unit,
                fc,
                request,
                "deny",
                exception=code,
                by="gateway",
                reason=reason + ("; connection reset" if on_deny == "reset" else ""),
            )
        )
        if on_deny == "reset":
            raise Reset
        conn.client.write(adu.exception(code))
        return False

    async def _from_device(self, conn: _Conn, reader: asyncio.StreamReader) -> None:
        framer = Framer()
        client = conn.client
        try:
            while True:
                data = await reader.read(READ_SIZE)
                if not data:
                    break
                for adu, raw in framer.feed(data):
                    queue = conn.pending.get(adu.tid)
                    if not queue:
                        raise FrameError(f"device reply with unknown transaction id {adu.tid}")
                    unit, fc, req, started = queue.popleft()
                    if not queue:
                        del conn.pending[adu.tid]
                    conn.outstanding -= 1
                    conn.slots.release()
                    exc = check_reply(fc, adu.pdu)
                    client.write(raw)
                    self.emit(
                        modbus_record(
                            conn.info,
                            conn.cid,
                            adu.tid,
                            unit,
                            fc,
                            req,
                            "allow",
                            exception=exc,
                            by="device",
                            started=started,
                            latency=time.time() - started,
                        )
                    )
                await client.drain()
        except FrameError as exc:
            self.stats.frame_errors += 1
            log.info("device %s: %s; reset", conn.info.resp_h, exc)
        except (ConnectionError, OSError):
            pass
        # The device side is gone or broken: end the client's connection too.
        self.stats.resets += 1
        _reset(conn.client)

    def _unanswered(self, conn: _Conn) -> None:
        for tid, queue in conn.pending.items():
            for unit, fc, req, started in queue:
                self.emit(
                    modbus_record(
                        conn.info,
                        conn.cid,
                        tid,
                        unit,
                        fc,
                        req,
                        "allow",
                        reason="no answer before the connection ended",
                        started=started,
                    )
                )
        conn.pending.clear()
