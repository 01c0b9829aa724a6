"""Session recording: one pcap file per flow of every `record: true` conduit.

The ruleset copies each packet of a recorded conduit's flows, both directions, to
NFLOG group 8 with the prefix "zg record 0x<ct mark>" (policyd/compiler.py). This
module turns those copies into files an auditor opens in Wireshark:

    SESSIONS/<conduit>/<YYYYmmddTHHMMSSZ>-<identity or source>-<community id>.pcap

A flow is the unordered 5-tuple plus the mark, so both directions land in one file
(IEC 62443 remote-access practice wants the whole vendor session, not half of it).
A file is finished when conntrack reports the flow's end (after a short grace, since
the kernel batches copies and may deliver the last ones after the DESTROY event),
after `idle` seconds without a packet, at `max_bytes` (the flow continues in
`<name>.1.pcap`, `.2.pcap`, ...) and when the recorder stops. Each finished file is
announced through `announce` as a `session_recorded` audit event, so a SIEM can go
from a flow record to its recording by community id.

Without NFLOG conntrack glue (not built into every kernel) a copied packet does not
carry its conntrack id; the prefix names the conduit and the 5-tuple names the flow.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from policyd.conventions import NFLOG_RECORD_PREFIX
from policyd.flowlog.attribution import Attributor
from policyd.flowlog.community_id import community_id
from policyd.flowlog.conntrack import PROTO_NAMES
from policyd.flowlog.nflog import CopiedPacket, decode_ip
from policyd.flowlog.pcap import PcapWriter
from policyd.flowlog.records import AuditEvent

DIR_MODE = 0o750
MAX_BYTES = 64 * 1024 * 1024
IDLE = 300.0
END_GRACE = 2.0  # > the record group's NFLOG flush timeout (0.1 s), with margin
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")

# mark, proto, lower (address, port), higher (address, port): both directions alike
FlowKey = tuple[int, int, tuple[str, int], tuple[str, int]]


def flow_key(mark: int, proto: int, src: str, sport: int, dst: str, dport: int) -> FlowKey:
    if proto not in (6, 17, 132):
        sport = dport = 0  # ICMP: request and reply types differ; one file per pair
    a, b = (src, sport), (dst, dport)
    return (mark, proto, a, b) if _order(a) <= _order(b) else (mark, proto, b, a)


def _order(end: tuple[str, int]) -> tuple[bytes, int]:
    family = socket.AF_INET6 if ":" in end[0] else socket.AF_INET
    return socket.inet_pton(family, end[0]), end[1]


def safe(text: str) -> str:
    """A file-name part: no separators, no dot-files, never empty."""
    out = _UNSAFE.sub("_", text).lstrip(".")
    return out or "_"


def cid_file_part(cid: str) -> str:
    """A community id ("1:base64=") as file-name text: URL-safe base64, no padding."""
    body = cid.split(":", 1)[-1]
    return body.replace("+", "-").replace("/", "_").rstrip("=")


@dataclass
class Session:
    key: FlowKey
    conduit: str
    identity: str | None
    src: str  # the first packet's source: the originator unless we joined mid-flow
    dst: str
    sport: int
    dport: int
    proto: int
    cid: str
    stem: Path  # the file name without ".pcap"
    writer: PcapWriter
    first_ts: float
    last_ts: float
    last_seen: float  # monotonic, for the idle timeout
    part: int = 0
    ends_at: float | None = None  # monotonic deadline after conntrack's DESTROY
    loss: int = 0  # recorder-wide loss events while this file was open
    errors: list[str] = field(default_factory=list)


class SessionRecorder:
    """Writes copied packets to per-flow pcap files and announces finished ones."""

    def __init__(
        self,
        directory: Path,
        attr: Callable[[], Attributor],
        announce: Callable[[AuditEvent], None],
        idle: float = IDLE,
        max_bytes: int = MAX_BYTES,
        end_grace: float = END_GRACE,
    ) -> None:
        self.directory = directory
        self._attr = attr  # a getter: the attributor is replaced on every reload
        self.announce = announce
        self.idle, self.max_bytes, self.end_grace = idle, max_bytes, end_grace
        self.open: dict[FlowKey, Session] = {}
        # flows conntrack ended before their first copy arrived (copies are batched
        # for up to 0.1 s, a DESTROY is not): key -> monotonic deadline
        self._ended: dict[FlowKey, float] = {}
        self.counts = dict.fromkeys(("packets", "files", "foreign", "errors"), 0)
        self.errors: list[str] = []

    # -- input --------------------------------------------------------------------

    def packet(self, pkt: CopiedPacket) -> None:
        if not pkt.prefix.startswith(NFLOG_RECORD_PREFIX):
            self.counts["foreign"] += 1
            return
        ip = decode_ip(pkt.data)
        try:
            mark = int(pkt.prefix[len(NFLOG_RECORD_PREFIX) :], 16)
        except ValueError:
            mark = -1
        if ip is None or mark < 0:
            self.counts["foreign"] += 1
            return
        proto, src, dst, sport, dport, _len, _payload = ip
        key = flow_key(mark, proto, src, sport, dst, dport)
        try:
            s = self.open.get(key)
            if s is None:
                s = self.open[key] = self._begin(key, pkt.ts, proto, src, sport, dst, dport)
                s.ends_at = self._ended.pop(key, None)
            elif s.writer.size + 16 + len(pkt.data) > self.max_bytes and s.writer.packets:
                self._next_part(s)
            s.writer.write(pkt.ts, pkt.data)
        except OSError as exc:
            self._fail(key, exc)
            return
        s.last_ts, s.last_seen = pkt.ts, time.monotonic()
        self.counts["packets"] += 1

    def ended(self, mark: int, proto: int, src: str, sport: int, dst: str, dport: int) -> None:
        """Conntrack says the flow ended: finish its file once late copies are in."""
        key = flow_key(mark, proto, src, sport, dst, dport)
        deadline = time.monotonic() + self.end_grace
        s = self.open.get(key)
        if s is None:
            self._ended[key] = deadline
        elif s.ends_at is None:
            s.ends_at = deadline

    def lost(self) -> None:
        """Copies were lost (counted by the caller): every open file may have a gap."""
        for s in self.open.values():
            s.loss += 1

    # -- housekeeping ----------------------------------------------------------------

    def tick(self) -> None:
        """Finish ended and idle flows; make what was written readable on disk."""
        now = time.monotonic()
        for key, deadline in list(self._ended.items()):
            if deadline <= now:
                del self._ended[key]
        for key, s in list(self.open.items()):
            if s.ends_at is not None and s.ends_at <= now:
                self._finish(key, "flow_end")
            elif now - s.last_seen >= self.idle:
                self._finish(key, "idle")
            else:
                try:
                    s.writer.flush()
                except OSError as exc:
                    self._fail(key, exc)

    def close_all(self) -> None:
        for key in list(self.open):
            self._finish(key, "recorder_stop")

    # -- files -------------------------------------------------------------------------

    def _begin(
        self, key: FlowKey, ts: float, proto: int, src: str, sport: int, dst: str, dport: int
    ) -> Session:
        attr = self._attr()
        conduit = attr.conduit(key[0])
        cname = conduit.name if conduit is not None else f"unknown-0x{key[0]:08x}"
        identity = attr.source(src).identity
        if identity is None and (other := attr.source(dst).identity) is not None:
            identity, src, dst, sport, dport = other, dst, src, dport, sport  # joined mid-flow
        cid = community_id(src, dst, proto, sport, dport)
        folder = self.directory / safe(cname)
        for d in (self.directory, folder):
            if not d.is_dir():
                d.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
                os.chmod(d, DIR_MODE)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(ts))
        stem = folder / f"{stamp}-{safe(identity or src)}-{cid_file_part(cid)}"
        writer = _create(stem, 0)
        self.counts["files"] += 1
        return Session(
            key, cname, identity, src, dst, sport, dport, proto, cid, stem, writer, ts, ts,
            time.monotonic(),
        )  # fmt: skip

    def _next_part(self, s: Session) -> None:
        self._announce(s, "size_limit")
        s.writer.close()
        s.part += 1
        s.loss = 0
        s.writer = _create(s.stem, s.part)
        self.counts["files"] += 1

    def _finish(self, key: FlowKey, reason: str) -> None:
        s = self.open.pop(key)
        try:
            s.writer.close()
        except OSError as exc:
            s.errors.append(str(exc))
        self._announce(s, reason)

    def _fail(self, key: FlowKey, exc: OSError) -> None:
        """A write failed (disk full, directory gone): stop this file, say so loudly."""
        self.counts["errors"] += 1
        self.errors.append(f"session recording: {exc}")
        s = self.open.pop(key, None)
        if s is not None:
            s.errors.append(str(exc))
            with contextlib.suppress(OSError):
                s.writer.close()
            self._announce(s, "write_error")

    def _announce(self, s: Session, reason: str) -> None:
        details = {
            "conduit": s.conduit,
            "file": str(s.writer.path),
            "part": s.part,
            "packets": s.writer.packets,
            "bytes": s.writer.bytes,
            "community_id": s.cid,
            "id.orig_h": s.src,
            "id.orig_p": s.sport,
            "id.resp_h": s.dst,
            "id.resp_p": s.dport,
            "proto": PROTO_NAMES.get(s.proto, str(s.proto)),
            "first_ts": s.first_ts,
            "last_ts": s.last_ts,
            "end_reason": reason,
        }
        if s.identity is not None:
            details["identity"] = s.identity
        if s.loss:
            details["loss_events"] = s.loss  # the kernel dropped copies meanwhile
        failed = bool(s.errors)
        if failed:
            details["errors"] = list(s.errors)
        self.announce(
            AuditEvent(
                "session_recorded",
                "failure" if failed or s.loss else "success",
                f"{s.conduit}: {s.writer.path}",
                actor=s.identity,
                details=details,
            )
        )


def _create(stem: Path, part: int) -> PcapWriter:
    name = stem.name + (f".{part}" if part else "") + ".pcap"
    return PcapWriter(stem.with_name(name))
