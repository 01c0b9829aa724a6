"""The policy daemon: keep one gateway's kernel rules equal to the topology.

Applies at start; reloads when the files change (polled), on SIGHUP and at the
ruleset's `next_change` (a DST switch, an identity becoming valid). A broken new file
is rejected with every error logged and audited, and the last good policy stays in
force. A change that only moves identities in or out of conduits is applied as
set-element adds/deletes. It also records flows (conntrack + NFLOG), serves the
control API and keeps the grant book. On SIGTERM/SIGINT the ruleset stays in place
(fail closed) unless --flush-on-exit: grants keep expiring in the kernel.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import signal
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import topology
from policyd.api.app import serve
from policyd.api.context import ControlState
from policyd.api.guard import Guard
from policyd.api.metrics import Sample, exposition, gateway_samples
from policyd.compiler import (
    CompileError,
    CompileOptions,
    Ruleset,
    compile_ruleset,
    deny_all_ruleset,
)
from policyd.console.events import Broadcaster
from policyd.enforcer import KernelGrants, arrived_via_tunnel
from policyd.flowlog import conntrack
from policyd.flowlog.auditchain import AuditChain
from policyd.flowlog.exports import ExportOptions, build_sinks
from policyd.flowlog.recorder import FlowRecorder, RecorderConfig
from policyd.flowlog.records import AuditEvent
from policyd.flowlog.sinks import JsonLinesFile, Sink
from policyd.grant_service import GrantService
from policyd.grant_store import GrantStore
from policyd.grants import GrantBook
from policyd.kernel import NftError, NftHandle, addresses
from policyd.notify import NOTIFY_EVENTS, Notifier, destinations
from policyd.ot import routing
from policyd.ot.tier import DEFAULT_OUTSTANDING, OtTier
from policyd.render import canonical
from policyd.session_end import Ended, end_of_source, not_admitted
from policyd.session_end import delete as delete_flows
from policyd.totp import TotpStore
from topology.diagnostics import TopologyError
from topology.files import topology_files
from topology.model import Topology

log = logging.getLogger("policyd")
FULL_DRIFT_EVERY = 10  # every 10th periodic check compares even if no foreign commit was seen


def fingerprint(path: Path) -> str:
    """A hash of every topology file's name and content (what a reload would read)."""
    files = topology_files(path).files  # the loader's own rule, subdirectories included
    h = hashlib.sha256()
    for f in files:
        h.update(str(f).encode())
        try:
            h.update(f.read_bytes())
        except OSError:
            h.update(b"<unreadable>")
    return h.hexdigest()


def structure(rs: Ruleset) -> str:
    """The ruleset without the members of identity sets: equal means a sync suffices."""
    member_sets = {
        p.identity_set for p in rs.conduits.values() if p.identity_set and not p.needs_grant
    }
    out = []
    for o in canonical(rs.objects):
        body = o.get("set")
        if body and body["name"] in member_sets:
            o = {"set": {k: v for k, v in body.items() if k != "elem"}}
        out.append(o)
    return json.dumps(out, sort_keys=True)


@dataclass
class Settings:
    topology: Path
    gateway: str
    options: CompileOptions
    poll: float = 1.0
    flush_on_exit: bool = False
    api_socket: Path | None = None  # None: no control API
    api_listen: str | None = None  # address for remote identities (through tunnels)
    api_port: int = 9780
    flow_log: Path | None = None  # None: no flow recorder
    flow_starts: bool = True  # False: end records only, and the kernel sends no NEW events
    exports: ExportOptions = field(default_factory=ExportOptions)  # syslog, IPFIX
    sessions: Path | None = None  # pcap per flow of `record: true` conduits; None: off
    state_dir: Path | None = None
    tunnel_prefixes: tuple[str, ...] = field(default=("zg",))
    ot_outstanding: int = DEFAULT_OUTSTANDING  # requests per connection waiting for a device
    local_users: dict[int, frozenset[str]] = field(default_factory=dict)  # uid -> identities
    operators: frozenset[str] = frozenset()  # identities that may read status and metrics
    reconcile_every: float = 30.0  # seconds between kernel/book reconciliations
    drift_check: float = 30.0  # seconds between comparisons of kernel and compiled table


class Daemon:
    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self.nft = NftHandle()
        self.current: Ruleset | None = None
        self.topology: Topology | None = None
        self.seen = ""
        self.wake = asyncio.Event()
        self.stop = False
        self.hup = False
        self.recorder: FlowRecorder | None = None
        self.grants: GrantService | None = None
        self.guard = Guard()
        self.events = Broadcaster()  # grant events for open consoles
        self.notifier = Notifier(on_failure=self._notify_failed)
        self.topology_moved = False  # the grant service has not seen the new topology yet
        self.applied_at: datetime | None = None
        self.ot: OtTier | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.installed: Ruleset | None = None  # what the kernel should hold (may be deny-all)
        self.previous: Ruleset | None = None  # the policy before the last apply (flow names)
        self.pending: list[AuditEvent] = []  # audit events before the recorder runs
        self.runners: list[Any] = []
        self.started = False
        self.last_drift_check = 0.0

    # -- policy -----------------------------------------------------------------------

    def compile(self) -> Ruleset | None:
        """Load and compile; on any error log and audit all of it and return None."""
        try:
            loaded = topology.load(self.s.topology)
        except TopologyError as e:
            errors = [str(d) for d in e.diagnostics]
            for line in errors:
                log.error("%s", line)
            log.error("rejected %s: %d problem(s)", self.s.topology, len(errors))
            self.audit(AuditEvent("policy_rejected", "failure", "topology has errors", errors))
            return None
        except OSError as e:
            log.error("rejected %s: %s", self.s.topology, e)
            self.audit(AuditEvent("policy_rejected", "failure", str(e), [str(e)]))
            return None
        for d in loaded.diagnostics:
            log.warning("%s", d)
        try:
            rs = compile_ruleset(
                loaded.topology, self.s.gateway, now=datetime.now(UTC), options=self.s.options
            )
        except CompileError as e:
            log.error("rejected %s: %s", self.s.topology, e)
            self.audit(AuditEvent("policy_rejected", "failure", str(e), [str(e)]))
            return None
        for note in rs.notes:
            log.warning("%s", note)
        self.topology = loaded.topology
        return rs

    def enforce(self, rs: Ruleset) -> bool:
        try:
            if self.current is not None and structure(rs) == structure(self.current):
                added, deleted = self.nft.sync_members(rs)
                log.info("membership synced: %d added, %d deleted (no reload)", added, deleted)
                details: dict[str, Any] = {"membership_added": added, "membership_deleted": deleted}
            else:
                kept = self.nft.apply_ruleset(rs)
                rules = sum(1 for o in rs.objects if "rule" in o)
                log.info(
                    "applied ruleset for %s: %d rules (%d in hook chains), %d conduits, "
                    "%d grants kept; next change %s",
                    rs.gateway,
                    rules,
                    rs.hook_rule_count(),
                    len(rs.conduits),
                    kept,
                    rs.next_change.isoformat() if rs.next_change else "none",
                )
                details = {"rules": rules, "conduits": len(rs.conduits), "grants_kept": kept}
        except NftError as e:
            log.error("%s; keeping the last good policy", e)
            self.audit(AuditEvent("policy_rejected", "failure", str(e), [str(e)]))
            return False
        self.previous, self.current, self.installed = self.current, rs, rs
        self.applied_at = datetime.now(UTC)
        self.audit(AuditEvent("policy_applied", details={"file": str(self.s.topology), **details}))
        self._topology_changed()
        return True

    def _topology_changed(self) -> None:
        assert self.topology is not None
        if self.recorder is not None:
            self.recorder.update_topology(self.topology)
        if self.ot is not None:
            self.ot.update_topology(self.topology)
        self.topology_moved = True  # the loop hands it to the grant service (async)

    def reload(self, why: str) -> None:
        log.info("reload (%s)", why)
        rs = self.compile()
        if rs is None:
            log.error("keeping the last good policy in force")
            return
        if self.enforce(rs):
            self.sweep(why)

    # -- ending sessions (cleanup: the kernel already drops their next packet) -----------

    def _grant_elements(self, set_name: str) -> set[Any]:
        try:
            return addresses(self.nft.set_elements(set_name))
        except NftError:
            return set()

    def sweep(self, why: str) -> None:
        """End the open flows the current policy no longer admits (conntrack cleanup)."""
        if self.current is None or self.topology is None:
            return
        try:
            flows = conntrack.dump()
        except OSError as e:
            log.error("conntrack dump failed: %s", e)
            return
        now = datetime.now(UTC)
        self.end_flows(
            not_admitted(flows, self.current, self.topology, now, self._grant_elements), why
        )

    def end_grant_flows(self, conduit: str, source: str, reason: str) -> None:
        """The flows of one grant that ended (revoked or expired)."""
        plan = self.current.conduits.get(conduit) if self.current else None
        if plan is None:
            return
        addr: Any = plan.identities.get(source) or plan.zones.get(source)
        if addr is None:
            return
        self.end_flows_from(plan.mark, addr, reason, f"{source} on {conduit}")

    def end_flows_from(self, mark: int, source: Any, reason: str, why: str) -> int:
        """End the flows of one conduit (by mark) from one address or network."""
        return end_of_source(mark, source, reason, why, self._tell_recorder)

    def end_flows(self, ended: list[Ended], why: str) -> int:
        return delete_flows(ended, why, self._tell_recorder)

    def _tell_recorder(self, ended: list[Ended]) -> None:
        """The reasons (and conduit names, a removed conduit's too) for the end records;
        and the OT tier, whose proxied connections of those flows end with them."""
        if self.ot is not None and self.loop is not None:
            legs = [(e.flow.src, e.flow.sport, e.flow.dst, e.flow.dport) for e in ended]
            self.loop.call_soon_threadsafe(self.ot.end, legs)  # may run in a worker thread
        if self.recorder is None:
            return
        names = {p.mark: p.name for p in self.current.conduits.values()} if self.current else {}
        if self.previous is not None:
            names = {p.mark: p.name for p in self.previous.conduits.values()} | names
        self.recorder.ending({e.flow.ct_id: (e.reason, names.get(e.flow.mark)) for e in ended})

    # -- fail closed and drift ---------------------------------------------------------

    def fail_closed(self) -> None:
        """No good policy at start: keep a running zonegate table (the last good policy
        of a previous run), else install the deny-all table; keep running either way."""
        running = self.nft.list_table()
        if running is not None and any("hook" in o.get("chain", {}) for o in running):
            log.error("no good policy: keeping the running table (last good policy)")
            self.audit(AuditEvent("fail_closed", "failure", "kept the running table"))
            return
        rs = deny_all_ruleset(self.s.gateway, now=datetime.now(UTC), options=self.s.options)
        try:
            self.nft.apply_ruleset(rs)
        except NftError as e:
            log.error("could not install the deny-all table: %s", e)
            self.audit(AuditEvent("fail_closed", "failure", f"deny-all table rejected: {e}"))
            return
        self.installed = rs
        log.error(
            "no good policy: deny-all table installed (management: ssh); waiting for a good file"
        )
        self.audit(
            AuditEvent(
                "fail_closed",
                "failure",
                "deny-all table installed",
                details={"file": str(self.s.topology)},
            )
        )

    def check_drift(self, why: str, full: bool = True) -> None:
        """Compare the kernel's table with the one that should run; repair and audit.

        Without `full`, the comparison (a listing of the table, ~1 s at 100k identities)
        runs only when the ruleset generation moved since policyd's own last commit:
        nothing else can have changed the table otherwise."""
        self.last_drift_check = asyncio.get_running_loop().time()
        want = self.installed
        if want is None:
            return
        if not full and not self.nft.changed_by_others():
            return
        try:
            diff = self.nft.drift(want)
        except NftError as e:
            log.error("drift check failed: %s", e)
            return
        if not diff:
            return
        log.warning("policy drift (%s): the kernel's table differs; repairing", why)
        if want is self.current:
            want = self.compile() or want  # fresh element timeouts
        try:
            self.nft.apply_ruleset(want)
        except NftError as e:
            log.error("drift repair failed: %s", e)
            self.audit(AuditEvent("policy_drift", "failure", str(e), details={"diff": diff[:8000]}))
            return
        if self.current is not None:
            self.current = want
        self.installed = want
        self.audit(
            AuditEvent(
                "policy_drift", "success", f"repaired ({why})", details={"diff": diff[:8000]}
            )
        )

    # -- audit, grants, API ---------------------------------------------------------------

    def audit(self, event: AuditEvent) -> None:
        if self.recorder is not None:
            self.recorder.emit_audit(event)
        else:
            log.info("audit %s %s %s", event.action, event.outcome, event.message)
            if self.s.flow_log is not None:
                self.pending.append(event)  # written once the recorder starts
        if event.action in NOTIFY_EVENTS and self.topology is not None:
            grant = dict(event.details)
            self.events.publish({"action": event.action, "grant": grant})
            hooks = destinations(self.topology, str(grant.get("conduit")), self._notify_failed)
            data = {"grant": grant, "by": event.actor, "gateway": self.s.gateway}
            self.notifier.notify(event.action, data, hooks)

    def _notify_failed(self, action: str, details: dict[str, Any]) -> None:
        """A webhook that could not be told is itself audited (never notified again)."""
        failure = AuditEvent(action, "failure", details.get("reason", ""), details=details)
        if self.recorder is not None:
            self.recorder.emit_audit(failure)
        log.warning("%s: %s", action, details)

    async def follow_grants(self) -> None:
        """Let the grant service end what a new topology invalidates, then reconcile."""
        if self.grants is not None and self.topology_moved and self.topology is not None:
            self.topology_moved = False
            await self.grants.topology_changed(self.topology)

    def status(self) -> dict[str, Any]:
        rs = self.current
        return {
            "policy": {
                "file": str(self.s.topology),
                "applied_at": self.applied_at.isoformat() if self.applied_at else None,
                "conduits": len(rs.conduits) if rs else 0,
                "hook_rules": rs.hook_rule_count() if rs else 0,
                "next_change": rs.next_change.isoformat() if rs and rs.next_change else None,
            },
            "flows": self.recorder.status() if self.recorder else None,
            "ot": self.ot.stats.as_dict() if self.ot else None,
            "api": self.guard.stats(),
        }

    def samples(self) -> list[Sample]:
        return gateway_samples(self.current is not None, self.grants, self.guard, self.recorder)

    async def _start_recorder(self) -> None:
        assert self.topology is not None
        if self.s.flow_log is None:
            return
        sinks: list[Sink] = [JsonLinesFile(self.s.flow_log, gateway=self.s.gateway)]
        sinks += build_sinks(self.s.exports, self.s.gateway)
        config = RecorderConfig(sessions_dir=self.s.sessions, flow_starts=self.s.flow_starts)
        chain = AuditChain.resume(self.s.flow_log)
        self.recorder = FlowRecorder(self.topology, self.s.gateway, sinks, config, chain)
        await self.recorder.start()
        for event in self.pending:
            self.recorder.emit_audit(event)
        self.pending.clear()
        log.info("recording flows to %s", self.s.flow_log)
        if self.s.sessions is not None:
            log.info("recording sessions of record: true conduits to %s", self.s.sessions)

    async def _start_ot(self) -> bool:
        """The OT transaction tier. Until it listens, the ruleset's steering sends Modbus
        conduit flows nowhere (dropped: fail closed), never around it."""
        port = self.s.options.ot_port
        if port is None:
            return True
        assert self.topology is not None
        emit = self.recorder.emit_transaction if self.recorder else lambda _r: None
        self.ot = OtTier(
            self.topology, self.s.gateway, emit, port=port, max_outstanding=self.s.ot_outstanding
        )
        try:
            routing.install()
            await self.ot.start()
        except (OSError, routing.RoutingError) as e:
            log.error("OT tier cannot start (Modbus conduits carry nothing): %s", e)
            self.audit(AuditEvent("ot_tier_down", "failure", f"OT tier: {e}", [str(e)]))
            self.ot = None
            return False
        return True

    async def _start_api(self) -> list[Any]:
        assert self.topology is not None
        store = None
        if self.s.state_dir is not None:
            store = GrantStore(self.s.state_dir / f"grants-{self.s.gateway}.json")
        kernel_grants = KernelGrants(self)
        self.grants = GrantService(GrantBook(self.topology), kernel_grants, self.audit, store)
        await self.grants.start()
        self.topology_moved = True  # end what changed while policyd was down
        await self.follow_grants()
        if self.s.api_socket is None:
            return []
        prefixes = self.s.tunnel_prefixes
        state = ControlState(
            service=self.grants,
            gateway=self.s.gateway,
            status=self.status,
            metrics=exposition(self.samples),
            via_tunnel=lambda a: arrived_via_tunnel(a, prefixes),
            live=self.recorder.live if self.recorder else None,
            local_users=self.s.local_users,
            operators=self.s.operators,
            totp=TotpStore(self.s.state_dir / "totp") if self.s.state_dir else None,
            audit=self.audit,
            events=self.events,
            flow_log=self.s.flow_log,
            sessions=kernel_grants.sessions,
        )
        self.notifier.start()
        runners = await serve(
            state, self.s.api_socket, self.s.api_listen, self.s.api_port, self.guard
        )
        where = f"{self.s.api_socket}" + (
            f" and {self.s.api_listen}:{self.s.api_port}" if self.s.api_listen else ""
        )
        log.info("control API on %s", where)
        return runners

    # -- main loop ------------------------------------------------------------------------

    def _on_signal(self, signum: int) -> None:
        if signum == signal.SIGHUP:
            self.hup = True
        else:
            self.stop = True
        self.wake.set()

    async def run(self) -> int:
        loop = self.loop = asyncio.get_running_loop()
        for s in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(s, self._on_signal, s)
        self.seen = fingerprint(self.s.topology)
        self.audit(AuditEvent("daemon_start", message=f"policyd for {self.s.gateway}"))
        rs = self.compile()
        if rs is None or not self.enforce(rs):
            self.fail_closed()
        else:
            self.sweep("start")  # flows a previous policy admitted
        try:
            await self._start_services()
            await self._loop()
        finally:
            for runner in self.runners:
                await runner.cleanup()
            await self.notifier.stop()
            if self.s.flush_on_exit:
                self.nft.flush_table()
                log.info("exiting: table flushed (--flush-on-exit)")
                self.audit(AuditEvent("daemon_stop", message="table flushed (--flush-on-exit)"))
            else:
                log.info("exiting: ruleset left in place (fail closed)")
                self.audit(AuditEvent("daemon_stop", message="ruleset left in place"))
            if self.ot is not None:
                await self.ot.stop()
            if self.recorder is not None:
                await self.recorder.stop()
        return 0

    async def _start_services(self) -> None:
        """Recorder, grants and API need a good topology: started with the first good
        policy (at once, or after failing closed at start)."""
        if self.started or self.current is None:
            return
        self.started = True
        await self._start_recorder()
        await self._start_ot()  # if it cannot start, steered Modbus conduits carry nothing
        self.runners = await self._start_api()

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        next_reconcile = loop.time() + self.s.reconcile_every
        self.last_drift_check = loop.time()
        checks = 0
        while not self.stop:
            timeout = self.s.poll
            if self.current and self.current.next_change:
                left = (self.current.next_change - datetime.now(UTC)).total_seconds()
                timeout = max(0.0, min(timeout, left))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout)
            self.wake.clear()
            if self.stop:
                break
            if self.grants is not None:
                await self.grants.tick()
                if loop.time() >= next_reconcile:
                    next_reconcile = loop.time() + self.s.reconcile_every
                    await self.grants.reconcile()
            if self.hup:
                self.hup = False
                self.seen = fingerprint(self.s.topology)
                self.reload("SIGHUP")
                self.check_drift("SIGHUP")
                await self._start_services()
                await self.follow_grants()
                continue
            now_fp = fingerprint(self.s.topology)
            if now_fp != self.seen:
                self.seen = now_fp
                self.reload("file changed")
                await self.follow_grants()
            elif (
                self.current
                and self.current.next_change
                and datetime.now(UTC) >= self.current.next_change
            ):
                self.reload("scheduled change")
                await self.follow_grants()
            elif loop.time() - self.last_drift_check >= self.s.drift_check:
                checks += 1
                self.check_drift("periodic check", full=checks % FULL_DRIFT_EVERY == 0)
                self.sweep("periodic check")
            await self._start_services()
