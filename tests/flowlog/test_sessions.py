"""Session recording without a kernel: the pcap writer, NFLOG copies, per-flow files."""

from __future__ import annotations

import shutil
import socket
import stat
import struct
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from policyd.conventions import NFLOG_RECORD_GROUP, NFLOG_RECORD_PREFIX
from policyd.flowlog import nflog
from policyd.flowlog.attribution import Attributor
from policyd.flowlog.pcap import LINKTYPE_RAW, PcapWriter, read_pcap
from policyd.flowlog.records import AuditEvent
from policyd.flowlog.sessions import SessionRecorder, cid_file_part, flow_key
from policyd.nfnetlink import attr, nfnl_message
from tests.policyd.conftest import build_plant

PLANT = build_plant()
VENDOR, PLC = "100.64.2.10", "10.10.1.5"
MARK = PLANT.conduits["vendor-maintenance"].mark
PREFIX = f"{NFLOG_RECORD_PREFIX}0x{MARK:08x}"
READ = bytes.fromhex("000100000006010300010001")  # Modbus read holding registers


def tcp_packet(src: str, sport: int, dst: str, dport: int, payload: bytes = b"") -> bytes:
    tcp = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, 0x18, 1024, 0, 0) + payload
    ip = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(tcp),
        1,
        0,
        64,
        6,
        0,
        socket.inet_aton(src),
        socket.inet_aton(dst),
    )
    return ip + tcp


def copy(packet: bytes, ts: float = 1_700_000_000.5, prefix: str = PREFIX) -> nflog.CopiedPacket:
    return nflog.CopiedPacket(ts, prefix, packet)


class Book:
    """Collects announcements the way the recorder's audit trail would."""

    def __init__(self) -> None:
        self.events: list[AuditEvent] = []

    def __call__(self, event: AuditEvent) -> None:
        self.events.append(event)


def recorder(tmp_path: Path, **kw: Any) -> tuple[SessionRecorder, Book]:
    attr = Attributor(PLANT, "plant-a")
    book = Book()
    return SessionRecorder(tmp_path / "sessions", lambda: attr, book, **kw), book


# -- pcap ------------------------------------------------------------------------------


def test_pcap_writer_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "x.pcap"
    w = PcapWriter(path)
    req = tcp_packet(VENDOR, 40000, PLC, 502, READ)
    w.write(1_700_000_000.25, req)
    w.write(1_700_000_001.0, req[:30])  # cut at a snaplen: origlen keeps the real size
    w.close()
    link, recs = read_pcap(path)
    assert link == LINKTYPE_RAW
    assert [r.ts for r in recs] == [1_700_000_000.25, 1_700_000_001.0]
    assert recs[0].data == req and recs[0].orig_len == len(req)
    assert recs[1].data == req[:30] and recs[1].orig_len == len(req)
    assert (w.packets, w.bytes) == (2, 2 * len(req))
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    with pytest.raises(FileExistsError):
        PcapWriter(path)  # never overwrites a recording


def test_tcpdump_reads_our_pcap(tmp_path: Path) -> None:
    tcpdump = shutil.which("tcpdump")
    assert tcpdump, "tcpdump missing: apt-get install tcpdump (scripts/bootstrap)"
    path = tmp_path / "x.pcap"
    w = PcapWriter(path)
    w.write(1_700_000_000.0, tcp_packet(VENDOR, 40000, PLC, 502, READ))
    w.write(1_700_000_000.1, tcp_packet(PLC, 502, VENDOR, 40000, READ))
    w.close()
    out = subprocess.run(
        [tcpdump, "-nn", "-r", str(path)], capture_output=True, text=True, check=True, timeout=20
    )
    lines = out.stdout.splitlines()
    assert len(lines) == 2, out.stdout + out.stderr
    assert f"{VENDOR}.40000 > {PLC}.502" in lines[0] and f"{PLC}.502 > {VENDOR}.40000" in lines[1]


def test_copied_packets_decode_whole() -> None:
    pkt = tcp_packet(VENDOR, 40000, PLC, 502, READ)
    body = (
        attr(nflog.NFULA_PREFIX, PREFIX.encode() + b"\0")
        + attr(nflog.NFULA_TIMESTAMP, struct.pack("!QQ", 1_700_000_000, 250_000))
        + attr(nflog.NFULA_PAYLOAD, pkt)
    )
    msg = nfnl_message(
        nflog.NFNL_SUBSYS_ULOG, nflog.NFULNL_MSG_PACKET, 0, socket.AF_INET, NFLOG_RECORD_GROUP, body
    )
    [c] = nflog.decode_copies(msg + msg, 2 * len(msg))[1:]
    assert c.data == pkt and c.prefix == PREFIX and c.ts == 1_700_000_000.25


# -- per-flow files ---------------------------------------------------------------------


def test_both_directions_one_file_announced_at_flow_end(tmp_path: Path) -> None:
    rec, book = recorder(tmp_path, end_grace=0.0)
    req = tcp_packet(VENDOR, 40000, PLC, 502, READ)
    reply = tcp_packet(PLC, 502, VENDOR, 40000, bytes.fromhex("000100000005010302002a"))
    other = tcp_packet(VENDOR, 40001, PLC, 502, READ)  # another flow, same conduit
    rec.packet(copy(req, 1_700_000_000.5))
    rec.packet(copy(reply, 1_700_000_000.6))
    rec.packet(copy(other, 1_700_000_000.7))
    assert len(rec.open) == 2
    rec.ended(MARK, 6, VENDOR, 40000, PLC, 502)  # conntrack DESTROY, original tuple
    rec.tick()
    assert len(rec.open) == 1 and len(book.events) == 1
    ev = book.events[0]
    assert ev.action == "session_recorded" and ev.outcome == "success"
    d = ev.details
    assert d["conduit"] == "vendor-maintenance" and d["identity"] == "vendor-1"
    assert d["packets"] == 2 and d["bytes"] == len(req) + len(reply)
    assert d["end_reason"] == "flow_end" and d["community_id"].startswith("1:")
    path = Path(d["file"])
    assert path.parent == tmp_path / "sessions" / "vendor-maintenance"
    assert path.name == f"20231114T221320Z-vendor-1-{cid_file_part(d['community_id'])}.pcap"
    assert [r.data for r in read_pcap(path)[1]] == [req, reply]
    for folder in (path.parent, path.parent.parent):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o750
    rec.close_all()
    assert [e.details["end_reason"] for e in book.events] == ["flow_end", "recorder_stop"]


def test_size_cap_continues_in_numbered_file(tmp_path: Path) -> None:
    req = tcp_packet(VENDOR, 40000, PLC, 502, READ)
    rec, book = recorder(tmp_path, max_bytes=24 + 2 * (16 + len(req)))
    for i in range(5):
        rec.packet(copy(req, 1_700_000_000 + i))
    rec.close_all()
    files = [Path(e.details["file"]) for e in book.events]
    first = files[0].name
    assert first.endswith(".pcap") and files[0].parent == files[1].parent
    assert [f.name for f in files[1:]] == [first[:-5] + ".1.pcap", first[:-5] + ".2.pcap"]
    assert [len(read_pcap(f)[1]) for f in files] == [2, 2, 1]
    assert [e.details["end_reason"] for e in book.events] == ["size_limit"] * 2 + ["recorder_stop"]


def test_idle_flow_is_finished(tmp_path: Path) -> None:
    rec, book = recorder(tmp_path, idle=0.0)
    rec.packet(copy(tcp_packet(VENDOR, 40000, PLC, 502, READ)))
    time.sleep(0.01)  # monotonic must move past last_seen; no assertion on duration
    rec.tick()
    assert not rec.open and book.events[0].details["end_reason"] == "idle"


def test_joined_mid_flow_names_the_identity(tmp_path: Path) -> None:
    rec, book = recorder(tmp_path)
    rec.packet(copy(tcp_packet(PLC, 502, VENDOR, 40000, b"x")))  # a reply comes first
    rec.close_all()
    d = book.events[0].details
    assert d["identity"] == "vendor-1" and d["id.orig_h"] == VENDOR and d["id.resp_p"] == 502


def test_loss_marks_open_files_and_foreign_copies_are_ignored(tmp_path: Path) -> None:
    rec, book = recorder(tmp_path)
    rec.packet(copy(tcp_packet(VENDOR, 40000, PLC, 502), prefix="zg deny default"))
    rec.packet(copy(tcp_packet(VENDOR, 40000, PLC, 502), prefix=NFLOG_RECORD_PREFIX + "zz"))
    assert rec.counts["foreign"] == 2 and not rec.open
    rec.packet(copy(tcp_packet(VENDOR, 40000, PLC, 502)))
    rec.lost()
    rec.close_all()
    ev = book.events[0]
    assert ev.outcome == "failure" and ev.details["loss_events"] == 1


def test_flow_key_is_direction_free() -> None:
    a = flow_key(MARK, 6, VENDOR, 40000, PLC, 502)
    assert a == flow_key(MARK, 6, PLC, 502, VENDOR, 40000)
    assert a != flow_key(MARK + 1, 6, VENDOR, 40000, PLC, 502)
    assert flow_key(MARK, 1, VENDOR, 8, PLC, 0) == flow_key(MARK, 1, PLC, 0, VENDOR, 0)


def test_flow_end_seen_before_its_copies(tmp_path: Path) -> None:
    """The kernel batches copies but not DESTROY events: the end may come first."""
    rec, _ = recorder(tmp_path, end_grace=60.0)
    rec.ended(MARK, 6, VENDOR, 40000, PLC, 502)
    rec.packet(copy(tcp_packet(PLC, 502, VENDOR, 40000, b"x")))
    assert next(iter(rec.open.values())).ends_at is not None
    unrelated = tcp_packet(VENDOR, 40001, PLC, 502)
    rec.packet(copy(unrelated))
    assert sum(s.ends_at is not None for s in rec.open.values()) == 1
