"""Table tests for the reference evaluator on the bundled example."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from topology import load
from topology.evaluate import ALL_GRANTS, Flow, FlowError, evaluate
from topology.model import Topology
from topology.policy_tests import run_tests

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "plant"
WED_10 = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)  # 10:00 in Berlin
WED_21 = datetime(2026, 11, 25, 20, 30, tzinfo=UTC)  # 21:30 in Berlin
SAT_10 = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def plant() -> Topology:
    return load(EXAMPLE).topology


@pytest.mark.sr("SR 2.1", "SR 2.1 RE1")
def test_example_declared_tests_all_pass(plant: Topology) -> None:
    results = run_tests(plant)
    assert len(results) >= 15
    assert {r.test.expect for r in results} == {"allow", "deny"}
    assert [r.test.describe() for r in results if not r.passed] == []


TABLE = [
    # source, target, service, at, grants, allowed, conduit, reason part
    ("engineer-1", "plant-a/plc-1", "modbus/read", WED_10, (), True, "engineers-read-plcs", ""),
    (
        "engineer-1",
        "plant-a/plc-1",
        "modbus/read",
        WED_21,
        (),
        False,
        "engineers-read-plcs",
        "closed",
    ),
    (
        "engineer-1",
        "plant-a/plc-1",
        "modbus/read",
        SAT_10,
        (),
        False,
        "engineers-read-plcs",
        "closed",
    ),
    ("engineer-1", "plant-a/plc-1", "modbus/write", WED_10, (), False, None, "default deny"),
    ("engineer-1", "plant-a/plc-1", "tcp/502", WED_10, (), False, None, "default deny"),
    ("engineer-1", "plant-a/control", "ssh", WED_10, (), True, "engineers-read-plcs", ""),
    ("engineer-1", "10.10.1.77", "ssh", WED_10, (), True, "engineers-read-plcs", ""),
    ("engineer-1", "10.10.2.5", "ssh", WED_10, (), False, None, "default deny"),
    ("100.64.1.10", "plant-a/plc-2", "ssh", WED_10, (), True, "engineers-read-plcs", ""),
    ("100.64.9.9", "plant-a/plc-2", "ssh", WED_10, (), False, None, "default deny"),
    (
        "vendor-tech",
        "plant-a/plc-1",
        "modbus/write",
        None,
        (),
        False,
        "vendor-maintenance",
        "grant",
    ),
    (
        "vendor-tech",
        "plant-a/plc-1",
        "modbus/write",
        None,
        ("vendor-maintenance",),
        True,
        "vendor-maintenance",
        "",
    ),
    (
        "vendor-tech",
        "plant-a/plc-1",
        "modbus/write",
        None,
        ("safety-emergency",),
        False,
        "vendor-maintenance",
        "grant",
    ),
    (
        "vendor-tech",
        "plant-a/plc-1",
        "modbus/diagnostics",
        None,
        ALL_GRANTS,
        False,
        None,
        "default",
    ),
    (
        "vendor-tech",
        "plant-a/plc-1",
        "modbus/read",
        datetime(2025, 12, 1, tzinfo=UTC),
        ALL_GRANTS,
        False,
        None,
        "not valid",
    ),
    ("safety-engineer-1", "plant-a/sis-1", "ssh", None, (), False, "safety-emergency", "emergency"),
    ("safety-engineer-1", "plant-a/sis-1", "ssh", None, ALL_GRANTS, True, "safety-emergency", ""),
    (
        "plant-b/scada-b",
        "plant-a/plc-2",
        "modbus/read",
        None,
        (),
        True,
        "plant-b-scada-reads-a",
        "",
    ),
    ("10.20.5.99", "plant-a/plc-2", "modbus/read", None, (), True, "plant-b-scada-reads-a", ""),
    ("plant-b/plc-b1", "plant-a/plc-2", "modbus/read", None, (), False, None, "default deny"),
    ("plant-b", "plant-a/plc-2", "modbus/read", None, (), False, None, "default deny"),
    ("shift-lead-1", "plant-a/historian", "https", None, (), True, "historian-access", ""),
    ("shift-lead-1", "plant-a/historian", "http", None, (), False, None, "default deny"),
]


@pytest.mark.parametrize(
    ("source", "target", "service", "at", "grants", "allowed", "conduit", "reason"), TABLE
)
def test_evaluate_table(
    plant: Topology,
    source: str,
    target: str,
    service: str,
    at: datetime | None,
    grants: tuple[str, ...],
    allowed: bool,
    conduit: str | None,
    reason: str,
) -> None:
    verdict = evaluate(plant, Flow(source, target, service, at, grants))
    assert (verdict.allowed, verdict.conduit) == (allowed, conduit), verdict.reason
    assert reason in verdict.reason


def test_conditions_are_stated_when_no_time_is_given(plant: Topology) -> None:
    verdict = evaluate(plant, Flow("engineer-1", "plant-a/plc-1", "modbus/read"))
    assert verdict.allowed
    assert "schedule Mon-Fri 06:00-20:00 Europe/Berlin" in verdict.conditions
    assert "recorded" in verdict.conditions
    granted = evaluate(
        plant, Flow("vendor-tech", "plant-a/plc-1", "modbus/write", None, ALL_GRANTS)
    )
    assert any(c.startswith("granted (approval by shift-lead") for c in granted.conditions)
    assert any(c.startswith("identity valid from 2026-01-01") for c in granted.conditions)


@pytest.mark.parametrize(
    ("source", "target", "service", "message"),
    [
        ("nobody", "plant-a/plc-1", "ssh", "unknown identity"),
        ("engineer-1", "plant-z/plc-1", "ssh", "unknown zone"),
        ("engineer-1", "plant-a/plc-1", "gopher", "unknown service 'gopher'"),
        ("engineer-1", "plant-a/plc-1", "ssh/read", "has no function classes"),
        ("engineer-1", "plant-a/plc-1", "tcp/99999", "no valid port"),
    ],
)
def test_unknown_flow_parts_raise(
    plant: Topology, source: str, target: str, service: str, message: str
) -> None:
    with pytest.raises(FlowError, match=message):
        evaluate(plant, Flow(source, target, service))
