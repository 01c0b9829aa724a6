"""Dual approval (IEC 62443-3-3 SR 2.1 RE4): N distinct approvers, none the requester;
the grant opens in the kernel only with the N-th, and every approval is audited."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from policyd.flowlog.records import AuditEvent
from policyd.grant_service import GrantService
from policyd.grants import GrantBook, GrantError, GrantState
from tests.policyd.fake_kernel import FakeKernel
from topology import load

TOPO = """\
version: 1
sites:
  plant-a:
    gateway: {underlay: 192.0.2.10, overlay: 100.64.0.1}
    zones:
      control: {cidr: 10.10.1.0/24, security_level: 3}
    assets:
      plc-1: {zone: control, address: 10.10.1.5}
roles:
  vendor: {}
  lead: {}
identities:
  vendor-tech: {kind: user, roles: [vendor], overlay: 100.64.2.10}
  shift-lead-1: {kind: user, roles: [lead], overlay: 100.64.1.1}
  shift-lead-2: {kind: user, roles: [lead], overlay: 100.64.1.2}
conduits:
  vendor-writes:
    from: {roles: [vendor]}
    to: {asset: plant-a/plc-1}
    allow: [{modbus: [read, write]}]
    approval: {by: [lead], max: 4h, count: 2}
    record: true
"""

NOW = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)


@pytest.fixture
def service(tmp_path: Path) -> tuple[GrantService, FakeKernel, list[AuditEvent]]:
    (tmp_path / "t.yaml").write_text(TOPO)
    topo = load(tmp_path / "t.yaml").topology
    kernel = FakeKernel(lambda: topo, lambda: NOW)
    events: list[AuditEvent] = []
    svc = GrantService(GrantBook(topo), kernel, events.append, clock=lambda: NOW)
    return svc, kernel, events


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_grant_opens_only_with_the_second_distinct_approver(
    service: tuple[GrantService, FakeKernel, list[AuditEvent]],
) -> None:
    svc, kernel, events = service
    g = run(svc.request("vendor-tech", "vendor-writes", timedelta(hours=1), "pump", "vendor-tech"))
    g = run(svc.approve(g.id, "shift-lead-1", "shift-lead-1", "ok by me"))
    assert g.state is GrantState.REQUESTED and g.approvals == ("shift-lead-1",)
    assert kernel.elements("vendor-writes") == []
    with pytest.raises(GrantError, match="already approved"):
        run(svc.approve(g.id, "shift-lead-1", "shift-lead-1"))
    with pytest.raises(GrantError, match="cannot approve"):
        run(svc.approve(g.id, "vendor-tech", "vendor-tech"))
    g = run(svc.approve(g.id, "shift-lead-2", "shift-lead-2"))
    assert g.state is GrantState.ACTIVE and g.approvals == ("shift-lead-1", "shift-lead-2")
    assert [el.tag for el in kernel.elements("vendor-writes")] == [g.id]
    actions = [e.action for e in events]
    assert actions == ["grant_requested", "grant_approval_recorded", "grant_approved"]
    recorded = events[1]
    assert recorded.actor == "shift-lead-1" and recorded.details["approvals_missing"] == 1


def test_one_denial_ends_a_partly_approved_request(
    service: tuple[GrantService, FakeKernel, list[AuditEvent]],
) -> None:
    svc, kernel, _ = service
    g = run(svc.request("vendor-tech", "vendor-writes", timedelta(hours=1), "pump", "vendor-tech"))
    run(svc.approve(g.id, "shift-lead-1", "shift-lead-1"))
    g = run(svc.deny(g.id, "shift-lead-2", "shift-lead-2", "not today"))
    assert g.state is GrantState.DENIED and kernel.elements("vendor-writes") == []
