"""Machine output of the zonegate CLI: versioned JSON, SARIF 2.1.0 and JUnit XML.

Every JSON document has `"schema": "zonegate.COMMAND/1"` (docs/cli-json.md); a change
that could break a reader bumps the number. Timestamps are RFC 3339 UTC.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from xml.etree import ElementTree as ET

from topology.codes import CODES
from topology.diagnostics import Diagnostic
from topology.instants import rfc3339
from topology.policy_tests import TestResult
from topology.version import package_version

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
TEST_RULE = "ZG-T001"  # a declared policy test that fails


def envelope(kind: str, ok: bool, **body: object) -> dict[str, object]:
    return {
        "schema": f"zonegate.{kind}/1",
        "ok": ok,
        "generated_at": rfc3339(datetime.now(UTC)),
        "zonegate": package_version(),
        **body,
    }


def emit(doc: dict[str, object]) -> None:
    print(json.dumps(doc, indent=2))


def json_error(message: str, exit_code: int) -> None:
    """A usage or flow error under --json: still JSON, on stdout, with the exit code."""
    emit(envelope("error", False, error=message, exit_code=exit_code))


def test_name(r: TestResult) -> str:
    return r.test.describe() + f" expect {r.test.expect}"


def _test_message(r: TestResult) -> str:
    return (
        f"policy test failed: {r.test.describe()}: expected {r.test.expect}, got "
        f"{r.verdict.word} ({r.verdict.reason})"
    )


def _region(file: str, line: int, col: int) -> dict[str, object]:
    return {
        "physicalLocation": {
            "artifactLocation": {"uri": Path(file).as_posix()},
            "region": {"startLine": line, "startColumn": col},
        }
    }


def sarif(diagnostics: Sequence[Diagnostic], results: Sequence[TestResult]) -> dict[str, object]:
    """A SARIF 2.1.0 log GitHub code scanning can show inline on pull requests."""
    used = {d.code for d in diagnostics}
    rules = [
        {
            "id": c.code,
            "name": c.code.replace("-", ""),
            "shortDescription": {"text": c.title},
            "defaultConfiguration": {"level": "error" if c.code[3] == "E" else "warning"},
        }
        for c in CODES
        if c.code in used
    ]
    out: list[dict[str, object]] = []
    for d in diagnostics:
        item: dict[str, object] = {
            "ruleId": d.code,
            "ruleIndex": next(i for i, r in enumerate(rules) if r["id"] == d.code),
            "level": "error" if d.severity == "error" else "warning",
            "message": {"text": d.message + (f" (hint: {d.hint})" if d.hint else "")},
        }
        if d.location is not None:
            item["locations"] = [_region(d.location.file, d.location.line, d.location.col)]
        out.append(item)
    failed = [r for r in results if not r.passed]
    if failed:
        rules.append(
            {
                "id": TEST_RULE,
                "name": "PolicyTestFailed",
                "shortDescription": {"text": "a declared policy test fails"},
                "defaultConfiguration": {"level": "error"},
            }
        )
    for r in failed:
        item = {
            "ruleId": TEST_RULE,
            "ruleIndex": len(rules) - 1,
            "level": "error",
            "message": {"text": _test_message(r)},
        }
        loc = r.test.location
        if loc is not None:
            item["locations"] = [_region(loc.file, loc.line, loc.col)]
        out.append(item)
    return {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "zonegate",
                        "version": package_version(),
                        "rules": rules,
                    }
                },
                "results": out,
            }
        ],
    }


def junit(path: str, diagnostics: Sequence[Diagnostic], results: Sequence[TestResult]) -> str:
    """JUnit XML: the topology check as one test case, each declared test as one."""
    suites = ET.Element("testsuites", name="zonegate check")
    load = ET.SubElement(suites, "testsuite", name="topology", tests="1")
    case = ET.SubElement(load, "testcase", classname="topology", name=f"load {path}")
    errors = [d for d in diagnostics if d.severity == "error"]
    if errors:
        load.set("failures", "1")
        fail = ET.SubElement(case, "failure", message=f"{len(errors)} error(s) in {path}")
        fail.text = "\n".join(str(d) for d in errors)
    else:
        load.set("failures", "0")
    warnings = [d for d in diagnostics if d.severity == "warning"]
    if warnings:
        ET.SubElement(case, "system-out").text = "\n".join(str(d) for d in warnings)
    tests = ET.SubElement(
        suites,
        "testsuite",
        name="policy tests",
        tests=str(len(results)),
        failures=str(sum(1 for r in results if not r.passed)),
    )
    for r in results:
        loc = r.test.location
        case = ET.SubElement(
            tests,
            "testcase",
            classname=loc.file if loc else path,
            name=test_name(r),
        )
        if loc is not None:
            case.set("file", loc.file)
            case.set("line", str(loc.line))
        if not r.passed:
            ET.SubElement(case, "failure", message=_test_message(r)).text = (
                f"{loc}: {_test_message(r)}" if loc else _test_message(r)
            )
    ET.indent(suites)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"
