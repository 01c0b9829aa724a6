"""The flow recorder: conntrack and NFLOG in, attributed records out, nothing lost silently.

policyd owns one `FlowRecorder` per gateway and drives it from its asyncio loop:

    recorder = FlowRecorder(topology, "plant-a", [JsonLinesFile(path), Syslog5424(addr)])
    await recorder.start()
    recorder.emit_audit(AuditEvent("daemon_start"))
    ...                              # recorder.update_topology(new) after a reload
    recorder.live.subscribe()        # async iterator for the control API's stream
    recorder.status()                # counters, losses, buffers, sinks
    await recorder.stop()            # drains, flushes and closes the sinks

Loss handling (issue 5, item 4): every netlink socket gets a large buffer; the
kernel's per-socket drop counter is read whenever recv reports ENOBUFS and on every
tick, and each increase becomes a `loss` record and a status counter. A lost
conntrack event triggers a resync from a table dump, so flows that are still open
are known again (their start is re-emitted with `resync: true`).

Session recording (`RecorderConfig.sessions_dir`): a fourth socket reads NFLOG group 8,
the copies of `record: true` conduits' packets, into per-flow pcap files
(policyd/flowlog/sessions.py); conntrack's DESTROY events end them, and their loss
is counted and reported under its own source name, "nflog-record".
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from policyd.conventions import (
    MARK_TAG,
    MARK_TAG_MASK,
    NFLOG_GROUP,
    NFLOG_RECORD_GROUP,
    RECORD_SNAPLEN,
)
from policyd.flowlog import conntrack, nflog, sessions
from policyd.flowlog.attribution import Attributor
from policyd.flowlog.auditchain import AuditChain
from policyd.flowlog.records import (
    AuditEvent,
    Record,
    audit_record,
    deny_record,
    flow_record,
    loss_record,
)
from policyd.flowlog.sinks import LiveStream, Sink
from policyd.flowlog.stream import ReportsLoss
from policyd.flowlog.sysctl import read_sysctl, write_sysctl
from policyd.nfnetlink import DEFAULT_RCVBUF, MalformedNetlink, NfnlSocket, in_netns, is_enobufs
from topology.model import Topology

CT_NEW, CT_DESTROY, NFLOG = "conntrack-new", "conntrack-destroy", "nflog"
RECORD = "nflog-record"  # session-recording copies (group 8)
SYSCTLS = {"net/netfilter/nf_conntrack_acct": "1", "net/netfilter/nf_conntrack_timestamp": "1"}


@dataclass(frozen=True)
class RecorderConfig:
    """Knobs, with defaults that meet the issue's targets on the reference machine."""

    netns: str | None = None  # None: the namespace policyd runs in (the gateway's)
    rcvbuf: int = DEFAULT_RCVBUF  # per conntrack socket
    nflog_rcvbuf: int = 8 * 1024 * 1024
    nflog_group: int = NFLOG_GROUP
    flow_starts: bool = True  # a `flow` record at start as well as at end
    kernel_mark_filter: bool = True  # the kernel drops events of entries zonegate did not mark
    deny_window: float = 10.0  # repeats of one denied 5-tuple within this are counted only
    tune_sysctls: bool = True  # turn on conntrack accounting and timestamps
    read_batch: int = 2048  # datagrams per wakeup before yielding to other tasks
    tick: float = 1.0  # drop-counter poll, flush and housekeeping interval
    resync_grace: float = 3.0  # how long a flow missing from a dump may still end normally
    sessions_dir: Path | None = None  # pcap per recorded flow; None: no session recording
    record_group: int = NFLOG_RECORD_GROUP
    record_rcvbuf: int = DEFAULT_RCVBUF
    session_idle: float = sessions.IDLE  # seconds without a packet that finish a file
    session_max_bytes: int = sessions.MAX_BYTES  # then the flow goes on in NAME.1.pcap
    max_open_flows: int = 1_000_000  # open-flow table bound; past it the oldest are dropped
    resync_every: float = 300.0  # a table dump now and then, so lost ends cannot leak


# conntrack reuses its 32-bit ids; with the original tuple a reused id is another flow.
FlowKey = tuple[int, int, str, int, str, int]


def flow_key(ev: conntrack.CtEvent) -> FlowKey:
    return (ev.ct_id, ev.proto, ev.src, ev.sport, ev.dst, ev.dport)


class FlowRecorder:
    """Reads one gateway's conntrack and NFLOG events and writes attributed records."""

    def __init__(
        self,
        topology: Topology,
        gateway: str,
        sinks: Iterable[Sink] = (),
        config: RecorderConfig | None = None,
        chain: AuditChain | None = None,
    ) -> None:
        self.config = config or RecorderConfig()
        self.chain = chain or AuditChain()  # every audit record is sealed into it
        self.attr = Attributor(topology, gateway)
        self.gateway = gateway
        self.sinks: list[Sink] = list(sinks)
        live = next((s for s in self.sinks if isinstance(s, LiveStream)), None)
        if live is None:
            live = LiveStream(gateway)
            self.sinks.append(live)
        self.live: LiveStream = live
        self.counts = dict.fromkeys(
            ("flow_start", "flow_end", "deny", "audit", "loss", "modbus"), 0
        )
        self.counts |= {"deny_repeats": 0, "ignored_unmarked": 0, "resync_recovered": 0}
        self.lost = dict.fromkeys((CT_NEW, CT_DESTROY, NFLOG), 0)
        self.sessions: sessions.SessionRecorder | None = None
        if self.config.sessions_dir is not None:
            self.lost[RECORD] = 0
            self.sessions = sessions.SessionRecorder(
                self.config.sessions_dir,
                lambda: self.attr,
                self._announce,
                self.config.session_idle,
                self.config.session_max_bytes,
            )
        self.sink_lost: dict[str, int] = {}  # per sink name: records a sink could not deliver
        self.overruns = 0
        self.resyncs = 0
        self.forgotten = 0
        self.sysctls: dict[str, str | None] = {}
        self.errors: list[str] = []
        self._socks: dict[str, NfnlSocket] = {}
        self._open: dict[FlowKey, float] = {}  # start time of flows not yet ended (oldest first)
        self._absent: dict[FlowKey, float] = {}  # deadline: missing from the last dump
        self.evicted = 0  # open flows dropped from the table at its bound
        # ct id -> (policy reason, conduit name) of entries policyd deletes
        self._ending: dict[int, tuple[str, str | None]] = {}
        self._denied: dict[tuple[int, str, str, int, int], float] = {}
        self._buf = bytearray(65536)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._resync_task: asyncio.Task[None] | None = None
        self._resync_again = False
        self._stop = asyncio.Event()
        self._stopping = False
        self.started_at: float | None = None

    # -- lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        """Open the sockets (in the gateway's namespace) and start reading."""
        self._loop = asyncio.get_running_loop()
        cfg = self.config
        with in_netns(cfg.netns):
            if cfg.tune_sysctls:
                for path, value in SYSCTLS.items():
                    write_sysctl(path, value)
            self.sysctls = {p.rsplit("/", 1)[1]: read_sysctl(p) for p in SYSCTLS}
            try:
                mark = (MARK_TAG, MARK_TAG_MASK) if cfg.kernel_mark_filter else None
                self._socks[CT_DESTROY] = conntrack.open_event_socket(True, cfg.rcvbuf, mark)
                if cfg.flow_starts:  # without start records NEW events are not needed
                    self._socks[CT_NEW] = conntrack.open_event_socket(False, cfg.rcvbuf, mark)
                self._socks[NFLOG] = nflog.open_nflog_socket(cfg.nflog_group, cfg.nflog_rcvbuf)
                if self.sessions is not None:
                    self._socks[RECORD] = nflog.open_nflog_socket(
                        cfg.record_group,
                        cfg.record_rcvbuf,
                        copy_range=RECORD_SNAPLEN,
                        batch=16,  # the rule's queue-threshold sets the real figure
                        flush_cs=10,  # a partial batch waits at most 0.1 s
                        nlbufsiz=32 * 1024,  # one batch fits the 64 KiB read buffer
                    )
            except BaseException:
                self._close_sockets()
                raise
        for kind, sock in self._socks.items():
            self._loop.add_reader(sock.fileno(), self._drain, kind)
        self.started_at = time.time()
        self._spawn(self._ticker())
        self._request_resync()  # learn the flows that were open before we started

    async def stop(self) -> None:
        """Read what is queued, account for drops, flush and close every sink."""
        if self._loop is None:
            return
        self._stopping = True
        for sock in self._socks.values():
            self._loop.remove_reader(sock.fileno())
        for task in [*self._tasks, self._resync_task]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for kind in list(self._socks):
            while self._drain(kind) >= self.config.read_batch:
                pass  # read everything queued: what is unread at close would be lost silently
        self._poll_drops()
        self._close_sockets()
        if self.sessions is not None:
            self.sessions.close_all()
        for sink in self.sinks:
            sink.close()
        self._loop = None
        self._stop.set()

    async def run(self) -> None:
        """Start and record until `request_stop()` is called (or the task is cancelled)."""
        await self.start()
        try:
            await self._stop.wait()
        finally:
            await self.stop()

    def request_stop(self) -> None:
        self._stop.set()

    async def stop_requested(self) -> None:
        """Wait until `request_stop()` (e.g. from a signal handler) is called."""
        await self._stop.wait()

    def update_topology(self, topology: Topology) -> None:
        """Attribute from now on with a reloaded topology (after a policy apply)."""
        self.attr = Attributor(topology, self.gateway)

    # -- records ------------------------------------------------------------------

    def ending(self, reasons: dict[int, tuple[str, str | None]]) -> None:
        """Conntrack entries policyd is about to delete, with why (their end records)."""
        if len(self._ending) > 100_000:  # deletions whose DESTROY never came
            self._ending.clear()
        self._ending.update(reasons)

    def emit_audit(self, event: AuditEvent) -> None:
        """Write an audit event to every sink (policy applied/rejected, daemon, grants)."""
        self._emit(self._sealed(event))
        self._flush()

    def emit_transaction(self, record: Record) -> None:
        """A transaction record of the OT tier (`modbus`), written where flows go.

        Synchronous: there is no queue between the tier and the sinks to overflow."""
        self._emit(record)

    def _emit(self, record: Record) -> None:
        kind = record.kind
        if kind == "flow":
            self.counts["flow_end" if "ts_end" in record.data else "flow_start"] += 1
        else:
            self.counts[kind] += 1
        for sink in self.sinks:
            sink.write(record)

    def _announce(self, event: AuditEvent) -> None:
        """A finished recording, written where the flow records go (flushed on tick)."""
        self._emit(self._sealed(event))

    def _sealed(self, event: AuditEvent) -> Record:
        record = audit_record(self.gateway, event)
        self.chain.seal(record.data)
        return record

    def _flush(self) -> None:
        for sink in self.sinks:
            sink.flush()

    # -- reading ------------------------------------------------------------------

    def _drain(self, kind: str) -> int:
        """Read up to `read_batch` datagrams, handle them, flush; returns how many."""
        sock = self._socks.get(kind)
        if sock is None:
            return 0
        buf = self._buf
        handle: Callable[[bytearray, int], None] = {
            NFLOG: self._handle_nflog,
            RECORD: self._handle_record,
        }.get(kind, self._handle_ct)
        count = 0
        for count in range(1, self.config.read_batch + 1):
            try:
                n = sock.recv_into(buf)
            except OSError as exc:
                if is_enobufs(exc):
                    self._overrun(kind)
                    continue
                self.errors.append(f"{kind}: {exc}")
                break
            if n == 0:
                count -= 1
                break
            try:
                handle(buf, n)
            except MalformedNetlink as exc:
                self.errors.append(f"{kind}: {exc}")
        self._flush()
        return count

    def _handle_ct(self, buf: bytearray, n: int) -> None:
        attr = self.attr
        for ev in conntrack.decode_datagram(buf, n):
            if not attr.is_zonegate_mark(ev.mark):
                self.counts["ignored_unmarked"] += 1
                continue
            now = time.time()
            key = flow_key(ev)
            if ev.destroy:
                opened = self._open.pop(key, None)
                self._absent.pop(key, None)
                start = ev.start_ns / 1e9 if ev.start_ns else (opened or now)
                end = ev.stop_ns / 1e9 if ev.stop_ns else now
                reason, former = self._ending.pop(ev.ct_id, (None, None))
                rec = flow_record(
                    attr, ev, "end", start, end, ended_by=reason, former_conduit=former
                )
                self._emit(rec)
                if self.sessions is not None:
                    self.sessions.ended(ev.mark, ev.proto, ev.src, ev.sport, ev.dst, ev.dport)
            elif key not in self._open:
                start = ev.start_ns / 1e9 if ev.start_ns else now
                self._remember(key, start)
                if self.config.flow_starts:
                    self._emit(flow_record(attr, ev, "start", start))

    def _remember(self, key: FlowKey, start: float) -> None:
        """Add an open flow; at the bound the oldest goes (counted) and a resync follows."""
        self._open[key] = start
        if len(self._open) > self.config.max_open_flows:
            oldest = next(iter(self._open))
            del self._open[oldest]
            self._absent.pop(oldest, None)
            self.evicted += 1
            self._request_resync()

    def _handle_nflog(self, buf: bytearray, n: int) -> None:
        for pkt in nflog.decode_datagram(buf, n):
            key = (pkt.proto, pkt.src, pkt.dst, pkt.sport, pkt.dport)
            first = self._denied.get(key)
            if first is not None and pkt.ts - first < self.config.deny_window:
                self.counts["deny_repeats"] += 1
                continue
            self._denied[key] = pkt.ts
            self._emit(deny_record(self.attr, pkt))

    def _handle_record(self, buf: bytearray, n: int) -> None:
        assert self.sessions is not None
        for pkt in nflog.decode_copies(buf, n):
            self.sessions.packet(pkt)

    # -- loss and resync ----------------------------------------------------------

    def _overrun(self, kind: str) -> None:
        self.overruns += 1
        self._account(kind, self._socks[kind].new_drops())

    def _poll_drops(self) -> None:
        for kind, sock in self._socks.items():
            self._account(kind, sock.new_drops())
        for sink in self.sinks:
            if isinstance(sink, ReportsLoss) and (lost := sink.take_lost()) > 0:
                total = self.sink_lost[sink.name] = self.sink_lost.get(sink.name, 0) + lost
                self._emit(loss_record(self.gateway, sink.name, lost, total))

    def _account(self, kind: str, lost: int) -> None:
        if lost <= 0:
            return
        self.lost[kind] += lost
        extra = {"open_flows": len(self._open)}
        if kind == RECORD and self.sessions is not None:
            self.sessions.lost()
            extra = {"open_sessions": len(self.sessions.open)}
        self._emit(loss_record(self.gateway, kind, lost, self.lost[kind], extra))
        if kind in (CT_NEW, CT_DESTROY):
            self._request_resync()

    def _request_resync(self) -> None:
        if self._loop is None or self._stopping:
            return
        if self._resync_task is not None and not self._resync_task.done():
            self._resync_again = True
            return
        self._resync_task = self._loop.create_task(self._resync())

    def _dump(self) -> list[conntrack.CtEvent]:
        with in_netns(self.config.netns):
            return conntrack.dump()

    async def _resync(self) -> None:
        """Re-learn open flows from a table dump after events were lost (or at start)."""
        while True:
            self._resync_again = False
            taken = time.time()
            assert self._loop is not None
            try:
                entries = await self._loop.run_in_executor(None, self._dump)
            except (OSError, MalformedNetlink) as exc:
                self.errors.append(f"resync: {exc}")
                return
            self.resyncs += 1
            seen = set()
            for ev in entries:
                if not self.attr.is_zonegate_mark(ev.mark):
                    continue
                key = flow_key(ev)
                seen.add(key)
                if key not in self._open:
                    start = ev.start_ns / 1e9 if ev.start_ns else taken
                    self._remember(key, start)
                    self.counts["resync_recovered"] += 1
                    self._emit(flow_record(self.attr, ev, "start", start, resync=True))
            deadline = time.monotonic() + self.config.resync_grace
            for key, start in self._open.items():
                if key not in seen and start < taken:
                    self._absent.setdefault(key, deadline)
            self._flush()
            if not self._resync_again:
                return

    # -- housekeeping -------------------------------------------------------------

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _ticker(self) -> None:
        next_resync = time.monotonic() + self.config.resync_every
        while True:
            await asyncio.sleep(self.config.tick)
            self._poll_drops()
            now = time.monotonic()
            if now >= next_resync:
                next_resync = now + self.config.resync_every
                self._request_resync()
            for key, deadline in list(self._absent.items()):
                if deadline <= now:
                    del self._absent[key]
                    if self._open.pop(key, None) is not None:
                        self.forgotten += 1
            if self.sessions is not None:
                self.sessions.tick()
            horizon = time.time() - self.config.deny_window
            for tup, first in list(self._denied.items()):
                if first < horizon:
                    del self._denied[tup]
            self._flush()

    def _close_sockets(self) -> None:
        for kind, sock in self._socks.items():
            if kind in (NFLOG, RECORD):
                group = self.config.nflog_group if kind == NFLOG else self.config.record_group
                nflog.close_nflog_socket(sock, group)
            else:
                sock.close()
        self._socks.clear()

    def status(self) -> dict[str, Any]:
        """Counters for `status` and metrics; reading it also polls the drop counters."""
        if self._socks:
            self._poll_drops()
        return {
            "gateway": self.gateway,
            "running": bool(self._socks),
            "started_at": self.started_at,
            "netns": self.config.netns,
            "counts": dict(self.counts),
            "lost": dict(self.lost),
            "lost_records": self.lost[CT_DESTROY] + self.lost[NFLOG],
            "lost_recording_packets": self.lost.get(RECORD, 0),
            "sink_lost": dict(self.sink_lost),
            "sessions": self._sessions_status(),
            "overruns": self.overruns,
            "resyncs": self.resyncs,
            "open_flows": len(self._open),
            "forgotten_open_flows": self.forgotten,
            "evicted_open_flows": self.evicted,
            "rcvbuf": {k: s.rcvbuf for k, s in self._socks.items()},
            "sysctls": dict(self.sysctls),
            "errors": self.errors[-10:],
            "sinks": {s.name: s.stats() for s in self.sinks},
        }

    def _sessions_status(self) -> dict[str, Any] | None:
        if self.sessions is None:
            return None
        s = self.sessions
        return {"dir": str(s.directory), "open": len(s.open), **s.counts, "errors": s.errors[-5:]}
