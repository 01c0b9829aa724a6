"""Key files: modes, no overwrite, cross-checks, and no secrets in error messages."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from tunneld import keys
from tunneld.keys import KeyFileError, keygen, load_keyset, load_public
from tunneld.wg import parse_dump


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_keygen_modes_and_roundtrip(tmp_path: Path) -> None:
    d = tmp_path / "site-a"
    pub = keygen(d, "ml-kem-1024")
    assert mode(d) == 0o700
    assert mode(d / keys.WG_KEY) == 0o600 and mode(d / keys.IDENTITY_KEY) == 0o600
    ks = load_keyset(d)
    assert load_public(pub) == ks.public and ks.public.kem == "ml-kem-1024"
    assert ks.static.kem_public == ks.public.kem_public


def test_keygen_never_overwrites(tmp_path: Path) -> None:
    keygen(tmp_path / "k")
    before = (tmp_path / "k" / keys.IDENTITY_KEY).read_bytes()
    with pytest.raises(KeyFileError, match="never overwritten"):
        keygen(tmp_path / "k")
    assert (tmp_path / "k" / keys.IDENTITY_KEY).read_bytes() == before


@pytest.mark.parametrize(
    ("target", "bad_mode", "fix"),
    [
        ("", 0o755, "chmod 700"),
        (keys.WG_KEY, 0o644, "chmod 600"),
        (keys.IDENTITY_KEY, 0o640, "chmod 600"),
    ],
)
def test_unsafe_modes_are_refused(tmp_path: Path, target: str, bad_mode: int, fix: str) -> None:
    d = tmp_path / "k"
    keygen(d)
    os.chmod(d / target if target else d, bad_mode)
    secret = (d / keys.WG_KEY).read_text().strip()
    with pytest.raises(KeyFileError, match=fix) as err:
        load_keyset(d)
    assert secret not in str(err.value)


def test_mismatched_bundle_is_refused(tmp_path: Path) -> None:
    keygen(tmp_path / "a")
    keygen(tmp_path / "b")
    os.replace(tmp_path / "b" / keys.PUBLIC, tmp_path / "a" / keys.PUBLIC)
    with pytest.raises(KeyFileError, match="does not match"):
        load_keyset(tmp_path / "a")


@pytest.mark.parametrize(
    "edit",
    [
        lambda d: d.update(kem="frodo"),
        lambda d: d.update(x25519="!!"),
        lambda d: d.update(kem_public="AAAA"),
        lambda d: d.update(format="other"),
    ],
)
def test_bad_public_bundles(tmp_path: Path, edit: object) -> None:
    pub = keygen(tmp_path / "k")
    doc = json.loads(pub.read_text())
    edit(doc)  # type: ignore[operator]
    pub.write_text(json.dumps(doc))
    with pytest.raises(KeyFileError):
        load_public(pub)


def test_parse_wg_dump() -> None:
    k = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk="
    p = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="
    text = (
        f"{k}\t{p}\t51820\toff\n"
        f"{p}\t(none)\t10.0.0.2:51820\t100.64.0.2/32,10.20.1.0/24\t1700000000\t10\t20\t25\n"
    )
    obs = parse_dump(text)
    assert obs.listen_port == 51820
    (peer,) = obs.peers.values()
    assert peer.psk is None and peer.keepalive == 25
    assert peer.allowed_ips == ("10.20.1.0/24", "100.64.0.2/32")
