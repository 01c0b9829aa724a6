"""`record: true` in the compiled ruleset: every packet of a recorded flow is copied once.

Run through the JSON evaluator, so the claim is about the exact objects the kernel
gets: new, retransmitted-new, established and reply packets of a recorded conduit
each produce one copy to NFLOG_RECORD_GROUP; an unrecorded conduit's produce none.
"""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address

from policyd.compiler import Ruleset, compile_ruleset
from policyd.conventions import NFLOG_RECORD_GROUP, NFLOG_RECORD_PREFIX, RECORD_SNAPLEN
from policyd.ruleset_eval import Packet, RulesetEvaluator, payload_with_code
from tests.policyd.conftest import NOW, build_plant
from topology.model import Topology, frozen_map

PLANT = build_plant()
VENDOR, LEAD, PLC = "100.64.2.10", "100.64.1.20", "10.10.1.5"


def _ruleset(topo: Topology = PLANT) -> Ruleset:
    return compile_ruleset(topo, "plant-a", now=NOW)


def _granted(rs: Ruleset) -> RulesetEvaluator:
    ev = RulesetEvaluator(rs.objects, NOW)
    ev.add_element("grant_vendor_maintenance", VENDOR, NOW, 3600)
    return ev


def _modbus(src: str, code: int | None = None) -> Packet:
    payload = payload_with_code(56, code) if code is not None else b""
    dst = IPv4Address(PLC)
    return Packet(
        iif="zg0", saddr=IPv4Address(src), daddr=dst, proto="tcp", dport=502, payload=payload
    )


def _mark(rs: Ruleset, conduit: str) -> int:
    return rs.conduits[conduit].mark


def test_every_packet_of_a_recorded_flow_is_copied_once() -> None:
    rs = _ruleset()
    ev = _granted(rs)
    mark = _mark(rs, "vendor-maintenance")
    prefix = f"{NFLOG_RECORD_PREFIX}0x{mark:08x}"
    syn = _modbus(VENDOR)
    first = ev.evaluate("forward", syn, NOW)
    assert first.accepted and first.ct_mark == mark and first.recorded == [prefix]
    # a retransmitted SYN: still state new, but the mark is already on the entry
    again = ev.evaluate("forward", replace(syn, ct_mark=mark), NOW)
    assert again.accepted and again.recorded == [prefix]
    data = replace(_modbus(VENDOR, 3), ct_state="established", ct_mark=mark)
    assert ev.evaluate("forward", data, NOW).recorded == [prefix]
    reply = replace(
        data,
        ct_direction="reply",
        saddr=IPv4Address(PLC),
        daddr=IPv4Address(VENDOR),
        iif="lan0",
        ct_saddr=IPv4Address(VENDOR),
    )
    out = ev.evaluate("forward", reply, NOW)
    assert out.accepted and out.recorded == [prefix]
    related = replace(data, ct_state="related")
    assert ev.evaluate("forward", related, NOW).recorded == [prefix]
    # vendor-maintenance allows read+write; a diagnostics code is denied *and* recorded
    denied = ev.evaluate("forward", replace(data, payload=payload_with_code(56, 8)), NOW)
    assert not denied.accepted and denied.recorded == [prefix]
    assert denied.logs == ["zg deny function"]


def test_unrecorded_conduit_is_not_copied() -> None:
    rs = _ruleset()
    ev = _granted(rs)
    mark = _mark(rs, "lead-writes-plc1")
    first = ev.evaluate("forward", _modbus(LEAD), NOW)
    assert first.accepted and first.ct_mark == mark and first.recorded == []
    data = replace(_modbus(LEAD, 3), ct_state="established", ct_mark=mark)
    res = ev.evaluate("forward", data, NOW)
    assert res.accepted and res.recorded == [] and res.logs == []


def test_copy_statement_and_layout() -> None:
    rs = _ruleset()
    mark = _mark(rs, "vendor-maintenance")
    logs = [
        s["log"]
        for o in rs.objects
        if "rule" in o
        for s in o["rule"]["expr"]
        if "log" in s and s["log"]["group"] == NFLOG_RECORD_GROUP
    ]
    assert len(logs) == 2  # the accept rule and rec_vendor_maintenance
    for lg in logs:
        assert lg["prefix"] == f"{NFLOG_RECORD_PREFIX}0x{mark:08x}"
        assert lg["snaplen"] == RECORD_SNAPLEN and lg["queue-threshold"] > 1
    recorded = next(o["map"] for o in rs.objects if o.get("map", {}).get("name") == "recorded")
    assert recorded["elem"] == [[mark, {"jump": {"target": "rec_vendor_maintenance"}}]]
    est = [o["rule"]["expr"] for o in rs.objects if o.get("rule", {}).get("chain") == "established"]
    assert est[0] == [{"vmap": {"key": {"ct": {"key": "mark"}}, "data": "@recorded"}}]


def test_no_recorded_conduit_no_recording_objects() -> None:
    conduits = {n: replace(c, record=False) for n, c in PLANT.conduits.items()}
    plain = _ruleset(replace(PLANT, conduits=frozen_map(conduits)))
    names = {next(iter(o.values())).get("name") for o in plain.objects}
    assert "recorded" not in names and not any(str(n).startswith("rec_") for n in names)
    # recording costs no hook-chain rule: the copy sits in `established`
    assert plain.hook_rule_count() == _ruleset().hook_rule_count()
    assert len([o for o in plain.objects if "rule" in o]) + 2 == len(
        [o for o in _ruleset().objects if "rule" in o]
    )
