"""Deterministic clock, randomness and identities for in-memory handshake tests."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from tunneld.handshake import Endpoint
from tunneld.handshake_types import Event, LocalIdentity, PeerConfig, PskReady, Role, Send
from tunneld.hybrid import HybridPrivateKey, HybridPublicKey
from tunneld.kem import get_backend
from tunneld.timers import Timers

BACKEND = get_backend("cryptography")


@dataclass
class FakeClock:
    now: float = 1000.0
    wall_ns: int = 1_700_000_000_000_000_000

    def monotonic(self) -> float:
        return self.now

    def time_ns(self) -> int:
        return self.wall_ns + int(self.now * 1e9)

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class FakeRandom:
    """SHAKE-256 stream from a seed: reproducible 'randomness' for the state machine."""

    seed: bytes
    counter: int = 0
    log: list[int] = field(default_factory=list)

    def __call__(self, n: int) -> bytes:
        self.counter += 1
        return hashlib.shake_256(self.seed + self.counter.to_bytes(8, "big")).digest(n)


@dataclass(frozen=True)
class Ident:
    name: str
    static: HybridPrivateKey
    wg_public: bytes

    def local(self) -> LocalIdentity:
        return LocalIdentity(self.name, self.static, self.wg_public)

    def as_peer(self, role: Role, kem: str = "ml-kem-768") -> PeerConfig:
        pub = HybridPublicKey(
            BACKEND, self.static.kem, self.static.x_public, self.static.kem_public
        )
        return PeerConfig(self.name, pub, self.wg_public, role, kem)


def make_ident(name: str, kem: str = "ml-kem-768") -> Ident:
    rng = FakeRandom(b"ident-" + name.encode())
    return Ident(name, HybridPrivateKey.generate(BACKEND, kem, rng), rng(32))


def pair(
    timers: Timers | None = None,
    kem: str = "ml-kem-768",
    a_kem: str = "ml-kem-768",
    b_kem: str = "ml-kem-768",
) -> tuple[Endpoint, Endpoint, FakeClock, Ident, Ident]:
    """Endpoint a (initiator towards b) and b (responder), sharing one fake clock."""
    a, b = make_ident("site-a", a_kem), make_ident("site-b", b_kem)
    clock = FakeClock()
    ea = Endpoint(
        a.local(),
        [b.as_peer("initiator", kem)],
        backend=BACKEND,
        clock=clock,
        rng=FakeRandom(b"a"),
        timers=timers,
    )
    eb = Endpoint(
        b.local(),
        [a.as_peer("responder", kem)],
        backend=BACKEND,
        clock=clock,
        rng=FakeRandom(b"b"),
        timers=timers,
    )
    return ea, eb, clock, a, b


def sends(events: list[Event]) -> list[bytes]:
    return [e.data for e in events if isinstance(e, Send)]


def psks(events: list[Event]) -> list[bytes]:
    return [e.psk for e in events if isinstance(e, PskReady)]


@dataclass
class Trace:
    msg1: bytes
    msg2: bytes
    msg3: bytes
    msg4: bytes
    psk_a: bytes
    psk_b: bytes


def run_handshake(ea: Endpoint, eb: Endpoint, clock: FakeClock) -> Trace:
    """Drive one complete handshake initiated by `ea`; returns every message."""
    clock.advance(max(0.0, ea.next_deadline() - clock.now))
    (msg1,) = sends(ea.poll())
    (msg2,) = sends(eb.receive(msg1))
    (msg3,) = sends(ea.receive(msg2))
    out_b = eb.receive(msg3)
    (msg4,) = sends(out_b)
    (psk_b,) = psks(out_b)
    (psk_a,) = psks(ea.receive(msg4))
    return Trace(msg1, msg2, msg3, msg4, psk_a, psk_b)
