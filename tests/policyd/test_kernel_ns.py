"""The kernel adapter on the real kernel, in namespaces: apply, reject, grants, traffic."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.policyd.nsnet import PLC1, PLC2, Net, require_tools, topology_yaml

pytestmark = pytest.mark.root

GOLDEN = Path(__file__).resolve().parents[1] / "golden"

PRELUDE = """
import json, sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta
import topology
from policyd.compiler import CompileOptions, compile_ruleset
from policyd.kernel import ApplyError, NftHandle, addresses
topo = topology.load({path!r}).topology
rs = compile_ruleset(topo, "plant-a", now=datetime.now(UTC),
                     options=CompileOptions(tunnels=({tunnel!r},)))
h = NftHandle()
"""


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Net]:
    require_tools()
    n = Net()
    try:
        n.up()
        (tmp_path / "topo.yaml").write_text(topology_yaml())
        yield n
    finally:
        n.down()


def prelude(net: Net, tmp_path: Path) -> str:
    return PRELUDE.format(path=str(tmp_path / "topo.yaml"), tunnel=net.tunnel)


def test_golden_text_is_valid_nft(net: Net) -> None:
    for golden in sorted(GOLDEN.glob("*.nft")):
        out = net.ns(net.gw, "nft", "-c", "-f", str(golden), check=False)
        assert out.returncode == 0, f"{golden.name}: {out.stderr}"


def test_apply_readback_and_failed_apply(net: Net, tmp_path: Path) -> None:
    net.ns(
        net.gw,
        "nft",
        "add table ip other; add chain ip other c { type filter hook forward priority 10; }",
    )
    code = (
        prelude(net, tmp_path)
        + """
h.apply_ruleset(rs)
first = h.diff_text(rs)
bad = replace(rs, objects=rs.objects + ({"rule": {"family": "inet", "table": "zonegate",
    "chain": "forward", "expr": [{"jump": {"target": "no_such_chain"}}]}},))
try:
    h.apply_ruleset(bad)
    err = None
except ApplyError as e:
    err = str(e)
print(json.dumps({"first": first, "err": err, "after": h.diff_text(rs)}))
"""
    )
    res = net.gw_python(code)
    assert res["first"] == "", res["first"]
    assert res["err"] and "nothing changed" in res["err"]
    assert res["after"] == "", res["after"]
    assert "table ip other" in net.ns(net.gw, "nft", "list", "ruleset").stdout
    # the running table is exactly what the compiler produced (hook chains included)
    assert "policy drop" in net.table_text()


@pytest.mark.sr("SR 1.13 RE1")
def test_grants_and_membership_without_reload(net: Net, tmp_path: Path) -> None:
    code = (
        prelude(net, tmp_path)
        + """
h.apply_ruleset(rs)
g = h.add_grant(rs, "vendor-maintenance", "vendor-1", timedelta(hours=9))
granted = sorted(map(str, addresses(h.set_elements(g.set_name))))
left = (g.expires - datetime.now(UTC)).total_seconds()
kept = h.apply_ruleset(rs)  # a reload keeps the grant, with its remaining time
after_reload = sorted(map(str, addresses(h.set_elements(g.set_name))))
removed = h.remove_grant(rs, "vendor-maintenance", "vendor-1")
again = h.remove_grant(rs, "vendor-maintenance", "vendor-1")
try:
    h.add_grant(rs, "vendor-maintenance", "guest", timedelta(hours=1))
    refused = False
except ValueError:
    refused = True
# membership: drop engineer-1 from the model, sync by element delete only
topo2 = replace(topo, identities={k: v for k, v in topo.identities.items() if k != "engineer-1"})
rs2 = compile_ruleset(topo2, "plant-a", now=datetime.now(UTC),
                      options=CompileOptions(tunnels=(rs.options.tunnels)))
delta = h.sync_members(rs2)
ids = sorted(map(str, addresses(h.set_elements(rs.conduits["engineers-read"].identity_set))))
print(json.dumps({"granted": granted, "left": left, "kept": kept, "after": after_reload,
                  "removed": removed, "again": again, "refused": refused,
                  "delta": delta, "ids": ids}))
"""
    )
    res = net.gw_python(code)
    assert res["granted"] == ["100.64.2.10"]
    assert 4 * 3600 - 60 < res["left"] <= 4 * 3600  # capped at the approval's max
    assert res["kept"] == 1 and res["after"] == ["100.64.2.10"]
    assert res["removed"] is True and res["again"] is False
    assert res["refused"] is True
    assert res["delta"] == [0, 1] and res["ids"] == []


@pytest.mark.sr("SR 2.1", "SR 2.1 RE1", "SR 5.2", "SR 5.2 RE1")
def test_traffic_through_gateway(net: Net, tmp_path: Path) -> None:
    net.start_servers()
    # Before any policy the path is open: the probes themselves work.
    assert net.modbus("engineer-1", PLC1, "write")
    assert net.tcp("guest", PLC1, 5900)
    net.gw_python(prelude(net, tmp_path) + "h.apply_ruleset(rs); print(1)")
    table = net.table_text()
    assert net.modbus("engineer-1", PLC1, "read"), table
    assert not net.modbus("engineer-1", PLC1, "write"), table  # read-only conduit
    assert net.modbus("lead-1", PLC2, "write"), table  # read-write conduit
    assert net.tcp("engineer-1", PLC1, 22), table
    assert not net.tcp("engineer-1", PLC1, 5900), table  # service not listed
    assert not net.modbus("guest", PLC1, "read"), table  # another identity
    assert not net.tcp("night-1", PLC1, 22), table  # schedule closed now
    assert not net.modbus("vendor-1", PLC2, "write"), table  # no grant yet
    net.gw_python(
        prelude(net, tmp_path)
        + 'h.add_grant(rs, "vendor-maintenance", "vendor-1", timedelta(minutes=5)); print(1)'
    )
    assert net.modbus("vendor-1", PLC2, "write"), net.table_text()
    net.gw_python(
        prelude(net, tmp_path)
        + 'print(json.dumps(h.remove_grant(rs, "vendor-maintenance", "vendor-1")))'
    )
    assert not net.modbus("vendor-1", PLC2, "read"), net.table_text()
