"""Test evidence: a JUnit XML results file, read for the requirements each test proves.

`scripts/test` writes the file with pytest's `--junitxml`; tests carry their
requirements as `@pytest.mark.sr("SR 2.1", ...)` and the conftest copies each into a
`<property name="sr" value="SR 2.1"/>` of the test case.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from topology.iec62443.findings import PASSED, TestOutcome

SR_PROPERTY = "sr"


class ResultsError(Exception):
    """The results file is missing or is not JUnit XML; the message names the file."""


@dataclass(frozen=True)
class TestResults:
    file: str
    total: int  # test cases in the file
    by_requirement: Mapping[str, tuple[TestOutcome, ...]]

    def for_requirement(self, req_id: str) -> tuple[TestOutcome, ...]:
        return self.by_requirement.get(req_id, ())


def _outcome(case: ET.Element) -> tuple[str, str]:
    for tag in ("failure", "error", "skipped"):
        child = case.find(tag)
        if child is not None:
            lines = (child.get("message") or "").splitlines()
            return ("failed" if tag == "failure" else tag), (lines[0][:200] if lines else "")
    return PASSED, ""


def read_results(path: Path) -> TestResults:
    try:
        root = ET.parse(path).getroot()
    except OSError as exc:
        raise ResultsError(f"{path}: cannot read test results: {exc.strerror}") from None
    except ET.ParseError as exc:
        raise ResultsError(f"{path}: not XML ({exc})") from None
    if root.tag not in ("testsuites", "testsuite"):
        raise ResultsError(f"{path}: not JUnit XML (root element <{root.tag}>)")
    found: dict[str, list[TestOutcome]] = {}
    total = 0
    for case in root.iter("testcase"):
        total += 1
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        outcome, message = _outcome(case)
        for prop in case.iter("property"):
            if prop.get("name") == SR_PROPERTY and prop.get("value"):
                req = str(prop.get("value"))
                found.setdefault(req, []).append(TestOutcome(name, outcome, message))
    return TestResults(str(path), total, {k: tuple(v) for k, v in found.items()})
