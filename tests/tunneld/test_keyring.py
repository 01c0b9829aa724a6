"""materialize_keys: a runnable copy of an example topology with fresh keys pinned."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

import topology
from tunneld.keyring import materialize_keys
from tunneld.keys import load_keyset, load_public

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "plant"


def test_pins_fresh_keys_and_leaves_the_example_alone(tmp_path: Path) -> None:
    before = {p.name: p.read_text() for p in EXAMPLE.glob("*.yaml")}
    m = materialize_keys(EXAMPLE, tmp_path, ["plant-a", "vendor-tech"])
    topo = topology.load(m.topology).topology
    for name in ("plant-a", "vendor-tech"):
        assert topo.identities[name].keys == str(m.pub(name).resolve())
        assert load_keyset(m.keys[name]).public == load_public(m.pub(name))
        assert stat.S_IMODE(m.keys[name].stat().st_mode) == 0o700
    assert topo.identities["engineer-1"].keys is None
    assert len(topo.tests) == 23  # policy tests, conduits and the rest are all still there
    assert {p.name: p.read_text() for p in EXAMPLE.glob("*.yaml")} == before


def test_unknown_identity_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="nobody"):
        materialize_keys(EXAMPLE, tmp_path, ["nobody"])
