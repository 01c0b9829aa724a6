"""Stateful Hypothesis fuzz, at two levels (issue 14).

State machine: an adversary replays, duplicates, tampers with, drops and forges messages
(a forger holds the initiator's static X25519 key, so its hellos pass MAC1) and moves
the clock; whatever it did, a rejected message never changes state, and one faithful
handshake right after always completes (no lock-out).

Daemon: the real `Daemon` event handling around a real `Endpoint`, with a fake
WireGuard that fails on command. Whatever fails, WireGuard never holds a handshake PSK
older than its lifetime (a random one, no peer, or no interface instead), and nothing
escapes the event handling.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from tests.tunneld.test_lockout import forged_hello
from tests.tunneld.tunneld_helpers import FakeClock, FakeRandom, pair, psks, sends
from tunneld import daemon as daemon_mod
from tunneld.daemon import Daemon, Options
from tunneld.handshake import Endpoint
from tunneld.handshake_types import Event, LocalIdentity, PeerConfig, Rejected, Send
from tunneld.kem import get_backend
from tunneld.keys import keygen, load_keyset, load_public
from tunneld.timers import Timers
from tunneld.wg import InterfaceSpec, PeerSpec, WgError

FAST = Timers.fast(2.0)
FUZZ = settings(
    max_examples=40,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# -- the state machine under an adversary --------------------------------------------


class HandshakeUnderAttack(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.ea, self.eb, self.clock, _, _ = pair(timers=FAST)
        self.seen: list[tuple[str, bytes]] = []  # (receiver, message) ever sent

    def _deliver(self, to: str, data: bytes) -> list[Event]:
        ep = self.ea if to == "a" else self.eb
        before = ep.fingerprint()
        out = ep.receive(data)
        if out and isinstance(out[0], Rejected):
            assert ep.fingerprint() == before, out[0].reason
        for d in sends(out):
            self.seen.append(("b" if to == "a" else "a", d))
        return out

    @rule(dt=st.floats(0.0, 5.0))
    def advance(self, dt: float) -> None:
        self.clock.advance(dt)
        for ep, to in ((self.ea, "b"), (self.eb, "a")):
            for d in sends(ep.poll()):
                self.seen.append((to, d))

    @rule(i=st.integers(0, 10**6))
    def replay(self, i: int) -> None:
        if self.seen:
            to, data = self.seen[i % len(self.seen)]
            self._deliver(to, data)

    @rule(i=st.integers(0, 10**6), pos=st.integers(0, 4000), xor=st.integers(1, 255))
    def tamper(self, i: int, pos: int, xor: int) -> None:
        if self.seen:
            to, data = self.seen[i % len(self.seen)]
            b = bytearray(data)
            b[pos % len(b)] ^= xor
            self._deliver(to, bytes(b))

    @rule(offset=st.sampled_from([-(10**12), -(10**9), 10**9, 10**11, 10**12, 2**62]))
    def forge(self, offset: int) -> None:
        self._deliver("b", forged_hello(self.ea, self.clock, offset))

    @rule(junk=st.binary(max_size=64))
    def junk(self, junk: bytes) -> None:
        self._deliver("a", junk)
        self._deliver("b", junk)

    @rule()
    def genuine_handshake_completes(self) -> None:
        """No lock-out: after anything above, one faithful exchange gives both one PSK."""
        self.clock.advance(FAST.retransmit_max)  # let any rate limit refill
        self.ea.rekey_now("site-b")
        (msg1,) = sends(self.ea.poll())
        (msg2,) = sends(self.eb.receive(msg1))
        (msg3,) = sends(self.ea.receive(msg2))
        out = self.eb.receive(msg3)
        (psk_b,) = psks(out)
        (msg4,) = sends(out)
        assert psks(self.ea.receive(msg4)) == [psk_b]


TestHandshakeUnderAttack = HandshakeUnderAttack.TestCase
TestHandshakeUnderAttack.settings = FUZZ


# -- the daemon around it, with a failing WireGuard ------------------------------------


@dataclass
class FakeWireGuard:
    """WireGuard as the daemon uses it; records when each handshake PSK was installed."""

    clock: FakeClock
    ifname: str = "zgfuzz0"
    backend: str = "fake"
    peers: dict[bytes, float | None] = field(default_factory=dict)  # None: random PSK
    fail: dict[str, int] = field(default_factory=dict)  # operation -> failures to come
    destroyed: bool = False

    def _op(self, name: str) -> None:
        if self.destroyed:
            raise WgError("interface gone")
        if self.fail.get(name, 0) > 0:
            self.fail[name] -= 1
            raise WgError(f"{name} failed (injected)")

    def reconcile(self, want: InterfaceSpec) -> list[object]:
        self._op("reconcile")
        wanted = {p.public_key for p in want.peers}
        for pk in list(self.peers):
            if pk not in wanted:
                del self.peers[pk]
        for pk in wanted - set(self.peers):
            self.peers[pk] = None
        return []

    def set_psk(self, peer: bytes, psk: bytes) -> None:
        self._op("set_psk")
        if peer not in self.peers:
            raise WgError("no such peer")
        self.peers[peer] = self.clock.now

    def reset_peer(self, spec: PeerSpec, psk: bytes | None) -> None:
        self._op("reset_peer")
        self.peers[spec.public_key] = None if psk is None else self.clock.now

    def expire_psk(self, spec: PeerSpec) -> None:
        self._op("expire_psk")
        self.peers[spec.public_key] = None

    def remove_peer(self, peer: bytes) -> None:
        self._op("remove_peer")
        self.peers.pop(peer, None)

    def destroy(self) -> None:
        self.destroyed = True
        self.peers.clear()


TOPOLOGY = """\
version: 1
sites:
  site-a:
    gateway: {{underlay: 192.0.2.1, port: 51820, overlay: 100.64.0.1}}
    zones: {{lan: {{cidr: 10.10.1.0/24, security_level: 1}}}}
  site-b:
    gateway: {{underlay: 192.0.2.2, port: 51820, overlay: 100.64.0.2}}
    zones: {{lan: {{cidr: 10.20.1.0/24, security_level: 1}}}}
identities:
  site-a: {{kind: site, keys: {a}/identity.pub}}
  site-b: {{kind: site, keys: {b}/identity.pub}}
"""


@pytest.fixture(scope="module")
def plant(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("fuzz")
    for n in ("a", "b"):
        keygen(base / n)
    (base / "topo").mkdir()
    (base / "topo" / "plant.yaml").write_text(TOPOLOGY.format(a=base / "a", b=base / "b"))
    return base


OPS = ("set_psk", "reset_peer", "expire_psk", "remove_peer", "reconcile")


def test_daemon_never_keeps_an_old_psk(plant: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(daemon_mod, "reconcile_link", lambda spec: None)

    class DaemonUnderFaults(RuleBasedStateMachine):
        @initialize()
        def start(self) -> None:
            opts = Options(topology=plant / "topo", node="site-b", keys=plant / "b", timers=FAST)
            self.d = Daemon(opts)
            self.clock = FakeClock()
            self.fake = FakeWireGuard(self.clock)
            self.d.wg = self.fake  # type: ignore[assignment]
            self.d.endpoint = Endpoint(
                LocalIdentity("site-b", self.d.keys.static, self.d.keys.public.wireguard),
                [],
                backend=self.d.backend,
                clock=self.clock,
                rng=secrets.token_bytes,
                timers=FAST,
            )
            asyncio.run(self.d._apply_plan(self.d._prepare(self.d.plan)))
            backend = get_backend()
            ka, b = load_keyset(plant / "a", backend), load_public(plant / "b" / "identity.pub")
            self.remote = Endpoint(
                LocalIdentity("site-a", ka.static, ka.public.wireguard),
                [PeerConfig("site-b", b.hybrid(backend), b.wireguard, "initiator", b.kem)],
                backend=backend,
                clock=self.clock,
                rng=FakeRandom(b"remote"),
                timers=FAST,
            )

        def _handle(self, events: list[Event]) -> None:
            self.d._handle([e for e in events if not isinstance(e, Send)], None)

        @rule(op=st.sampled_from(OPS), n=st.integers(1, 3))
        def inject(self, op: str, n: int) -> None:
            self.fake.fail[op] = n

        @rule()
        def handshake(self) -> None:
            assert self.d.endpoint is not None
            self.remote.rekey_now("site-b")
            (m1,) = sends(self.remote.poll())
            out = self.d.endpoint.receive(m1)
            if not sends(out):
                return  # rate limited
            (m3,) = sends(self.remote.receive(sends(out)[0]))
            out = self.d.endpoint.receive(m3)
            self._handle(out)
            self.remote.receive(sends(out)[0])

        @rule(dt=st.floats(0.0, 4.0))
        def advance(self, dt: float) -> None:
            assert self.d.endpoint is not None
            self.clock.advance(dt)
            self._handle(self.d.endpoint.poll())

        @rule(port=st.integers(51821, 51830))
        def reload_changes_the_peer(self, port: int) -> None:
            plan = self.d.plan
            (peer,) = plan.peers
            changed = type(peer)(**{**peer.__dict__, "endpoint": f"192.0.2.1:{port}"})
            new = type(plan)(**{**plan.__dict__, "peers": (changed,)})
            asyncio.run(self.d._apply_or_fail_closed(self.d._prepare(new)))

        @invariant()
        def no_handshake_psk_outlives_its_lifetime(self) -> None:
            if not hasattr(self, "fake"):
                return
            for installed in self.fake.peers.values():
                if installed is not None:
                    assert self.clock.now - installed <= FAST.psk_lifetime

    DaemonUnderFaults.TestCase.settings = settings(FUZZ, max_examples=100)
    DaemonUnderFaults.TestCase().runTest()


def test_timer_loop_survives_unexpected_errors(
    plant: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: any exception in the loop (a WgError at expiry, a timeout) ended it for
    good, and with it every later PSK expiry."""
    monkeypatch.setattr(daemon_mod, "reconcile_link", lambda spec: None)
    d = Daemon(Options(topology=plant / "topo", node="site-b", keys=plant / "b", timers=FAST))
    d.wg = FakeWireGuard(FakeClock())  # type: ignore[assignment]
    d.endpoint = Endpoint(
        LocalIdentity("site-b", d.keys.static, d.keys.public.wireguard),
        [],
        backend=d.backend,
        clock=daemon_mod.RealClock(),
        rng=secrets.token_bytes,
        timers=FAST,
    )
    polls = 0
    real_poll = d.endpoint.poll

    def flaky_poll() -> list[Event]:
        nonlocal polls
        polls += 1
        if polls <= 3:
            raise RuntimeError("injected")
        return real_poll()

    d.endpoint.poll = flaky_poll  # type: ignore[method-assign]

    async def run() -> None:
        task = asyncio.get_running_loop().create_task(d._timer_loop())
        while polls < 6:
            d._wake.set()
            await asyncio.sleep(0.01)
        assert not task.done()
        task.cancel()

    asyncio.run(asyncio.wait_for(run(), 20))
    assert b"tunneld_timer_loop_errors_total 3.0" in d.metrics.text()
