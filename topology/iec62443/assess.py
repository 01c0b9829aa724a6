"""Put the report together: per zone, per requirement its level calls for, all evidence.

Pure: the topology, the levels table, the test results (already read) and whatever the
gateway layer found (evidence and gaps keyed by requirement id) go in; a report comes
out for the renderers. Requirements whose evidence is a claim about Zonegate's own
behaviour need passing tagged tests; without them the requirement has a gap.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from topology.iec62443.catalogue import Catalogue, Requirement
from topology.iec62443.checks import CHECKS
from topology.iec62443.findings import Assessment, Evidence, Gap, Status
from topology.iec62443.junit import TestResults
from topology.iec62443.view import Found, ZoneView, zone_view
from topology.model import Topology, Zone
from topology.policy_tests import run_tests

STATUSES: tuple[Status, ...] = ("met", "gap", "outside", "failed")


@dataclass(frozen=True)
class ZoneReport:
    zone: Zone
    assessments: tuple[Assessment, ...]

    def counts(self) -> dict[str, int]:
        return {s: sum(1 for a in self.assessments if a.status == s) for s in STATUSES}


@dataclass(frozen=True)
class Table:
    """A section of gateway evidence for people: approvals, denials per conduit, ..."""

    title: str
    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    requirements: tuple[str, ...] = ()  # what it is evidence for
    note: str = ""
    total: int | None = None  # what the rows add up to, when not one event per row

    @property
    def count(self) -> int:
        return len(self.rows) if self.total is None else self.total


@dataclass(frozen=True)
class EvidenceReport:
    catalogue: Catalogue
    topology_files: tuple[str, ...]
    zones: tuple[ZoneReport, ...]
    inputs: Mapping[str, str]  # what was read: topology, levels, tests, logs, kernel
    tables: tuple[Table, ...] = ()
    topology: Topology | None = field(default=None, compare=False)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = dict.fromkeys(STATUSES, 0)
        for z in self.zones:
            for k, n in z.counts().items():
                out[k] += n
        return out

    def requirement_ids(self) -> list[str]:
        seen = {a.requirement.id for z in self.zones for a in z.assessments}
        return [r.id for r in self.catalogue.requirements if r.id in seen]


Extra = Mapping[str, Sequence[Evidence | Gap]]


def assess(
    topo: Topology,
    catalogue: Catalogue,
    results: TestResults | None = None,
    extra: Extra | None = None,
    inputs: Mapping[str, str] | None = None,
    tables: Sequence[Table] = (),
    sites: Sequence[str] = (),
) -> EvidenceReport:
    """Assess every zone (of `sites`, default all) at its target level."""
    policy_results = tuple(run_tests(topo))
    zones = []
    for site in sorted(topo.sites.values(), key=lambda s: s.name):
        if sites and site.name not in sites:
            continue
        for zone in sorted(site.zones.values(), key=lambda z: z.name):
            view = zone_view(topo, zone, policy_results)
            items = []
            for req in catalogue.at_level(zone.security_level):
                items.append(_assess_one(req, view, results, extra or {}))
            zones.append(ZoneReport(zone, tuple(items)))
    return EvidenceReport(
        catalogue,
        topo.files,
        tuple(zones),
        dict(inputs or {}),
        tuple(tables),
        topo,
    )


def _assess_one(
    req: Requirement,
    view: ZoneView,
    results: TestResults | None,
    extra: Extra,
) -> Assessment:
    found = Found()
    check = CHECKS.get(req.id)
    if check is None:
        found.gap(
            "feature",
            f"Zonegate has no check for {req.id} (the levels table lists it, the report "
            "does not know it)",
            str(req.location or ""),
        )
    else:
        check(view, found)
    for item in extra.get(req.id, ()):
        if item.site is not None and item.site != view.zone.site:
            continue
        if isinstance(item, Evidence):
            found.evidence.append(item)
        else:
            found.gaps.append(item)
    tests = results.for_requirement(req.id) if results else ()
    claimed = any(e.tested for e in found.evidence)
    if claimed:
        if results is None:
            found.gap(
                "tests",
                "no test results were read: pass `--tests results.xml` (scripts/test writes it)",
            )
        elif not tests:
            found.gap(
                "tests",
                f"no test in {results.file} is tagged {req.id}: Zonegate's claim is unproven",
            )
        elif not any(t.passed for t in tests):
            found.gap("tests", f"no test tagged {req.id} passed in {results.file}")
    return Assessment(req, tuple(found.evidence), tuple(found.gaps), tests)
