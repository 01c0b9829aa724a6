"""CI-native output: versioned JSON for every command, errors as JSON under --json,
RFC 3339 UTC instants, SARIF that validates against the published SARIF 2.1.0 schema,
JUnit XML, and reach queries in text, JSON and CSV."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
from pathlib import Path
from xml.etree import ElementTree as ET

import jsonschema
import pytest

from zonegate.cli import main

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "plant"
SARIF_SCHEMA = json.loads(
    (ROOT / "tests" / "topology" / "data" / "sarif-schema-2.1.0.json").read_text()
)
RFC3339_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
Capture = pytest.CaptureFixture[str]


def run_json(capsys: Capture, *argv: str) -> tuple[int, dict[str, object]]:
    code = main(list(argv))
    return code, json.loads(capsys.readouterr().out)


def broken_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "plant"
    shutil.copytree(EXAMPLE, copy)
    conduits = copy / "conduits.yaml"
    conduits.write_text(conduits.read_text().replace("[vendor-acme]", "[vendor-acne]"))
    tests = copy / "tests.yaml"
    tests.write_text(tests.read_text().replace("rdp, expect: deny", "rdp, expect: allow"))
    return copy


def failing_test_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "plant"
    shutil.copytree(EXAMPLE, copy)
    tests = copy / "tests.yaml"
    tests.write_text(tests.read_text().replace("rdp, expect: deny", "rdp, expect: allow"))
    return copy


@pytest.mark.parametrize(
    ("kind", "argv"),
    [
        ("check", ["check", str(EXAMPLE), "--json"]),
        ("check", ["check", str(EXAMPLE), "--format", "json"]),
        (
            "explain",
            [
                "explain",
                str(EXAMPLE),
                "--from",
                "engineer-1",
                "--to",
                "plant-a/plc-1",
                "--service",
                "modbus/read",
                "--at",
                "2026-11-25T10:00:00+01:00",
                "--json",
            ],
        ),
        ("report", ["report", str(EXAMPLE), "--json"]),
        ("reach", ["reach", str(EXAMPLE), "--to", "plant-a/plc-1", "--format", "json"]),
    ],
)
def test_every_json_document_is_versioned_and_stamped(
    capsys: Capture, kind: str, argv: list[str]
) -> None:
    code, data = run_json(capsys, *argv)
    assert code == 0
    assert data["schema"] == f"zonegate.{kind}/1" and data["ok"] is True
    assert RFC3339_UTC.match(str(data["generated_at"]))


def test_explain_states_the_instant_in_rfc3339_utc(capsys: Capture) -> None:
    base = [
        "explain",
        str(EXAMPLE),
        "--from",
        "engineer-1",
        "--to",
        "plant-a/plc-1",
        "--service",
        "modbus/read",
    ]
    _, data = run_json(capsys, *base, "--at", "2026-11-25T10:00:00+01:00", "--json")
    assert data["at"] == "2026-11-25T09:00:00Z" and data["verdict"] == "allow"
    _, data = run_json(capsys, *base, "--at", "now", "--json")
    assert RFC3339_UTC.match(str(data["at"]))
    _, data = run_json(capsys, *base, "--json")
    assert data["at"] is None  # any time: the terms say what depends on time
    assert any("schedule" in c for c in data["conditions"])  # type: ignore[union-attr]
    assert main(base) == 0
    assert "at:         any time" in capsys.readouterr().out
    assert main([*base, "--at", "2026-11-25T10:00"]) == 0  # no offset: UTC, said so
    assert "at:         2026-11-25T10:00:00Z" in capsys.readouterr().out


def test_report_json_is_data_not_display_strings(capsys: Capture) -> None:
    _, data = run_json(capsys, "report", str(EXAMPLE), "--gateway", "plant-a", "--json")
    gateways = data["gateways"]
    assert isinstance(gateways, list) and gateways[0]["site"] == "plant-a"
    vendor = next(c for c in gateways[0]["conduits"] if c["name"] == "vendor-maintenance")
    assert vendor["approval"] == {
        "by_roles": ["shift-lead"],
        "by_identities": [],
        "max_seconds": 14400,
    }
    assert vendor["allow"] == [{"service": "modbus", "classes": ["read", "write"]}]
    assert vendor["to"] == {"kind": "asset", "ref": "plant-a/plc-1"}
    eng = next(c for c in gateways[0]["conduits"] if c["name"] == "engineers-read-plcs")
    assert eng["schedule"] == {
        "days": ["mon", "tue", "wed", "thu", "fri"],
        "start": "06:00",
        "end": "20:00",
        "tz": "Europe/Berlin",
    }


@pytest.mark.parametrize(
    "argv",
    [
        [
            "explain",
            str(EXAMPLE),
            "--from",
            "nobody",
            "--to",
            "plant-a/plc-1",
            "--service",
            "ssh",
            "--json",
        ],
        ["report", str(EXAMPLE), "--gateway", "nowhere", "--json"],
        ["reach", str(EXAMPLE), "--to", "plant-a/nothing", "--format", "json"],
    ],
)
def test_usage_errors_are_json_under_json(capsys: Capture, argv: list[str]) -> None:
    code, data = run_json(capsys, *argv)
    assert code == 2 and data["schema"] == "zonegate.error/1" and data["exit_code"] == 2
    error = str(data["error"])
    assert data["ok"] is False and ("unknown" in error or "no site" in error)


def test_argument_errors_are_json_under_json(capsys: Capture) -> None:
    with pytest.raises(SystemExit) as info:
        main(["explain", str(EXAMPLE), "--from", "x", "--json"])
    assert info.value.code == 2
    data = json.loads(capsys.readouterr().out)
    assert data["schema"] == "zonegate.error/1" and "--to" in str(data["error"])
    with pytest.raises(SystemExit):
        main(
            [
                "explain",
                str(EXAMPLE),
                "--from",
                "x",
                "--to",
                "y",
                "--service",
                "ssh",
                "--at",
                "tomorrow",
                "--json",
            ]
        )
    assert "not a time" in json.loads(capsys.readouterr().out)["error"]


def test_topology_errors_are_json_under_json(tmp_path: Path, capsys: Capture) -> None:
    code, data = run_json(capsys, "check", str(broken_copy(tmp_path)), "--json")
    assert code == 1 and data["schema"] == "zonegate.check/1" and data["ok"] is False
    diag = data["diagnostics"][0]  # type: ignore[index]
    assert diag["code"] == "ZG-E031" and diag["file"].endswith("conduits.yaml")
    assert diag["line"] > 0 and diag["column"] > 0


def test_sarif_validates_against_the_sarif_schema(tmp_path: Path, capsys: Capture) -> None:
    validator = jsonschema.Draft4Validator(SARIF_SCHEMA)
    # A clean run, a run with a failing test, a run with an error and a warning.
    assert main(["check", str(EXAMPLE), "--format", "sarif"]) == 0
    clean = json.loads(capsys.readouterr().out)
    validator.validate(clean)
    assert clean["runs"][0]["results"] == []
    assert main(["check", str(failing_test_copy(tmp_path)), "--format", "sarif"]) == 1
    failing = json.loads(capsys.readouterr().out)
    validator.validate(failing)
    (result,) = failing["runs"][0]["results"]
    assert result["ruleId"] == "ZG-T001" and result["level"] == "error"
    region = result["locations"][0]["physicalLocation"]
    assert region["artifactLocation"]["uri"].endswith("tests.yaml")
    assert region["region"]["startLine"] > 1
    other = tmp_path / "other"
    other.mkdir()
    (other / "t.yaml").write_text("version: 1\nroles:\n  lonely: {}\nconduits:\n  x: {}\n")
    assert main(["check", str(other), "--format", "sarif"]) == 1
    broken = json.loads(capsys.readouterr().out)
    validator.validate(broken)
    rules = broken["runs"][0]["tool"]["driver"]["rules"]
    for r in broken["runs"][0]["results"]:
        assert rules[r["ruleIndex"]]["id"] == r["ruleId"] and r["ruleId"].startswith("ZG-E")


def test_junit_has_one_case_per_declared_test(tmp_path: Path, capsys: Capture) -> None:
    assert main(["check", str(failing_test_copy(tmp_path)), "--format", "junit"]) == 1
    root = ET.fromstring(capsys.readouterr().out.split("?>", 1)[1])
    suites = {s.get("name"): s for s in root.iter("testsuite")}
    tests = suites["policy tests"]
    assert tests.get("tests") == "21" and tests.get("failures") == "1"
    failures = [c for c in tests.iter("testcase") if c.find("failure") is not None]
    assert len(failures) == 1 and "rdp" in str(failures[0].get("name"))
    assert failures[0].get("file", "").endswith("tests.yaml")
    assert suites["topology"].get("failures") == "0"


def test_reach_to_an_asset_lists_people_zones_services_and_terms(capsys: Capture) -> None:
    assert main(["reach", str(EXAMPLE), "--to", "plant-a/plc-1", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)["reach"]
    who = {(r["source"], r["conduit"]) for r in rows}
    assert who == {
        ("engineer-1", "engineers-read-plcs"),
        ("engineer-2", "engineers-read-plcs"),
        ("plant-b/ops", "plant-b-scada-reads-a"),
        ("vendor-tech", "vendor-maintenance"),
    }
    vendor = next(r for r in rows if r["source"] == "vendor-tech")
    assert vendor["via"] == "role vendor-acme" and vendor["services"] == ["modbus/read+write"]
    assert "approval by shift-lead, at most 4h" in vendor["terms"]
    # valid_until: 2027-06-29 is that whole day (UTC here: the example's sites set no tz).
    assert "valid until 2027-06-30T00:00:00Z" in vendor["terms"]


def test_reach_at_an_instant_drops_what_is_closed_then(capsys: Capture) -> None:
    saturday = "2026-11-28T10:00:00+01:00"
    assert (
        main(["reach", str(EXAMPLE), "--to", "plant-a/plc-1", "--at", saturday, "--format", "csv"])
        == 0
    )
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert {r["source"] for r in rows} == {"plant-b/ops", "vendor-tech"}
    assert all(r["at"] == "2026-11-28T09:00:00Z" for r in rows)


def test_reach_from_an_identity(capsys: Capture) -> None:
    assert main(["reach", str(EXAMPLE), "--from", "engineer-1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("what engineer-1 can reach, at any time")
    for target in ("plant-a/control", "plant-b/control", "plant-a/historian"):
        assert target in out
    assert "plant-a/plc-1 " not in out and "vendor-maintenance" not in out


def documented_keys() -> dict[str, list[str]]:
    doc = (ROOT / "docs" / "cli-json.md").read_text()
    out = {}
    for name, body in re.findall(r"^## (zonegate\.\w+/\d+)\n(.*?)(?=^## |\Z)", doc, re.M | re.S):
        keys = re.search(r"^keys: (.*)$", body, re.M)
        assert keys, name
        out[name] = re.findall(r"`(\w+)`", keys.group(1))
    return out


def test_the_documented_keys_are_the_keys(tmp_path: Path, capsys: Capture) -> None:
    docs = documented_keys()
    runs = {
        "zonegate.check/1": ["check", str(EXAMPLE), "--json"],
        "zonegate.explain/1": [
            "explain",
            str(EXAMPLE),
            "--from",
            "engineer-1",
            "--to",
            "plant-a/plc-1",
            "--service",
            "ssh",
            "--json",
        ],
        "zonegate.report/1": ["report", str(EXAMPLE), "--json"],
        "zonegate.reach/1": ["reach", str(EXAMPLE), "--from", "engineer-1", "--format", "json"],
        "zonegate.iec62443/1": ["report", "--iec62443", str(EXAMPLE), "--format", "json"],
        "zonegate.error/1": ["report", str(EXAMPLE), "--gateway", "x", "--json"],
    }
    # zonegate.diff/1 needs a network namespace: tests/policyd/test_daemon_ns.py runs it.
    assert set(docs) == set(runs) | {"zonegate.diff/1"}
    for name, argv in runs.items():
        main(argv)
        data = json.loads(capsys.readouterr().out)
        assert data["schema"] == name and list(data) == docs[name], name


def test_junit_reports_a_topology_that_does_not_load(tmp_path: Path, capsys: Capture) -> None:
    assert main(["check", str(broken_copy(tmp_path)), "--format", "junit"]) == 1
    root = ET.fromstring(capsys.readouterr().out.split("?>", 1)[1])
    (load_case,) = [c for c in root.iter("testcase") if c.get("classname") == "topology"]
    failure = load_case.find("failure")
    assert failure is not None and "unknown role 'vendor-acne'" in (failure.text or "")
    assert "[ZG-E031]" in (failure.text or "")
