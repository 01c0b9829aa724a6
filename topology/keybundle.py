"""A public key bundle (identity.pub, written by `tunneld keygen`): parsed and validated.

Pure and shared: `zonegate check` validates every bundle a topology pins (the loader
reports problems at the `keys:` entry, FILE:LINE:COL), and tunneld parses bundles with
the same function at load, so a key that `check` accepts is one the daemon can use, and
one it rejects never reaches WireGuard or the handshake. Checks: the format, base64 and
sizes; both X25519 keys (WireGuard's and the static one) must not be low-order points
(the all-zero key among them: every exchange with it yields zero); the ML-KEM
encapsulation key must pass FIPS 203's modulus check (every coefficient below q).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from pathlib import Path

FORMAT = "zonegate-tunneld-keys"
# Encapsulation key sizes (FIPS 203): 384*k bytes of coefficients plus a 32-byte seed.
KEM_PUBLIC_SIZE = {"ml-kem-768": 1184, "ml-kem-1024": 1568}
MLKEM_Q = 3329


class BundleError(ValueError):
    """What is wrong with a bundle, naming the field (never any key bytes)."""


@dataclass(frozen=True)
class BundleKeys:
    kem: str
    wireguard: bytes
    x25519: bytes
    kem_public: bytes


def x25519_problem(public: bytes) -> str | None:
    # Imported here: `zonegate` start-up does not pay for cryptography unless keys are
    # pinned. One fixed scalar suffices: a low-order point gives zero with every scalar.
    from cryptography.hazmat.primitives.asymmetric.x25519 import (
        X25519PrivateKey,
        X25519PublicKey,
    )

    if len(public) != 32:
        return f"expected 32 bytes, got {len(public)}"
    try:
        probe = X25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
        probe.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError:
        return "a low-order X25519 point (e.g. all zero): no key agreement is possible"
    return None


def mlkem_problem(kem: str, public: bytes) -> str | None:
    size = KEM_PUBLIC_SIZE[kem]
    if len(public) != size:
        return f"expected {size} bytes, got {len(public)}"
    packed = public[: size - 32]
    for i in range(0, len(packed), 3):
        a, b, c = packed[i], packed[i + 1], packed[i + 2]
        if (a | (b & 0x0F) << 8) >= MLKEM_Q or (b >> 4 | c << 4) >= MLKEM_Q:
            return f"fails the {kem} modulus check (a coefficient is not below {MLKEM_Q})"
    return None


def _field(doc: dict[str, object], key: str) -> bytes:
    text = doc.get(key)
    if not isinstance(text, str):
        raise BundleError(f"{key}: not a base64 string")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BundleError(f"{key}: not valid base64") from None


def parse_bundle(doc: object) -> BundleKeys:
    """A bundle from its parsed JSON; BundleError on the first problem."""
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("version") != 1:
        raise BundleError(f"not a {FORMAT} v1 public bundle")
    kem = doc.get("kem")
    if not isinstance(kem, str) or kem not in KEM_PUBLIC_SIZE:
        raise BundleError(f"unknown KEM {kem!r}")
    keys = BundleKeys(kem, _field(doc, "wireguard"), _field(doc, "x25519"), b"")
    for name, value in (("wireguard", keys.wireguard), ("x25519", keys.x25519)):
        problem = x25519_problem(value)
        if problem:
            raise BundleError(f"{name}: {problem}")
    kem_public = _field(doc, "kem_public")
    problem = mlkem_problem(kem, kem_public)
    if problem:
        raise BundleError(f"kem_public: {problem}")
    return BundleKeys(kem, keys.wireguard, keys.x25519, kem_public)


def read_bundle(path: Path) -> BundleKeys:
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise BundleError("does not exist") from None
    except (OSError, ValueError, UnicodeDecodeError):
        raise BundleError("not a JSON key bundle") from None
    return parse_bundle(doc)
