"""Fixes of issue 11 found on the way, each with the case that showed it."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address as IP
from pathlib import Path

import pytest

import topology
from policyd.compiler import compile_ruleset
from policyd.crosscheck import compiled_verdict
from policyd.ruleset_eval import Packet, RulesetEvaluator, payload_with_code
from topology.evaluate import Flow
from zonegate.cli import main

BASE = """version: 1
sites:
  plant-a:
    gateway: {underlay: 192.0.2.10, overlay: 100.64.0.1, management: [{from: [10.0.0.0/8], allow: [ssh]}]}
    zones:
      control: {cidr: 10.10.1.0/24, security_level: 2}
    assets:
      plc-1: {zone: control, address: 10.10.1.5}
identities:
  eng: {kind: user, overlay: 100.64.1.10}
conduits:
"""


def load(tmp_path: Path, conduits: str) -> topology.Topology:
    path = tmp_path / "t.yaml"
    path.write_text(BASE + conduits)
    return topology.load(path).topology


@pytest.mark.parametrize("hours", ["", ', hours: "08:00-24:00"'])
@pytest.mark.parametrize("tz", ["UTC", "Europe/Berlin", "America/New_York"])
def test_schedule_ending_at_midnight_has_no_gap(tmp_path: Path, hours: str, tz: str) -> None:
    """Every second up to local midnight is open: 23:59:59 was not (one-second gap)."""
    topo = load(
        tmp_path,
        f"""  ssh-weekdays:
    from: {{identities: [eng]}}
    to: {{asset: plant-a/plc-1}}
    allow: [ssh]
    schedule: {{days: mon-fri{hours}, tz: {tz}}}
""",
    )
    from zoneinfo import ZoneInfo

    # Tuesday 2026-11-24 23:59:59 local, and the second before and after
    local = datetime(2026, 11, 24, 23, 59, 59, tzinfo=ZoneInfo(tz))
    rs = compile_ruleset(topo, "plant-a", now=local - timedelta(hours=1))
    ev = RulesetEvaluator(rs.objects, local - timedelta(hours=1))
    pkt = Packet(iif="zg0", saddr=IP("100.64.1.10"), daddr=IP("10.10.1.5"), proto="tcp", dport=22)
    for delta, open_ in ((-1, True), (0, True), (1, not hours)):
        at = local + timedelta(seconds=delta)
        assert ev.evaluate("forward", pkt, at).accepted is open_, at
        assert topo.conduits["ssh-weekdays"].schedule.is_open(at) is open_  # type: ignore[union-attr]
    friday_end = datetime(2026, 11, 27, 23, 59, 59, tzinfo=ZoneInfo(tz))
    assert ev.evaluate("forward", pkt, friday_end).accepted
    assert not ev.evaluate("forward", pkt, friday_end + timedelta(seconds=1)).accepted


SCHEDULED = """  day-ssh:
    from: {identities: [eng]}
    to: {asset: plant-a/plc-1}
    allow: [ssh]
    schedule: {days: mon-sun, hours: "08:00-17:00", tz: UTC}
"""


def test_compiled_verdict_at_a_non_utc_instant(tmp_path: Path) -> None:
    """09:30+02:00 is 07:30 UTC: closed. The interpreter read 09:30 and said allow."""
    topo = load(tmp_path, SCHEDULED)
    at = datetime.fromisoformat("2026-11-25T09:30:00+02:00")
    assert not compiled_verdict(topo, Flow("eng", "plant-a/plc-1", "ssh", at), at).allowed
    later = datetime.fromisoformat("2026-11-25T10:30:00+02:00")
    assert compiled_verdict(topo, Flow("eng", "plant-a/plc-1", "ssh", later), later).allowed
    argv = ["explain", str(tmp_path / "t.yaml"), "--from", "eng", "--to", "plant-a/plc-1"]
    argv += ["--service", "ssh", "--compiled", "--at", "2026-11-25T09:30+02:00"]
    assert main(argv) == 0


def test_explain_compiled_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    load(tmp_path, SCHEDULED)
    argv = ["explain", str(tmp_path / "t.yaml"), "--from", "eng", "--to", "plant-a/plc-1"]
    argv += ["--service", "ssh", "--compiled", "--json", "--at", "2026-11-25T12:00+00:00"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["verdict"] == "allow" and out["compiled"]["verdict"] == "allow"
    assert out["compiled"]["agrees"] is True and out["compiled"]["ct_marks"]
    # a disagreement exits 1 (the interpreter made to deny)
    from policyd import crosscheck
    from zonegate import cli

    def deny(*args: object, **kw: object) -> crosscheck.CompiledVerdict:
        return crosscheck.CompiledVerdict(False)

    monkeypatch.setattr(cli, "compiled_verdict", deny)
    assert main(argv) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["compiled"]["verdict"] == "deny" and out["compiled"]["agrees"] is False


TWO = """  eng-rw:
    from: {identities: [eng]}
    to: {asset: plant-a/plc-1}
    allow: [{modbus: [read, write]}]
  eng-diag:
    from: {identities: [eng]}
    to: {asset: plant-a/plc-1}
    allow: [{modbus: diagnostics}]
"""


def test_a_class_another_conduit_allows_passes(tmp_path: Path) -> None:
    """Two conduits admit eng to plc-1; the flow is marked with the wider one (read,
    write), and diagnostics, which only the other allows, was denied by the kernel."""
    topo = load(tmp_path, TWO)
    at = datetime(2026, 11, 25, 12, tzinfo=UTC)
    for cls, allowed in (("diagnostics", True), ("write", True), ("read", True)):
        flow = Flow("eng", "plant-a/plc-1", f"modbus/{cls}", at)
        assert compiled_verdict(topo, flow, at).allowed is allowed, cls
    rs = compile_ruleset(topo, "plant-a", now=at)
    ev = RulesetEvaluator(rs.objects, at)
    pkt = Packet(
        iif="zg0",
        saddr=IP("100.64.1.10"),
        daddr=IP("10.10.1.5"),
        proto="tcp",
        dport=502,
        payload=payload_with_code(56, 17),  # report server id: no class allows it
    )
    res = ev.connection(pkt, at)
    assert not res.accepted and res.logs == ["zg deny function"]


def test_canonical_merges_adjacent_networks_like_the_kernel() -> None:
    """The kernel lists a constant set's adjacent prefixes as one range: both spellings
    must compare equal, or every drift check at scale reports a false drift."""
    from policyd.render import canonical

    def rule(right: object) -> list[dict[str, object]]:
        m = {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}}}
        m["match"]["right"] = right  # type: ignore[index]
        return [{"rule": {"chain": "forward", "expr": [m]}}]

    compiled = rule(
        {
            "set": [
                {"prefix": {"addr": "10.0.1.0", "len": 24}},
                {"prefix": {"addr": "10.0.0.0", "len": 24}},
            ]
        }
    )
    listed = rule({"set": [{"range": ["10.0.0.0", "10.0.1.255"]}]})
    assert canonical(compiled) == canonical(listed)
    other = rule(
        {
            "set": [
                {"prefix": {"addr": "10.0.0.0", "len": 24}},
                {"prefix": {"addr": "10.0.2.0", "len": 24}},
            ]
        }
    )
    assert canonical(other) != canonical(listed)
