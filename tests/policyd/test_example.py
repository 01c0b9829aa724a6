"""examples/plant: golden files, and compiled verdicts == the reference evaluator's."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import topology
from policyd.compiler import compile_ruleset
from policyd.crosscheck import compiled_verdict
from policyd.render import render_text
from tests.policyd.test_compiler import _check_golden
from topology.evaluate import ALL_GRANTS, Flow, evaluate
from topology.policy_tests import flow_of

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "plant"
TOPO = topology.load(EXAMPLE).topology
# A Wednesday morning in Berlin inside every identity's validity window.
T0 = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)


@pytest.mark.sr("SR 7.6")
@pytest.mark.parametrize("gateway", ["plant-a", "plant-b"])
def test_golden_example(gateway: str) -> None:
    rs = compile_ruleset(TOPO, gateway, now=T0)
    _check_golden(f"plant-{gateway}.nft", render_text(rs.objects))


def test_example_has_tests() -> None:
    assert len(TOPO.tests) >= 15


@pytest.mark.sr("SR 2.1")
@pytest.mark.parametrize("index", range(len(TOPO.tests)), ids=[t.describe() for t in TOPO.tests])
def test_declared_tests(index: int) -> None:
    test = TOPO.tests[index]
    at = test.at or T0
    flow = replace(flow_of(test), at=at)
    model = evaluate(TOPO, flow)
    compiled = compiled_verdict(TOPO, flow, at)
    assert compiled.allowed is model.allowed, (
        model,
        [(g, r.path, r.logs) for g, _, r in compiled.hops],
    )
    assert model.word == test.expect  # the declared expectation holds at this instant too


SOURCES = sorted(
    [n for n, i in TOPO.identities.items() if i.overlay is not None]
    + [a.ref for s in TOPO.sites.values() for a in s.assets.values()]
    + [str(z.cidr.network_address + 77) for s in TOPO.sites.values() for z in s.zones.values()]
)
TARGETS = sorted(
    [a.ref for s in TOPO.sites.values() for a in s.assets.values()]
    + [str(z.cidr.network_address + 99) for s in TOPO.sites.values() for z in s.zones.values()]
)
SERVICES = sorted(
    [n for n in TOPO.services]
    + [f"{n}/{c}" for n, s in TOPO.services.items() for c in s.classes]
    + ["tcp/8080"]
)
EDGES = [h * 3600 + d for h in (4, 5, 18, 19, 21, 22) for d in (-1, 0, 1)]


def _aimed(name: str) -> tuple[list[str], list[str], list[str]]:
    """Sources, targets and services a conduit names (and their neighbours)."""
    c = TOPO.conduits[name]
    srcs = list(c.sources.identities)
    srcs += [i.name for r in c.sources.roles for i in TOPO.members(r)]
    for ref in c.sources.zones:
        zone = TOPO.zone(ref)
        assert zone is not None
        srcs.append(str(zone.cidr.network_address + 33))
        srcs += [a.ref for a in TOPO.sites[zone.site].assets.values() if a.zone == zone.name]
    zone = TOPO.zone(c.target.ref)
    if zone is not None:
        tgts = [str(zone.cidr.network_address + 1), str(zone.cidr.broadcast_address - 1)]
    else:
        asset = TOPO.asset(c.target.ref)
        assert asset is not None
        tgts = [asset.ref, str(asset.address + 1)]
    svcs = [r.service for r in c.allow]
    svcs += [f"{r.service}/{k}" for r in c.allow for k in TOPO.services[r.service].classes]
    return srcs, tgts, svcs


AIMED = {n: _aimed(n) for n in sorted(TOPO.conduits)}


@st.composite
def model_flows(draw: st.DrawFn) -> Flow:
    """Mostly flows aimed at a conduit (near its edges in time), some entirely random."""
    day = datetime(2026, 11, 23, tzinfo=UTC) + timedelta(days=draw(st.integers(0, 6)))
    secs = draw(st.one_of(st.sampled_from(EDGES), st.integers(0, 86399)))
    srcs, tgts, svcs = SOURCES, TARGETS, SERVICES
    if draw(st.integers(0, 3)):
        srcs, tgts, svcs = AIMED[draw(st.sampled_from(sorted(AIMED)))]
    return Flow(
        source=draw(st.sampled_from(srcs)),
        target=draw(st.sampled_from(tgts)),
        service=draw(st.sampled_from(svcs)),
        at=day + timedelta(seconds=secs),
        grants=draw(st.sampled_from([(), ALL_GRANTS])),
    )


@settings(max_examples=300, deadline=None)
@given(flow=model_flows())
def test_generated_flows_match_reference(flow: Flow) -> None:
    assert flow.at is not None
    model = evaluate(TOPO, flow)
    compiled = compiled_verdict(TOPO, flow, flow.at)
    assert compiled.allowed is model.allowed, (model, [(g, r.path) for g, _, r in compiled.hops])
