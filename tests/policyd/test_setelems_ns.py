"""The nfnetlink element path on the real kernel: adds, deletes and expiry really happen,
the result is what libnftables would have written, and libnftables is not involved.
And `sync_members` reads back only the identity sets whose membership changed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.policyd.nsnet import Net, require_tools, topology_yaml

pytestmark = pytest.mark.root

CODE = """
import json, logging, time
from policyd.kernel import NftError, NftHandle
T = {"family": "inet", "table": "zonegate"}
def set_(name, flags):
    return {"add": {"set": {**T, "name": name, "type": "ipv4_addr", "flags": flags}}}
setup = NftHandle()
setup.run([{"add": {"table": {"family": "inet", "name": "zonegate"}}},
           set_("ids_direct", ["timeout"]), set_("ids_lib", ["timeout"]),
           set_("zg_direct", ["interval", "timeout"]), set_("zg_lib", ["interval", "timeout"])],
          "setup")
direct, lib = NftHandle(), NftHandle(direct_elements=False)
lines = []
class Keep(logging.Handler):
    def emit(self, record):
        lines.append((record.name, record.getMessage()))
logging.getLogger("policyd").addHandler(Keep()); logging.getLogger("policyd").setLevel(logging.INFO)
ids = ["100.64.1.10", {"elem": {"val": "100.64.1.11", "timeout": 3600}},
       {"elem": {"val": "100.64.1.12", "timeout": 1}}]
zones = [{"elem": {"val": {"prefix": {"addr": "10.1.2.0", "len": 24}}, "timeout": 3600}},
         "10.1.3.7", {"elem": {"val": {"prefix": {"addr": "10.1.4.0", "len": 23}}, "timeout": 1}},
         {"range": ["10.2.0.5", "10.2.0.9"]}]
for h, suffix in ((direct, "direct"), (lib, "lib")):
    h.add_elements("ids_" + suffix, ids)
    h.add_elements("zg_" + suffix, zones)
def listing(name):
    out = setup.run([{"list": {"set": {**T, "name": name}}}], "list")
    els = [o["set"].get("elem", []) for o in out["nftables"] if "set" in o][0]
    # compare values and timeouts; `expires` counts down and differs between the two
    return sorted(json.dumps({k: v for k, v in e["elem"].items() if k != "expires"}
                             if isinstance(e, dict) and "elem" in e else e, sort_keys=True)
                  for e in els)
added = {n: listing(n) for n in ("ids_direct", "ids_lib", "zg_direct", "zg_lib")}
direct.delete_elements("ids_direct", ["100.64.1.10"])
direct.delete_elements("zg_direct", [{"prefix": {"addr": "10.1.2.0", "len": 24}}])
try:
    direct.delete_elements("ids_direct", ["100.64.1.10"])
    missing = None
except NftError as e:
    missing = str(e)
deleted = {n: listing(n) for n in ("ids_direct", "zg_direct")}
time.sleep(2.5)
expired = {n: listing(n) for n in ("ids_direct", "zg_direct")}
direct_log = [m for n, m in lines if "nfnetlink" in m]
lib_log = [m for n, m in lines if m.startswith("[#] nft")]
print(json.dumps({"added": added, "deleted": deleted, "expired": expired, "missing": missing,
                  "direct_log": direct_log, "lib_log": lib_log}))
"""


@pytest.fixture
def net() -> Iterator[Net]:
    require_tools()
    n = Net()
    try:
        n.up()
        yield n
    finally:
        n.down()


def test_direct_elements_add_delete_expire(net: Net) -> None:
    res: dict[str, Any] = net.gw_python(CODE)
    added = res["added"]
    # the kernel holds exactly what libnftables writes for the same elements
    assert added["ids_direct"] == added["ids_lib"]
    assert added["zg_direct"] == added["zg_lib"]
    assert '{"timeout": 3600, "val": "100.64.1.11"}' in added["ids_direct"]
    assert (
        '{"timeout": 3600, "val": {"prefix": {"addr": "10.1.2.0", "len": 24}}}'
        in (added["zg_direct"])
    )
    assert '{"range": ["10.2.0.5", "10.2.0.9"]}' in added["zg_direct"]
    assert len(added["ids_direct"]) == 3 and len(added["zg_direct"]) == 4
    # deletes
    assert not any("100.64.1.10" in x for x in res["deleted"]["ids_direct"])
    assert not any("10.1.2.0" in x for x in res["deleted"]["zg_direct"])
    assert res["missing"] and "No such file" in res["missing"]
    # the 1 s timeouts expired in the kernel, nothing else did
    assert res["expired"]["ids_direct"] == ['{"timeout": 3600, "val": "100.64.1.11"}']
    assert sorted(res["expired"]["zg_direct"]) == sorted(
        ['"10.1.3.7"', '{"range": ["10.2.0.5", "10.2.0.9"]}']
    )
    # the direct handle never ran libnftables for its element changes
    assert len(res["direct_log"]) == 2 + 3  # 2 adds, 2 deletes, 1 refused delete
    by_libnftables = [m for m in res["lib_log"] if "element" in m]
    assert len(by_libnftables) == 2 and all("_lib " in m for m in by_libnftables), res["lib_log"]


SYNC = """
import json, logging
from dataclasses import replace
from datetime import UTC, datetime
import topology
from policyd.compiler import CompileOptions, compile_ruleset
from policyd.kernel import NftHandle, addresses
lines = []
class Keep(logging.Handler):
    def emit(self, record):
        lines.append(record.getMessage())
logging.getLogger("policyd").addHandler(Keep()); logging.getLogger("policyd").setLevel(logging.INFO)
topo = topology.load({path!r}).topology
opts = CompileOptions(tunnels=({tunnel!r},))
rs = compile_ruleset(topo, "plant-a", now=datetime.now(UTC), options=opts)
h = NftHandle()
h.apply_ruleset(rs)
topo2 = replace(topo, identities={{k: v for k, v in topo.identities.items() if k != "lead-1"}})
rs2 = compile_ruleset(topo2, "plant-a", now=datetime.now(UTC), options=opts)
del lines[:]
delta = h.sync_members(rs2)
listed = [m for m in lines if "list set" in m]
unchanged = h.sync_members(rs2)
fresh = NftHandle().sync_members(rs)  # no memory of the kernel: reads every set
s = rs.conduits["lead-writes"].identity_set
print(json.dumps({{"delta": delta, "listed": listed, "unchanged": unchanged, "fresh": fresh,
                  "set": s, "after": sorted(map(str, addresses(h.set_elements(s))))}}))
"""


def test_sync_reads_only_changed_sets(net: Net, tmp_path: Path) -> None:
    (tmp_path / "topo.yaml").write_text(topology_yaml())
    res = net.gw_python(SYNC.format(path=str(tmp_path / "topo.yaml"), tunnel=net.tunnel))
    assert res["delta"] == [0, 1]
    assert len(res["listed"]) == 1 and res["set"] in res["listed"][0], res["listed"]
    assert res["unchanged"] == [0, 0]
    assert res["fresh"] == [1, 0]  # lead-1 back, found by reading the kernel
    assert res["after"] == ["100.64.1.20"]
