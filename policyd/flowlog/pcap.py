"""Classic pcap files of raw IP packets: what tcpdump, Wireshark and Zeek all read.

Why classic pcap and not pcapng: a recording is one flow with one link type and no
interface metadata worth keeping; the 24-byte header plus a 16-byte header per
packet is the format every tool reads, and a file cut short by a crash is still
readable up to its last whole record. LINKTYPE_RAW (101): each record is an IP
packet with no link header, exactly what NFLOG hands us.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

LINKTYPE_RAW = 101
MAGIC = 0xA1B2C3D4  # microsecond timestamps
SNAPLEN = 65535
FILE_HEADER = struct.Struct("<IHHiIII")  # magic, major, minor, thiszone, sigfigs, snaplen, linktype
RECORD_HEADER = struct.Struct("<IIII")  # ts_sec, ts_usec, caplen, origlen
FILE_MODE = 0o640


def ip_length(packet: bytes) -> int:
    """The packet's length on the wire, from its IP header (the capture may be cut)."""
    if len(packet) >= 4 and packet[0] >> 4 == 4:
        return max(len(packet), int(struct.unpack_from("!H", packet, 2)[0]))
    if len(packet) >= 6 and packet[0] >> 4 == 6:
        return max(len(packet), 40 + int(struct.unpack_from("!H", packet, 4)[0]))
    return len(packet)


class PcapWriter:
    """Appends packets to a new pcap file created 0640 (never overwrites one)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
        os.fchmod(fd, FILE_MODE)  # the umask may have taken bits the mode asked for
        self._fh = os.fdopen(fd, "wb")
        self._fh.write(FILE_HEADER.pack(MAGIC, 2, 4, 0, 0, SNAPLEN, LINKTYPE_RAW))
        self.size = FILE_HEADER.size
        self.packets = 0
        self.bytes = 0  # IP bytes on the wire (origlen), what flow records count

    def write(self, ts: float, packet: bytes) -> None:
        sec = int(ts)
        usec = min(round((ts - sec) * 1e6), 999_999)
        orig = ip_length(packet)
        self._fh.write(RECORD_HEADER.pack(sec, usec, len(packet), orig))
        self._fh.write(packet)
        self.size += RECORD_HEADER.size + len(packet)
        self.packets += 1
        self.bytes += orig

    def flush(self) -> None:
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


@dataclass(frozen=True)
class PcapRecord:
    ts: float
    data: bytes
    orig_len: int


def read_pcap(path: Path) -> tuple[int, list[PcapRecord]]:
    """(link type, records) of a little- or big-endian microsecond pcap file.

    A small reader for tests and tools; it stops at a truncated last record, as
    tcpdump does.
    """
    return _parse(path.read_bytes())


def _parse(raw: bytes) -> tuple[int, list[PcapRecord]]:
    if len(raw) < FILE_HEADER.size:
        raise ValueError("not a pcap file: shorter than its header")
    endian = {b"\xd4\xc3\xb2\xa1": "<", b"\xa1\xb2\xc3\xd4": ">"}.get(raw[:4])
    if endian is None:
        raise ValueError(f"not a microsecond pcap file (magic {raw[:4].hex()})")
    linktype = struct.unpack_from(endian + "I", raw, 20)[0]
    return linktype, list(_records(raw, endian))


def _records(raw: bytes, endian: str) -> Iterator[PcapRecord]:
    header = struct.Struct(endian + "IIII")
    off = FILE_HEADER.size
    while off + header.size <= len(raw):
        sec, usec, caplen, orig = header.unpack_from(raw, off)
        off += header.size
        if off + caplen > len(raw):
            return
        yield PcapRecord(sec + usec / 1e6, raw[off : off + caplen], orig)
        off += caplen
