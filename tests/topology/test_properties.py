"""Hypothesis properties of loading and evaluation."""

from __future__ import annotations

import dataclasses
import random
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from topology import load
from topology.evaluate import ALL_GRANTS, Flow, evaluate
from topology.model import (
    Conduit,
    Schedule,
    ServiceRef,
    Sources,
    Target,
    TargetKind,
    Topology,
    frozen_map,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "plant"
PLANT = load(EXAMPLE).topology

IDENTITIES = sorted(PLANT.identities)
PLACES = sorted(
    [f"{s.name}/{a}" for s in PLANT.sites.values() for a in s.assets]
    + [f"{s.name}/{z}" for s in PLANT.sites.values() for z in s.zones]
)
SERVICES = sorted(
    [name for name in PLANT.services]
    + [f"{n}/{c}" for n, s in PLANT.services.items() for c in s.classes]
    + ["tcp/502", "tcp/22", "udp/161", "tcp/8080"]
)
MOMENTS = st.one_of(
    st.none(),
    st.datetimes(
        min_value=datetime(2025, 6, 1), max_value=datetime(2028, 1, 1), timezones=st.just(UTC)
    ),
)
GRANTS = st.one_of(st.just(ALL_GRANTS), st.frozensets(st.sampled_from(sorted(PLANT.conduits))))

flows = st.builds(
    Flow,
    source=st.sampled_from(IDENTITIES + PLACES),
    target=st.sampled_from(PLACES),
    service=st.sampled_from(SERVICES),
    at=MOMENTS,
    grants=GRANTS,
)


def without_conduits(topo: Topology) -> Topology:
    return dataclasses.replace(topo, conduits=frozen_map())


@given(flows)
def test_a_flow_no_conduit_covers_is_denied(flow: Flow) -> None:
    verdict = evaluate(without_conduits(PLANT), flow)
    assert not verdict.allowed and verdict.conduit is None
    assert verdict.reason.startswith(("default deny", "identity"))


@given(flows)
def test_an_allowed_flow_names_a_conduit_that_covers_it(flow: Flow) -> None:
    verdict = evaluate(PLANT, flow)
    if not verdict.allowed:
        return
    assert verdict.conduit is not None
    conduit = PLANT.conduits[verdict.conduit]
    alone = dataclasses.replace(PLANT, conduits=frozen_map({conduit.name: conduit}))
    assert evaluate(alone, flow).allowed


@st.composite
def extra_conduits(draw: st.DrawFn) -> Conduit:
    kind = draw(st.sampled_from(list(TargetKind)))
    site = draw(st.sampled_from(sorted(PLANT.sites)))
    names = PLANT.sites[site].zones if kind is TargetKind.ZONE else PLANT.sites[site].assets
    target = Target(kind, site, draw(st.sampled_from(sorted(names))))
    allow = draw(
        st.lists(
            st.sampled_from(
                [
                    ServiceRef("ssh"),
                    ServiceRef("https"),
                    ServiceRef("modbus"),
                    ServiceRef("modbus", ("write",)),
                    ServiceRef("modbus", ("read", "diagnostics")),
                ]
            ),
            min_size=1,
            max_size=3,
        )
    )
    zones = [f"{s.name}/{z}" for s in PLANT.sites.values() for z in s.zones]
    sources = Sources(
        identities=tuple(draw(st.lists(st.sampled_from(IDENTITIES), max_size=2))),
        roles=tuple(draw(st.lists(st.sampled_from(sorted(PLANT.roles)), max_size=2))),
        zones=tuple(draw(st.lists(st.sampled_from(zones), max_size=2))),
    )
    schedule = draw(
        st.one_of(
            st.none(),
            st.builds(
                Schedule,
                days=st.frozensets(st.integers(0, 6), min_size=1),
                start=st.times(max_value=time(12)),
                end=st.times(min_value=time(13)),
                tz=st.sampled_from(["UTC", "Europe/Berlin", "America/Chicago"]),
            ),
        )
    )
    return Conduit(
        name=draw(st.sampled_from(["zz-new", "aa-new"])),
        sources=sources,
        target=target,
        allow=tuple(allow),
        schedule=schedule,
    )


@given(extra_conduits(), st.lists(flows, min_size=1, max_size=20))
def test_adding_a_conduit_never_takes_an_allowed_flow_away(
    conduit: Conduit, batch: list[Flow]
) -> None:
    more = dataclasses.replace(
        PLANT, conduits=frozen_map({**PLANT.conduits, conduit.name: conduit})
    )
    for flow in batch:
        if evaluate(PLANT, flow).allowed:
            assert evaluate(more, flow).allowed, flow


def strip_locations(value: Any) -> Any:
    """The model without source places, to compare loads of differently laid-out files."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {
            f.name: strip_locations(getattr(value, f.name)) for f in dataclasses.fields(value)
        }
        fields.pop("location", None)
        fields.pop("files", None)
        return (type(value).__name__, tuple(sorted(fields.items(), key=lambda kv: kv[0])))
    if isinstance(value, dict) or hasattr(value, "items"):
        return tuple(sorted((k, strip_locations(v)) for k, v in value.items()))
    if isinstance(value, tuple | list):
        return tuple(strip_locations(v) for v in value)
    return value


REFERENCE = strip_locations(PLANT)
RAW = {p.name: yaml.safe_load(p.read_text()) for p in sorted(EXAMPLE.glob("*.yaml"))}


@settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1), files=st.integers(1, 5))
def test_loading_is_independent_of_file_layout_and_order(
    tmp_path_factory: Any, seed: int, files: int
) -> None:
    rng = random.Random(seed)
    pieces: list[dict[str, Any]] = [{"version": 1} for _ in range(files)]
    tests: list[Any] = []
    for doc in RAW.values():
        for section, body in doc.items():
            if section == "version":
                continue
            if section == "tests":
                tests.extend(body)
                continue
            entries = list(body.items())
            rng.shuffle(entries)
            for name, value in entries:
                pieces[rng.randrange(files)].setdefault(section, {})[name] = value
    pieces[rng.randrange(files)]["tests"] = tests  # test order is meaningful; keep it
    out = tmp_path_factory.mktemp("layout")
    names = rng.sample(range(1000), files)
    for number, piece in zip(names, pieces, strict=True):
        (out / f"{number:03d}-part.yaml").write_text(yaml.safe_dump(piece, sort_keys=False))
    assert strip_locations(load(out).topology) == REFERENCE


@given(
    st.frozensets(st.integers(0, 6), min_size=1),
    st.times(),
    st.times(),
    st.datetimes(min_value=datetime(2026, 1, 1), max_value=datetime(2027, 1, 1)),
)
def test_overnight_schedule_is_the_union_of_its_two_halves(
    days: frozenset[int], start: time, end: time, at: datetime
) -> None:
    schedule = Schedule(days, start, end, "UTC")
    moment = at.replace(tzinfo=UTC)
    t, day = moment.time(), moment.weekday()
    if start < end:
        expected = day in days and start <= t < end
    else:
        yesterday = (moment - timedelta(days=1)).weekday()
        expected = (day in days and t >= start) or (yesterday in days and t < end)
    assert schedule.is_open(moment) == expected
