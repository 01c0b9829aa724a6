"""Pinned key bundles are validated by `zonegate check` (FILE:LINE:COL, exit 1) and by
tunneld at load, with one function (topology.keybundle). Issue 14: an identity.pub with
an all-zero X25519 key used to pass check, then stop the gateway and half-apply reloads."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.topology.conftest import BASE
from topology import load
from topology.keybundle import KEM_PUBLIC_SIZE, BundleError, mlkem_problem, parse_bundle
from tunneld.kem import IDENTITY_KEMS, PARAMS
from tunneld.keys import KeyFileError, keygen, load_public

# Small-order X25519 points (RFC 7748 / Bernstein's list) besides zero.
LOW_ORDER = [
    bytes(32),
    (1).to_bytes(32, "little"),
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
    bytes.fromhex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
]


@pytest.fixture(scope="module")
def bundle_doc(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    pub = keygen(tmp_path_factory.mktemp("k") / "keys")
    doc: dict[str, object] = json.loads(pub.read_text())
    return doc


def with_field(doc: dict[str, object], key: str, raw: bytes) -> dict[str, object]:
    return {**doc, key: base64.b64encode(raw).decode()}


def test_sizes_agree_with_the_kem_table() -> None:
    assert {k: PARAMS[k].public_key_size for k in IDENTITY_KEMS} == KEM_PUBLIC_SIZE


def test_a_fresh_bundle_passes(bundle_doc: dict[str, object]) -> None:
    parse_bundle(bundle_doc)


@pytest.mark.parametrize("point", LOW_ORDER)
@pytest.mark.parametrize("key", ["x25519", "wireguard"])
def test_low_order_points_are_rejected(
    bundle_doc: dict[str, object], key: str, point: bytes
) -> None:
    with pytest.raises(BundleError, match=f"{key}: a low-order X25519 point"):
        parse_bundle(with_field(bundle_doc, key, point))


def test_mlkem_coefficient_out_of_range_is_rejected(bundle_doc: dict[str, object]) -> None:
    raw = bytearray(base64.b64decode(str(bundle_doc["kem_public"])))
    raw[0], raw[1] = 0xFF, raw[1] | 0x0F  # first coefficient 4095 >= q
    with pytest.raises(BundleError, match="kem_public: fails the ml-kem-768 modulus check"):
        parse_bundle(with_field(bundle_doc, "kem_public", bytes(raw)))


@settings(max_examples=50, deadline=None)
@given(st.binary(min_size=1184 - 32, max_size=1184 - 32), st.binary(min_size=32, max_size=32))
def test_modulus_check_agrees_with_cryptography(packed: bytes, rho: bytes) -> None:
    from cryptography.hazmat.primitives.asymmetric import mlkem

    try:
        mlkem.MLKEM768PublicKey.from_public_bytes(packed + rho)
        accepted = True
    except ValueError:
        accepted = False
    assert (mlkem_problem("ml-kem-768", packed + rho) is None) == accepted


def test_tunneld_refuses_the_same_bundle_at_load(
    bundle_doc: dict[str, object], tmp_path: Path
) -> None:
    bad = tmp_path / "identity.pub"
    bad.write_text(json.dumps(with_field(bundle_doc, "x25519", bytes(32))))
    with pytest.raises(KeyFileError, match="x25519: a low-order X25519 point"):
        load_public(bad)


def test_check_reports_a_zero_key_at_its_place_and_exits_1(
    bundle_doc: dict[str, object], write_topology: Callable[[str], Path]
) -> None:
    text = BASE.replace("overlay: 100.64.1.2}", "overlay: 100.64.1.2, keys: lead-1.pub}")
    topo = write_topology(text)
    (topo.parent / "lead-1.pub").write_text(
        json.dumps(with_field(bundle_doc, "x25519", bytes(32)), indent=2)
    )
    with pytest.raises(Exception) as info:
        load(topo)
    (d,) = [d for d in info.value.diagnostics if "lead-1.pub" in d.message]  # type: ignore[attr-defined]
    assert "x25519: a low-order X25519 point" in d.message
    line = next(i for i, ln in enumerate(text.splitlines(), 1) if "keys: lead-1.pub" in ln)
    assert d.location is not None and d.location.line == line
    zonegate = Path(sys.executable).parent / "zonegate"
    res = subprocess.run(
        [str(zonegate), "check", str(topo)], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 1
    assert f"{topo}:{line}:" in res.stdout + res.stderr
    assert "low-order" in res.stdout + res.stderr
