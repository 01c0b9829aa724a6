"""The pure compiler: determinism, golden files, layout properties, time windows."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from datetime import UTC, datetime, time, timedelta
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from policyd.compiler import CompileError, CompileOptions, Ruleset, compile_ruleset
from policyd.render import render_text
from policyd.timewindows import UtcWindow, next_offset_change, utc_windows
from tests.policyd.conftest import NOW, build_plant
from topology.model import Identity, Schedule, Topology, frozen_map

GOLDEN = Path(__file__).resolve().parents[1] / "golden"


def _check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("ZG_UPDATE_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"{path} missing: run with ZG_UPDATE_GOLDEN=1 to create it"
    assert text == path.read_text(), f"{path} differs: review, then ZG_UPDATE_GOLDEN=1"


@pytest.mark.parametrize("gateway", ["plant-a", "plant-b"])
def test_golden_handbuilt(plant: Topology, gateway: str) -> None:
    rs = compile_ruleset(plant, gateway, now=NOW)
    _check_golden(f"handbuilt-{gateway}.nft", render_text(rs.objects))


def test_deterministic(plant: Topology) -> None:
    a = json.dumps(compile_ruleset(plant, "plant-a", now=NOW).to_json(), sort_keys=True)
    b = json.dumps(compile_ruleset(build_plant(), "plant-a", now=NOW).to_json(), sort_keys=True)
    assert a == b


def test_one_table_only(plant: Topology) -> None:
    rs = compile_ruleset(plant, "plant-a", now=NOW)
    tables = [o["table"] for o in rs.objects if "table" in o]
    assert tables == [{"family": "inet", "name": "zonegate"}]
    for o in rs.objects:
        body = next(iter(o.values()))
        assert body.get("table", "zonegate") == "zonegate"
        assert body.get("family") == "inet"


def test_hook_chains_drop_by_default(plant: Topology) -> None:
    rs = compile_ruleset(plant, "plant-a", now=NOW)
    hooks = {o["chain"]["hook"]: o["chain"] for o in rs.objects if "hook" in o.get("chain", {})}
    assert set(hooks) == {"forward", "input"}
    assert all(c["policy"] == "drop" for c in hooks.values())


def _with_identities(topo: Topology, n: int) -> Topology:
    idents = dict(topo.identities)
    for i in range(n):
        name = f"bulk-{i}"
        addr = IPv4Address(int(IPv4Address("100.80.0.0")) + i)
        idents[name] = Identity(name, "user", ("plc-engineer", "shift-lead"), addr)
    return replace(topo, identities=frozen_map(idents))


def test_rule_count_independent_of_identities(plant: Topology) -> None:
    small = compile_ruleset(plant, "plant-a", now=NOW)
    big = compile_ruleset(_with_identities(plant, 2000), "plant-a", now=NOW)

    def rules(rs: Ruleset) -> int:
        return sum(1 for o in rs.objects if "rule" in o)

    assert big.hook_rule_count() == small.hook_rule_count()
    assert rules(big) == rules(small)
    ids = next(o["set"] for o in big.objects if o.get("set", {}).get("name") == "ids_night_shift")
    assert len(ids["elem"]) == 2001


def test_validity_windows(plant: Topology) -> None:
    rs = compile_ruleset(plant, "plant-a", now=NOW)
    plan = rs.conduits["engineers-read-plcs"]
    assert set(plan.identities) == {"eng-1", "eng-2"}  # eng-old expired, eng-new not yet
    ids = next(o["set"] for o in rs.objects if o.get("set", {}).get("name") == plan.identity_set)
    assert {"elem": {"val": "100.64.1.11", "timeout": 30 * 86400}} in ids["elem"]
    assert rs.next_change == NOW + timedelta(days=2)  # eng-new becomes valid


def test_grant_conduits_start_closed(plant: Topology) -> None:
    rs = compile_ruleset(plant, "plant-a", now=NOW)
    for name in ("vendor-maintenance", "break-glass"):
        plan = rs.conduits[name]
        assert plan.needs_grant and plan.identity_set is not None
        body = next(
            o["set"] for o in rs.objects if o.get("set", {}).get("name") == plan.identity_set
        )
        assert "elem" not in body and "timeout" in body["flags"]
    assert rs.conduits["vendor-maintenance"].max_grant == timedelta(hours=4)


def test_gateway_b_enforces_its_own_conduits(plant: Topology) -> None:
    rs = compile_ruleset(plant, "plant-b", now=NOW)
    # plant-b is the target of a-to-b-opcua and the source zone of b-to-historian
    assert set(rs.conduits) == {"a-to-b-opcua", "b-to-historian"}


def test_unknown_gateway(plant: Topology) -> None:
    with pytest.raises(CompileError, match="plant-a, plant-b"):
        compile_ruleset(plant, "nowhere", now=NOW)
    with pytest.raises(CompileError, match="timezone-aware"):
        compile_ruleset(plant, "plant-a", now=datetime(2025, 1, 1))


def test_tunnel_names_and_api_port(plant: Topology) -> None:
    opts = CompileOptions(tunnels=("wg-site", "zg*"), api_port=8443)
    text = render_text(compile_ruleset(plant, "plant-a", now=NOW, options=opts).objects)
    assert '"wg-site"' in text and "tcp dport 8443" in text and "ip daddr 100.64.0.1" in text


# -- time windows ----------------------------------------------------------------------


def test_berlin_winter_and_summer() -> None:
    s = Schedule(frozenset({0}), time(7), time(18), "Europe/Berlin")
    assert utc_windows(s, NOW) == (UtcWindow(6 * 3600, 17 * 3600, (0,)),)
    summer = datetime(2025, 7, 1, tzinfo=UTC)
    assert utc_windows(s, summer) == (UtcWindow(5 * 3600, 16 * 3600, (0,)),)


def test_overnight_wraps_to_next_utc_day() -> None:
    s = Schedule(frozenset({6}), time(22), time(6), "UTC")  # Sunday night
    assert utc_windows(s, NOW) == (UtcWindow(0, 6 * 3600, (0,)), UtcWindow(22 * 3600, 86400, (6,)))


def test_offset_moves_window_across_midnight() -> None:
    s = Schedule(frozenset({0}), time(0, 30), time(2), "Europe/Berlin")  # Mon 00:30 local
    assert utc_windows(s, NOW) == (
        UtcWindow(0, 3600, (0,)),
        UtcWindow(23 * 3600 + 1800, 86400, (6,)),
    )


def test_whole_week() -> None:
    s = Schedule(frozenset(range(7)), time(0), time(0), "Asia/Kolkata")
    assert utc_windows(s, NOW) == (UtcWindow(0, 86400, tuple(range(7))),)


def test_next_dst_switch() -> None:
    assert next_offset_change("Europe/Berlin", NOW) == datetime(2025, 3, 30, 1, 0, tzinfo=UTC)
    assert next_offset_change("UTC", NOW) is None
