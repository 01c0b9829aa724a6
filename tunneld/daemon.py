"""The tunneld daemon: topology -> WireGuard peers, handshakes over TCP, status socket.

It is the I/O shell around the sans-I/O `Endpoint`: it owns the TCP listener and
connections (2-byte length framing, see docs/handshake.md section 11), the real clock
and randomness, the WireGuard interface, and the status socket. It barely cares what
kind of node it runs: a gateway's plan comes from the topology (`--node SITE`), a
user's from a tunnel profile (`tunneld join`): initiator peers only, no listener.
A gateway re-plans when a user's validity window opens or closes (`replan_at`); a
user node stops when its profile expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import signal
import struct
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import topology
from topology.model import Topology
from tunneld import kem as kem_mod
from tunneld.handshake import Endpoint
from tunneld.handshake_types import (
    Event,
    LocalIdentity,
    PeerConfig,
    PskExpired,
    PskReady,
    Refusal,
    RefusedIdentity,
    Rejected,
    Send,
    Timeout,
    describe_refusal,
)
from tunneld.keys import KeySet, load_keyset
from tunneld.links import LinkSpec, reconcile_link
from tunneld.messages import MAX_MESSAGE_SIZE
from tunneld.observe import Metrics, RateLimitedLog, message_kind
from tunneld.plan import NodePlan, PeerPlan, PlanError, plan
from tunneld.profile import check_usable, join_plan
from tunneld.profile import load as load_profile
from tunneld.slots import Slot, Slots
from tunneld.status import serve_status
from tunneld.timers import Timers
from tunneld.wg import InterfaceSpec, PeerSpec, WgError, WireGuard

log = logging.getLogger("tunneld")
FRAME = struct.Struct(">H")
CONNECT_TIMEOUT = 5.0
# One connection carries one handshake attempt (docs/handshake.md section 11): at most
# this many frames (InitHello, InitConf and its retransmissions), all within this time.
CONNECTION_DEADLINE = 10.0
MAX_FRAMES = 4


class RealClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def time_ns(self) -> int:
        return time.time_ns()


@dataclass
class PeerStatus:
    role: str
    endpoint: str
    kind: str = "site"
    last_handshake: float | None = None  # wall clock of the last installed PSK
    psk_installed: float | None = None  # monotonic
    rotations: int = 0
    failures: int = 0
    last_failure: str | None = None
    last_failure_at: float | None = None
    install_ms: float | None = None
    expired: int = 0
    refusals: int = 0
    last_refusal: str | None = None

    def fail(self, reason: str) -> None:
        self.failures += 1
        self.last_failure = reason
        self.last_failure_at = time.time()


@dataclass(frozen=True)
class Prepared:
    """Everything a plan needs, computed before anything is changed: a reload whose
    keys or peers do not parse changes nothing (applied whole or not at all)."""

    plan: NodePlan
    spec: InterfaceSpec
    link: LinkSpec
    configs: dict[str, PeerConfig]
    refused: list[RefusedIdentity]


@dataclass
class Options:
    topology: Path | None = None  # a gateway: topology + node (site name)
    node: str = ""
    keys: Path | None = None
    profile: Path | None = None  # a user or service: tunnel profile (tunneld join)
    signer: str | None = None  # the profile signer's fingerprint, given out of band
    ifname: str = "zg0"
    status_socket: Path | None = None
    listen: str = "0.0.0.0"
    timers: Timers = field(default_factory=Timers)
    wg_backend: str = "auto"
    kem_backend: str = "cryptography"


def default_socket(node: str) -> Path:
    return Path(f"/run/zonegate/tunneld-{node}.sock")


def peer_spec(p: PeerPlan) -> PeerSpec:
    # No keepalive towards a peer without endpoint (a user): it keeps its NAT open itself.
    keepalive = 25 if p.endpoint else 0
    return PeerSpec(p.bundle.wireguard, p.allowed_ips, p.endpoint, keepalive=keepalive)


class Daemon:
    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.backend = kem_mod.get_backend(opts.kem_backend)
        self._topo: Topology | None = None  # the last good topology (gateways only)
        if opts.profile is not None:
            self.keys: KeySet = self._load_keys()
            self.plan: NodePlan = self._load_plan()
        else:
            self.plan = self._load_plan()
            self.keys = self._load_keys()
            if self.keys.public != self.plan.bundle:
                raise SystemExit(
                    f"tunneld: keys in {opts.keys} are not the ones the topology pins for "
                    f"{opts.node}; point --keys at the right directory or update the topology"
                )
        self.node = self.plan.name
        self.wg = WireGuard(opts.ifname, backend=opts.wg_backend)
        self.status: dict[str, PeerStatus] = {}
        self.unknown = PeerStatus("-", "-")
        self.started = time.time()
        self.endpoint: Endpoint | None = None
        self._peers: dict[str, PeerPlan] = {}
        self._out: dict[str, asyncio.StreamWriter] = {}
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.metrics = Metrics()
        self.slots = Slots()
        self._rejections = RateLimitedLog(log, self.metrics)
        self._server: asyncio.Server | None = None
        self.exit_reason = ""

    # -- configuration ------------------------------------------------------------

    def _load_plan(self) -> NodePlan:
        if self.opts.profile is not None:
            if not self.opts.signer:
                raise SystemExit(
                    "tunneld: join needs --signer FINGERPRINT, the profile signer's fingerprint "
                    "your network team gave you (on the phone or on paper, not in the mail "
                    "with the profile)"
                )
            prof = load_profile(self.opts.profile, self.opts.signer)
            check_usable(prof, self.keys.public, datetime.now(UTC), str(self.opts.keys))
            return self._runnable(join_plan(prof, self.keys.public))
        if self.opts.topology is None:
            raise SystemExit("tunneld: --topology PATH and --node SITE, or join PROFILE")
        loaded = topology.load(self.opts.topology)
        new = self._runnable(plan(loaded.topology, self.opts.node, datetime.now(UTC)))
        self._topo = loaded.topology
        return new

    def _runnable(self, new: NodePlan) -> NodePlan:
        """Refuse a plan whose pinned KEM suites no backend here computes (e.g. HQC without
        pqcrypto): at start-up, or on reload while the last good plan stays in force."""
        for p in new.peers:
            try:
                kem_mod.require_suite(p.kem, self.backend)
            except kem_mod.KemError as exc:
                raise PlanError(f"peer {p.name} pins KEM suite {p.kem}: {exc}") from None
        return new

    def _load_keys(self) -> KeySet:
        keys_dir = self.opts.keys
        if keys_dir is None:
            raise SystemExit("tunneld: --keys DIR is required (the node's key directory)")
        return load_keyset(keys_dir, self.backend)

    def _peer_config(self, p: PeerPlan) -> PeerConfig:
        return PeerConfig(
            p.name,
            p.bundle.hybrid(self.backend),
            p.bundle.wireguard,
            p.role,
            p.kem,
            nudge=p.endpoint is not None,
        )

    def _prepare(self, new: NodePlan) -> Prepared:
        """Parse every key of `new` (raises on the first bad one, before any change)."""
        spec = InterfaceSpec(
            self.keys.wg_private, new.listen_port, tuple(peer_spec(p) for p in new.peers)
        )
        routes = tuple(r for p in new.peers for r in p.routes)
        link = LinkSpec(self.wg.ifname, (new.address,), routes)
        configs = {p.name: self._peer_config(p) for p in new.peers}
        refused = [
            RefusedIdentity(r.name, r.bundle.hybrid(self.backend), r.bundle.wireguard, r.code)
            for r in new.refused
        ]
        for pub in [c.static for c in configs.values()] + [r.static for r in refused]:
            self.keys.static.static_dh(pub.x_public)  # the static DH each peer needs
        return Prepared(new, spec, link, configs, refused)

    async def _apply_plan(self, prep: Prepared) -> None:
        """Reconcile WireGuard, link and handshake peers with a prepared plan."""
        self.plan = prep.plan
        self.wg.reconcile(prep.spec)
        # pyroute2's synchronous API runs its own event loop: keep it off ours.
        await asyncio.to_thread(reconcile_link, prep.link)
        new = {p.name: p for p in prep.plan.peers}
        assert self.endpoint is not None
        changed = []
        for name in list(self._peers):
            if name not in new or new[name] != self._peers[name]:
                self.endpoint.remove_peer(name)
                del self._peers[name]
                if name in new:
                    changed.append(name)
        for name, p in new.items():
            if name not in self._peers:
                self.endpoint.add_peer(prep.configs[name])
                self._peers[name] = p
                if name not in self.status or name in changed:
                    self.status[name] = PeerStatus(p.role, p.endpoint or "(learned)", p.kind)
        for name in list(self.status):
            if name not in new:
                del self.status[name]
        for name in changed:
            # The state machine starts this peer over; WireGuard must not keep the old
            # PSK meanwhile (its expiry timer went with the old peer state).
            if self._randomise(name, "peer changed by a reload"):
                log.info("peer %s changed: random PSK until its next handshake", name)
        self.endpoint.set_refused(prep.refused)
        for line in prep.plan.skipped:
            log.warning("%s", line)
        for r in prep.plan.refused:
            log.info("identity %s is refused here: %s", r.name, r.reason)

    def reload(self) -> None:
        self._spawn(self._reload())

    async def _reload(self) -> None:
        """SIGHUP: re-read the topology; a bad one keeps the running config."""
        try:
            prep = self._prepare(self._load_plan())
        except Exception as exc:
            log.error("reload failed, keeping the running configuration: %s", exc)
            return
        if await self._apply_or_fail_closed(prep):
            self._wake.set()
            log.info("reloaded %s", self.opts.topology)

    async def _apply_or_fail_closed(self, prep: Prepared) -> bool:
        """Apply a prepared plan; if WireGuard or the link fails half way, the running
        state is unknown: remove the interface and stop (never keep an unknown PSK)."""
        try:
            await self._apply_plan(prep)
        except Exception as exc:
            self._teardown(f"a new plan could not be applied ({exc}); no old PSK stays usable")
            return False
        return True

    # -- lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        wg_backend = self.wg.create()
        log.info("interface %s up (%s)", self.wg.ifname, wg_backend)
        self.endpoint = Endpoint(
            LocalIdentity(self.plan.name, self.keys.static, self.keys.public.wireguard),
            [],
            backend=self.backend,
            clock=RealClock(),
            rng=secrets.token_bytes,
            timers=self.opts.timers,
        )
        await self._apply_plan(self._prepare(self.plan))
        if self.plan.listen_port is not None:
            self._server = await asyncio.start_server(
                self._on_incoming,
                self.opts.listen,
                self.plan.listen_port,
                reuse_address=True,
                backlog=1024,  # a SYN flood must not crowd out a genuine connect
            )
        sock = self.opts.status_socket or default_socket(self.node)
        self._status_runner = await serve_status(self, sock, self.metrics.text)
        self._spawn(self._timer_loop())

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._stop.set)
        loop.add_signal_handler(signal.SIGINT, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        try:
            await self.start()
            await self._stop.wait()
        finally:
            await self.stop()
        if self.exit_reason:
            raise SystemExit(f"tunneld: {self.exit_reason}")

    async def stop(self) -> None:
        self._stop.set()
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            self._server.close()
        for w in self._out.values():
            w.close()
        if getattr(self, "_status_runner", None) is not None:
            await self._status_runner.cleanup()
        self.wg.destroy()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- events -------------------------------------------------------------------

    def _handle(self, events: list[Event], writer: asyncio.StreamWriter | None) -> None:
        """Act on each event; an error on one never skips the others (see _handle_one)."""
        for e in events:
            try:
                self._handle_one(e, writer)
            except Exception:
                log.exception("error while handling %s", type(e).__name__)
                if isinstance(e, PskReady | PskExpired) and e.peer in self._peers:
                    self._randomise(e.peer, f"error while handling {type(e).__name__}")

    def _handle_one(self, e: Event, writer: asyncio.StreamWriter | None) -> None:
        if isinstance(e, Send):
            if e.reply and writer is not None and not writer.is_closing():
                writer.write(FRAME.pack(len(e.data)) + e.data)
            else:
                self._send_to_peer(e.peer, e.data)
        elif isinstance(e, PskReady):
            self._install(e)
        elif isinstance(e, PskExpired):
            st = self.status[e.peer]
            st.expired += 1
            st.fail("PSK expired: no handshake within its lifetime; random PSK set")
            self.metrics.psk_expired.labels(e.peer).inc()
            if self._randomise(e.peer, "PSK expired"):
                log.warning("peer %s: PSK expired, replaced by a random one", e.peer)
        elif isinstance(e, Rejected):
            st = self.status.get(e.peer, self.unknown) if e.peer else self.unknown
            st.fail(e.reason)
            self.metrics.rejected.labels(message_kind(e.reason)).inc()
            self._rejections.warning(
                time.monotonic(), "rejected message from %s: %s", e.peer or "unknown", e.reason
            )
        elif isinstance(e, Timeout):
            self.status[e.peer].fail(e.reason)
            log.info("peer %s: %s", e.peer, e.reason)
        elif isinstance(e, Refusal):
            text = describe_refusal(e.peer, e.code, e.authenticated, self.node)
            st = self.status[e.peer]
            st.fail(text)
            st.refusals += 1
            st.last_refusal = text
            log.warning("%s; retrying with backoff", text)

    def _install(self, e: PskReady) -> None:
        t0 = time.perf_counter()
        st = self.status[e.peer]
        # Coming from a random PSK (start, restart, expiry): WireGuard may be backing off
        # after failed handshakes; re-creating the peer lets the next packet handshake.
        now = time.monotonic()
        fresh = st.psk_installed is None or st.psk_installed + self.opts.timers.psk_lifetime < now
        try:
            if fresh:
                self.wg.reset_peer(peer_spec(self._peers[e.peer]), e.psk)
            else:
                self.wg.set_psk(self._peers[e.peer].bundle.wireguard, e.psk)
        except WgError as exc:
            self.metrics.wg_errors.labels("install").inc()
            st.fail(f"PSK install failed: {exc}")
            log.error("peer %s: PSK install failed: %s", e.peer, exc)
            # WireGuard may still hold the previous PSK: replace it, then start over.
            self._randomise(e.peer, "PSK install failed")
            if self.endpoint is not None and self.endpoint.role(e.peer) == "initiator":
                self.endpoint.rekey_now(e.peer)
            return
        st.install_ms = (time.perf_counter() - t0) * 1000
        st.rotations += 1
        st.last_handshake = time.time()
        st.psk_installed = time.monotonic()
        self.metrics.handshakes.labels(e.peer).inc()
        log.info("peer %s: new PSK installed (%s, rotation %d)", e.peer, e.role, st.rotations)

    def _randomise(self, name: str, why: str) -> bool:
        """Never fail open: put a random PSK where WireGuard holds `name`'s PSK; if it
        refuses, remove the peer; if even that fails, remove the interface and stop.
        Returns whether the peer is still there (with a random PSK)."""
        spec = peer_spec(self._peers[name])
        st = self.status.get(name)
        if st is not None:
            st.psk_installed = None  # the next PSK re-creates the peer (see _install)
        try:
            self.wg.expire_psk(spec)
            return True
        except WgError as exc:
            first = exc
            self.metrics.wg_errors.labels("random_psk").inc()
        try:
            self.wg.remove_peer(spec.public_key)
            log.error(
                "peer %s: %s; WireGuard refused a random PSK (%s): peer removed until its "
                "next handshake",
                name,
                why,
                first,
            )
            return False
        except WgError as exc:
            self.metrics.wg_errors.labels("remove_peer").inc()
            self._teardown(
                f"peer {name}: {why}; WireGuard refused both a random PSK ({first}) and "
                f"removing the peer ({exc}): interface removed so no old PSK stays usable"
            )
            return False

    def _teardown(self, reason: str) -> None:
        """Last resort of fail-closed: no interface, no PSK; stop (systemd restarts us)."""
        log.critical("%s", reason)
        try:
            self.wg.destroy()
        except Exception:
            log.exception("removing interface %s failed", self.wg.ifname)
        self.exit_reason = reason
        self._stop.set()

    def _check_calendar(self) -> None:
        """Wall-clock events: a validity window opens or closes; a profile expires."""
        now = datetime.now(UTC)
        if self.plan.expires is not None and now >= self.plan.expires:
            self.exit_reason = (
                f"profile for {self.node} expired at {self.plan.expires.isoformat()}; "
                f"ask your network team for a new one"
            )
            log.error("%s", self.exit_reason)
            self._stop.set()
        elif self.plan.replan_at is not None and now >= self.plan.replan_at:
            # Re-plan from the topology already loaded, not the files: a broken file
            # must not keep an identity whose validity just ended.
            log.info("an identity's validity window opened or closed: re-planning")
            assert self._topo is not None
            prep = self._prepare(plan(self._topo, self.node, now))
            self.plan = prep.plan  # replan_at moves on even before the apply ran
            self._spawn(self._apply_or_fail_closed(prep))

    async def _timer_loop(self) -> None:
        """Supervised: an unexpected error is logged and counted and the loop goes on,
        because PSK expiry depends on it (a dead loop would keep an old PSK forever)."""
        while not self._stop.is_set():
            try:
                await self._timer_step()
            except asyncio.CancelledError:
                raise
            except Exception:
                self.metrics.loop_errors.inc()
                log.exception("timer loop error (the loop keeps running)")
                await asyncio.sleep(0.1)

    async def _timer_step(self) -> None:
        assert self.endpoint is not None
        self._check_calendar()
        delay = max(0.0, self.endpoint.next_deadline() - time.monotonic())
        # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(min(delay, 1.0)):
                await self._wake.wait()
        self._wake.clear()
        if not self._stop.is_set():
            self._handle(self.endpoint.poll(), None)
            self._check_calendar()
        await asyncio.sleep(0)

    # -- transport ----------------------------------------------------------------

    def _send_to_peer(self, name: str, data: bytes) -> None:
        w = self._out.get(name)
        if w is not None and not w.is_closing():
            w.write(FRAME.pack(len(data)) + data)
            return
        self._spawn(self._connect(name, data))

    async def _connect(self, name: str, first: bytes) -> None:
        p = self._peers.get(name)
        if p is None or p.endpoint is None:
            return  # a peer without endpoint (a user) only ever talks to us first
        host, _, port = p.endpoint.rpartition(":")
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                reader, writer = await asyncio.open_connection(host, int(port))
        except (OSError, TimeoutError) as exc:
            self.status[name].fail(f"cannot reach {p.endpoint} (tcp): {exc}")
            return
        old = self._out.get(name)
        if old is not None:
            old.close()
        self._out[name] = writer
        writer.write(FRAME.pack(len(first)) + first)
        try:
            await self._serve(reader, writer, None)
        finally:
            if self._out.get(name) is writer:
                del self._out[name]

    async def _on_incoming(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        peer = writer.get_extra_info("peername")
        source = str(peer[0]) if isinstance(peer, tuple) else "?"
        slot = Slot(source, time.monotonic(), writer.close)
        outcome = self.slots.admit(slot)
        self.metrics.connections.labels(outcome).inc()
        if outcome == "refused":
            writer.close()
            return
        self.metrics.open_connections.set(len(self.slots))
        try:
            await self._serve(reader, writer, slot)
        finally:
            self.slots.release(slot)
            self.metrics.open_connections.set(len(self.slots))

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, slot: Slot | None
    ) -> None:
        """One handshake attempt: at most MAX_FRAMES frames within CONNECTION_DEADLINE;
        the first rejected frame, an oversized one or a completed handshake closes it."""
        assert self.endpoint is not None
        try:
            async with asyncio.timeout(CONNECTION_DEADLINE):
                for _ in range(MAX_FRAMES):
                    head = await reader.readexactly(FRAME.size)
                    (size,) = FRAME.unpack(head)
                    if size > MAX_MESSAGE_SIZE:
                        self._handle([Rejected(None, f"oversized frame ({size} bytes)")], None)
                        break
                    data = await reader.readexactly(size)
                    events = self.endpoint.receive(data)
                    self._handle(events, writer)
                    self._wake.set()  # the input may have moved a deadline
                    await writer.drain()
                    if any(isinstance(e, Rejected) for e in events):
                        break
                    if slot is not None and not any(
                        isinstance(e, Send) and e.cached for e in events
                    ):
                        slot.proven = True  # a fresh, accepted frame (MAC1 at least)
                    if any(isinstance(e, PskReady) for e in events):
                        break
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    # -- status -------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        assert self.endpoint is not None
        try:
            dump = self.wg.show_dump().peers
        except WgError:
            dump = {}
        now_wall = time.time()
        peers = {}
        for name, st in self.status.items():
            p = self._peers[name]
            wg_peer = dump.get(p.bundle.wireguard)
            peers[name] = {
                "kind": st.kind,
                "role": st.role,
                "endpoint": st.endpoint,
                "refusals": st.refusals,
                "last_refusal": st.last_refusal,
                "kem": p.kem,
                "fingerprint": p.bundle.fingerprint,
                "last_handshake": st.last_handshake,
                "last_handshake_ago": None
                if st.last_handshake is None
                else round(now_wall - st.last_handshake, 3),
                "psk_age": self.endpoint.psk_age(name),
                "rotations": st.rotations,
                "failures": st.failures,
                "last_failure": st.last_failure,
                "psk_expirations": st.expired,
                "install_ms": st.install_ms,
                "wg_latest_handshake": wg_peer.latest_handshake if wg_peer else None,
                "wg_rx": wg_peer.rx if wg_peer else None,
                "wg_tx": wg_peer.tx if wg_peer else None,
            }
        return {
            "node": self.node,
            "fingerprint": self.keys.public.fingerprint,
            "interface": self.wg.ifname,
            "wireguard_backend": self.wg.backend,
            "kem_backend": self.backend.name,
            "kem_backends": [a.__dict__ for a in kem_mod.availability()],
            "uptime": round(now_wall - self.started, 3),
            "peers": peers,
            "refused_identities": self.endpoint.refused(),
            "profile_expires": None if self.plan.expires is None else self.plan.expires.isoformat(),
            "unattributed_failures": self.unknown.failures,
            "last_unattributed_failure": self.unknown.last_failure,
        }
