"""The sans-I/O state machine: two in-memory peers, every bad input rejected unchanged."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.tunneld.tunneld_helpers import (
    BACKEND,
    FakeClock,
    FakeRandom,
    Ident,
    make_ident,
    pair,
    psks,
    run_handshake,
    sends,
)
from tunneld import messages as m
from tunneld.handshake import Endpoint
from tunneld.handshake_types import PskExpired, PskReady, Rejected, Send, Timeout
from tunneld.hybrid import HybridPrivateKey
from tunneld.timers import Timers

FAST = Timers.fast(2.0)


def rejected(events: Sequence[object]) -> list[str]:
    return [e.reason for e in events if isinstance(e, Rejected)]


def assert_rejected_unchanged(ep: Endpoint, data: bytes, reason: str) -> None:
    """Rejected with `reason`, state unchanged; at most a Refused goes back, nothing else."""
    before = ep.fingerprint()
    out = ep.receive(data)
    assert isinstance(out[0], Rejected), out
    assert reason in out[0].reason
    for extra in out[1:]:
        assert isinstance(extra, Send) and extra.reply, out
        assert isinstance(m.decode(extra.data), m.Refused), out
    assert len(out) <= 2, out
    assert ep.fingerprint() == before


# -- success paths -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kem", "a_kem", "b_kem"),
    [
        ("ml-kem-768", "ml-kem-768", "ml-kem-768"),
        ("ml-kem-1024", "ml-kem-1024", "ml-kem-1024"),
        ("ml-kem-1024", "ml-kem-768", "ml-kem-1024"),
    ],
)
def test_two_peers_derive_same_psk(kem: str, a_kem: str, b_kem: str) -> None:
    ea, eb, clock, _, _ = pair(kem=kem, a_kem=a_kem, b_kem=b_kem)
    tr = run_handshake(ea, eb, clock)
    assert tr.psk_a == tr.psk_b and len(tr.psk_a) == 32
    assert ea.psk_age("site-b") == 0.0 and eb.psk_age("site-a") == 0.0


def test_every_rotation_gives_a_new_psk_on_schedule() -> None:
    ea, eb, clock, _, _ = pair(timers=FAST)
    seen = set()
    for _ in range(4):
        start = clock.now
        tr = run_handshake(ea, eb, clock)
        assert tr.psk_a == tr.psk_b
        seen.add(tr.psk_a)
        if len(seen) > 1:
            waited = clock.now - start
            assert FAST.rekey_interval - FAST.rekey_jitter <= waited <= FAST.rekey_interval
    assert len(seen) == 4


def test_psk_expires_without_rotation_on_both_sides() -> None:
    ea, eb, clock, _, _ = pair(timers=FAST)
    run_handshake(ea, eb, clock)
    clock.advance(FAST.psk_lifetime + 0.01)
    assert any(isinstance(e, PskExpired) for e in ea.poll())
    assert any(isinstance(e, PskExpired) for e in eb.poll())
    assert ea.psk_age("site-b") is None and eb.psk_age("site-a") is None


def test_psk_never_in_event_repr() -> None:
    ea, eb, clock, _, _ = pair()
    tr = run_handshake(ea, eb, clock)
    assert tr.psk_a.hex() not in repr(PskReady("x", tr.psk_a, "initiator"))
    assert repr(tr.psk_a) not in repr(PskReady("x", tr.psk_a, "initiator"))


# -- wrong identities ----------------------------------------------------------------


def impostor(real: Ident) -> Ident:
    """Knows the real X25519 static key (a future quantum attacker) but not ML-KEM."""
    static = HybridPrivateKey(BACKEND, real.static.kem, real.static.x_secret, bytes(64))
    # It claims the real public keys (they are public) but holds another ML-KEM secret.
    static.kem_public, static.digest = real.static.kem_public, real.static.digest
    return Ident(real.name, static, real.wg_public)


def test_unpinned_initiator_key_is_rejected_before_any_kem_work() -> None:
    _, eb, clock, _, b = pair()
    stranger = make_ident("stranger")
    es = Endpoint(
        stranger.local(),
        [b.as_peer("initiator")],
        backend=BACKEND,
        clock=clock,
        rng=FakeRandom(b"s"),
    )
    clock.advance(1)
    (msg1,) = sends(es.poll())
    assert_rejected_unchanged(eb, msg1, "not pinned")


def test_initiator_without_pq_key_gets_no_psk() -> None:
    """MAC1 passes (X25519 known), but the ML-KEM half fails key confirmation."""
    _, eb, clock, a, b = pair()
    fake = impostor(a)
    ef = Endpoint(
        fake.local(),
        [b.as_peer("initiator")],
        backend=BACKEND,
        clock=clock,
        rng=FakeRandom(b"f"),
    )
    clock.advance(1)
    (msg1,) = sends(ef.poll())
    (msg2,) = sends(eb.receive(msg1))
    before = ef.fingerprint()
    out = ef.receive(msg2)
    assert "key confirmation failed" in rejected(out)[0] and ef.fingerprint() == before
    assert psks(out) == []


def test_responder_without_pq_key_gets_no_psk() -> None:
    ea, _, clock, a, b = pair()
    fake = impostor(b)
    ef = Endpoint(
        fake.local(),
        [a.as_peer("responder")],
        backend=BACKEND,
        clock=clock,
        rng=FakeRandom(b"g"),
    )
    clock.advance(1)
    (msg1,) = sends(ea.poll())
    (msg2,) = sends(ef.receive(msg1))
    assert_rejected_unchanged(ea, msg2, "key confirmation failed")


def test_wrong_wireguard_key_pinned_means_no_handshake() -> None:
    ea, _, clock, a, b = pair()
    wrong = Ident(a.name, a.static, b"\x01" * 32)
    eb = Endpoint(
        b.local(),
        [wrong.as_peer("responder")],
        backend=BACKEND,
        clock=clock,
        rng=FakeRandom(b"b"),
    )
    clock.advance(1)
    (msg1,) = sends(ea.poll())
    assert_rejected_unchanged(eb, msg1, "not pinned")


# -- replay, reflection, tampering ---------------------------------------------------


def test_replays_are_rejected_without_state_change() -> None:
    ea, eb, clock, _, _ = pair()
    tr = run_handshake(ea, eb, clock)
    assert_rejected_unchanged(eb, tr.msg1, "replayed")
    assert_rejected_unchanged(ea, tr.msg2, "unknown session")
    assert_rejected_unchanged(ea, tr.msg4, "unknown session")
    # An exact duplicate InitConf re-sends the cached RespConf, installs nothing.
    before = eb.fingerprint()
    out = eb.receive(tr.msg3)
    assert out == [Send("site-a", tr.msg4, reply=True, cached=True)]
    assert eb.fingerprint() == before


def test_replay_of_old_hello_after_newer_one() -> None:
    ea, eb, clock, _, _ = pair()
    old = run_handshake(ea, eb, clock)
    run_handshake(ea, eb, clock)
    assert_rejected_unchanged(eb, old.msg1, "replayed")
    assert_rejected_unchanged(eb, old.msg3, "unknown session")


def test_reflected_messages_are_rejected() -> None:
    ea, eb, clock, _, _ = pair()
    clock.advance(1)
    (msg1,) = sends(ea.poll())
    assert_rejected_unchanged(ea, msg1, "reflected")
    (msg2,) = sends(eb.receive(msg1))
    assert_rejected_unchanged(eb, msg2, "unknown session")
    (msg3,) = sends(ea.receive(msg2))
    assert_rejected_unchanged(ea, msg3, "")
    out = eb.receive(msg3)
    (msg4,) = sends(out)
    assert_rejected_unchanged(eb, msg4, "")
    assert psks(ea.receive(msg4))


def test_reflected_rekey_request_is_rejected() -> None:
    ea, eb, clock, _, _ = pair()
    clock.advance(1)
    req = [e.data for e in eb.poll() if isinstance(e, Send)]
    assert req and m.decode(req[0]).__class__ is m.RekeyRequest
    assert_rejected_unchanged(eb, req[0], "reflected")
    assert ea.receive(req[0]) == []
    assert_rejected_unchanged(ea, req[0], "replayed")


Stage = Callable[[Endpoint, Endpoint, FakeClock], tuple[Endpoint, bytes]]


def at_msg(n: int) -> Stage:
    """Run the handshake up to message n; return its receiver and the message."""

    def stage(ea: Endpoint, eb: Endpoint, clock: FakeClock) -> tuple[Endpoint, bytes]:
        clock.advance(1)
        (msg1,) = sends(ea.poll())
        if n == 1:
            return eb, msg1
        (msg2,) = sends(eb.receive(msg1))
        if n == 2:
            return ea, msg2
        (msg3,) = sends(ea.receive(msg2))
        if n == 3:
            return eb, msg3
        (msg4,) = sends(eb.receive(msg3))
        return ea, msg4

    return stage


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(1, 4), pos=st.integers(0, 10_000), xor=st.integers(1, 255))
def test_any_tampered_byte_is_rejected_unchanged(n: int, pos: int, xor: int) -> None:
    ea, eb, clock, _, _ = pair()
    receiver, data = at_msg(n)(ea, eb, clock)
    bad = bytearray(data)
    bad[pos % len(bad)] ^= xor
    assert_rejected_unchanged(receiver, bytes(bad), "")
    # ... and the genuine message still works afterwards.
    assert not rejected(receiver.receive(data))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(1, 4), cut=st.integers(0, 10_000), extra=st.binary(max_size=8))
def test_truncated_or_extended_messages_rejected_unchanged(n: int, cut: int, extra: bytes) -> None:
    ea, eb, clock, _, _ = pair()
    receiver, data = at_msg(n)(ea, eb, clock)
    bad = data[: cut % len(data)] if not extra else data + extra
    assert_rejected_unchanged(receiver, bad, "")


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda d: d + bytes(m.MAX_MESSAGE_SIZE), "oversized"),
        (lambda d: d[:100], "truncated"),
        (lambda d: b"\xff" + d[1:], "unknown message type"),
        (lambda d: d[:2] + b"\x02" + d[3:], "ephemeral KEM"),  # KEM downgrade/upgrade
        (lambda d: d[:-1] + bytes([d[-1] ^ 1]), "bad MAC1"),
        (lambda d: d[:12] + bytes(16) + d[28:], "reflected"),  # initiator id := ... zero
    ],
)
def test_init_hello_rejections_table(make: Callable[[bytes], bytes], reason: str) -> None:
    ea, eb, clock, _, _ = pair()
    _, msg1 = at_msg(1)(ea, eb, clock)
    if reason == "reflected":
        bad = msg1[:8] + msg1[24:40] + msg1[24:]  # initiator := responder's own id
        reason = "reflected"
    else:
        bad = make(msg1)
    assert_rejected_unchanged(eb, bad, reason if reason != "ephemeral KEM" else "")


def test_rate_limit_bounds_expensive_work() -> None:
    timers = Timers(init_burst=3, init_rate=0.1)
    ea, eb, clock, _, _ = pair(timers=timers)
    clock.advance(1)
    hellos = []
    for _ in range(5):
        ea.rekey_now("site-b")
        (msg1,) = sends(ea.poll())
        hellos.append(msg1)
    outcomes = [eb.receive(h) for h in hellos[:3]]
    assert all(sends(o) for o in outcomes)
    assert_rejected_unchanged(eb, hellos[3], "rate limited")
    clock.advance(10.0)
    assert sends(eb.receive(hellos[4]))


# -- loss, restart -------------------------------------------------------------------


def test_lost_init_hello_is_retried_with_fresh_keys() -> None:
    ea, eb, clock, _, _ = pair(timers=FAST)
    clock.advance(1)
    (lost,) = sends(ea.poll())
    clock.advance(ea.next_deadline() - clock.now)
    out = ea.poll()
    assert any(isinstance(e, Timeout) for e in out)
    (msg1,) = sends(out)
    assert msg1 != lost
    (msg2,) = sends(eb.receive(msg1))
    (msg3,) = sends(ea.receive(msg2))
    (msg4,) = sends(eb.receive(msg3))
    assert psks(ea.receive(msg4))


@pytest.mark.parametrize("lost", ["msg3", "msg4"])
def test_lost_confirmation_is_retransmitted(lost: str) -> None:
    ea, eb, clock, _, _ = pair(timers=FAST)
    clock.advance(1)
    (msg1,) = sends(ea.poll())
    (msg2,) = sends(eb.receive(msg1))
    (msg3,) = sends(ea.receive(msg2))
    psk_b = []
    if lost == "msg4":
        psk_b = psks(eb.receive(msg3))  # responder installs, its answer is lost
    clock.advance(ea.next_deadline() - clock.now)
    (again,) = sends(ea.poll())
    assert again == msg3
    out = eb.receive(again)
    (msg4,) = sends(out)
    psk_b += psks(out)
    (psk_a,) = psks(ea.receive(msg4))
    assert psk_b == [psk_a]


def test_responder_restart_recovers_via_rekey_request() -> None:
    ea, eb, clock, a, b = pair(timers=FAST)
    run_handshake(ea, eb, clock)
    clock.advance(0.2)
    eb2 = Endpoint(
        b.local(),
        [a.as_peer("responder")],
        backend=BACKEND,
        clock=clock,
        rng=FakeRandom(b"b2"),
        timers=FAST,
    )
    clock.advance(FAST.start_jitter)
    (req,) = sends(eb2.poll())
    assert ea.next_deadline() > clock.now + 1.0  # next rotation would be much later
    assert ea.receive(req) == []
    assert ea.next_deadline() <= clock.now  # handshake now, not at the next rotation
    t0 = clock.now
    tr = run_handshake(ea, eb2, clock)
    assert tr.psk_a == tr.psk_b and clock.now == t0


def test_initiator_restart_recovers() -> None:
    ea, eb, clock, a, b = pair(timers=FAST)
    run_handshake(ea, eb, clock)
    clock.advance(0.3)
    ea2 = Endpoint(
        a.local(),
        [b.as_peer("initiator")],
        backend=BACKEND,
        clock=clock,
        rng=FakeRandom(b"a2"),
        timers=FAST,
    )
    tr = run_handshake(ea2, eb, clock)
    assert tr.psk_a == tr.psk_b


def test_half_done_responder_state_times_out() -> None:
    ea, eb, clock, _, _ = pair(timers=FAST)
    clock.advance(1)
    (msg1,) = sends(ea.poll())
    sends(eb.receive(msg1))
    clock.advance(FAST.responder_timeout + 0.01)
    assert any(isinstance(e, Timeout) for e in eb.poll())
