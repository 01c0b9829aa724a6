"""The hybrid KEM: X25519 and ML-KEM (and optionally HQC) used together, X-Wing style.

Every key exchange in the handshake (ephemeral and both static-key authentications) is
this hybrid: an X25519 exchange with a fresh ephemeral key plus one encapsulation per
post-quantum component of the suite (ML-KEM, or ML-KEM then HQC). All shared secrets
are hashed together with all ciphertexts, a digest of the public keys, the suite name
and a label, so the result stays secret as long as any one primitive holds (and is
bound to exactly these keys and ciphertexts). X-Wing leaves out the ML-KEM ciphertext
and public key because ML-KEM is ciphertext-binding; we keep them, so the combiner
stays sound with HQC and any KEM a backend may add.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from tunneld.kem import (
    COMPONENTS,
    PARAMS,
    KemBackend,
    KemError,
    KemPrivateKey,
    KemPublicKey,
    backend_for,
)

X25519_SIZE = 32
COMBINER_LABEL = b"zonegate-tunneld-v1 hybrid-kem"

Random = Callable[[int], bytes]


def combine(
    kem_name: str,
    ss_m: bytes,
    ss_x: bytes,
    ct_m: bytes,
    ct_x: bytes,
    pk_digest: bytes,
) -> bytes:
    """SHA3-256(label, suite, ss_PQ, ss_X, ct_PQ, ct_X, H(pk_PQ, pk_X)).

    For a three-component suite `ss_PQ = ss_M || ss_C` and `ct_PQ = ct_M || ct_C` (in
    the suite's order). Every field has a fixed size given by the suite name, which is
    hashed first, so the concatenation is unambiguous.
    """
    h = hashlib.sha3_256(COMBINER_LABEL)
    h.update(kem_name.encode())
    for part in (ss_m, ss_x, ct_m, ct_x, pk_digest):
        h.update(part)
    return h.digest()


def split(suite: str, data: bytes, size: str) -> list[tuple[str, bytes]]:
    """Cut a suite's concatenated public key or ciphertext into (component, bytes)."""
    out: list[tuple[str, bytes]] = []
    pos = 0
    for part in PARAMS[suite].components:
        n = getattr(COMPONENTS[part], size)
        out.append((part, data[pos : pos + n]))
        pos += n
    if pos != len(data):
        raise KemError(f"{suite} {size.replace('_', ' ')} must be {pos} bytes")
    return out


def public_digest(kem_public: bytes, x_public: bytes) -> bytes:
    return hashlib.sha3_256(b"zonegate-tunneld-v1 pk" + kem_public + x_public).digest()


def x25519_exchange(priv: X25519PrivateKey, public: bytes) -> bytes:
    """X25519 with the all-zero (low-order point) result rejected."""
    try:
        return priv.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError as exc:
        raise KemError("X25519 public key is a low-order point") from exc


@dataclass(frozen=True)
class HybridCiphertext:
    x: bytes  # the encapsulator's ephemeral X25519 public key
    m: bytes  # the post-quantum ciphertexts, concatenated in the suite's order

    def to_bytes(self) -> bytes:
        return self.x + self.m


class HybridPublicKey:
    """A peer's (or an ephemeral) hybrid encapsulation key, parsed once."""

    def __init__(self, backend: KemBackend, kem: str, x_public: bytes, kem_public: bytes):
        if len(x_public) != X25519_SIZE:
            raise KemError("X25519 public key must be 32 bytes")
        if kem not in PARAMS:
            raise KemError(f"unknown KEM suite {kem!r}")
        if len(kem_public) != PARAMS[kem].public_key_size:
            raise KemError(f"{kem} public key must be {PARAMS[kem].public_key_size} bytes")
        self.kem = kem
        self.x_public = x_public
        self.kem_public = kem_public
        self._kem_keys: list[KemPublicKey] = [
            backend_for(part, backend).load_public(part, pk)
            for part, pk in split(kem, kem_public, "public_key_size")
        ]
        self.digest = public_digest(kem_public, x_public)

    def encapsulate(self, rng: Random) -> tuple[bytes, HybridCiphertext]:
        """Return (combined shared secret, ciphertext)."""
        eph = X25519PrivateKey.from_private_bytes(rng(X25519_SIZE))
        ct_x = eph.public_key().public_bytes_raw()
        ss_x = x25519_exchange(eph, self.x_public)
        pairs = [k.encapsulate() for k in self._kem_keys]
        ss_m = b"".join(ss for ss, _ in pairs)
        ct_m = b"".join(ct for _, ct in pairs)
        return combine(self.kem, ss_m, ss_x, ct_m, ct_x, self.digest), HybridCiphertext(ct_x, ct_m)


class HybridPrivateKey:
    """A hybrid decapsulation key: X25519 private key plus one key per PQ component.

    Identity keys are made from seeds (`__init__`, ML-KEM suites only: they are stored);
    ephemeral keys are drawn fresh (`generate`, any suite: HQC keys are never stored).
    """

    def __init__(
        self,
        backend: KemBackend,
        kem: str,
        x_secret: bytes,
        kem_seed: bytes,
        *,
        _keys: list[KemPrivateKey] | None = None,
    ):
        if kem not in PARAMS:
            raise KemError(f"unknown KEM suite {kem!r}")
        self.kem = kem
        self._x = X25519PrivateKey.from_private_bytes(x_secret)
        self.x_secret = x_secret
        if _keys is None:
            if PARAMS[kem].parts:
                raise KemError(f"{kem} keys are ephemeral only; identity keys use ML-KEM")
            _keys = [backend.from_seed(kem, kem_seed)]
        self._kem_keys = _keys
        self.kem_seed = kem_seed
        self.x_public = self._x.public_key().public_bytes_raw()
        self.kem_public = b"".join(k.public_bytes for k in _keys)
        self.digest = public_digest(self.kem_public, self.x_public)

    @classmethod
    def generate(cls, backend: KemBackend, kem: str, rng: Random) -> HybridPrivateKey:
        if kem not in PARAMS:
            raise KemError(f"unknown KEM suite {kem!r}")
        x_secret = rng(X25519_SIZE)
        keys = [backend_for(p, backend).generate(p, rng) for p in PARAMS[kem].components]
        return cls(backend, kem, x_secret, b"".join(k.seed for k in keys), _keys=keys)

    def __repr__(self) -> str:
        return f"HybridPrivateKey({self.kem}, public {self.digest.hex()[:16]}...)"

    def decapsulate(self, ct: HybridCiphertext) -> bytes:
        ss_x = x25519_exchange(self._x, ct.x)
        parts = split(self.kem, ct.m, "ciphertext_size")
        ss_m = b"".join(k.decapsulate(c) for k, (_, c) in zip(self._kem_keys, parts, strict=True))
        return combine(self.kem, ss_m, ss_x, ct.m, ct.x, self.digest)

    def static_dh(self, peer_x_public: bytes) -> bytes:
        """Static-static X25519: only used to key the cheap anti-DoS MAC, never the PSK."""
        return x25519_exchange(self._x, peer_x_public)
