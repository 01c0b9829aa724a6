"""Post-quantum KEM backends behind one small interface.

The handshake needs three operations: make a key pair (from a seed, so keys can be
stored as seeds and tests can be deterministic), encapsulate to a public key and
decapsulate. `cryptography` (ML-KEM-768/1024, always installed) is the default
backend. liboqs-python is optional: it is detected without importing it first,
because importing `oqs` without the liboqs shared library makes it try to download
and build liboqs (which hangs or fails offline). When the library is absent the
backend is reported as unavailable with a reason; that is not an error.
"""

from __future__ import annotations

import ctypes.util
import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric import mlkem


@dataclass(frozen=True)
class KemParams:
    """Sizes of one KEM algorithm; the codec uses them to reject bad lengths early."""

    name: str
    wire_id: int  # one byte in message headers
    public_key_size: int
    ciphertext_size: int
    shared_secret_size: int
    seed_size: int


ML_KEM_768 = KemParams("ml-kem-768", 1, 1184, 1088, 32, 64)
ML_KEM_1024 = KemParams("ml-kem-1024", 2, 1568, 1568, 32, 64)

PARAMS: dict[str, KemParams] = {p.name: p for p in (ML_KEM_768, ML_KEM_1024)}
PARAMS_BY_WIRE_ID: dict[int, KemParams] = {p.wire_id: p for p in PARAMS.values()}


class KemError(Exception):
    """A KEM operation was asked for something it cannot do (bad key, unknown algorithm)."""


class KemPrivateKey(Protocol):
    """A decapsulation key, held in whatever form the backend computes with fastest."""

    @property
    def public_bytes(self) -> bytes: ...

    @property
    def seed(self) -> bytes: ...

    def decapsulate(self, ciphertext: bytes) -> bytes: ...


class KemPublicKey(Protocol):
    """A parsed encapsulation key (parsed once; peers' static keys are reused)."""

    @property
    def public_bytes(self) -> bytes: ...

    def encapsulate(self) -> tuple[bytes, bytes]:
        """Return (shared_secret, ciphertext)."""
        ...


class KemBackend(Protocol):
    name: str

    def algorithms(self) -> tuple[str, ...]: ...

    def from_seed(self, alg: str, seed: bytes) -> KemPrivateKey: ...

    def load_public(self, alg: str, public: bytes) -> KemPublicKey: ...


# --- cryptography -------------------------------------------------------------------


class _CryptoPrivate:
    def __init__(self, key: Any, seed: bytes) -> None:
        self._key = key
        self._seed = seed
        self._public = bytes(key.public_key().public_bytes_raw())

    @property
    def public_bytes(self) -> bytes:
        return self._public

    @property
    def seed(self) -> bytes:
        return self._seed

    def decapsulate(self, ciphertext: bytes) -> bytes:
        try:
            return bytes(self._key.decapsulate(ciphertext))
        except ValueError as exc:
            raise KemError("ciphertext rejected by ML-KEM") from exc


class _CryptoPublic:
    def __init__(self, key: Any, public: bytes) -> None:
        self._key = key
        self._public = public

    @property
    def public_bytes(self) -> bytes:
        return self._public

    def encapsulate(self) -> tuple[bytes, bytes]:
        ss, ct = self._key.encapsulate()
        return bytes(ss), bytes(ct)


_CRYPTO_CLASSES: dict[str, tuple[Any, Any]] = {
    "ml-kem-768": (mlkem.MLKEM768PrivateKey, mlkem.MLKEM768PublicKey),
    "ml-kem-1024": (mlkem.MLKEM1024PrivateKey, mlkem.MLKEM1024PublicKey),
}


class CryptographyBackend:
    """ML-KEM from pyca/cryptography (OpenSSL/AWS-LC, constant time, always installed)."""

    name = "cryptography"

    def algorithms(self) -> tuple[str, ...]:
        return tuple(_CRYPTO_CLASSES)

    def from_seed(self, alg: str, seed: bytes) -> KemPrivateKey:
        priv_cls, _ = self._classes(alg)
        if len(seed) != PARAMS[alg].seed_size:
            raise KemError(f"{alg} seed must be {PARAMS[alg].seed_size} bytes")
        return _CryptoPrivate(priv_cls.from_seed_bytes(seed), seed)

    def load_public(self, alg: str, public: bytes) -> KemPublicKey:
        _, pub_cls = self._classes(alg)
        try:
            return _CryptoPublic(pub_cls.from_public_bytes(public), public)
        except ValueError as exc:
            raise KemError(f"invalid {alg} public key") from exc

    @staticmethod
    def _classes(alg: str) -> tuple[Any, Any]:
        try:
            return _CRYPTO_CLASSES[alg]
        except KeyError:
            raise KemError(f"backend cryptography has no KEM {alg!r}") from None


# --- liboqs (optional) --------------------------------------------------------------

_OQS_NAMES = {"ml-kem-768": "ML-KEM-768", "ml-kem-1024": "ML-KEM-1024"}


@dataclass(frozen=True)
class Availability:
    name: str
    available: bool
    reason: str


def find_liboqs() -> str | None:
    """Where liboqs-python would load the shared library from, without importing it.

    liboqs-python looks in OQS_INSTALL_PATH, then ~/_oqs, then the system linker path;
    when none has it, `import oqs` starts a git clone + cmake build. We only import
    `oqs` after this returns a path.
    """
    candidates = []
    env = os.environ.get("OQS_INSTALL_PATH")
    if env:
        candidates.append(Path(env))
    candidates.append(Path.home() / "_oqs")
    for base in candidates:
        for sub in ("lib", "lib64"):
            for name in ("liboqs.so", "liboqs.dylib"):
                p = base / sub / name
                if p.exists():
                    return str(p)
    return ctypes.util.find_library("oqs")


class _OqsPrivate:
    def __init__(self, kem: Any, public: bytes, seed: bytes) -> None:
        self._kem = kem
        self._public = public
        self._seed = seed

    @property
    def public_bytes(self) -> bytes:
        return self._public

    @property
    def seed(self) -> bytes:
        return self._seed

    def decapsulate(self, ciphertext: bytes) -> bytes:
        try:
            return bytes(self._kem.decap_secret(ciphertext))
        except Exception as exc:  # liboqs raises RuntimeError/ValueError of its own
            raise KemError(f"liboqs decapsulation failed: {type(exc).__name__}") from exc


class _OqsPublic:
    def __init__(self, oqs: Any, alg: str, public: bytes) -> None:
        self._oqs = oqs
        self._alg = alg
        self._public = public

    @property
    def public_bytes(self) -> bytes:
        return self._public

    def encapsulate(self) -> tuple[bytes, bytes]:
        try:
            with self._oqs.KeyEncapsulation(self._alg) as kem:
                ct, ss = kem.encap_secret(self._public)
        except Exception as exc:
            raise KemError(f"liboqs encapsulation failed: {type(exc).__name__}") from exc
        return bytes(ss), bytes(ct)


class OqsBackend:
    """liboqs through liboqs-python; constructed only after `find_liboqs()` succeeded."""

    name = "liboqs"

    def __init__(self, oqs_module: Any) -> None:
        self._oqs = oqs_module
        enabled = set(oqs_module.get_enabled_kem_mechanisms())
        self._algs = tuple(a for a, o in _OQS_NAMES.items() if o in enabled)

    def algorithms(self) -> tuple[str, ...]:
        return self._algs

    def from_seed(self, alg: str, seed: bytes) -> KemPrivateKey:
        if alg not in self._algs:
            raise KemError(f"backend liboqs has no KEM {alg!r}")
        try:
            kem = self._oqs.KeyEncapsulation(_OQS_NAMES[alg])
            public = bytes(kem.generate_keypair_seed(seed))
        except Exception as exc:
            raise KemError(f"liboqs key generation failed: {type(exc).__name__}") from exc
        return _OqsPrivate(kem, public, seed)

    def load_public(self, alg: str, public: bytes) -> KemPublicKey:
        if alg not in self._algs:
            raise KemError(f"backend liboqs has no KEM {alg!r}")
        if len(public) != PARAMS[alg].public_key_size:
            raise KemError(f"invalid {alg} public key")
        return _OqsPublic(self._oqs, _OQS_NAMES[alg], public)


def probe_liboqs(
    find: Callable[[], str | None] = find_liboqs,
    importer: Callable[[str], Any] = importlib.import_module,
) -> tuple[Availability, OqsBackend | None]:
    """Detect liboqs; import `oqs` only when its shared library is already installed."""
    path = find()
    if path is None:
        return Availability("liboqs", False, "liboqs shared library not installed"), None
    try:
        module = importer("oqs")
        backend = OqsBackend(module)
    except Exception as exc:  # any import-time failure means "not usable", never fatal
        return Availability("liboqs", False, f"liboqs-python unusable: {exc}"), None
    return Availability("liboqs", True, f"liboqs at {path}"), backend


_BACKENDS: dict[str, KemBackend] = {}
_LIBOQS_PROBED: tuple[Availability, OqsBackend | None] | None = None


def availability() -> list[Availability]:
    """Every backend with whether it can be used here and why not."""
    global _LIBOQS_PROBED
    if _LIBOQS_PROBED is None:
        _LIBOQS_PROBED = probe_liboqs()
    return [Availability("cryptography", True, "always installed"), _LIBOQS_PROBED[0]]


def get_backend(name: str = "cryptography") -> KemBackend:
    """The named backend; KemError (with the reason) when it is not available here."""
    if name in _BACKENDS:
        return _BACKENDS[name]
    if name == "cryptography":
        _BACKENDS[name] = CryptographyBackend()
        return _BACKENDS[name]
    if name == "liboqs":
        avail = availability()[1]
        if _LIBOQS_PROBED is None or _LIBOQS_PROBED[1] is None:
            raise KemError(f"KEM backend liboqs unavailable: {avail.reason}")
        _BACKENDS[name] = _LIBOQS_PROBED[1]
        return _BACKENDS[name]
    raise KemError(f"unknown KEM backend {name!r}")
