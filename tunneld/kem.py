"""Post-quantum KEM backends behind one small interface, and the KEM suites on the wire.

The handshake needs four operations: make a key pair from a seed (identity keys are
stored as seeds), draw a fresh key pair (ephemeral keys), encapsulate to a public key
and decapsulate. Three backends implement them, selected at run time
(`tunneld --kem-backend`):

- `cryptography` (ML-KEM-768/1024 from OpenSSL/AWS-LC; always installed, the default);
- `pqcrypto` (PQClean compiled, from PyPI; the `pq` extra): ML-KEM and HQC;
- `liboqs` (liboqs-python; needs the liboqs shared library): detected without
  importing it first, because importing `oqs` without the library makes it try to
  download and build liboqs (which hangs or fails offline).

A backend that is absent is reported as unavailable with a reason; that is not an error.

A *suite* is what one hybrid key carries besides X25519: ML-KEM alone, or ML-KEM plus
the code-based HQC as a third component (`ml-kem-768+hqc-192`). Suites have one-byte
wire ids in message headers and their names are bound into the transcript, so both
sides must agree on the whole suite (docs/handshake.md section 3).
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

from tunneld import mlkem_expand

Random = Callable[[int], bytes]


@dataclass(frozen=True)
class KemParams:
    """Sizes of one KEM or suite; the codec uses them to reject bad lengths early.

    A suite's sizes are the sums of its `parts` (components, in wire order); a
    component has no parts and wire id 0 (it never appears alone in a header).
    `seed_size` 0: keys can not be made from a seed (only drawn fresh: ephemeral use).
    """

    name: str
    wire_id: int  # one byte in message headers; 0 for a component that is not a suite
    public_key_size: int
    ciphertext_size: int
    shared_secret_size: int
    seed_size: int
    parts: tuple[str, ...] = ()

    @property
    def components(self) -> tuple[str, ...]:
        return self.parts or (self.name,)


# Components.
COMPONENTS: dict[str, KemParams] = {
    p.name: p
    for p in (
        KemParams("ml-kem-768", 1, 1184, 1088, 32, 64),
        KemParams("ml-kem-1024", 2, 1568, 1568, 32, 64),
        KemParams("hqc-128", 0, 2241, 4433, 32, 0),
        KemParams("hqc-192", 0, 4514, 8978, 32, 0),
        KemParams("hqc-256", 0, 7237, 14421, 32, 0),
    )
}
ML_KEM_768 = COMPONENTS["ml-kem-768"]
ML_KEM_1024 = COMPONENTS["ml-kem-1024"]
ML_KEMS = ("ml-kem-768", "ml-kem-1024")
CODE_KEMS = ("hqc-128", "hqc-192", "hqc-256")
# Identity (static) keys are stored as seeds, so they are ML-KEM only; HQC (no seeded
# key generation, 7 KB keys) is used for ephemeral keys, fresh for each handshake.
IDENTITY_KEMS = ML_KEMS


def _suite(wire_id: int, *parts: str) -> KemParams:
    ps = [COMPONENTS[p] for p in parts]
    return KemParams(
        "+".join(parts),
        wire_id,
        sum(p.public_key_size for p in ps),
        sum(p.ciphertext_size for p in ps),
        sum(p.shared_secret_size for p in ps),
        0 if any(p.seed_size == 0 for p in ps) else sum(p.seed_size for p in ps),
        tuple(parts),
    )


# Suites: what a hybrid key carries besides X25519. Wire ids are protocol constants.
PARAMS: dict[str, KemParams] = {
    p.name: p
    for p in (
        ML_KEM_768,
        ML_KEM_1024,
        _suite(3, "ml-kem-768", "hqc-128"),
        _suite(4, "ml-kem-768", "hqc-192"),
        _suite(5, "ml-kem-768", "hqc-256"),
        _suite(6, "ml-kem-1024", "hqc-128"),
        _suite(7, "ml-kem-1024", "hqc-192"),
        _suite(8, "ml-kem-1024", "hqc-256"),
    )
}
PARAMS_BY_WIRE_ID: dict[int, KemParams] = {p.wire_id: p for p in PARAMS.values()}


def suite_name(ml_kem: str, code_kem: str | None) -> str:
    """The suite of a pair: its ML-KEM, plus the code-based third component if pinned."""
    return ml_kem if code_kem is None else f"{ml_kem}+{code_kem}"


class KemError(Exception):
    """A KEM operation was asked for something it cannot do (bad key, unknown algorithm)."""


class KemPrivateKey(Protocol):
    """A decapsulation key, held in whatever form the backend computes with fastest."""

    @property
    def public_bytes(self) -> bytes: ...

    @property
    def seed(self) -> bytes:
        """The seed it was made from; empty for a key drawn fresh (never stored)."""
        ...

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

    def generate(self, alg: str, rng: Random) -> KemPrivateKey:
        """A fresh key pair (ephemeral keys); from `rng` where the backend can take a seed."""
        ...

    def load_public(self, alg: str, public: bytes) -> KemPublicKey: ...


def _check_seed(alg: str, seed: bytes) -> None:
    size = COMPONENTS[alg].seed_size
    if size == 0:
        raise KemError(f"{alg} keys can not be made from a seed (ephemeral use only)")
    if len(seed) != size:
        raise KemError(f"{alg} seed must be {size} bytes")


def _check_public(alg: str, public: bytes) -> None:
    if len(public) != COMPONENTS[alg].public_key_size:
        raise KemError(f"invalid {alg} public key (length {len(public)})")


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
        _check_seed(alg, seed)
        return _CryptoPrivate(priv_cls.from_seed_bytes(seed), seed)

    def generate(self, alg: str, rng: Random) -> KemPrivateKey:
        self._classes(alg)
        return self.from_seed(alg, rng(COMPONENTS[alg].seed_size))

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


# --- pqcrypto (optional, PyPI) ------------------------------------------------------

_PQCRYPTO_MODULES = {
    "ml-kem-768": "ml_kem_768",
    "ml-kem-1024": "ml_kem_1024",
    "hqc-128": "hqc_128",
    "hqc-192": "hqc_192",
    "hqc-256": "hqc_256",
}


class _PqPrivate:
    def __init__(self, alg: str, mod: Any, public: bytes, secret: bytes, seed: bytes) -> None:
        self._alg = alg
        self._mod = mod
        self._public = public
        self._secret = secret
        self._seed = seed

    @property
    def public_bytes(self) -> bytes:
        return self._public

    @property
    def seed(self) -> bytes:
        return self._seed

    def decapsulate(self, ciphertext: bytes) -> bytes:
        try:
            return bytes(self._mod.decaps(self._secret, ciphertext))
        except ValueError as exc:
            raise KemError(f"ciphertext rejected by {self._alg}") from exc


class _PqPublic:
    def __init__(self, alg: str, mod: Any, public: bytes) -> None:
        self._alg = alg
        self._mod = mod
        self._public = public

    @property
    def public_bytes(self) -> bytes:
        return self._public

    def encapsulate(self) -> tuple[bytes, bytes]:
        try:
            ct, ss = self._mod.encaps(self._public)
        except ValueError as exc:
            raise KemError(f"invalid {self._alg} public key") from exc
        return bytes(ss), bytes(ct)


class PqcryptoBackend:
    """PQClean (compiled) through PyPI's `pqcrypto`: ML-KEM and the code-based HQC.

    PQClean draws key pairs from the OS only, so `from_seed` expands ML-KEM seeds with
    `mlkem_expand` (FIPS 203 key generation) and `generate` ignores `rng`. HQC keys are
    never stored, only drawn fresh for one handshake.
    """

    name = "pqcrypto"

    def __init__(self, package: Any) -> None:
        self._mods = {
            alg: getattr(package.kem, mod)
            for alg, mod in _PQCRYPTO_MODULES.items()
            if hasattr(package.kem, mod)
        }

    def algorithms(self) -> tuple[str, ...]:
        return tuple(self._mods)

    def _mod(self, alg: str) -> Any:
        try:
            return self._mods[alg]
        except KeyError:
            raise KemError(f"backend pqcrypto has no KEM {alg!r}") from None

    def from_seed(self, alg: str, seed: bytes) -> KemPrivateKey:
        mod = self._mod(alg)
        _check_seed(alg, seed)
        public, secret = mlkem_expand.keygen(alg, seed)
        return _PqPrivate(alg, mod, public, secret, seed)

    def generate(self, alg: str, rng: Random) -> KemPrivateKey:
        mod = self._mod(alg)
        public, secret = mod.keygen()
        return _PqPrivate(alg, mod, bytes(public), bytes(secret), b"")

    def load_public(self, alg: str, public: bytes) -> KemPublicKey:
        mod = self._mod(alg)
        _check_public(alg, public)
        return _PqPublic(alg, mod, public)


# --- liboqs (optional) --------------------------------------------------------------

_OQS_NAMES = {
    "ml-kem-768": "ML-KEM-768",
    "ml-kem-1024": "ML-KEM-1024",
    "hqc-128": "HQC-128",
    "hqc-192": "HQC-192",
    "hqc-256": "HQC-256",
}


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

    def _check(self, alg: str) -> None:
        if alg not in self._algs:
            raise KemError(f"backend liboqs has no KEM {alg!r}")

    def from_seed(self, alg: str, seed: bytes) -> KemPrivateKey:
        self._check(alg)
        _check_seed(alg, seed)
        try:
            kem = self._oqs.KeyEncapsulation(_OQS_NAMES[alg])
            public = bytes(kem.generate_keypair_seed(seed))
        except Exception as exc:  # liboqs raises RuntimeError/ValueError of its own
            raise KemError(f"liboqs key generation failed: {type(exc).__name__}") from exc
        return _OqsPrivate(kem, public, seed)

    def generate(self, alg: str, rng: Random) -> KemPrivateKey:
        self._check(alg)
        if COMPONENTS[alg].seed_size:
            return self.from_seed(alg, rng(COMPONENTS[alg].seed_size))
        try:
            kem = self._oqs.KeyEncapsulation(_OQS_NAMES[alg])
            return _OqsPrivate(kem, bytes(kem.generate_keypair()), b"")
        except Exception as exc:
            raise KemError(f"liboqs key generation failed: {type(exc).__name__}") from exc

    def load_public(self, alg: str, public: bytes) -> KemPublicKey:
        self._check(alg)
        _check_public(alg, public)
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


def probe_pqcrypto(
    importer: Callable[[str], Any] = importlib.import_module,
) -> tuple[Availability, PqcryptoBackend | None]:
    """Detect PyPI's `pqcrypto` (a self-contained wheel: importing it is safe)."""
    try:
        package = importer("pqcrypto")
        importer("pqcrypto.kem")
        backend = PqcryptoBackend(package)
    except ImportError:
        why = "pqcrypto not installed (pip install 'zonegate[pq]')"
        return Availability("pqcrypto", False, why), None
    except Exception as exc:  # a broken wheel means "not usable", never fatal
        return Availability("pqcrypto", False, f"pqcrypto unusable: {exc}"), None
    version = getattr(package, "__version__", "?")
    return Availability("pqcrypto", True, f"pqcrypto {version} (PQClean)"), backend


BACKEND_NAMES = ("cryptography", "pqcrypto", "liboqs")
_PROBES: dict[str, Callable[[], tuple[Availability, Any]]] = {
    "pqcrypto": probe_pqcrypto,
    "liboqs": probe_liboqs,
}
_PROBED: dict[str, tuple[Availability, KemBackend | None]] = {}


def _probe(name: str) -> tuple[Availability, KemBackend | None]:
    if name not in _PROBED:
        if name == "cryptography":
            _PROBED[name] = (
                Availability(name, True, "always installed"),
                CryptographyBackend(),
            )
        else:
            _PROBED[name] = _PROBES[name]()
    return _PROBED[name]


def availability() -> list[Availability]:
    """Every backend with whether it can be used here and why not."""
    return [_probe(n)[0] for n in BACKEND_NAMES]


def get_backend(name: str = "cryptography") -> KemBackend:
    """The named backend; KemError (with the reason) when it is not available here."""
    if name not in BACKEND_NAMES:
        raise KemError(f"unknown KEM backend {name!r}; choose one of {', '.join(BACKEND_NAMES)}")
    avail, backend = _probe(name)
    if backend is None:
        raise KemError(f"KEM backend {name} unavailable: {avail.reason}")
    return backend


def backend_for(alg: str, preferred: KemBackend) -> KemBackend:
    """Who computes component `alg`: the chosen backend, else the first present one that has
    it (cryptography has no HQC). KemError names what to install."""
    if alg in preferred.algorithms():
        return preferred
    for name in BACKEND_NAMES:
        backend = _probe(name)[1]
        if backend is not None and alg in backend.algorithms():
            return backend
    raise KemError(
        f"no KEM backend here implements {alg}: install the pq extra "
        f"(pip install 'zonegate[pq]') or liboqs"
    )


def require_suite(suite: str, preferred: KemBackend) -> None:
    """Fail at start-up, not at the first handshake, when a pinned suite can not run here."""
    if suite not in PARAMS:
        raise KemError(f"unknown KEM suite {suite!r}")
    for part in PARAMS[suite].components:
        backend_for(part, preferred)


# --- proof: what a backend is shown to compute, here and now -------------------------

KAT_DIR = Path(__file__).parent / "kat"


def load_vector(name: str) -> dict[str, bytes]:
    """A known-answer vector file (`key = hex` lines, # comments) shipped in tunneld/kat/."""
    out = {}
    for line in (KAT_DIR / name).read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition(" = ")
            out[key] = bytes.fromhex(value.strip())
    return out


# C2SP/CCTV "unlucky" vectors (unusually many XOF reads in matrix sampling).
KAT_FILES = {
    "ml-kem-768": "mlkem768_cctv_unlucky.txt",
    "ml-kem-1024": "mlkem1024_cctv_unlucky.txt",
}


def check_kat(backend: KemBackend, alg: str) -> str | None:
    """The C2SP vector of `alg`: key from seed, then its ciphertext's secret. None: ok."""
    v = load_vector(KAT_FILES[alg])
    key = backend.from_seed(alg, v["d"] + v["z"])
    pk = key.public_bytes
    if not (pk.startswith(v["ek_prefix"]) and pk.endswith(v["ek_suffix"])):
        return "C2SP vector: wrong encapsulation key from the seed"
    if key.decapsulate(v["c"]) != v["K"]:
        return "C2SP vector: wrong shared secret"
    return None


def prove(backend: KemBackend) -> dict[str, str]:
    """Per algorithm: 'ok ...' or what failed. Every algorithm must round-trip a fresh key;
    ML-KEM must also reproduce its C2SP known answer."""
    out: dict[str, str] = {}
    for alg in backend.algorithms():
        try:
            priv = backend.generate(alg, os.urandom)
            ss, ct = backend.load_public(alg, priv.public_bytes).encapsulate()
            if priv.decapsulate(ct) != ss:
                out[alg] = "FAILED: round trip gives a different secret"
                continue
            failed = check_kat(backend, alg) if alg in KAT_FILES else None
            if failed:
                out[alg] = f"FAILED: {failed}"
            else:
                out[alg] = "ok (KAT, round trip)" if alg in KAT_FILES else "ok (round trip)"
        except (KemError, ValueError) as exc:
            out[alg] = f"FAILED: {exc}"
    return out
