"""Refusals: a user the gateway will not admit learns why; a prober learns nothing."""

from __future__ import annotations

import pytest

from tests.tunneld.tunneld_helpers import (
    BACKEND,
    FakeClock,
    FakeRandom,
    Ident,
    make_ident,
    psks,
    run_handshake,
    sends,
)
from tunneld import messages as m
from tunneld import transcript as t
from tunneld.handshake import Endpoint
from tunneld.handshake_types import (
    Refusal,
    RefusedIdentity,
    Rejected,
    Send,
    Timeout,
    describe_refusal,
)
from tunneld.hybrid import HybridPublicKey
from tunneld.timers import Timers

FAST = Timers.fast(2.0)


def refused_entry(ident: Ident, code: int) -> RefusedIdentity:
    pub = HybridPublicKey(BACKEND, ident.static.kem, ident.static.x_public, ident.static.kem_public)
    return RefusedIdentity(ident.name, pub, ident.wg_public, code)


def gateway_and_user(
    code: int | None,
) -> tuple[Endpoint, Endpoint, FakeClock, Ident, Ident]:
    """A gateway that refuses `user` with `code` (None: admits it), and the user."""
    gw, user = make_ident("plant-a"), make_ident("vendor-tech")
    clock = FakeClock()
    admitted = [] if code is not None else [user.as_peer("responder")]
    egw = Endpoint(
        gw.local(), admitted, backend=BACKEND, clock=clock, rng=FakeRandom(b"g"), timers=FAST
    )
    if code is not None:
        egw.set_refused([refused_entry(user, code)])
    eu = Endpoint(
        user.local(),
        [gw.as_peer("initiator")],
        backend=BACKEND,
        clock=clock,
        rng=FakeRandom(b"u"),
        timers=FAST,
    )
    return egw, eu, clock, gw, user


def hello(eu: Endpoint, clock: FakeClock) -> bytes:
    clock.advance(max(0.0, eu.next_deadline() - clock.now))
    (msg1,) = sends(eu.poll())
    return msg1


def answer(egw: Endpoint, msg1: bytes) -> tuple[list[object], m.Refused, bytes]:
    before = egw.fingerprint()
    out = egw.receive(msg1)
    assert egw.fingerprint() == before  # refusing writes no state
    assert isinstance(out[0], Rejected)
    (reply,) = [e for e in out if isinstance(e, Send)]
    assert reply.reply  # on the connection the hello came from, never a new one
    msg = m.decode(reply.data)
    assert isinstance(msg, m.Refused)
    return list(out), msg, reply.data


@pytest.mark.parametrize(
    ("code", "text"),
    [
        (m.REFUSED_EXPIRED, "identity vendor-tech is outside its validity window (it has ended)"),
        (
            m.REFUSED_NOT_YET_VALID,
            "identity vendor-tech is outside its validity window (not valid yet)",
        ),
        (m.REFUSED_NO_CONDUIT, "identity vendor-tech has no conduit into this site"),
    ],
)
def test_known_identity_gets_an_authenticated_reason(code: int, text: str) -> None:
    egw, eu, clock, _, _ = gateway_and_user(code)
    msg1 = hello(eu, clock)
    out, refusal, data = answer(egw, msg1)
    assert refusal.code == code and refusal.mac1 != bytes(16)
    assert "vendor-tech refused" in out[0].reason  # type: ignore[attr-defined]
    before = eu.fingerprint()
    events = eu.receive(data)
    assert events == [Refusal("plant-a", code, authenticated=True)]
    assert eu.fingerprint() == before
    assert (
        describe_refusal("plant-a", code, True, "vendor-tech") == f"gateway plant-a refused: {text}"
    )


def test_user_keeps_retrying_with_backoff_and_gets_in_once_admitted() -> None:
    egw, eu, clock, _, user = gateway_and_user(m.REFUSED_EXPIRED)
    waits = []
    for _ in range(4):
        msg1 = hello(eu, clock)
        _, _, data = answer(egw, msg1)
        assert eu.receive(data)[0] == Refusal("plant-a", m.REFUSED_EXPIRED, True)
        waits.append(eu.next_deadline() - clock.now)
        clock.advance(waits[-1])
        assert any(isinstance(e, Timeout) for e in eu.poll())  # a new InitHello follows
    assert waits[-1] > waits[0] * 3  # backoff grows (1, 2, 4, 8 s +- jitter, scaled)
    # The topology extends the identity: refused -> admitted; the next hello succeeds.
    egw.set_refused([])
    egw.add_peer(user.as_peer("responder"))
    eu.rekey_now("plant-a")
    tr = run_handshake(eu, egw, clock)
    assert tr.psk_a == tr.psk_b


def unauthenticated_answer(egw: Endpoint, msg1: bytes) -> m.Refused:
    _, refusal, _ = answer(egw, msg1)
    return refusal


@pytest.mark.sr("SR 1.13")
def test_prober_can_not_tell_known_from_unknown_identities() -> None:
    """Before MAC1 proves the sender, the answer is the same for every initiator id."""
    # (a) an identity the gateway has never heard of
    egw, _, clock, gw, _ = gateway_and_user(m.REFUSED_EXPIRED)
    stranger = make_ident("stranger")
    es = Endpoint(
        stranger.local(),
        [gw.as_peer("initiator")],
        backend=BACKEND,
        clock=clock,
        rng=FakeRandom(b"s"),
    )
    a = unauthenticated_answer(egw, hello(es, clock))
    # (b) a refused identity's id, but a MAC1 the prober could not compute
    _, eu, clock_b, _, _ = gateway_and_user(m.REFUSED_EXPIRED)  # same (deterministic) keys
    forged = bytearray(hello(eu, clock_b))
    forged[-1] ^= 1
    b = unauthenticated_answer(egw, bytes(forged))
    # (c) an admitted identity's id, MAC1 forged
    egw2, eu2, clock2, _, _ = gateway_and_user(None)
    forged2 = bytearray(hello(eu2, clock2))
    forged2[-1] ^= 1
    c = unauthenticated_answer(egw2, bytes(forged2))
    for r in (a, b, c):
        assert r.code == m.REFUSED_UNKNOWN and r.mac1 == bytes(16)


def test_unknown_identity_gets_an_unauthenticated_hint() -> None:
    egw, _, clock, gw, _ = gateway_and_user(None)
    stranger = make_ident("stranger")
    es = Endpoint(
        stranger.local(),
        [gw.as_peer("initiator")],
        backend=BACKEND,
        clock=clock,
        rng=FakeRandom(b"s"),
    )
    msg1 = hello(es, clock)
    _, refusal, data = answer(egw, msg1)
    assert refusal.code == m.REFUSED_UNKNOWN
    assert es.receive(data) == [Refusal("plant-a", m.REFUSED_UNKNOWN, authenticated=False)]
    text = describe_refusal("plant-a", m.REFUSED_UNKNOWN, False, "stranger")
    assert "does not know this identity's keys" in text and "[unauthenticated reply]" in text


def test_hello_for_other_gateway_keys_says_not_for_us() -> None:
    egw, _, clock, _, user = gateway_and_user(None)
    old_gw = make_ident("plant-a-old-keys")
    eu = Endpoint(
        user.local(),
        [old_gw.as_peer("initiator")],
        backend=BACKEND,
        clock=clock,
        rng=FakeRandom(b"o"),
    )
    _, refusal, _ = answer(egw, hello(eu, clock))
    assert refusal.code == m.REFUSED_NOT_FOR_US


def test_refusals_that_do_not_answer_our_hello_are_rejected() -> None:
    egw, eu, clock, _, _ = gateway_and_user(m.REFUSED_EXPIRED)
    msg1 = hello(eu, clock)
    _, refusal, data = answer(egw, msg1)
    cases = {
        "does not answer our InitHello": m.encode(
            m.Refused(refusal.code, refusal.receiver, bytes(16), refusal.mac1)
        ),
        "bad MAC1": data[:-1] + bytes([data[-1] ^ 1]),
        "unknown session": m.encode(
            m.Refused(refusal.code, refusal.receiver ^ 1, refusal.echo, refusal.mac1)
        ),
    }
    for reason, bad in cases.items():
        before = eu.fingerprint()
        out = eu.receive(bad)
        assert len(out) == 1 and isinstance(out[0], Rejected) and reason in out[0].reason, out
        assert eu.fingerprint() == before
    # A refusal recorded earlier does not answer the next attempt (new InitHello).
    clock.advance(eu.next_deadline() - clock.now)
    eu.poll()
    out = eu.receive(data)
    assert isinstance(out[0], Rejected)


def test_forged_authenticated_code_without_mac_is_not_believed() -> None:
    """An on-path attacker can not turn 'unknown' into 'expired': that needs the MAC key."""
    egw, eu, clock, _, _ = gateway_and_user(None)
    msg1 = hello(eu, clock)
    echo = t.refusal_echo(msg1)
    receiver = int.from_bytes(msg1[4:8], "big")
    fake = m.encode(m.Refused(m.REFUSED_EXPIRED, receiver, echo, b"\x55" * 16))
    out = eu.receive(fake)
    assert isinstance(out[0], Rejected) and "bad MAC1" in out[0].reason
    # ... and the real handshake still completes.
    (msg2,) = sends(egw.receive(msg1))
    (msg3,) = sends(eu.receive(msg2))
    out_g = egw.receive(msg3)
    (msg4,) = sends(out_g)
    assert psks(eu.receive(msg4)) == psks(out_g)


def test_responder_without_endpoint_never_sends_rekey_requests() -> None:
    gw, user = make_ident("plant-a"), make_ident("vendor-tech")
    clock = FakeClock()
    cfg = user.as_peer("responder")
    quiet = type(cfg)(cfg.name, cfg.static, cfg.wg_public, cfg.role, cfg.kem, nudge=False)
    egw = Endpoint(
        gw.local(), [quiet], backend=BACKEND, clock=clock, rng=FakeRandom(b"g"), timers=FAST
    )
    for _ in range(20):
        clock.advance(1.0)
        assert sends(egw.poll()) == []


def test_refused_message_codec() -> None:
    msg = m.Refused(m.REFUSED_EXPIRED, 7, b"\x01" * 16, b"\x02" * 16)
    data = m.encode(msg)
    assert len(data) == m.message_size(m.REFUSED) == 40
    assert m.decode(data) == msg
    bad = {
        "unknown refusal code": data[:2] + b"\x09" + data[3:],
        "reserved header byte": data[:3] + b"\x01" + data[4:],
        "non-zero MAC1": m.encode(m.Refused(m.REFUSED_UNKNOWN, 7, b"\x01" * 16, b"\x02" * 16)),
        "truncated": data[:-1],
    }
    for reason, raw in bad.items():
        with pytest.raises(m.DecodeError, match=reason):
            m.decode(raw)
