"""No lock-out: one forged or replayed InitHello can not stop genuine handshakes.

Issue 14: the responder used to store an InitHello's timestamp after checking only MAC1
(classical X25519) and never compared it with its clock, so one hello stamped 2^64-1
from anyone holding the initiator's static X25519 key (or a quantum computer) made it
reject every genuine hello until restart. The attacker here holds exactly that: the
initiator's static key, but not the ML-KEM half a genuine handshake needs to confirm.
"""

from __future__ import annotations

from dataclasses import dataclass

from tests.tunneld.test_handshake import assert_rejected_unchanged, rejected
from tests.tunneld.tunneld_helpers import FakeClock, FakeRandom, pair, psks, run_handshake, sends
from tunneld import messages as m
from tunneld import transcript as t
from tunneld.handshake import MAX_PENDING, Endpoint
from tunneld.handshake_types import Send
from tunneld.timers import Timers


@dataclass
class SkewedClock:
    """The forger's clock: same monotonic time, wall clock moved by `offset_ns`."""

    base: FakeClock
    offset_ns: int

    def monotonic(self) -> float:
        return self.base.monotonic()

    def time_ns(self) -> int:
        return self.base.time_ns() + self.offset_ns


def forged_hello(ea: Endpoint, clock: FakeClock, offset_ns: int) -> bytes:
    """An InitHello with a valid MAC1 and a timestamp moved by offset_ns, made with the
    initiator's keys (what a holder of its X25519 key can make)."""
    forger = Endpoint(
        ea.local,
        [ea._peers["site-b"].cfg],
        backend=ea.backend,
        clock=SkewedClock(clock, offset_ns),
        rng=FakeRandom(b"forger"),
        timers=ea.timers,
    )
    forger.rekey_now("site-b")
    (hello,) = sends(forger.poll())
    return hello


def test_far_future_timestamp_is_rejected_and_genuine_hellos_still_work() -> None:
    ea, eb, clock, _, _ = pair()
    run_handshake(ea, eb, clock)
    clock.advance(1)
    max_ts = 2**64 - 1 - clock.time_ns()
    assert_rejected_unchanged(eb, forged_hello(ea, clock, max_ts), "ahead of our clock")
    clock.advance(1)
    ea.rekey_now("site-b")
    tr = run_handshake(ea, eb, clock)
    assert tr.psk_a == tr.psk_b


def test_unconfirmed_hello_within_the_bound_does_not_raise_the_replay_floor() -> None:
    """Before the fix the floor moved at InitHello: this forged hello, 100 s ahead (inside
    the bound) and never confirmed, would lock the peer out for 100 s."""
    ea, eb, clock, _, _ = pair()
    run_handshake(ea, eb, clock)
    clock.advance(1)
    forged = forged_hello(ea, clock, 100 * 10**9)
    assert sends(eb.receive(forged))  # answered: MAC1 holds, the hybrid part is unproven
    clock.advance(1)
    ea.rekey_now("site-b")
    tr = run_handshake(ea, eb, clock)  # genuine, older timestamp than the forged one
    assert tr.psk_a == tr.psk_b


def test_forged_pending_hellos_never_displace_the_genuine_one() -> None:
    ea, eb, clock, _, _ = pair(timers=Timers(init_burst=MAX_PENDING * 2, init_rate=100.0))
    run_handshake(ea, eb, clock)
    clock.advance(1)
    ea.rekey_now("site-b")
    (msg1,) = sends(ea.poll())
    (msg2,) = sends(eb.receive(msg1))
    for i in range(3):  # forgeries arrive between the genuine hello and its InitConf
        assert sends(eb.receive(forged_hello(ea, clock, (i + 1) * 10**9)))
    (msg3,) = sends(ea.receive(msg2))
    out = eb.receive(msg3)
    (psk_b,) = psks(out)
    (msg4,) = sends(out)
    assert psks(ea.receive(msg4)) == [psk_b]


def test_identical_hello_gets_the_same_answer_without_new_state() -> None:
    ea, eb, clock, _, _ = pair()
    clock.advance(1)
    (msg1,) = sends(ea.poll())
    (msg2,) = sends(eb.receive(msg1))
    before = eb.fingerprint()
    assert eb.receive(msg1) == [Send("site-a", msg2, reply=True, cached=True)]
    assert eb.fingerprint() == before


def test_stale_timestamp_is_rejected_so_restart_replay_is_bounded() -> None:
    """A responder that restarted has no replay floor: the clock bound is what stops a
    recorded hello from being answered later than `clock_skew` after it was made."""
    ea, _eb, clock, _, _ = pair()
    clock.advance(1)
    (recorded,) = sends(ea.poll())
    clock.advance(Timers().clock_skew + 1)
    _, fresh_b, _, _, _ = pair()  # a restarted responder: no state at all
    fresh_b.clock = clock
    assert_rejected_unchanged(fresh_b, recorded, "behind our clock")


def test_replay_floor_moves_only_on_confirmation() -> None:
    ea, eb, clock, _, _ = pair()
    clock.advance(1)
    (msg1,) = sends(ea.poll())
    eb.receive(msg1)
    assert eb._peers["site-a"].last_init_ts == 0
    tr_events = ea.receive(sends(eb.receive(msg1))[0])
    out = eb.receive(sends(tr_events)[0])
    assert psks(out)
    assert eb._peers["site-a"].last_init_ts > 0
    assert "replayed" in rejected(eb.receive(msg1))[0]


def test_rejections_before_mac1_are_not_charged_to_the_claimed_peer() -> None:
    ea, eb, clock, _, _ = pair()
    clock.advance(1)
    (msg1,) = sends(ea.poll())
    bad = msg1[:-1] + bytes([msg1[-1] ^ 1])  # MAC1 broken, claims site-a
    out = eb.receive(bad)
    assert out[0].peer is None  # type: ignore[union-attr]
    assert "claims site-a" in rejected(out)[0]


def test_forged_far_future_rekey_request_does_not_silence_later_ones() -> None:
    """The responder's RekeyRequest had the same flaw: its timestamp was stored after
    MAC1 alone, so one far-future forgery made the initiator ignore every later one."""
    ea, eb, clock, _, _ = pair()
    run_handshake(ea, eb, clock)
    pb = eb._peers["site-a"]
    far = m.RekeyRequest(pb.cfg.id, eb._local_id, 2**64 - 1)
    body = m.body(far)
    assert_rejected_unchanged(ea, body + t.mac1(pb.mac_out, body), "ahead of our clock")
    clock.advance(2.0)
    now = m.RekeyRequest(pb.cfg.id, eb._local_id, clock.time_ns())
    body = m.body(now)
    assert not rejected(ea.receive(body + t.mac1(pb.mac_out, body)))
