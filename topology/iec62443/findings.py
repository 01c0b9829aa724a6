"""What the report says about one requirement: evidence, gaps, tests, and a status.

Evidence and gaps come from three sources (the topology, a gateway's logs and kernel,
the test results); they share these types so one renderer prints them all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from topology.iec62443.catalogue import Requirement

Source = Literal["topology", "gateway", "tests"]
# configuration: fix the topology; feature: Zonegate lacks it (yet); outside: evidence
# must come from outside Zonegate; tests: test evidence missing or red; runtime: the
# gateway's state or log contradicts the claim.
GapKind = Literal["configuration", "feature", "outside", "tests", "runtime"]
Status = Literal["met", "gap", "outside", "failed"]
PASSED = "passed"


@dataclass(frozen=True)
class Evidence:
    """Something that meets the requirement, and where an assessor can see it.

    `tested` marks a claim about Zonegate's own behaviour: the report then expects
    passing tests tagged with the requirement. `site` limits gateway evidence to the
    zones behind that site's gateway.
    """

    text: str
    where: str = ""  # FILE:LINE:COL, a document, a command
    source: Source = "topology"
    tested: bool = False
    site: str | None = None

    def as_dict(self) -> dict[str, object]:
        return {"text": self.text, "where": self.where or None, "source": self.source}


@dataclass(frozen=True)
class Gap:
    kind: GapKind
    text: str
    where: str = ""
    fix: str = ""
    source: Source = "topology"
    site: str | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "text": self.text,
            "where": self.where or None,
            "fix": self.fix or None,
            "source": self.source,
        }


@dataclass(frozen=True)
class TestOutcome:
    """One test case from the results file, tagged with this requirement."""

    name: str  # pytest node id (classname::name)
    outcome: str  # passed, failed, error, skipped
    message: str = ""

    @property
    def passed(self) -> bool:
        return self.outcome == PASSED

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "outcome": self.outcome, "message": self.message or None}


@dataclass(frozen=True)
class Assessment:
    """One requirement at one zone's target level."""

    requirement: Requirement
    evidence: tuple[Evidence, ...] = ()
    gaps: tuple[Gap, ...] = ()
    tests: tuple[TestOutcome, ...] = field(default=())

    @property
    def status(self) -> Status:
        if any(not t.passed and t.outcome != "skipped" for t in self.tests):
            return "failed"
        if any(g.kind != "outside" for g in self.gaps):
            return "gap"
        if self.gaps:
            return "outside"
        return "met"

    def as_dict(self) -> dict[str, object]:
        r = self.requirement
        return {
            "id": r.id,
            "title": r.title,
            "status": self.status,
            "evidence": [e.as_dict() for e in self.evidence],
            "gaps": [g.as_dict() for g in self.gaps],
            "tests": [t.as_dict() for t in self.tests],
        }
