"""A minimal nfnetlink_log (NFLOG) reader for the packets policyd denies.

The ruleset copies each denied packet (rate-limited) to NFLOG group 7 with the
prefix "zg deny <reason>". We bind that group in the gateway's namespace, ask for the
first bytes of each packet (enough for the IP and transport headers and the first
bytes of payload, where a Modbus function code sits), and decode them here.

Why our own reader and not ulogd2: ulogd2 is a second daemon with its own config,
output format and loss handling, so policyd would have to supervise it, parse its
JSON back and could not see its overruns; its "nflog overrun" is a log line, not a
counter. Reading the group ourselves is about 150 lines on the same socket
(`policyd.nfnetlink`) as the conntrack reader, with the same exact drop counter (SO_MEMINFO).
"""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass

from policyd.conventions import NFLOG_DENY_PREFIX, NFLOG_GROUP
from policyd.nfnetlink import NFNL_HDRLEN, Buffer, Message, NfnlSocket, attr, attrs, messages

NFNL_SUBSYS_ULOG = 4
NFULNL_MSG_PACKET = 0
NFULNL_MSG_CONFIG = 1
MSG_PACKET = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET

NFULA_CFG_CMD = 1
NFULA_CFG_MODE = 2
NFULA_CFG_NLBUFSIZ = 3
NFULA_CFG_TIMEOUT = 4
NFULA_CFG_QTHRESH = 5
NFULNL_CFG_CMD_BIND = 1
NFULNL_CFG_CMD_UNBIND = 2
NFULNL_COPY_PACKET = 2

NFULA_MARK = 2
NFULA_TIMESTAMP = 3
NFULA_IFINDEX_INDEV = 4
NFULA_PAYLOAD = 9
NFULA_PREFIX = 10

COPY_RANGE = 128  # IPv4 (20-60) + TCP (20-60) + the first payload bytes


@dataclass(slots=True)
class DeniedPacket:
    """One packet the ruleset dropped and logged."""

    ts: float  # seconds since the epoch
    prefix: str
    proto: int
    src: str
    dst: str
    sport: int  # ICMP type for ICMP
    dport: int  # ICMP code for ICMP
    length: int  # IP total length
    in_ifindex: int | None
    payload: bytes  # transport payload bytes that were copied (may be empty)

    @property
    def reason(self) -> str:
        """The text after "zg deny ", or the whole prefix if it is not ours."""
        p = self.prefix
        return p[len(NFLOG_DENY_PREFIX) :] if p.startswith(NFLOG_DENY_PREFIX) else p


def decode_ip(
    data: bytes,
) -> tuple[int, str, str, int, int, int, bytes] | None:
    """(proto, src, dst, sport, dport, ip_length, transport payload) of an IP packet."""
    if len(data) < 20:
        return None
    version = data[0] >> 4
    if version == 4:
        ihl = (data[0] & 0x0F) * 4
        total = struct.unpack_from("!H", data, 2)[0]
        proto = data[9]
        src = socket.inet_ntop(socket.AF_INET, data[12:16])
        dst = socket.inet_ntop(socket.AF_INET, data[16:20])
        frag_offset = struct.unpack_from("!H", data, 6)[0] & 0x1FFF
        l4 = data[ihl:] if frag_offset == 0 else b""
    elif version == 6 and len(data) >= 40:
        total = 40 + struct.unpack_from("!H", data, 4)[0]
        proto = data[6]  # extension headers are not followed: ports stay 0 then
        src = socket.inet_ntop(socket.AF_INET6, data[8:24])
        dst = socket.inet_ntop(socket.AF_INET6, data[24:40])
        l4 = data[40:]
    else:
        return None
    sport = dport = 0
    payload = b""
    if proto in (6, 17, 132) and len(l4) >= 4:
        sport, dport = struct.unpack_from("!HH", l4, 0)
        if proto == 6 and len(l4) >= 20:
            payload = l4[(l4[12] >> 4) * 4 :]
        elif proto == 17:
            payload = l4[8:]
    elif proto in (1, 58) and len(l4) >= 2:
        sport, dport = l4[0], l4[1]
    return proto, src, dst, sport, dport, total, payload


def decode_packet(buf: Buffer, start: int, end: int) -> DeniedPacket | None:
    a = attrs(buf, start + NFNL_HDRLEN, end)
    span = a.get(NFULA_PAYLOAD)
    if span is None:
        return None
    ip = decode_ip(bytes(buf[span[0] : span[1]]))
    if ip is None:
        return None
    proto, src, dst, sport, dport, total, payload = ip
    prefix = _prefix(buf, a)
    ts = _timestamp(buf, a)
    indev = None
    if (i := a.get(NFULA_IFINDEX_INDEV)) is not None:
        indev = struct.unpack_from("!I", buf, i[0])[0]
    return DeniedPacket(ts, prefix, proto, src, dst, sport, dport, total, indev, payload)


@dataclass(slots=True)
class CopiedPacket:
    """One packet copied whole (up to the snaplen) for session recording."""

    ts: float  # seconds since the epoch: the kernel's timestamp, else receive time
    prefix: str
    data: bytes  # the IP packet as captured (may be cut at the rule's snaplen)


def _prefix(buf: Buffer, a: dict[int, tuple[int, int]]) -> str:
    if (p := a.get(NFULA_PREFIX)) is None:
        return ""
    return bytes(buf[p[0] : p[1]]).split(b"\0", 1)[0].decode(errors="replace")


def _timestamp(buf: Buffer, a: dict[int, tuple[int, int]]) -> float:
    if (t := a.get(NFULA_TIMESTAMP)) is not None:
        sec, usec = struct.unpack_from("!QQ", buf, t[0])
        if sec:
            return float(sec + usec / 1e6)
    return time.time()


def decode_copies(buf: Buffer, size: int) -> list[CopiedPacket]:
    """The packets of one datagram, undecoded: the session recorder writes them as is."""
    out = []
    for kind, _flags, start, end in messages(buf, size):
        if kind != MSG_PACKET:
            continue
        a = attrs(buf, start + NFNL_HDRLEN, end)
        if (span := a.get(NFULA_PAYLOAD)) is None:
            continue
        out.append(CopiedPacket(_timestamp(buf, a), _prefix(buf, a), bytes(buf[span[0] : span[1]])))
    return out


def decode_datagram(buf: Buffer, size: int) -> list[DeniedPacket]:
    """NFLOG may batch several packets into one datagram (NLM_F_MULTI + DONE)."""
    out = []
    for kind, _flags, start, end in messages(buf, size):
        if kind == MSG_PACKET:
            pkt = decode_packet(buf, start, end)
            if pkt is not None:
                out.append(pkt)
    return out


def _config(group: int, *attributes: bytes) -> Message:
    return Message(NFULNL_MSG_CONFIG, socket.AF_UNSPEC, 0, b"".join(attributes), res_id=group)


def open_nflog_socket(
    group: int = NFLOG_GROUP,
    rcvbuf: int = 8 * 1024 * 1024,
    copy_range: int = COPY_RANGE,
    batch: int = 1,
    flush_cs: int = 1,
    nlbufsiz: int | None = None,
) -> NfnlSocket:
    """Bind NFLOG `group` in the current namespace, copying `copy_range` bytes per packet.

    Only one socket per namespace can hold a group: a second bind fails (EPERM),
    which we let through so a second recorder cannot silently steal the deny log.
    The deny log is flushed to us packet by packet (`batch` 1), so a deny is seen
    at once; session recording batches (the rule's queue-threshold wins over
    `batch`; `flush_cs` hundredths of a second flush a partial batch, and
    `nlbufsiz` bounds one batch's datagram, which must fit the reader's buffer).
    """
    sock = NfnlSocket(NFNL_SUBSYS_ULOG, rcvbuf=rcvbuf, timeout=2.0)
    try:
        bind = attr(NFULA_CFG_CMD, bytes([NFULNL_CFG_CMD_BIND]))
        sock.transact(_config(group, bind), f"bind NFLOG group {group}")
        mode = struct.pack("!IBB", copy_range, NFULNL_COPY_PACKET, 0)
        options = [
            attr(NFULA_CFG_MODE, mode),
            attr(NFULA_CFG_QTHRESH, struct.pack("!I", batch)),
            attr(NFULA_CFG_TIMEOUT, struct.pack("!I", flush_cs)),
        ]
        if nlbufsiz is not None:
            options.append(attr(NFULA_CFG_NLBUFSIZ, struct.pack("!I", nlbufsiz)))
        sock.transact(_config(group, *options), f"configure NFLOG group {group}")
    except BaseException:
        sock.close()
        raise
    return sock


def close_nflog_socket(sock: NfnlSocket, group: int = NFLOG_GROUP) -> None:
    """Unbind the group (so another recorder may take it) and close."""
    try:
        unbind = attr(NFULA_CFG_CMD, bytes([NFULNL_CFG_CMD_UNBIND]))
        sock.transact(_config(group, unbind), f"unbind NFLOG group {group}")
    except OSError:
        pass
    finally:
        sock.close()
