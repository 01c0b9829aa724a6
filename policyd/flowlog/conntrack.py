"""Conntrack events and dumps, decoded to the few fields a flow record needs.

The kernel announces a confirmed connection once (NEW, after the forward chain has
set `ct mark`, so the mark names the conduit) and its end once (DESTROY, with the
byte/packet counters of both directions when nf_conntrack_acct=1 and start/stop
times when nf_conntrack_timestamp=1). UPDATE events are not subscribed: they would
double the load and add nothing the record needs.

NEW and DESTROY are read on two sockets, so the kernel's drop counter of each says
exactly which kind of event was lost: a lost DESTROY is a lost flow record, a lost
NEW is only a late start (the DESTROY still comes, and a dump recovers open flows).
"""

from __future__ import annotations

import ctypes
import socket
import struct
from dataclasses import dataclass

from policyd.nfnetlink import (
    NFNL_HDRLEN,
    NLM_F_ACK,
    NLM_F_REQUEST,
    NLMSG_ERROR,
    Buffer,
    Message,
    NfnlSocket,
    attr,
    attrs,
    error_code,
    messages,
    nfnl_message,
)

NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_NEW = 0
IPCTNL_MSG_CT_GET = 1
IPCTNL_MSG_CT_DELETE = 2
NFNLGRP_CONNTRACK_NEW = 1
NFNLGRP_CONNTRACK_DESTROY = 3
MSG_NEW = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW
MSG_DELETE = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE

CTA_TUPLE_ORIG = 1
CTA_STATUS = 3
CTA_PROTOINFO = 4
CTA_MARK = 8
CTA_COUNTERS_ORIG = 9
CTA_COUNTERS_REPLY = 10
CTA_ID = 12
CTA_ZONE = 18
CTA_TIMESTAMP = 20
CTA_TUPLE_IP = 1
CTA_TUPLE_PROTO = 2
CTA_IP_V4_SRC = 1
CTA_IP_V4_DST = 2
CTA_IP_V6_SRC = 3
CTA_IP_V6_DST = 4
CTA_PROTO_NUM = 1
CTA_PROTO_SRC_PORT = 2
CTA_PROTO_DST_PORT = 3
CTA_PROTO_ICMP_TYPE = 5
CTA_PROTO_ICMP_CODE = 6
CTA_PROTO_ICMPV6_TYPE = 8
CTA_PROTO_ICMPV6_CODE = 9
CTA_COUNTERS_PACKETS = 1
CTA_COUNTERS_BYTES = 2
CTA_TIMESTAMP_START = 1
CTA_TIMESTAMP_STOP = 2
CTA_PROTOINFO_TCP = 1
CTA_PROTOINFO_TCP_STATE = 1

IPS_SEEN_REPLY = 1 << 1
TCP_SYN_SENT = 1
TCP_ESTABLISHED = 3
TCP_TIME_WAIT = 7
TCP_CLOSE = 8
PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "ipv6-icmp", 132: "sctp"}

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")


@dataclass(slots=True)
class CtEvent:
    """One conntrack entry as an event or dump row; ports hold ICMP type/code for ICMP."""

    destroy: bool
    ct_id: int
    proto: int
    src: str
    dst: str
    sport: int
    dport: int
    mark: int
    status: int = 0
    tcp_state: int | None = None
    orig_pkts: int = 0
    orig_bytes: int = 0
    reply_pkts: int = 0
    reply_bytes: int = 0
    start_ns: int | None = None
    stop_ns: int | None = None
    zone: int = 0  # conntrack zone (issue 12 keeps steered client legs in zone 1)

    @property
    def end_reason(self) -> str:
        """Why the entry ended, as far as conntrack shows it (see docs/flowlog.md)."""
        if not self.status & IPS_SEEN_REPLY:
            return "unanswered"
        if self.tcp_state == TCP_TIME_WAIT:
            return "closed"
        if self.tcp_state == TCP_CLOSE:
            return "reset"
        return "timeout"


def _counters(buf: Buffer, span: tuple[int, int] | None) -> tuple[int, int]:
    if span is None:
        return 0, 0
    a = attrs(buf, span[0], span[1])
    pkts = a.get(CTA_COUNTERS_PACKETS)
    nbytes = a.get(CTA_COUNTERS_BYTES)
    return (
        _U64.unpack_from(buf, pkts[0])[0] if pkts else 0,
        _U64.unpack_from(buf, nbytes[0])[0] if nbytes else 0,
    )


def decode(buf: Buffer, start: int, end: int, destroy: bool) -> CtEvent | None:
    """Decode one ctnetlink message (event or dump row); None if it has no tuple."""
    top = attrs(buf, start + NFNL_HDRLEN, end)
    orig = top.get(CTA_TUPLE_ORIG)
    if orig is None:
        return None
    tup = attrs(buf, orig[0], orig[1])
    ip_span = tup.get(CTA_TUPLE_IP)
    proto_span = tup.get(CTA_TUPLE_PROTO)
    if ip_span is None or proto_span is None:
        return None
    ip = attrs(buf, ip_span[0], ip_span[1])
    if CTA_IP_V4_SRC in ip:
        s, d = ip[CTA_IP_V4_SRC][0], ip[CTA_IP_V4_DST][0]
        src = socket.inet_ntop(socket.AF_INET, bytes(buf[s : s + 4]))
        dst = socket.inet_ntop(socket.AF_INET, bytes(buf[d : d + 4]))
    elif CTA_IP_V6_SRC in ip:
        s, d = ip[CTA_IP_V6_SRC][0], ip[CTA_IP_V6_DST][0]
        src = socket.inet_ntop(socket.AF_INET6, bytes(buf[s : s + 16]))
        dst = socket.inet_ntop(socket.AF_INET6, bytes(buf[d : d + 16]))
    else:
        return None
    pa = attrs(buf, proto_span[0], proto_span[1])
    proto = buf[pa[CTA_PROTO_NUM][0]] if CTA_PROTO_NUM in pa else 0
    sport = dport = 0
    if CTA_PROTO_SRC_PORT in pa:
        sport = _U16.unpack_from(buf, pa[CTA_PROTO_SRC_PORT][0])[0]
        dport = _U16.unpack_from(buf, pa[CTA_PROTO_DST_PORT][0])[0]
    elif CTA_PROTO_ICMP_TYPE in pa:
        sport, dport = buf[pa[CTA_PROTO_ICMP_TYPE][0]], buf[pa[CTA_PROTO_ICMP_CODE][0]]
    elif CTA_PROTO_ICMPV6_TYPE in pa:
        sport, dport = buf[pa[CTA_PROTO_ICMPV6_TYPE][0]], buf[pa[CTA_PROTO_ICMPV6_CODE][0]]

    ev = CtEvent(destroy, 0, proto, src, dst, sport, dport, 0)
    if (span := top.get(CTA_ID)) is not None:
        ev.ct_id = _U32.unpack_from(buf, span[0])[0]
    if (span := top.get(CTA_MARK)) is not None:
        ev.mark = _U32.unpack_from(buf, span[0])[0]
    if (span := top.get(CTA_STATUS)) is not None:
        ev.status = _U32.unpack_from(buf, span[0])[0]
    if (span := top.get(CTA_ZONE)) is not None:
        ev.zone = _U16.unpack_from(buf, span[0])[0]
    ev.orig_pkts, ev.orig_bytes = _counters(buf, top.get(CTA_COUNTERS_ORIG))
    ev.reply_pkts, ev.reply_bytes = _counters(buf, top.get(CTA_COUNTERS_REPLY))
    if (span := top.get(CTA_TIMESTAMP)) is not None:
        ts = attrs(buf, span[0], span[1])
        if CTA_TIMESTAMP_START in ts:
            ev.start_ns = _U64.unpack_from(buf, ts[CTA_TIMESTAMP_START][0])[0]
        if CTA_TIMESTAMP_STOP in ts:
            ev.stop_ns = _U64.unpack_from(buf, ts[CTA_TIMESTAMP_STOP][0])[0]
    if (span := top.get(CTA_PROTOINFO)) is not None:
        tcp = attrs(buf, span[0], span[1]).get(CTA_PROTOINFO_TCP)
        if tcp is not None:
            state = attrs(buf, tcp[0], tcp[1]).get(CTA_PROTOINFO_TCP_STATE)
            if state is not None:
                ev.tcp_state = buf[state[0]]
    return ev


def decode_datagram(buf: Buffer, size: int) -> list[CtEvent]:
    """All conntrack events in one received datagram (events come one per datagram)."""
    out = []
    for kind, _flags, start, end in messages(buf, size):
        if kind in (MSG_NEW, MSG_DELETE):
            ev = decode(buf, start, end, kind == MSG_DELETE)
            if ev is not None:
                out.append(ev)
    return out


def open_event_socket(
    destroy: bool, rcvbuf: int, mark: tuple[int, int] | None = None
) -> NfnlSocket:
    """A socket that receives conntrack NEW events, or DESTROY events.

    `mark` = (value, mask): the kernel delivers only events of entries whose
    `ct mark & mask == value` (a socket filter, below); the rest never reach us.
    """
    group = NFNLGRP_CONNTRACK_DESTROY if destroy else NFNLGRP_CONNTRACK_NEW
    sock = NfnlSocket(NFNL_SUBSYS_CTNETLINK, groups=(group,), rcvbuf=rcvbuf)
    if mark is not None:
        try:
            attach_mark_filter(sock.sock, *mark)
        except BaseException:
            sock.close()
            raise
    return sock


SO_ATTACH_FILTER = 26
SKF_AD_OFF = -0x1000
SKF_AD_NLATTR = 12
# classic BPF opcodes
BPF_LD_W_ABS, BPF_LD_W_IND, BPF_LD_IMM = 0x20, 0x40, 0x00
BPF_JEQ_K, BPF_AND_K, BPF_TAX, BPF_RET_K = 0x15, 0x54, 0x07, 0x06


def mark_filter_program(value: int, mask: int) -> list[tuple[int, int, int, int]]:
    """Classic BPF: accept a ctnetlink message iff it has CTA_MARK and mark & mask == value.

    The kernel's netlink-attribute helper (SKF_AD_NLATTR) finds CTA_MARK among the
    top-level attributes, so the filter needs no loop; messages without a mark (and
    other message types) are dropped, as the recorder would ignore them anyway.
    The filter runs when the kernel delivers the event, before it is queued: a
    filtered event costs no buffer space, no wakeup and no drop count.
    """
    accept, drop = 0xFFFFFFFF, 0
    return [
        (BPF_LD_IMM, 0, 0, NFNL_HDRLEN),  # A = offset of the first attribute
        (0x01, 0, 0, CTA_MARK),  # X = CTA_MARK (BPF_LDX | BPF_IMM)
        (BPF_LD_W_ABS, 0, 0, (SKF_AD_OFF + SKF_AD_NLATTR) & 0xFFFFFFFF),  # A = nla_find
        (BPF_JEQ_K, 5, 0, 0),  # no CTA_MARK: drop
        (BPF_TAX, 0, 0, 0),  # X = offset of CTA_MARK
        (BPF_LD_W_IND, 0, 0, 4),  # A = the mark (big endian, like BPF loads)
        (BPF_AND_K, 0, 0, mask),
        (BPF_JEQ_K, 0, 1, value & mask),
        (BPF_RET_K, 0, 0, accept),
        (BPF_RET_K, 0, 0, drop),
    ]


def attach_mark_filter(sock: socket.socket, value: int, mask: int) -> None:
    program = mark_filter_program(value, mask)
    code = b"".join(struct.pack("=HBBI", *ins) for ins in program)
    buf = ctypes.create_string_buffer(code)
    fprog = struct.pack("HL", len(program), ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def dump(family: int = socket.AF_UNSPEC, timeout: float = 10.0) -> list[CtEvent]:
    """Every entry in the current namespace's conntrack table, with counters.

    Used after an overrun to learn which flows are open: events that were dropped
    cannot be replayed, but the table still holds every flow that has not ended.
    """
    sock = NfnlSocket(NFNL_SUBSYS_CTNETLINK, rcvbuf=4 * 1024 * 1024, timeout=timeout)
    try:
        out: list[CtEvent] = []
        for kind, buf, start, end in sock.dump(
            Message(IPCTNL_MSG_CT_GET, family, 0, b""), "conntrack dump"
        ):
            if kind == MSG_NEW:
                ev = decode(buf, start, end, destroy=False)
                if ev is not None:
                    out.append(ev)
        return out
    finally:
        sock.close()


def _tuple_orig(ev: CtEvent) -> bytes:
    fam4 = ":" not in ev.src
    kinds = (CTA_IP_V4_SRC, CTA_IP_V4_DST) if fam4 else (CTA_IP_V6_SRC, CTA_IP_V6_DST)
    fam = socket.AF_INET if fam4 else socket.AF_INET6
    ip = attr(kinds[0], socket.inet_pton(fam, ev.src)) + attr(
        kinds[1], socket.inet_pton(fam, ev.dst)
    )
    proto = attr(CTA_PROTO_NUM, bytes([ev.proto]))
    if ev.proto in (6, 17, 132):
        proto += attr(CTA_PROTO_SRC_PORT, _U16.pack(ev.sport))
        proto += attr(CTA_PROTO_DST_PORT, _U16.pack(ev.dport))
    nested = 0x8000  # NLA_F_NESTED
    return attr(
        CTA_TUPLE_ORIG | nested,
        attr(CTA_TUPLE_IP | nested, ip) + attr(CTA_TUPLE_PROTO | nested, proto),
    )


def delete(entries: list[CtEvent], timeout: float = 5.0) -> int:
    """Delete these conntrack entries (by original tuple and id) in the current namespace;
    returns how many the kernel deleted (an entry already gone is not an error).

    All requests are sent before the acknowledgements are read, so ending a thousand
    flows costs one round of syscalls per entry, not a round trip each.
    """
    if not entries:
        return 0
    sock = NfnlSocket(NFNL_SUBSYS_CTNETLINK, rcvbuf=4 * 1024 * 1024, timeout=timeout)
    try:
        sock.sock.setblocking(True)
        sock.sock.settimeout(timeout)
        for i, ev in enumerate(entries, 1):
            family = socket.AF_INET if ":" not in ev.src else socket.AF_INET6
            body = _tuple_orig(ev) + attr(CTA_ID, _U32.pack(ev.ct_id & 0xFFFFFFFF))
            if ev.zone:
                body += attr(CTA_ZONE, _U16.pack(ev.zone))
            msg = nfnl_message(
                NFNL_SUBSYS_CTNETLINK,
                IPCTNL_MSG_CT_DELETE,
                NLM_F_REQUEST | NLM_F_ACK,
                family,
                0,
                body,
                seq=i,
            )
            sock.sock.send(msg)
        done = acked = 0
        buf = bytearray(256 * 1024)
        while acked < len(entries):
            n = sock.sock.recv_into(buf)
            for kind, _flags, start, _end in messages(buf, n):
                if kind == NLMSG_ERROR:
                    acked += 1
                    if error_code(buf, start) == 0:
                        done += 1
        return done
    finally:
        sock.close()
