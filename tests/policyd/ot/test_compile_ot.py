"""The steering compile: which flows go to the tier, and that the admission stays kernel."""

from __future__ import annotations

import json
from typing import Any

from policyd.compile_ot import STEER_MARK
from policyd.compiler import CompileOptions, compile_ruleset
from policyd.render import render_text
from tests.policyd.conftest import NOW
from topology.model import Topology


def objects(plant: Topology, port: int | None = 15020) -> list[dict[str, Any]]:
    rs = compile_ruleset(plant, "plant-a", now=NOW, options=CompileOptions(ot_port=port))
    return list(rs.objects)


def rules(objs: list[dict[str, Any]], chain: str) -> list[list[Any]]:
    return [o["rule"]["expr"] for o in objs if "rule" in o and o["rule"]["chain"] == chain]


def test_no_port_no_steering(plant: Topology) -> None:
    assert not any("ot_" in json.dumps(o) for o in objects(plant, None))


def test_modbus_targets_of_this_gateway_only(plant: Topology) -> None:
    objs = objects(plant)
    (targets,) = [o["set"] for o in objs if "set" in o and o["set"]["name"] == "ot_targets"]
    text = json.dumps(targets["elem"])
    assert "10.10.1.0" in text and "502" in text  # the control zone (engineers) and plc-1
    assert "10.20.1" not in text  # plant-b's PLC is steered by plant-b's gateway
    # the zone and plc-1 inside it are one element: an interval set refuses overlaps
    assert targets["elem"] == [{"concat": [{"prefix": {"addr": "10.10.1.0", "len": 24}}, 502]}], (
        targets["elem"]
    )


def test_recorded_conduits_record_the_tiers_answers(plant: Topology) -> None:
    out = json.dumps(rules(objects(plant), "ot_output"))
    assert '"data": "@recorded"' in out and "ip" in out


def test_input_starts_with_the_jump_and_admission_is_dispatch(plant: Topology) -> None:
    objs = objects(plant)
    first = rules(objs, "input")[0]
    assert first[0]["match"]["right"] == STEER_MARK and first[-1] == {
        "jump": {"target": "ot_input"}
    }
    ot_input = json.dumps(rules(objs, "ot_input"))
    assert '"data": "@dispatch"' in ot_input and '"target": "established"' in ot_input
    assert '"target": "deny_spoof"' in ot_input  # zone binding, copied from `forward`
    pre = rules(objs, "ot_prerouting")
    assert "tproxy" in json.dumps(pre[1]) and pre[-1][-1] == {"drop": None}


def test_function_match_moves_to_the_device_side(plant: Topology) -> None:
    objs = objects(plant)
    fc = [
        r
        for o in objs
        if "rule" in o and o["rule"]["chain"].startswith("fc_")
        for r in [o["rule"]["expr"]]
    ]
    payload = [r for r in fc if '"ih"' in json.dumps(r)]  # the function-code matches
    skip = {"match": {"op": "!=", "left": {"meta": {"key": "mark"}}, "right": STEER_MARK}}
    assert payload and all(r[0] == skip for r in payload)
    assert [{"accept": None}] in fc  # steered packets still reach each chain's accept
    functions = [{"vmap": {"key": {"meta": {"key": "mark"}}, "data": "@functions"}}]
    assert functions in rules(objs, "ot_output")


def test_steering_renders(plant: Topology) -> None:
    text = render_text(objects(plant))
    assert "tproxy ip to 127.0.0.1:15020" in text and "socket transparent 1" in text
