"""The scenario's pure parts: which declared tests replay, from where, against what."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from topology import load
from zonegate.lab.emulation import plan_network
from zonegate.lab.scenario_cases import SKIP_PINNED, Outcome, outcome_table, plan_cases, summary
from zonegate.lab.scenario_grants import grant_steps

ROOT = Path(__file__).resolve().parents[2]
PLANT = load(ROOT / "examples" / "plant").topology
WEDNESDAY_NOON = datetime(2026, 11, 25, 11, 0, tzinfo=UTC)  # 12:00 in Berlin
SATURDAY = datetime(2026, 11, 28, 11, 0, tzinfo=UTC)

SCHEDULED = """\
version: 1
sites:
  s:
    gateway: {underlay: 192.0.2.10, overlay: 100.64.0.1}
    zones:
      control: {cidr: 10.1.1.0/24, security_level: 2}
      ops: {cidr: 10.1.5.0/24, security_level: 2}
    assets:
      plc: {zone: control, address: 10.1.1.5, services: [modbus]}
roles:
  eng: {}
identities:
  e1: {kind: user, roles: [eng], overlay: 100.64.1.1}
  s: {kind: site}
conduits:
  eng-weekdays:
    from: {roles: [eng]}
    to: {asset: s/plc}
    allow: [{modbus: read}]
    schedule: {days: mon-fri, hours: "06:00-20:00", tz: Europe/Berlin}
  ops-approved:
    from: {zones: [s/ops]}
    to: {asset: s/plc}
    allow: [{modbus: read}]
    approval: {by: [eng], max: 1h}
tests:
  - {from: e1, to: s/plc, service: modbus/read, expect: allow}
  - {from: s/ops, to: s/plc, service: modbus/read, granted: true, expect: allow}
  - {from: s/ops, to: s/control, service: modbus/read, expect: deny}
"""


def test_pinned_time_tests_are_skipped_never_run() -> None:
    cases = plan_cases(PLANT, plan_network(PLANT), WEDNESDAY_NOON)
    pinned = [c for c in cases if c.test.at is not None]
    assert pinned and all(c.skip == SKIP_PINNED and c.model is None for c in pinned)
    outcomes = [Outcome(c, None) for c in pinned]
    assert all(o.ok and o.passed is None for o in outcomes)
    assert "passed" not in outcome_table(outcomes)


def test_sources_map_to_hosts_and_targets_to_addresses() -> None:
    cases = {c.index: c for c in plan_cases(PLANT, plan_network(PLANT), WEDNESDAY_NOON)}
    scada = cases[19]  # plant-b/scada-b -> plant-a/plc-1 modbus/read
    assert (scada.source_host, scada.target_address) == ("plant-b/scada-b", "10.10.1.5")
    vendor = cases[11]  # vendor-tech -> plant-a/plc-1 modbus/write
    assert vendor.source_host == "vendor-tech" and vendor.runnable
    without = {
        c.index: c
        for c in plan_cases(
            PLANT, plan_network(PLANT), WEDNESDAY_NOON, {"vendor-tech": "skipped (no tunnel: why)"}
        )
    }
    assert without[11].skip == "skipped (no tunnel: why)"
    assert without[19].runnable


def test_traffic_is_compared_with_the_verdict_now(tmp_path: Path) -> None:
    (tmp_path / "t.yaml").write_text(SCHEDULED)
    topo = load(tmp_path).topology
    plan = plan_network(topo)
    weekday = plan_cases(topo, plan, WEDNESDAY_NOON)[0]
    saturday = plan_cases(topo, plan, SATURDAY)[0]
    assert weekday.model is not None and weekday.model.allowed
    assert saturday.model is not None and not saturday.model.allowed
    # On Saturday the schedule is closed: blocked traffic is right, passing is a mismatch.
    assert Outcome(saturday, False).ok and not Outcome(saturday, True).ok
    table = outcome_table([Outcome(saturday, False)])
    assert "deny (now)" in table and "ok" in table
    assert "1 ok, 0 MISMATCH" in summary([Outcome(saturday, False)])
    assert "MISMATCH" in outcome_table([Outcome(saturday, True)])


def test_zone_sources_and_targets(tmp_path: Path) -> None:
    (tmp_path / "t.yaml").write_text(SCHEDULED)
    topo = load(tmp_path).topology
    cases = plan_cases(topo, plan_network(topo), WEDNESDAY_NOON)
    granted_zone, to_zone = cases[1], cases[2]
    assert granted_zone.skip is not None and "identities" in granted_zone.skip
    assert to_zone.runnable and to_zone.target_address == "10.1.1.5"  # the zone's Modbus host
    assert to_zone.source_host == "s/ops"  # the empty zone's probe host


def test_grant_steps_request_approval_or_emergency() -> None:
    (vendor,) = grant_steps(PLANT, "vendor-tech", WEDNESDAY_NOON)
    assert (vendor.conduit, vendor.site, vendor.emergency) == (
        "vendor-maintenance",
        "plant-a",
        False,
    )
    assert vendor.approver == "shift-lead-1"
    (safety,) = grant_steps(PLANT, "safety-engineer-1", WEDNESDAY_NOON)
    assert safety.emergency and safety.approver is None and safety.conduit == "safety-emergency"
    assert grant_steps(PLANT, "engineer-1", WEDNESDAY_NOON) == []
