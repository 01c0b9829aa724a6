"""Key schedule of the handshake: prologue, transcript hash, confirmations, PSK, MAC1.

Kept apart from the state machine so the derivation can be read (and reviewed) in one
place: docs/handshake.md section "Key schedule" describes exactly these functions.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field

from tunneld.messages import MAC_SIZE

PROTOCOL = b"zonegate-tunneld-v1"


def sha3(*parts: bytes) -> bytes:
    h = hashlib.sha3_256()
    for p in parts:
        h.update(p)
    return h.digest()


def identity_id(static_digest: bytes, wg_public: bytes) -> bytes:
    """16-byte name of an identity: hash of its hybrid static keys and WireGuard key."""
    return sha3(PROTOCOL, b" id", static_digest, wg_public)[:16]


def prologue(
    kem: str,
    init_id: bytes,
    resp_id: bytes,
    init_wg: bytes,
    resp_wg: bytes,
    init_static: bytes,
    resp_static: bytes,
) -> bytes:
    """h0: binds protocol, KEM, both identities, both static keys and both WireGuard keys."""
    return sha3(
        PROTOCOL,
        b" handshake ",
        kem.encode(),
        init_id,
        resp_id,
        init_wg,
        resp_wg,
        init_static,
        resp_static,
    )


def mix(h: bytes, data: bytes) -> bytes:
    return sha3(h, data)


@dataclass(frozen=True)
class SessionKeys:
    """Everything derived once all three hybrid shared secrets are known."""

    resp_confirm: bytes = field(repr=False)
    init_confirm: bytes = field(repr=False)
    resp_installed: bytes = field(repr=False)
    psk: bytes = field(repr=False)


def _expand(prk: bytes, label: bytes) -> bytes:
    return hmac.digest(prk, PROTOCOL + b" " + label + b"\x01", "sha256")


def derive(
    h2: bytes, k_static_resp: bytes, k_ephemeral: bytes, k_static_init: bytes
) -> SessionKeys:
    """HKDF-SHA256: extract with the transcript hash as salt, expand per purpose."""
    prk = hmac.digest(h2, k_static_resp + k_ephemeral + k_static_init, "sha256")
    return SessionKeys(
        resp_confirm=_expand(prk, b"resp confirm"),
        init_confirm=_expand(prk, b"init confirm"),
        resp_installed=_expand(prk, b"resp installed"),
        psk=_expand(prk, b"wireguard psk"),
    )


def confirm_tag(key: bytes, h: bytes) -> bytes:
    return hmac.digest(key, h, "sha256")


def mac1_key(static_dh: bytes, sender_id: bytes, receiver_id: bytes) -> bytes:
    """Directional key of the cheap MAC: static-static X25519 of the pair + both ids."""
    return sha3(PROTOCOL, b" mac1", static_dh, sender_id, receiver_id)


def mac1(key: bytes, body: bytes) -> bytes:
    return hashlib.blake2s(body, key=key, digest_size=MAC_SIZE).digest()


def mac1_ok(key: bytes, body: bytes, tag: bytes) -> bool:
    return hmac.compare_digest(mac1(key, body), tag)


def refusal_echo(init_hello: bytes) -> bytes:
    """Names the exact InitHello a Refused answers (so it can not answer another)."""
    return sha3(PROTOCOL, b" refused", init_hello)[:16]
