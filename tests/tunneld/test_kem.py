"""ML-KEM backends: known answers, interop with an independent implementation, liboqs probe."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from kyber_py.ml_kem import ML_KEM_768, ML_KEM_1024

from tunneld import kem
from tunneld.hybrid import HybridCiphertext, HybridPrivateKey, HybridPublicKey
from tunneld.kem import KemError, get_backend, probe_liboqs

VECTORS = Path(__file__).parent / "vectors"
KYBER = {"ml-kem-768": ML_KEM_768, "ml-kem-1024": ML_KEM_1024}


def load_vector(name: str) -> dict[str, bytes]:
    out = {}
    for line in (VECTORS / name).read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition(" = ")
            out[key] = bytes.fromhex(value.strip())
    return out


def test_kat_cryptography_mlkem768() -> None:
    v = load_vector("mlkem768_cctv_unlucky.txt")
    priv = get_backend("cryptography").from_seed("ml-kem-768", v["d"] + v["z"])
    assert priv.public_bytes.startswith(v["ek_prefix"])
    assert priv.public_bytes.endswith(v["ek_suffix"])
    assert priv.decapsulate(v["c"]) == v["K"]


def test_kat_independent_mlkem768() -> None:
    """kyber-py (pure Python) reproduces the same vector, including encapsulation."""
    v = load_vector("mlkem768_cctv_unlucky.txt")
    ek, dk = ML_KEM_768._keygen_internal(v["d"], v["z"])
    assert ek.startswith(v["ek_prefix"]) and ek.endswith(v["ek_suffix"])
    shared, ct = ML_KEM_768._encaps_internal(ek, v["m"])
    assert (shared, ct) == (v["K"], v["c"])
    assert ML_KEM_768.decaps(dk, v["c"]) == v["K"]


@pytest.mark.parametrize("alg", ["ml-kem-768", "ml-kem-1024"])
@pytest.mark.parametrize("seed_byte", [0, 7, 255])
def test_interop_with_kyber_py(alg: str, seed_byte: int) -> None:
    backend = get_backend("cryptography")
    ref = KYBER[alg]
    seed = bytes([seed_byte]) * 32 + bytes([seed_byte ^ 0x5A]) * 32
    ours = backend.from_seed(alg, seed)
    ek, dk = ref._keygen_internal(seed[:32], seed[32:])
    assert ours.public_bytes == ek
    # kyber-py encapsulates, cryptography decapsulates ...
    shared, ct = ref.encaps(ek)
    assert ours.decapsulate(ct) == shared
    # ... and the other way round.
    shared2, ct2 = backend.load_public(alg, ek).encapsulate()
    assert ref.decaps(dk, ct2) == shared2


def test_params_match_backend_sizes() -> None:
    backend = get_backend("cryptography")
    for alg, p in kem.PARAMS.items():
        priv = backend.from_seed(alg, bytes(p.seed_size))
        shared, ct = backend.load_public(alg, priv.public_bytes).encapsulate()
        assert (len(priv.public_bytes), len(ct), len(shared)) == (
            p.public_key_size,
            p.ciphertext_size,
            p.shared_secret_size,
        )


def test_bad_inputs_raise_kem_error() -> None:
    backend = get_backend("cryptography")
    with pytest.raises(KemError):
        backend.from_seed("ml-kem-768", b"short")
    with pytest.raises(KemError):
        backend.load_public("ml-kem-768", b"\x00" * 10)
    with pytest.raises(KemError):
        backend.from_seed("frodo", bytes(64))
    priv = backend.from_seed("ml-kem-768", bytes(64))
    with pytest.raises(KemError):
        priv.decapsulate(b"\x01" * 5)


def test_liboqs_absent_is_unavailable_without_import() -> None:
    imported: list[str] = []

    def importer(name: str) -> object:
        imported.append(name)
        raise AssertionError("must not import oqs when liboqs is missing")

    avail, backend = probe_liboqs(find=lambda: None, importer=importer)
    assert not avail.available and backend is None
    assert "not installed" in avail.reason
    assert imported == []


def test_liboqs_broken_binding_is_unavailable_not_fatal() -> None:
    def importer(name: str) -> object:
        raise RuntimeError("No oqs shared libraries found")

    avail, backend = probe_liboqs(find=lambda: "/usr/lib/liboqs.so", importer=importer)
    assert not avail.available and backend is None
    assert "unusable" in avail.reason


def test_liboqs_backend_is_used_when_present() -> None:
    class FakeKem:
        def __init__(self, alg: str) -> None:
            self.alg = alg

    class FakeOqs:
        KeyEncapsulation = FakeKem

        @staticmethod
        def get_enabled_kem_mechanisms() -> list[str]:
            return ["ML-KEM-768", "FrodoKEM-640-AES"]

    avail, backend = probe_liboqs(find=lambda: "/x/liboqs.so", importer=lambda n: FakeOqs)
    assert avail.available and backend is not None
    assert backend.algorithms() == ("ml-kem-768",)


def test_availability_on_this_machine_reports_not_raises() -> None:
    rows = {a.name: a for a in kem.availability()}
    assert rows["cryptography"].available
    if not rows["liboqs"].available:
        with pytest.raises(KemError, match="unavailable"):
            get_backend("liboqs")


def test_core_modules_never_import_oqs() -> None:
    code = (
        "import sys, tunneld.kem, tunneld.handshake, tunneld.kem as k; k.availability(); "
        "assert ('oqs' in sys.modules) == (k.find_liboqs() is not None), sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_hybrid_roundtrip_and_binding() -> None:
    backend = get_backend("cryptography")
    rng_state = iter(range(1, 1000))

    def rng(n: int) -> bytes:
        return bytes([next(rng_state)]) * n

    priv = HybridPrivateKey.generate(backend, "ml-kem-768", rng)
    pub = HybridPublicKey(backend, "ml-kem-768", priv.x_public, priv.kem_public)
    shared, ct = pub.encapsulate(rng)
    assert priv.decapsulate(ct) == shared
    # Changing either half of the ciphertext changes the combined secret.
    flipped_m = bytes([ct.m[0] ^ 1]) + ct.m[1:]
    assert priv.decapsulate(HybridCiphertext(ct.x, flipped_m)) != shared
    other_x, _ = pub.encapsulate(rng)
    assert other_x != shared
    with pytest.raises(KemError, match="low-order"):
        priv.decapsulate(HybridCiphertext(bytes(32), ct.m))


def test_liboqs_errors_become_kem_errors() -> None:
    """Issue 14: a liboqs failure (RuntimeError from the binding) used to escape as is;
    the handshake only turns KemError into a clean rejection."""

    class FailingKem:
        def __init__(self, alg: str) -> None:
            self.alg = alg

        def __enter__(self) -> FailingKem:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

        def generate_keypair_seed(self, seed: bytes) -> bytes:
            return bytes(1184)

        def decap_secret(self, ct: bytes) -> bytes:
            raise RuntimeError("Can not decapsulate secret")

        def encap_secret(self, public: bytes) -> tuple[bytes, bytes]:
            raise RuntimeError("Can not encapsulate secret")

    class FailingOqs:
        KeyEncapsulation = FailingKem

        @staticmethod
        def get_enabled_kem_mechanisms() -> list[str]:
            return ["ML-KEM-768"]

    _, backend = probe_liboqs(find=lambda: "/x/liboqs.so", importer=lambda n: FailingOqs)
    assert backend is not None
    priv = backend.from_seed("ml-kem-768", bytes(64))
    with pytest.raises(KemError, match="liboqs decapsulation failed"):
        priv.decapsulate(bytes(1088))
    with pytest.raises(KemError, match="liboqs encapsulation failed"):
        backend.load_public("ml-kem-768", bytes(1184)).encapsulate()

    class NoSeed(FailingKem):
        def generate_keypair_seed(self, seed: bytes) -> bytes:
            raise ValueError("bad seed")

    FailingOqs.KeyEncapsulation = NoSeed
    with pytest.raises(KemError, match="liboqs key generation failed"):
        backend.from_seed("ml-kem-768", bytes(64))
