"""Which open flows the current policy no longer admits, and the reason each ended."""

from __future__ import annotations

from datetime import timedelta
from ipaddress import IPv4Address, IPv4Network

from policyd.compiler import compile_ruleset
from policyd.flowlog.conntrack import CtEvent
from policyd.session_end import not_admitted, of_source
from tests.policyd.conftest import NOW, build_plant
from topology.model import conduit_mark

PLANT = build_plant()
RS = compile_ruleset(PLANT, "plant-a", now=NOW)
WEDNESDAY_NOON = NOW.replace(hour=11)  # 12:00 Berlin; engineers-read-plcs: weekdays 07-18


def flow(src: str, conduit: str, ct_id: int = 1) -> CtEvent:
    return CtEvent(False, ct_id, 6, src, "10.10.1.5", 40000, 502, conduit_mark(conduit))


def reasons(flows: list[CtEvent], at=WEDNESDAY_NOON, grants=None):  # type: ignore[no-untyped-def]
    held = grants or {}

    def lookup(name: str) -> set[IPv4Address | IPv4Network]:
        return set(held.get(name, set()))

    return {e.flow.ct_id: e.reason for e in not_admitted(flows, RS, PLANT, at, lookup)}


def test_reasons() -> None:
    vendor_set = RS.conduits["vendor-maintenance"].identity_set
    assert vendor_set is not None
    flows = [
        flow("100.64.1.10", "engineers-read-plcs", 1),  # eng-1: still admitted
        flow("100.64.1.99", "engineers-read-plcs", 2),  # eng-old: validity ended
        flow("100.64.3.1", "engineers-read-plcs", 3),  # guest: not (any more) in the role
        flow("100.64.2.10", "vendor-maintenance", 4),  # no grant element in the kernel
        flow("100.64.1.10", "gone-conduit", 5),
        CtEvent(False, 6, 6, "100.64.1.10", "10.10.1.5", 1, 502, 0x12345678),  # not ours
    ]
    assert reasons(flows) == {
        2: "validity_ended",
        3: "role_removed",
        4: "grant_expired",
        5: "conduit_removed",
    }
    granted = {vendor_set: {IPv4Address("100.64.2.10")}}
    assert 4 not in reasons(flows, grants=granted)
    evening = WEDNESDAY_NOON + timedelta(hours=8)  # 20:00 Berlin: the window is closed
    assert reasons(flows[:1], at=evening) == {1: "schedule_closed"}


def test_of_source_selects_one_grants_flows() -> None:
    flows = [
        flow("100.64.2.10", "vendor-maintenance", 1),
        flow("100.64.2.10", "engineers-read-plcs", 2),
        flow("100.64.2.11", "vendor-maintenance", 3),
    ]
    mark = conduit_mark("vendor-maintenance")
    ended = of_source(flows, mark, IPv4Address("100.64.2.10"), "revoked")
    assert [(e.flow.ct_id, e.reason) for e in ended] == [(1, "revoked")]
    zone = of_source(flows, mark, IPv4Network("100.64.2.0/24"), "grant_expired")
    assert [e.flow.ct_id for e in zone] == [1, 3]
