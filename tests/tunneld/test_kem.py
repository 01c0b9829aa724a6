"""KEM backends: known answers on every backend, interop between backends and with an
independent implementation, seed expansion, HQC, detection of absent backends."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kyber_py.ml_kem import ML_KEM_768, ML_KEM_1024

from tunneld import kem, mlkem_expand
from tunneld.hybrid import HybridCiphertext, HybridPrivateKey, HybridPublicKey
from tunneld.kem import KemError, get_backend, load_vector, probe_liboqs, probe_pqcrypto

KYBER = {"ml-kem-768": ML_KEM_768, "ml-kem-1024": ML_KEM_1024}
# Every backend the test extra installs; liboqs can not be installed here (no registry
# ships its shared library) and is covered by the probe tests below.
BACKENDS = ["cryptography", "pqcrypto"]


def test_test_extra_installs_both_backends() -> None:
    """The cross-backend tests must never pass by having only one backend to compare."""
    rows = {a.name: a for a in kem.availability()}
    missing = [n for n in BACKENDS if not rows[n].available]
    assert not missing, f"install the test extra (pip install -e '.[test]'): {missing}"


@pytest.mark.parametrize("alg", ["ml-kem-768", "ml-kem-1024"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_c2sp_kat_on_every_backend(backend: str, alg: str) -> None:
    v = load_vector(kem.KAT_FILES[alg])
    priv = get_backend(backend).from_seed(alg, v["d"] + v["z"])
    assert priv.public_bytes.startswith(v["ek_prefix"])
    assert priv.public_bytes.endswith(v["ek_suffix"])
    assert priv.decapsulate(v["c"]) == v["K"]
    assert kem.check_kat(get_backend(backend), alg) is None


def test_independent_mlkem1024_reproduces_its_vector() -> None:
    v = load_vector("mlkem1024_cctv_unlucky.txt")
    ek, _ = ML_KEM_1024._keygen_internal(v["d"], v["z"])
    assert ML_KEM_1024._encaps_internal(ek, v["m"]) == (v["K"], v["c"])


def test_kat_check_fails_on_a_wrong_backend() -> None:
    """`tunneld backends` says FAILED when a backend computes a wrong key."""

    class Skewed(kem.CryptographyBackend):
        def from_seed(self, alg: str, seed: bytes) -> kem.KemPrivateKey:
            return super().from_seed(alg, bytes([seed[0] ^ 1]) + seed[1:])

    assert "wrong encapsulation key" in (kem.check_kat(Skewed(), "ml-kem-1024") or "")
    assert kem.prove(Skewed())["ml-kem-768"].startswith("FAILED")
    assert kem.prove(get_backend("cryptography"))["ml-kem-768"].startswith("ok")


@pytest.mark.parametrize("alg", ["ml-kem-768", "ml-kem-1024"])
@pytest.mark.parametrize(("a", "b"), [("cryptography", "pqcrypto"), ("pqcrypto", "cryptography")])
def test_cross_backend_interop(alg: str, a: str, b: str) -> None:
    """Same seed, same key; A's ciphertexts decapsulate in B and the other way round;
    a key pair B draws itself (not from a seed) takes A's ciphertexts too."""
    ba, bb = get_backend(a), get_backend(b)
    seed = os.urandom(64)
    ka, kb = ba.from_seed(alg, seed), bb.from_seed(alg, seed)
    assert ka.public_bytes == kb.public_bytes
    ss, ct = ba.load_public(alg, kb.public_bytes).encapsulate()
    assert kb.decapsulate(ct) == ss
    ss2, ct2 = bb.load_public(alg, ka.public_bytes).encapsulate()
    assert ka.decapsulate(ct2) == ss2
    fresh = bb.generate(alg, os.urandom)
    ss3, ct3 = ba.load_public(alg, fresh.public_bytes).encapsulate()
    assert fresh.decapsulate(ct3) == ss3


@settings(max_examples=15, deadline=None)
@given(st.binary(min_size=64, max_size=64), st.sampled_from(["ml-kem-768", "ml-kem-1024"]))
def test_seed_expansion_matches_cryptography_and_kyber_py(seed: bytes, alg: str) -> None:
    """pqcrypto's keys from a seed are computed by mlkem_expand: it must give the key
    pyca/cryptography derives and the expanded key kyber-py derives, for any seed."""
    ek, dk = mlkem_expand.keygen(alg, seed)
    assert ek == get_backend("cryptography").from_seed(alg, seed).public_bytes
    assert (ek, dk) == KYBER[alg]._keygen_internal(seed[:32], seed[32:])


@pytest.mark.parametrize("alg", kem.CODE_KEMS)
def test_hqc_round_trip_sizes_and_implicit_rejection(alg: str) -> None:
    backend = get_backend("pqcrypto")
    p = kem.COMPONENTS[alg]
    priv = backend.generate(alg, os.urandom)
    shared, ct = backend.load_public(alg, priv.public_bytes).encapsulate()
    assert (len(priv.public_bytes), len(ct), len(shared)) == (
        p.public_key_size,
        p.ciphertext_size,
        p.shared_secret_size,
    )
    assert priv.decapsulate(ct) == shared
    assert priv.decapsulate(bytes([ct[0] ^ 1]) + ct[1:]) != shared
    assert priv.seed == b""  # drawn fresh: never stored
    with pytest.raises(KemError, match="seed"):
        backend.from_seed(alg, bytes(64))
    with pytest.raises(KemError, match="public key"):
        backend.load_public(alg, priv.public_bytes[:-1])
    with pytest.raises(KemError, match="ciphertext"):
        priv.decapsulate(ct[:-1])


def test_hqc_needs_a_backend_that_has_it() -> None:
    crypto = get_backend("cryptography")
    assert kem.backend_for("hqc-128", crypto).name == "pqcrypto"
    assert kem.backend_for("ml-kem-768", crypto) is crypto
    with pytest.raises(KemError, match="unknown KEM suite"):
        kem.require_suite("ml-kem-768+mceliece", crypto)


def test_pqcrypto_absent_is_unavailable_not_fatal() -> None:
    def importer(name: str) -> object:
        raise ImportError(name)

    avail, backend = probe_pqcrypto(importer)
    assert not avail.available and backend is None
    assert "pip install 'zonegate[pq]'" in avail.reason


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


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_params_match_backend_sizes(backend_name: str) -> None:
    backend = get_backend(backend_name)
    for alg in kem.ML_KEMS:
        p = kem.PARAMS[alg]
        priv = backend.from_seed(alg, bytes(p.seed_size))
        shared, ct = backend.load_public(alg, priv.public_bytes).encapsulate()
        assert (len(priv.public_bytes), len(ct), len(shared)) == (
            p.public_key_size,
            p.ciphertext_size,
            p.shared_secret_size,
        )


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_bad_inputs_raise_kem_error(backend_name: str) -> None:
    backend = get_backend(backend_name)
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
    assert list(rows) == ["cryptography", "pqcrypto", "liboqs"]
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


def test_backends_command_lists_and_proves_each_backend() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "tunneld.cli", "backends"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    out = res.stdout.decode()
    assert res.returncode == 0, out + res.stderr.decode()
    lines = out.splitlines()
    for name in BACKENDS:
        start = next(i for i, line in enumerate(lines) if line.startswith(name))
        assert "available" in lines[start] and "unavailable" not in lines[start]
        assert "ml-kem-768    ok (KAT, round trip)" in lines[start + 1]
        assert "ml-kem-1024   ok (KAT, round trip)" in lines[start + 2]
    assert any(line.strip().startswith("hqc-256") and "ok" in line for line in lines)
    assert any(line.startswith("liboqs") for line in lines)
