"""The policy digest: what it covers (rules, sets' policy members) and what it leaves out
(live grants); on the real kernel, `zonegate report --iec62443 --kernel` compares it."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from policyd.compiler import Ruleset, compile_ruleset
from policyd.ruleset_digest import compare, digest, grant_sets
from tests.policyd.nsnet import PY, Net, require_tools, topology_yaml
from topology.model import Topology

NOW = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)


def test_digest_covers_rules_not_grants(plant: Topology) -> None:
    rs: Ruleset = compile_ruleset(plant, "plant-a", now=NOW)
    sets = grant_sets(rs)
    assert sets, "the hand-built plant has conduits that need a grant"
    base = digest(rs.objects, sets)
    assert base.startswith("sha256:") and base == digest(list(rs.objects), sets)
    assert compare(rs, list(rs.objects)).matches
    assert compare(rs, None).running is None and not compare(rs, None).matches

    granted = copy.deepcopy(list(rs.objects))
    name = sorted(sets)[0]
    for o in granted:
        if "set" in o and o["set"]["name"] == name:
            o["set"]["elem"] = ["100.64.9.9"]
    assert digest(granted, sets) == base, "a live grant is state, not policy"

    extra = copy.deepcopy(list(rs.objects))
    rule = next(o for o in extra if "rule" in o)
    extra.append({"rule": {**rule["rule"], "expr": [{"accept": None}]}})
    assert digest(extra, sets) != base, "an added rule changes the digest"

    members = copy.deepcopy(list(rs.objects))
    plain = next(
        p.identity_set for p in rs.conduits.values() if p.identity_set and not p.needs_grant
    )
    for o in members:
        if "set" in o and o["set"]["name"] == plain:
            o["set"]["elem"] = [*o["set"].get("elem", []), "100.64.9.9"]
    assert digest(members, sets) != base, "who a conduit admits is policy"


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


@pytest.mark.root
@pytest.mark.sr("SR 7.6", "SR 7.6 RE1")
def test_report_compares_the_running_table(net: Net, tmp_path: Path) -> None:
    topo = tmp_path / "topo.yaml"
    apply = f"""
from datetime import UTC, datetime, timedelta
import topology
from policyd.compiler import CompileOptions, compile_ruleset
from policyd.kernel import NftHandle
rs = compile_ruleset(topology.load({str(topo)!r}).topology, "plant-a", now=datetime.now(UTC),
                     options=CompileOptions(tunnels=({net.tunnel!r},)))
h = NftHandle()
h.apply_ruleset(rs)
h.add_grant(rs, "vendor-maintenance", "vendor-1", timedelta(hours=1))
print(1)
"""
    net.gw_python(apply)
    argv = [
        PY, "-m", "zonegate.cli", "report", "--iec62443", str(topo), "--kernel", "plant-a",
        "--tunnel", net.tunnel, "--no-api", "--format", "json",
    ]  # fmt: skip

    def report() -> tuple[int, dict[str, object]]:
        out = net.ns(net.gw, *argv, check=False)
        assert out.returncode in (0, 1), out.stderr
        return out.returncode, json.loads(out.stdout)

    _, data = report()
    assert str(data["inputs"]["kernel"]).endswith("matches"), data["inputs"]  # type: ignore[index]
    text = json.dumps(data)
    assert "the running table on plant-a has the compiled policy's digest sha256:" in text

    chain = "forward"
    net.ns(net.gw, "nft", "insert", "rule", "inet", "zonegate", chain, "accept")
    code, data = report()
    assert code == 1
    assert str(data["inputs"]["kernel"]).endswith("DIFFERS")  # type: ignore[index]
    assert "is not the compiled policy" in json.dumps(data)
