"""Decoding netlink messages built byte by byte, as the kernel lays them out."""

from __future__ import annotations

import socket
import struct

from policyd.flowlog import conntrack as ct
from policyd.flowlog import nflog
from policyd.nfnetlink import attr, nest, nfnl_message


def ct_message(destroy: bool, tcp_state: int | None = 7, status: int = 0x0E) -> bytes:
    tuple_orig = nest(
        ct.CTA_TUPLE_ORIG,
        nest(
            ct.CTA_TUPLE_IP,
            attr(ct.CTA_IP_V4_SRC, socket.inet_aton("100.64.1.1")),
            attr(ct.CTA_IP_V4_DST, socket.inet_aton("10.1.1.5")),
        ),
        nest(
            ct.CTA_TUPLE_PROTO,
            attr(ct.CTA_PROTO_NUM, bytes([6])),
            attr(ct.CTA_PROTO_SRC_PORT, struct.pack("!H", 40000)),
            attr(ct.CTA_PROTO_DST_PORT, struct.pack("!H", 502)),
        ),
    )
    body = [
        tuple_orig,
        attr(ct.CTA_STATUS, struct.pack("!I", status)),
        attr(ct.CTA_MARK, struct.pack("!I", 0x5A123456)),
        attr(ct.CTA_ID, struct.pack("!I", 77)),
    ]
    if tcp_state is not None:
        body.append(
            nest(
                ct.CTA_PROTOINFO,
                nest(ct.CTA_PROTOINFO_TCP, attr(ct.CTA_PROTOINFO_TCP_STATE, bytes([tcp_state]))),
            )
        )
    if destroy:
        body += [
            nest(
                ct.CTA_COUNTERS_ORIG,
                attr(ct.CTA_COUNTERS_PACKETS, struct.pack("!Q", 6)),
                attr(ct.CTA_COUNTERS_BYTES, struct.pack("!Q", 372)),
            ),
            nest(
                ct.CTA_COUNTERS_REPLY,
                attr(ct.CTA_COUNTERS_PACKETS, struct.pack("!Q", 5)),
                attr(ct.CTA_COUNTERS_BYTES, struct.pack("!Q", 520)),
            ),
            nest(
                ct.CTA_TIMESTAMP,
                attr(ct.CTA_TIMESTAMP_START, struct.pack("!Q", 1_700_000_000_000_000_000)),
                attr(ct.CTA_TIMESTAMP_STOP, struct.pack("!Q", 1_700_000_002_500_000_000)),
            ),
        ]
    msg = ct.IPCTNL_MSG_CT_DELETE if destroy else ct.IPCTNL_MSG_CT_NEW
    return nfnl_message(ct.NFNL_SUBSYS_CTNETLINK, msg, 0, socket.AF_INET, 0, b"".join(body))


def test_destroy_event_carries_tuple_mark_counters_and_times() -> None:
    data = ct_message(destroy=True)
    [ev] = ct.decode_datagram(data, len(data))
    assert ev.destroy and ev.ct_id == 77 and ev.mark == 0x5A123456
    assert (ev.src, ev.sport, ev.dst, ev.dport, ev.proto) == (
        "100.64.1.1",
        40000,
        "10.1.1.5",
        502,
        6,
    )
    assert (ev.orig_pkts, ev.orig_bytes, ev.reply_pkts, ev.reply_bytes) == (6, 372, 5, 520)
    assert ev.start_ns is not None and ev.stop_ns is not None
    assert ev.stop_ns - ev.start_ns == 2_500_000_000
    assert ev.end_reason == "closed"


def test_new_event_has_no_counters() -> None:
    data = ct_message(destroy=False, tcp_state=None)
    [ev] = ct.decode_datagram(data, len(data))
    assert not ev.destroy and ev.orig_bytes == 0 and ev.start_ns is None


def test_end_reasons() -> None:
    def reason(state: int | None, status: int) -> str:
        data = ct_message(True, state, status)
        return ct.decode_datagram(data, len(data))[0].end_reason

    assert reason(ct.TCP_CLOSE, 0x0E) == "reset"
    assert reason(ct.TCP_ESTABLISHED, 0x0E) == "timeout"
    assert reason(ct.TCP_SYN_SENT, 0x08) == "unanswered"
    assert reason(None, 0x0A) == "timeout"  # UDP with a reply


def test_two_messages_in_one_datagram_and_garbage_tail() -> None:
    data = ct_message(True) + ct_message(False) + b"\x01\x02"
    assert [e.destroy for e in ct.decode_datagram(data, len(data))] == [True, False]


def _tcp_packet(payload: bytes, src: str = "100.64.1.1", dst: str = "10.1.1.5") -> bytes:
    tcp = struct.pack("!HHIIBBHHH", 40000, 502, 1, 0, 5 << 4, 0x18, 1024, 0, 0) + payload
    total = 20 + len(tcp)
    ip = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        total,
        1,
        0,
        64,
        6,
        0,
        socket.inet_aton(src),
        socket.inet_aton(dst),
    )
    return ip + tcp


def nflog_message(packet: bytes, prefix: bytes = b"zg deny modbus-write\0") -> bytes:
    body = (
        attr(nflog.NFULA_PREFIX, prefix)
        + attr(nflog.NFULA_TIMESTAMP, struct.pack("!QQ", 1_700_000_000, 250_000))
        + attr(nflog.NFULA_IFINDEX_INDEV, struct.pack("!I", 3))
        + attr(nflog.NFULA_PAYLOAD, packet)
    )
    return nfnl_message(nflog.NFNL_SUBSYS_ULOG, nflog.NFULNL_MSG_PACKET, 0, socket.AF_INET, 7, body)


def test_nflog_packet_decodes_prefix_tuple_time_and_payload() -> None:
    modbus_write = bytes.fromhex("000100000006010600010003")
    data = nflog_message(_tcp_packet(modbus_write))
    [pkt] = nflog.decode_datagram(data, len(data))
    assert pkt.reason == "modbus-write" and pkt.prefix == "zg deny modbus-write"
    assert (pkt.src, pkt.sport, pkt.dst, pkt.dport, pkt.proto) == (
        "100.64.1.1",
        40000,
        "10.1.1.5",
        502,
        6,
    )
    assert pkt.ts == 1_700_000_000.25 and pkt.in_ifindex == 3
    assert pkt.payload == modbus_write and pkt.length == 52


def test_foreign_prefix_is_kept_whole() -> None:
    data = nflog_message(_tcp_packet(b""), prefix=b"other\0")
    [pkt] = nflog.decode_datagram(data, len(data))
    assert pkt.reason == "other"


def test_truncated_ip_is_skipped() -> None:
    data = nflog_message(b"\x45\x00")
    assert nflog.decode_datagram(data, len(data)) == []
