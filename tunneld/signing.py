"""Profile signing keys and short fingerprints a person can read over the phone.

A tunnel profile carries the gateways' pinned keys: whoever can swap a profile in transit
can put their own keys there and sit in the middle. So the network team keeps one
profile-signing key, `zonegate profile issue` signs every profile with it, and
`tunneld join` accepts a profile only when its signature verifies against the signer
fingerprint the user was given out of band (on the phone, on paper, in person).

The signature is hybrid, like the handshake: Ed25519 and ML-DSA-65 (both from
`cryptography`), and a profile is accepted only if both verify, so forging one needs
breaking both. Key files (`zonegate profile signer-keygen DIR`):

DIR/signer.key  both private keys as seeds, JSON, mode 0600 (DIR 0700)
DIR/signer.pub  both public keys, JSON; its fingerprint is what users are told

A fingerprint is SHA-256 over a label and the public key(s), the first 120 bits in
base32: 24 characters in groups of four, e.g. `K3QF-7XPA-...`. Secrets never appear in a
repr, message or log.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import mldsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

SIGNER_FORMAT = "zonegate-profile-signer"
SIGNER_KEY = "signer.key"
SIGNER_PUB = "signer.pub"
SIGNATURE_LABEL = b"zonegate-profile-v1 signature\x00"


class SigningError(Exception):
    """A signing key or signature is missing, malformed or does not verify."""


def fingerprint(label: str, data: bytes) -> str:
    """Short, readable digest: 24 base32 characters (120 bits) in groups of four."""
    digest = hashlib.sha256(label.encode() + b"\x00" + data).digest()[:15]
    text = base64.b32encode(digest).decode()
    return "-".join(text[i : i + 4] for i in range(0, len(text), 4))


def normalise(fp: str) -> str:
    """What a person typed (any case, spaces or dashes) in canonical form."""
    raw = "".join(c for c in fp.upper() if c.isalnum())
    return "-".join(raw[i : i + 4] for i in range(0, len(raw), 4))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(doc: dict[str, object], key: str, where: str) -> bytes:
    value = doc.get(key)
    if not isinstance(value, str):
        raise SigningError(f"{where}: '{key}' missing or not a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:
        raise SigningError(f"{where}: '{key}' is not valid base64") from None


@dataclass(frozen=True)
class SignerPublic:
    ed25519: bytes
    ml_dsa_65: bytes

    @property
    def fingerprint(self) -> str:
        return fingerprint("zonegate profile signer", self.ed25519 + self.ml_dsa_65)

    def to_dict(self) -> dict[str, object]:
        return {
            "format": SIGNER_FORMAT,
            "version": 1,
            "ed25519": _b64(self.ed25519),
            "ml_dsa_65": _b64(self.ml_dsa_65),
        }

    @classmethod
    def from_dict(cls, doc: object, where: str) -> SignerPublic:
        if not isinstance(doc, dict) or doc.get("format") != SIGNER_FORMAT:
            raise SigningError(f"{where}: not a {SIGNER_FORMAT} public key")
        return cls(_unb64(doc, "ed25519", where), _unb64(doc, "ml_dsa_65", where))

    def verify(self, message: bytes, sig_ed25519: bytes, sig_ml_dsa: bytes) -> bool:
        """Both signatures must verify (hybrid: forging needs both schemes broken)."""
        data = SIGNATURE_LABEL + message
        try:
            Ed25519PublicKey.from_public_bytes(self.ed25519).verify(sig_ed25519, data)
            mldsa.MLDSA65PublicKey.from_public_bytes(self.ml_dsa_65).verify(sig_ml_dsa, data)
        except (InvalidSignature, ValueError):
            return False
        return True


@dataclass(frozen=True)
class Signer:
    """The network team's profile-signing key (private; never printed)."""

    ed25519_seed: bytes = field(repr=False)
    ml_dsa_seed: bytes = field(repr=False)

    @property
    def public(self) -> SignerPublic:
        ed = Ed25519PrivateKey.from_private_bytes(self.ed25519_seed).public_key()
        ml = mldsa.MLDSA65PrivateKey.from_seed_bytes(self.ml_dsa_seed).public_key()
        return SignerPublic(ed.public_bytes_raw(), ml.public_bytes_raw())

    def sign(self, message: bytes) -> tuple[bytes, bytes]:
        data = SIGNATURE_LABEL + message
        ed = Ed25519PrivateKey.from_private_bytes(self.ed25519_seed).sign(data)
        ml = mldsa.MLDSA65PrivateKey.from_seed_bytes(self.ml_dsa_seed).sign(data)
        return ed, ml


def signer_keygen(directory: Path) -> SignerPublic:
    """Create DIR/signer.key (0600) and DIR/signer.pub; never overwrites."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    for name in (SIGNER_KEY, SIGNER_PUB):
        if (directory / name).exists():
            raise SigningError(f"{directory / name} exists; keys are never overwritten")
    signer = Signer(os.urandom(32), os.urandom(32))
    secret = {
        "format": SIGNER_FORMAT,
        "version": 1,
        "ed25519_seed": _b64(signer.ed25519_seed),
        "ml_dsa_65_seed": _b64(signer.ml_dsa_seed),
    }
    _write_new(directory / SIGNER_KEY, json.dumps(secret) + "\n", 0o600)
    _write_new(directory / SIGNER_PUB, json.dumps(signer.public.to_dict(), indent=2) + "\n", 0o644)
    return signer.public


def _write_new(path: Path, text: str, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, mode)


def load_signer(path: Path) -> Signer:
    """The signing key from DIR (or DIR/signer.key); refuses unsafe permissions."""
    key = path / SIGNER_KEY if path.is_dir() else path
    try:
        mode = stat.S_IMODE(key.stat().st_mode)
    except FileNotFoundError:
        raise SigningError(
            f"{key} does not exist; make one with: zonegate profile signer-keygen DIR"
        ) from None
    if mode & 0o077:
        raise SigningError(f"{key} is readable by others (mode {mode:o}); run: chmod 600 {key}")
    try:
        doc = json.loads(key.read_text())
    except (ValueError, UnicodeDecodeError):
        raise SigningError(f"{key}: not a {SIGNER_FORMAT} key") from None
    if not isinstance(doc, dict) or doc.get("format") != SIGNER_FORMAT:
        raise SigningError(f"{key}: not a {SIGNER_FORMAT} key")
    ed, ml = _unb64(doc, "ed25519_seed", str(key)), _unb64(doc, "ml_dsa_65_seed", str(key))
    if len(ed) != 32 or len(ml) != 32:
        raise SigningError(f"{key}: seeds must be 32 bytes each")
    return Signer(ed, ml)
