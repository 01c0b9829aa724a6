"""The hybrid KEM: X25519 and ML-KEM used together, combined X-Wing style.

Every key exchange in the handshake (ephemeral and both static-key authentications) is
this hybrid: an X25519 exchange with a fresh ephemeral key plus an ML-KEM
encapsulation. The two shared secrets are hashed together with both ciphertexts, a
digest of both public keys and a label, so the result stays secret as long as either
primitive holds (and is bound to exactly these keys and ciphertexts). X-Wing leaves out
the ML-KEM ciphertext and public key because ML-KEM is ciphertext-binding; we keep
them, so the combiner stays sound with any KEM a backend may add.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from tunneld.kem import PARAMS, KemBackend, KemError, KemPrivateKey, KemPublicKey

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
    """SHA3-256(label, kem, ss_M, ss_X, ct_M, ct_X, H(pk_M, pk_X)); all fields fixed size."""
    h = hashlib.sha3_256(COMBINER_LABEL)
    h.update(kem_name.encode())
    for part in (ss_m, ss_x, ct_m, ct_x, pk_digest):
        h.update(part)
    return h.digest()


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
    m: bytes  # the ML-KEM ciphertext

    def to_bytes(self) -> bytes:
        return self.x + self.m


class HybridPublicKey:
    """A peer's (or an ephemeral) hybrid encapsulation key, parsed once."""

    def __init__(self, backend: KemBackend, kem: str, x_public: bytes, kem_public: bytes):
        if len(x_public) != X25519_SIZE:
            raise KemError("X25519 public key must be 32 bytes")
        if len(kem_public) != PARAMS[kem].public_key_size:
            raise KemError(f"{kem} public key must be {PARAMS[kem].public_key_size} bytes")
        self.kem = kem
        self.x_public = x_public
        self.kem_public = kem_public
        self._kem_key: KemPublicKey = backend.load_public(kem, kem_public)
        self.digest = public_digest(kem_public, x_public)

    def encapsulate(self, rng: Random) -> tuple[bytes, HybridCiphertext]:
        """Return (combined shared secret, ciphertext)."""
        eph = X25519PrivateKey.from_private_bytes(rng(X25519_SIZE))
        ct_x = eph.public_key().public_bytes_raw()
        ss_x = x25519_exchange(eph, self.x_public)
        ss_m, ct_m = self._kem_key.encapsulate()
        return combine(self.kem, ss_m, ss_x, ct_m, ct_x, self.digest), HybridCiphertext(ct_x, ct_m)


class HybridPrivateKey:
    """A hybrid decapsulation key: X25519 private key plus ML-KEM seed."""

    def __init__(self, backend: KemBackend, kem: str, x_secret: bytes, kem_seed: bytes):
        self.kem = kem
        self._x = X25519PrivateKey.from_private_bytes(x_secret)
        self.x_secret = x_secret
        self._kem_key: KemPrivateKey = backend.from_seed(kem, kem_seed)
        self.kem_seed = kem_seed
        self.x_public = self._x.public_key().public_bytes_raw()
        self.kem_public = self._kem_key.public_bytes
        self.digest = public_digest(self.kem_public, self.x_public)

    @classmethod
    def generate(cls, backend: KemBackend, kem: str, rng: Random) -> HybridPrivateKey:
        return cls(backend, kem, rng(X25519_SIZE), rng(PARAMS[kem].seed_size))

    def __repr__(self) -> str:
        return f"HybridPrivateKey({self.kem}, public {self.digest.hex()[:16]}...)"

    def decapsulate(self, ct: HybridCiphertext) -> bytes:
        ss_x = x25519_exchange(self._x, ct.x)
        ss_m = self._kem_key.decapsulate(ct.m)
        return combine(self.kem, ss_m, ss_x, ct.m, ct.x, self.digest)

    def static_dh(self, peer_x_public: bytes) -> bytes:
        """Static-static X25519: only used to key the cheap anti-DoS MAC, never the PSK."""
        return x25519_exchange(self._x, peer_x_public)
