"""IPFIX export (RFC 7011) of flow and deny records to a SOC's collector.

A plant with many gateways feeds nfdump, pmacct or GoFlow2 rather than reading our
JSON files: each gateway is an IPFIX Exporter whose Observation Domain is the
gateway. Standard information elements carry the 5-tuple, times, counters of both
directions (RFC 5103 reverse elements) and the end reason; enterprise elements
(the documentation PEN 32473 unless configured) carry what only Zonegate knows:
identity, roles, zones, assets, service, conduit, verdict, Community ID.

Templates are chosen per record kind and address family (`TEMPLATES`, extensible:
a new record kind adds a `Template`), sent first on every UDP socket and every TCP
connection, and re-sent on UDP every `template_refresh` seconds so a collector that
restarts learns them again. Encoding happens in `write` (cheap: struct packing);
messages are built and sent in `flush`, which the recorder calls after every
netlink batch. The queue is bounded: what does not fit, or what a send fails on,
is counted (`lost`) and reported by the recorder as a `loss` record.
"""

from __future__ import annotations

import calendar
import collections
import errno
import socket
import struct
import time
import zlib
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any

from policyd.flowlog.records import Record
from policyd.flowlog.stream import StreamSender, parse_endpoint

DOCUMENTATION_PEN = 32473  # RFC 5612: the enterprise number for documentation
REVERSE_PEN = 29305  # RFC 5103: reverse information elements
VARLEN = 0xFFFF
VERSION = 10
HEADER = struct.Struct("!HHIII")  # version, length, export time, sequence, domain
SET_HEADER = struct.Struct("!HH")
TEMPLATE_SET_ID = 2
UDP_MESSAGE_MAX = 1400  # fits an Ethernet MTU with IPv6 and tunnel headers
TCP_MESSAGE_MAX = 32768

END_REASONS = {"timeout": 1, "unanswered": 1, "closed": 3, "reset": 3}  # RFC 7011 flowEndReason
FORWARDED, DROPPED = 0x40, 0x80  # RFC 7270 forwardingStatus (reduced to unsigned8)
PROTO_NUMBERS = {"icmp": 1, "tcp": 6, "udp": 17, "ipv6-icmp": 58, "sctp": 132}

_U8 = struct.Struct("!B").pack
_U16 = struct.Struct("!H").pack
_U32 = struct.Struct("!I").pack
_U64 = struct.Struct("!Q").pack
Encoder = Callable[[dict[str, Any]], bytes]


@dataclass(frozen=True)
class Field:
    """One information element of a template and how a record's data encodes into it."""

    name: str
    ie: int
    length: int
    encode: Encoder
    enterprise: bool = False  # True: our PEN (configurable); REVERSE for RFC 5103
    pen: int | None = None  # fixed PEN (RFC 5103's); None with enterprise=True: ours
    repeats: bool = False  # the value repeats across records (a zone, a conduit): cacheable


@dataclass(frozen=True)
class Template:
    """The fields one kind of record is exported with; `select` says which records."""

    template_id: int
    name: str
    fields: tuple[Field, ...]
    select: Callable[[dict[str, Any]], bool]

    def spec(self, pen: int) -> bytes:
        out = [struct.pack("!HH", self.template_id, len(self.fields))]
        for f in self.fields:
            number = f.pen if f.pen is not None else (pen if f.enterprise else None)
            if number is None:
                out.append(struct.pack("!HH", f.ie, f.length))
            else:
                out.append(struct.pack("!HHI", f.ie | 0x8000, f.length, number))
        return b"".join(out)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_steps", _compile(self.fields))

    def encode(self, data: dict[str, Any]) -> bytes:
        steps: list[Encoder] = self._steps  # type: ignore[attr-defined]
        return b"".join([step(data) for step in steps])


def _compile(fields: tuple[Field, ...]) -> list[Encoder]:
    """The encoders of a template, with each run of repeating fields as one cached block.

    The attribution of a flow (identity, roles, zones, assets, service, conduit,
    verdict) takes a handful of values per gateway: encoding it once per distinct
    combination instead of eleven times per record is most of the exporter's CPU.
    """
    steps: list[Encoder] = []
    run: list[Field] = []
    for f in (*fields, None):
        if f is not None and f.repeats:
            run.append(f)
            continue
        if len(run) == 1:
            steps.append(run[0].encode)
        elif run:
            steps.append(_block(tuple(run)))
        run = []
        if f is not None:
            steps.append(f.encode)
    return steps


def _block(fields: tuple[Field, ...], size: int = 4096) -> Encoder:
    keys = tuple(f.name for f in fields)
    encoders = tuple(f.encode for f in fields)
    cache: dict[tuple[Any, ...], bytes] = {}

    def encode(d: dict[str, Any]) -> bytes:
        key = tuple(map(d.get, keys))
        try:
            out = cache.get(key)
        except TypeError:  # a list value: not cacheable, encode as it is
            return b"".join([e(d) for e in encoders])
        if out is None:
            if len(cache) >= size:
                cache.clear()
            out = cache[key] = b"".join([e(d) for e in encoders])
        return out

    return encode


# -- encoders -------------------------------------------------------------------

_seconds: dict[str, int] = {}


def epoch_ms(text: str) -> int:
    """A record's RFC 3339 time (`2026-11-25T10:00:00.123456Z`) in ms since the epoch.

    The whole-second part is cached: under a flood most records share a few seconds.
    """
    head, _, frac = text.rstrip("Z").partition(".")
    sec = _seconds.get(head)
    if sec is None:
        if len(_seconds) > 4096:
            _seconds.clear()
        sec = calendar.timegm(time.strptime(head, "%Y-%m-%dT%H:%M:%S"))
        _seconds[head] = sec
    return sec * 1000 + (int(frac[:3].ljust(3, "0")) if frac else 0)


def varlen(text: str) -> bytes:
    """RFC 7011 7: variable-length encoding (1 length byte, or 255 + 2 bytes)."""
    raw = text.encode("utf-8")
    if len(raw) < 255:
        return _U8(len(raw)) + raw
    raw = raw[:65535]
    return b"\xff" + _U16(len(raw)) + raw


def _string(key: str) -> Encoder:
    return lambda d: varlen(str(d.get(key, "")))


def _cached_string(key: str, size: int = 4096) -> Encoder:
    """For values that repeat (zones, assets, conduits): encode each distinct one once."""
    cache: dict[Any, bytes] = {}

    def encode(d: dict[str, Any]) -> bytes:
        value = d.get(key, "")
        out = cache.get(value)
        if out is None:
            if len(cache) >= size:
                cache.clear()
            out = cache[value] = varlen(str(value))
        return out

    return encode


def _u64(key: str) -> Encoder:
    return lambda d: _U64(int(d.get(key, 0)))


def _port(key: str) -> Encoder:
    return lambda d: _U16(int(d.get(key, 0)) & 0xFFFF)


def _addr(key: str, family: socket.AddressFamily) -> Encoder:
    return lambda d: socket.inet_pton(family, d[key])


def _time(key: str, fallback: str = "ts") -> Encoder:
    return lambda d: _U64(epoch_ms(d.get(key) or d[fallback]))


_roles_cache: dict[tuple[str, ...], bytes] = {}


def _roles(d: dict[str, Any]) -> bytes:
    roles = tuple(d.get("roles", ()))
    out = _roles_cache.get(roles)
    if out is None:
        if len(_roles_cache) >= 4096:
            _roles_cache.clear()
        out = _roles_cache[roles] = varlen(",".join(roles))
    return out


def _proto(d: dict[str, Any]) -> bytes:
    p = d.get("proto", "")
    return _U8(PROTO_NUMBERS[p] if p in PROTO_NUMBERS else int(p) if str(p).isdigit() else 0)


def _verdict_status(d: dict[str, Any]) -> bytes:
    return _U8(FORWARDED if d.get("verdict") == "allow" else DROPPED)


def _end_reason(d: dict[str, Any]) -> bytes:
    return _U8(END_REASONS.get(d.get("end_reason", ""), 1))


# -- the information elements ---------------------------------------------------

#: Our enterprise elements: (number, record key). Numbers are stable once released.
ENTERPRISE_ELEMENTS = {
    "identity": 1,
    "roles": 2,
    "src_zone": 3,
    "dst_zone": 4,
    "src_asset": 5,
    "dst_asset": 6,
    "service": 7,
    "conduit": 8,
    "verdict": 9,
    "community_id": 10,
    "reason": 11,
    "dst_identity": 12,
    "uid": 13,
    "gateway": 14,
}


UNIQUE_PER_FLOW = frozenset({"community_id", "uid"})


def enterprise(key: str) -> Field:
    enc: Encoder
    if key == "roles":
        enc = _roles
    else:
        enc = _string(key) if key in UNIQUE_PER_FLOW else _cached_string(key)
    repeats = key not in UNIQUE_PER_FLOW and key != "roles"  # roles: a list, own cache
    return Field(key, ENTERPRISE_ELEMENTS[key], VARLEN, enc, enterprise=True, repeats=repeats)


def _five_tuple(family: socket.AddressFamily) -> tuple[Field, ...]:
    src_ie, dst_ie, size = (8, 12, 4) if family == socket.AF_INET else (27, 28, 16)
    return (
        Field("sourceIPAddress", src_ie, size, _addr("id.orig_h", family)),
        Field("destinationIPAddress", dst_ie, size, _addr("id.resp_h", family)),
        Field("sourceTransportPort", 7, 2, _port("id.orig_p")),
        Field("destinationTransportPort", 11, 2, _port("id.resp_p")),
        Field("protocolIdentifier", 4, 1, _proto),
    )


_IDENTITY = tuple(
    enterprise(k)
    for k in (
        "identity",
        "roles",
        "src_zone",
        "dst_zone",
        "src_asset",
        "dst_asset",
        "dst_identity",
        "service",
        "conduit",
        "verdict",
        "reason",
        "community_id",
        "uid",
        "gateway",
    )
)


def _is_v6(d: dict[str, Any]) -> bool:
    return ":" in str(d.get("id.orig_h", ""))


def flow_template(template_id: int, family: socket.AddressFamily) -> Template:
    v6 = family == socket.AF_INET6
    return Template(
        template_id,
        "flow6" if v6 else "flow4",
        (
            Field("flowStartMilliseconds", 152, 8, _time("ts")),
            Field("flowEndMilliseconds", 153, 8, _time("ts_end")),
            *_five_tuple(family),
            Field("octetDeltaCount", 1, 8, _u64("orig_ip_bytes")),
            Field("packetDeltaCount", 2, 8, _u64("orig_pkts")),
            Field("reverseOctetDeltaCount", 1, 8, _u64("resp_ip_bytes"), pen=REVERSE_PEN),
            Field("reversePacketDeltaCount", 2, 8, _u64("resp_pkts"), pen=REVERSE_PEN),
            Field("flowEndReason", 136, 1, _end_reason),
            Field("forwardingStatus", 89, 1, _verdict_status),
            *_IDENTITY,
        ),
        lambda d: d.get("event") == "flow" and "ts_end" in d and _is_v6(d) == v6,
    )


def deny_template(template_id: int, family: socket.AddressFamily) -> Template:
    v6 = family == socket.AF_INET6
    return Template(
        template_id,
        "deny6" if v6 else "deny4",
        (
            Field("flowStartMilliseconds", 152, 8, _time("ts")),
            Field("flowEndMilliseconds", 153, 8, _time("ts")),  # one packet: start = end
            *_five_tuple(family),
            Field("octetDeltaCount", 1, 8, _u64("orig_ip_bytes")),
            Field("packetDeltaCount", 2, 8, _u64("orig_pkts")),
            Field("forwardingStatus", 89, 1, _verdict_status),
            *_IDENTITY,
        ),
        lambda d: d.get("event") == "deny" and _is_v6(d) == v6,
    )


def _uint(key: str, size: int) -> Encoder:
    pack = {1: _U8, 2: _U16, 4: _U32}[size]
    top = (1 << (8 * size)) - 1
    return lambda d: pack(min(int(d.get(key) or 0), top))


def _values(d: dict[str, Any]) -> bytes:
    return varlen(",".join(str(v) for v in d.get("values", ())))


def _latency_us(d: dict[str, Any]) -> bytes:
    return _U32(min(round(float(d.get("latency_ms") or 0) * 1000), 0xFFFFFFFF))


#: Modbus transaction elements (record field -> enterprise element), issue 12's
#: `modbus` records (docs/flowlog.md); absent numbers are sent as 0.
MODBUS_ELEMENTS: tuple[tuple[str, int, int, Encoder], ...] = (
    ("tid", 15, 2, _uint("tid", 2)),
    ("unit", 16, 1, _uint("unit", 1)),
    ("fc", 17, 1, _uint("fc", 1)),
    ("func", 18, VARLEN, _cached_string("func")),
    ("table", 19, VARLEN, _cached_string("table")),
    ("address", 20, 2, _uint("address", 2)),
    ("quantity", 21, 2, _uint("quantity", 2)),
    ("read_address", 22, 2, _uint("read_address", 2)),
    ("read_quantity", 23, 2, _uint("read_quantity", 2)),
    ("values", 24, VARLEN, _values),
    ("values_truncated", 25, 2, _uint("values_truncated", 2)),
    ("exception", 26, VARLEN, _cached_string("exception")),
    ("exception_code", 27, 1, _uint("exception_code", 1)),
    ("exception_by", 28, VARLEN, _cached_string("exception_by")),
    ("latency_ms", 29, 4, _latency_us),  # in microseconds
)


def modbus_template(template_id: int, family: socket.AddressFamily) -> Template:
    """One Modbus/TCP transaction (request and answer) of the OT transaction tier."""
    v6 = family == socket.AF_INET6
    return Template(
        template_id,
        "modbus6" if v6 else "modbus4",
        (
            Field("flowStartMilliseconds", 152, 8, _time("ts")),
            Field("flowEndMilliseconds", 153, 8, _time("ts")),
            *_five_tuple(family),
            Field("forwardingStatus", 89, 1, _verdict_status),
            *(enterprise(k) for k in ("identity", "conduit", "dst_asset", "service", "verdict")),
            *(enterprise(k) for k in ("reason", "community_id", "gateway")),
            *(
                Field(name, ie, size, enc, enterprise=True)
                for name, ie, size, enc in MODBUS_ELEMENTS
            ),
        ),
        lambda d: d.get("event") == "modbus" and _is_v6(d) == v6,
    )


#: record kind -> the templates its records may use (the first whose `select` holds).
TEMPLATES: dict[str, tuple[Template, ...]] = {
    "flow": (flow_template(256, socket.AF_INET), flow_template(257, socket.AF_INET6)),
    "deny": (deny_template(258, socket.AF_INET), deny_template(259, socket.AF_INET6)),
    "modbus": (modbus_template(260, socket.AF_INET), modbus_template(261, socket.AF_INET6)),
}


def message(domain: int, sequence: int, sets: Iterable[tuple[int, bytes]], now: int) -> bytes:
    """One IPFIX message: header and sets of (set id, records)."""
    body = b"".join(SET_HEADER.pack(sid, SET_HEADER.size + len(raw)) + raw for sid, raw in sets)
    return HEADER.pack(VERSION, HEADER.size + len(body), now, sequence, domain) + body


def observation_domain(gateway: str) -> int:
    """A stable Observation Domain ID for a gateway when none is configured (CRC-32)."""
    return zlib.crc32(gateway.encode()) or 1


class IpfixExporter:
    """A sink that exports flow ends and denies as IPFIX to one collector (UDP or TCP).

    `address` is "udp://HOST:PORT", "tcp://HOST:PORT" or "HOST:PORT" (UDP; port 4739
    is IPFIX's). Flow *start* records are not exported: IPFIX reports a flow once,
    with its counters, when it ends.
    """

    def __init__(
        self,
        address: str,
        domain: int,
        pen: int = DOCUMENTATION_PEN,
        events: Collection[str] = ("flow", "deny", "modbus"),
        max_queue: int = 65536,
        template_refresh: float = 60.0,
        templates: dict[str, tuple[Template, ...]] | None = None,
    ) -> None:
        transport, host, port = parse_endpoint(address, default_transport="udp")
        if transport not in ("udp", "tcp"):
            raise ValueError(f"IPFIX transport must be udp or tcp, not {transport!r}: {address}")
        if not 0 < pen < 2**32:
            raise ValueError(f"IPFIX enterprise number out of range: {pen}")
        self.name = f"ipfix:{transport}://{host}:{port}"
        self.transport = transport
        self.domain = domain
        self.pen = pen
        self.templates = templates if templates is not None else TEMPLATES
        self.events = frozenset(events) & frozenset(self.templates)
        self.max_queue = max_queue
        self.template_refresh = template_refresh
        self.max_message = UDP_MESSAGE_MAX if transport == "udp" else TCP_MESSAGE_MAX
        self._template_set = b"".join(t.spec(pen) for ts in self.templates.values() for t in ts)
        self._queue: collections.deque[tuple[int, bytes]] = collections.deque()
        self._sequence = 0
        self._templates_sent_at = -1e9
        self.exported = 0  # records in messages handed to the network
        self.messages = 0
        self.skipped = 0  # records of kinds/states IPFIX does not carry (flow starts)
        self.lost = 0  # queue full or send failed: counted, reported as loss records
        self._lost_reported = 0
        self.errors = 0
        self.last_error = ""
        self._sock: socket.socket | None = None
        self._stream: StreamSender | None = None
        if transport == "udp":
            info = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
            self._sock = socket.socket(info[0], socket.SOCK_DGRAM)
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 1024 * 1024)
            self._sock.setblocking(False)
            self._target = info[4]
        else:
            self._stream = StreamSender(host, port, greeting=self._templates_message)

    # -- sink interface --------------------------------------------------------

    def write(self, record: Record) -> None:
        data = record.data
        templates = self.templates.get(data["event"]) if data["event"] in self.events else None
        if templates is None:
            return
        for t in templates:
            if t.select(data):
                break
        else:
            self.skipped += 1
            return
        if len(self._queue) >= self.max_queue:
            self.lost += 1
            return
        try:
            encoded = t.encode(data)
        except (KeyError, ValueError, OSError, struct.error) as exc:
            self.errors += 1
            self.lost += 1
            self.last_error = f"{t.name}: cannot encode record: {exc!r}"
            return
        self._queue.append((t.template_id, encoded))

    def flush(self) -> None:
        refresh = self._sock is not None and self._refresh_due()
        if refresh and not self._send_udp(self._templates_message(), 0):
            return
        queue = self._queue
        limit = self.max_message - HEADER.size
        now = int(time.time())
        while queue:
            taken: list[tuple[int, bytes]] = []
            sets: list[tuple[int, bytes]] = []
            chunk: list[bytes] = []
            tid, size = -1, 0
            while queue:
                t, raw = queue[0]
                add = len(raw) + (SET_HEADER.size if t != tid else 0)
                if taken and size + add > limit:
                    break
                taken.append(queue.popleft())
                if t != tid:
                    if chunk:
                        sets.append((tid, b"".join(chunk)))
                    tid, chunk = t, []
                chunk.append(raw)
                size += add
            sets.append((tid, b"".join(chunk)))
            if not self._send(sets, len(taken), now):
                queue.extendleft(reversed(taken))  # the socket is full: try next flush
                return

    def close(self) -> None:
        self.flush()
        self.lost += len(self._queue)  # the socket stayed full to the end
        self._queue.clear()
        if self._sock is not None:
            self._sock.close()
        if self._stream is not None:
            self._stream.close()

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "exported": self.exported,
            "messages": self.messages,
            "queued": len(self._queue),
            "lost": self.total_lost(),
            "skipped": self.skipped,
            "errors": self.errors,
            "last_error": self.last_error,
            "domain": self.domain,
            "pen": self.pen,
        }
        if self._stream is not None:
            out |= self._stream.stats()
            out["last_error"] = self.last_error or out.get("last_error", "")
        return out

    def total_lost(self) -> int:
        return self.lost + (self._stream.lost if self._stream is not None else 0)

    def take_lost(self) -> int:
        """Records lost since the last call (the recorder turns them into loss records)."""
        total = self.total_lost()
        delta, self._lost_reported = total - self._lost_reported, total
        return delta

    # -- sending ---------------------------------------------------------------

    def _refresh_due(self) -> bool:
        return time.monotonic() - self._templates_sent_at >= self.template_refresh

    def _templates_message(self) -> bytes:
        self._templates_sent_at = time.monotonic()
        return message(
            self.domain, self._sequence, [(TEMPLATE_SET_ID, self._template_set)], int(time.time())
        )

    def _send(self, sets: list[tuple[int, bytes]], records: int, now: int) -> bool:
        """Send one message of `records` data records; False: the socket is full, retry."""
        msg = message(self.domain, self._sequence, sets, now)
        if self._stream is not None:
            if not self._stream.put(msg, records):
                return True  # the stream's queue is full: it counted them as lost
        elif not self._send_udp(msg, records):
            return False
        self._sequence = (self._sequence + records) & 0xFFFFFFFF
        self.exported += records
        self.messages += 1
        return True

    def _send_udp(self, msg: bytes, records: int) -> bool:
        assert self._sock is not None
        try:
            self._sock.sendto(msg, self._target)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            self.errors += 1
            self.last_error = f"send: {exc}"
            if exc.errno == errno.ENOBUFS:
                return False
            self.lost += records  # e.g. no route to the collector: these are gone
            return True
        return True
