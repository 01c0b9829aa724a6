"""Key-holding objects print no secret in repr (logs, tracebacks, test failures)."""

from __future__ import annotations

import base64
from pathlib import Path

from tests.tunneld.tunneld_helpers import pair, sends
from tunneld.keys import keygen, load_keyset
from tunneld.signing import load_signer, signer_keygen


def forms(secret: bytes) -> list[str]:
    return [secret.hex(), base64.b64encode(secret).decode(), repr(secret)[2:-1][:40]]


def assert_hidden(obj: object, *secrets: bytes) -> None:
    text = repr(obj)
    for s in secrets:
        for form in forms(s):
            assert form not in text, f"{type(obj).__name__} repr shows a secret"


def test_keyset_and_static_key(tmp_path: Path) -> None:
    keygen(tmp_path / "k")
    ks = load_keyset(tmp_path / "k")
    assert_hidden(ks, ks.wg_private, ks.static.x_secret, ks.static.kem_seed)
    assert_hidden(ks.static, ks.static.x_secret, ks.static.kem_seed)


def test_handshake_state_and_session_keys() -> None:
    ea, eb, clock, _, _ = pair()
    clock.advance(1)
    (msg1,) = sends(ea.poll())
    (msg2,) = sends(eb.receive(msg1))
    ea.receive(msg2)
    st = ea._peers["site-b"].initiating
    assert st is not None and st.keys is not None
    assert_hidden(st, st.k_static_resp, st.keys.psk, st.keys.init_confirm, st.eph.x_secret)
    (r,) = eb._peers["site-a"].responding.values()
    assert_hidden(r, r.keys.psk, r.keys.resp_installed)


def test_signer(tmp_path: Path) -> None:
    signer_keygen(tmp_path / "s")
    s = load_signer(tmp_path / "s")
    assert_hidden(s, s.ed25519_seed, s.ml_dsa_seed)
