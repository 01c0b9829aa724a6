"""Model vs compiled rules over a session's lifetime: after event E at time t, is an
open flow F still allowed? (issue 11)

Safety: a packet of an open flow the compiled rules accept at t is a flow the model
allows at t under the policy then in force. Liveness: while the conduit the kernel
attributed the flow to still allows it in the model, its packets pass.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policyd.crosscheck import Event, session_verdict
from tests.policyd.conftest import NOW, build_plant
from topology.evaluate import Flow, FlowError, evaluate
from topology.model import Topology, frozen_map

PLANT = build_plant()
GRANTED = ("vendor-maintenance", "break-glass")


def _sources(topo: Topology, name: str) -> list[str]:
    c = topo.conduits[name]
    out = list(c.sources.identities) + [m.name for r in c.sources.roles for m in topo.members(r)]
    return out + list(c.sources.zones)


def _services(topo: Topology, name: str) -> list[str]:
    out = []
    for ref in topo.conduits[name].allow:
        out += [f"{ref.service}/{cls}" for cls in ref.classes] or [ref.service]
    return out


def _without(topo: Topology, conduit: str) -> Topology:
    rest = {k: v for k, v in topo.conduits.items() if k != conduit}
    return dataclasses.replace(topo, conduits=frozen_map(rest))


def _roleless(topo: Topology, identity: str) -> Topology:
    idents = dict(topo.identities)
    idents[identity] = dataclasses.replace(idents[identity], roles=())
    return dataclasses.replace(topo, identities=frozen_map(idents))


@st.composite
def cases(draw: st.DrawFn) -> tuple[Flow, datetime, Event, datetime, str]:
    name = draw(st.sampled_from(sorted(PLANT.conduits)))
    source = draw(st.sampled_from(_sources(PLANT, name)))
    target = PLANT.conduits[name].target.ref
    service = draw(st.sampled_from(_services(PLANT, name)))
    t0 = NOW + timedelta(minutes=draw(st.integers(0, 7 * 24 * 60)))
    t1 = t0 + timedelta(minutes=draw(st.sampled_from([0, 1, 59, 60, 61, 300, 1440, 4000])))
    kind = draw(st.sampled_from(["time", "revoke", "remove", "role"]))
    after, grants_after = PLANT, GRANTED
    if kind == "revoke":
        grants_after = ()
    elif kind == "remove":
        after = _without(PLANT, draw(st.sampled_from(sorted(PLANT.conduits))))
    elif kind == "role" and source in PLANT.identities:
        after = _roleless(PLANT, source)
    flow = Flow(source, target, service, t0, GRANTED)
    return flow, t0, Event(after, GRANTED, grants_after), t1, kind


@settings(max_examples=300, deadline=None)
@given(case=cases())
def test_open_flows_live_exactly_as_long_as_their_admission(
    case: tuple[Flow, datetime, Event, datetime, str],
) -> None:
    flow, t0, event, t1, kind = case
    try:
        got = session_verdict(PLANT, flow, t0, event, t1)
    except FlowError:
        return  # a zone source without a concrete address
    if got is None:
        return  # never opened
    accepted, attributed = got
    later = dataclasses.replace(flow, at=t1, grants=event.grants_after)
    if accepted:
        assert evaluate(event.after, later).allowed, (kind, flow, t1)
    names = set(attributed)
    if not names <= set(event.after.conduits):
        return
    own = {n: event.after.conduits[n] for n in names}
    alone = dataclasses.replace(event.after, conduits=frozen_map(own))
    if evaluate(alone, later).allowed and len(names) == 1:
        assert accepted, (kind, flow, t1, attributed)


@pytest.mark.parametrize(
    ("event", "alive"),
    [
        ("time", True),
        ("revoke", False),
        ("remove", False),
    ],
)
def test_vendor_session_after_event(event: str, alive: bool) -> None:
    flow = Flow("vendor-1", "plant-a/plc-1", "modbus/write", NOW, GRANTED)
    after = _without(PLANT, "vendor-maintenance") if event == "remove" else PLANT
    grants_after = () if event == "revoke" else GRANTED
    got = session_verdict(PLANT, flow, NOW, Event(after, GRANTED, grants_after), NOW)
    assert got is not None and got[0] is alive and got[1][0] == "vendor-maintenance"


def test_schedule_close_ends_the_session() -> None:
    """engineers-read-plcs is open 07:00-18:00 Berlin on weekdays: a read flow open at
    17:59 local is dropped at 18:00 with no event but time."""
    from zoneinfo import ZoneInfo

    t0 = datetime(2025, 1, 14, 17, 59, tzinfo=ZoneInfo("Europe/Berlin"))
    flow = Flow("eng-1", "plant-a/plc-1", "modbus/read", t0, ())
    same = Event(PLANT, (), ())
    assert session_verdict(PLANT, flow, t0, same, t0 + timedelta(seconds=59)) == (
        True,
        ["engineers-read-plcs"] * 5,
    )
    got = session_verdict(PLANT, flow, t0, same, t0 + timedelta(minutes=1))
    assert got is not None and got[0] is False
