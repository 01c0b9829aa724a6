"""Running a topology's declared `tests` against the reference evaluator."""

from __future__ import annotations

from dataclasses import dataclass

from topology.evaluate import ALL_GRANTS, Flow, Verdict, evaluate
from topology.instants import rfc3339
from topology.model import PolicyTest, Topology


@dataclass(frozen=True)
class TestResult:
    test: PolicyTest
    verdict: Verdict

    __test__ = False  # not a pytest class

    @property
    def passed(self) -> bool:
        return self.verdict.word == self.test.expect

    def as_dict(self) -> dict[str, object]:
        loc = self.test.location
        return {
            "from": self.test.source,
            "to": self.test.target,
            "service": self.test.service,
            "at": rfc3339(self.test.at) if self.test.at else None,
            "granted": self.test.granted,
            "expect": self.test.expect,
            "passed": self.passed,
            "location": str(loc) if loc else None,
            **self.verdict.as_dict(),
        }


def flow_of(test: PolicyTest) -> Flow:
    return Flow(
        test.source,
        test.target,
        test.service,
        at=test.at,
        grants=ALL_GRANTS if test.granted else (),
    )


def run_tests(topo: Topology) -> list[TestResult]:
    return [TestResult(t, evaluate(topo, flow_of(t))) for t in topo.tests]
