"""`reach` is the evaluator's answer turned around: whoever reach lists for an asset is
allowed by `explain` (with a grant, at any time) for a listed service, and whoever the
evaluator allows is listed. Checked for every identity, zone, asset and service of both
examples; and at an instant, only what is open then is listed."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from topology import load
from topology.evaluate import ALL_GRANTS, Flow, evaluate
from topology.model import Topology
from topology.reach import reach_from, reach_to

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = [ROOT / "examples" / "plant", ROOT / "examples" / "fleet"]


def specs(topo: Topology) -> list[str]:
    out = []
    for svc in topo.services.values():
        out.append(svc.name)
        out += [f"{svc.name}/{c}" for c in svc.classes]
    return out


def covers(topo: Topology, conduit: str, spec: str) -> bool:
    name, _, cls = spec.partition("/")
    return any(
        a.service == name and (not a.classes or cls in a.classes)
        for a in topo.conduits[conduit].allow
    )


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_reach_to_agrees_with_the_evaluator(example: Path) -> None:
    topo = load(example).topology
    sources = [i for i in topo.identities.values() if i.kind != "site"]
    zones = [z.ref for s in topo.sites.values() for z in s.zones.values()]
    checked = 0
    for site in topo.sites.values():
        for asset in site.assets.values():
            rows = reach_to(topo, asset.ref)
            for source in [i.name for i in sources] + zones:
                listed = [r for r in rows if r.source == source]
                for spec in specs(topo):
                    flow = Flow(source, asset.ref, spec, None, ALL_GRANTS)
                    allowed = evaluate(topo, flow).allowed
                    reached = any(covers(topo, r.conduit, spec) for r in listed)
                    assert allowed == reached, (source, asset.ref, spec)
                    checked += allowed
    assert checked > 10


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_reach_from_is_reach_to_turned_around(example: Path) -> None:
    topo = load(example).topology
    forward = {
        (r.source, r.conduit, r.target)
        for s in topo.sites.values()
        for z in s.zones.values()
        for r in reach_to(topo, z.ref)
    }
    backward = {
        (r.source, r.conduit, r.target) for i in topo.identities for r in reach_from(topo, i)
    } | {
        (r.source, r.conduit, r.target)
        for s in topo.sites.values()
        for z in s.zones.values()
        for r in reach_from(topo, z.ref)
    }
    assert forward == backward and forward


def test_at_an_instant_only_what_is_open_is_listed() -> None:
    topo = load(EXAMPLES[0]).topology
    weekday = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)  # Wednesday 10:00 in Berlin
    night = datetime(2026, 11, 25, 22, 0, tzinfo=UTC)
    after_contract = datetime(2027, 7, 1, 9, 0, tzinfo=UTC)  # a Thursday, vendor expired
    at_day = {r.source for r in reach_to(topo, "plant-a/plc-1", weekday)}
    at_night = {r.source for r in reach_to(topo, "plant-a/plc-1", night)}
    later = {r.source for r in reach_to(topo, "plant-a/plc-1", after_contract)}
    assert {"engineer-1", "vendor-tech"} <= at_day
    assert "engineer-1" not in at_night and "vendor-tech" in at_night  # grant is a term
    assert "vendor-tech" not in later and "engineer-1" in later
    for when in (weekday, night, after_contract):
        for r in reach_to(topo, "plant-a/plc-1", when):
            spec = next(s for s in specs(topo) if covers(topo, r.conduit, s))
            assert evaluate(topo, Flow(r.source, "plant-a/plc-1", spec, when, ALL_GRANTS)).allowed
