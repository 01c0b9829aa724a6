"""An identity's key set on disk: made by `tunneld keygen DIR`, read by the daemon.

DIR/wireguard.key  WireGuard private key, base64 (as `wg genkey`), mode 0600
DIR/identity.key   static hybrid key as seeds (X25519 + ML-KEM), JSON, mode 0600
DIR/identity.pub   public bundle (WireGuard, X25519, ML-KEM public keys), JSON; this
                   is the file a topology's `keys:` names and every peer pins

DIR must be 0700 and private files 0600, or loading refuses (like Rosenpass and ssh);
keygen never overwrites an existing key. Secrets never appear in error messages.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from topology.keybundle import FORMAT, BundleError, parse_bundle
from tunneld.hybrid import HybridPrivateKey, HybridPublicKey
from tunneld.kem import IDENTITY_KEMS, PARAMS, KemBackend, KemError, get_backend
from tunneld.signing import fingerprint

WG_KEY = "wireguard.key"
IDENTITY_KEY = "identity.key"
PUBLIC = "identity.pub"


class KeyFileError(Exception):
    """A key file is missing, malformed or has unsafe permissions (message says the fix)."""


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: object, what: str, size: int | None = None) -> bytes:
    if not isinstance(text, str):
        raise KeyFileError(f"{what}: not a base64 string")
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError:
        raise KeyFileError(f"{what}: not valid base64") from None
    if size is not None and len(raw) != size:
        raise KeyFileError(f"{what}: expected {size} bytes, got {len(raw)}")
    return raw


def wg_public_key(private: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


@dataclass(frozen=True)
class PublicBundle:
    """What a peer pins: parsed from identity.pub."""

    kem: str
    wireguard: bytes
    x25519: bytes
    kem_public: bytes

    def to_dict(self) -> dict[str, object]:
        return {
            "format": FORMAT,
            "version": 1,
            "kem": self.kem,
            "wireguard": b64(self.wireguard),
            "x25519": b64(self.x25519),
            "kem_public": b64(self.kem_public),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @property
    def fingerprint(self) -> str:
        """Short form of `digest` to compare over the phone (tunneld/signing.py)."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return fingerprint("zonegate identity", canonical.encode())

    def digest(self) -> str:
        """Names this bundle in a tunnel profile: SHA-256 of its canonical JSON."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()

    def hybrid(self, backend: KemBackend) -> HybridPublicKey:
        return HybridPublicKey(backend, self.kem, self.x25519, self.kem_public)


@dataclass(frozen=True)
class KeySet:
    """A node's own keys, loaded from its key directory."""

    wg_private: bytes = field(repr=False)
    static: HybridPrivateKey = field(repr=False)
    public: PublicBundle


def keygen(directory: Path, kem: str = "ml-kem-768", backend: KemBackend | None = None) -> Path:
    """Create a new key set in `directory` (created 0700); return the public bundle path."""
    if kem not in IDENTITY_KEMS:
        raise KeyFileError(f"unknown KEM {kem!r}; choose one of {', '.join(IDENTITY_KEMS)}")
    backend = backend or get_backend()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    for name in (WG_KEY, IDENTITY_KEY, PUBLIC):
        if (directory / name).exists():
            raise KeyFileError(f"{directory / name} exists; keys are never overwritten")
    wg_private = secrets.token_bytes(32)
    static = HybridPrivateKey.generate(backend, kem, secrets.token_bytes)
    bundle = PublicBundle(kem, wg_public_key(wg_private), static.x_public, static.kem_public)
    secret_doc = {
        "format": FORMAT,
        "version": 1,
        "kem": kem,
        "x25519": b64(static.x_secret),
        "kem_seed": b64(static.kem_seed),
    }
    _write_new(directory / WG_KEY, b64(wg_private) + "\n", 0o600)
    _write_new(directory / IDENTITY_KEY, json.dumps(secret_doc) + "\n", 0o600)
    _write_new(directory / PUBLIC, bundle.to_json(), 0o644)
    return directory / PUBLIC


def _write_new(path: Path, text: str, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, mode)


def _check_private(path: Path, want: int) -> None:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise KeyFileError(f"{path} does not exist; run: tunneld keygen {path.parent}") from None
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise KeyFileError(
            f"{path} is readable by others (mode {stat.S_IMODE(st.st_mode):o}); "
            f"run: chmod {want:o} {path}"
        )


def load_public(path: Path | str) -> PublicBundle:
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise KeyFileError(f"{path} does not exist") from None
    except (ValueError, UnicodeDecodeError):
        raise KeyFileError(f"{path}: not a JSON key bundle") from None
    return parse_public(doc, str(path))


def parse_public(doc: object, where: str) -> PublicBundle:
    """A public bundle from its parsed JSON (a file, or inline in a tunnel profile),
    validated like `zonegate check` does (topology.keybundle): sizes, points, ML-KEM."""
    try:
        k = parse_bundle(doc)
    except BundleError as exc:
        raise KeyFileError(f"{where}: {exc}") from None
    return PublicBundle(kem=k.kem, wireguard=k.wireguard, x25519=k.x25519, kem_public=k.kem_public)


def load_keyset(directory: Path | str, backend: KemBackend | None = None) -> KeySet:
    """Load and cross-check a key directory (permissions, formats, public bundle)."""
    directory = Path(directory)
    backend = backend or get_backend()
    if not directory.is_dir():
        raise KeyFileError(f"{directory} is not a key directory; run: tunneld keygen {directory}")
    mode = stat.S_IMODE(directory.stat().st_mode)
    if mode & 0o077:
        raise KeyFileError(f"{directory} has mode {mode:o}; run: chmod 700 {directory}")
    for name in (WG_KEY, IDENTITY_KEY):
        _check_private(directory / name, 0o600)
    wg_private = unb64((directory / WG_KEY).read_text().strip(), f"{directory / WG_KEY}", 32)
    try:
        doc = json.loads((directory / IDENTITY_KEY).read_text())
    except ValueError:
        raise KeyFileError(f"{directory / IDENTITY_KEY}: not JSON") from None
    kem = doc.get("kem") if isinstance(doc, dict) else None
    if kem not in IDENTITY_KEMS or doc.get("format") != FORMAT:
        raise KeyFileError(f"{directory / IDENTITY_KEY}: not a {FORMAT} identity key")
    where = str(directory / IDENTITY_KEY)
    try:
        static = HybridPrivateKey(
            backend,
            kem,
            unb64(doc.get("x25519"), f"{where}: x25519", 32),
            unb64(doc.get("kem_seed"), f"{where}: kem_seed", PARAMS[kem].seed_size),
        )
    except KemError as exc:
        raise KeyFileError(f"{where}: {exc}") from None
    public = load_public(directory / PUBLIC)
    mine = PublicBundle(kem, wg_public_key(wg_private), static.x_public, static.kem_public)
    if public != mine:
        raise KeyFileError(f"{directory / PUBLIC} does not match the private keys in {directory}")
    return KeySet(wg_private, static, public)
