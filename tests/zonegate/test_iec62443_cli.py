"""`zonegate report --iec62443` as an assessor runs it: tests file, logs, formats, exits."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from policyd.flowlog.records import AuditEvent, audit_record
from topology.iec62443.catalogue import load_catalogue
from topology.iec62443.junit import read_results
from zonegate.cli import main
from zonegate.iec62443 import DEFAULT_RESULTS

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "plant"
T0 = 1795564800.0  # 2026-11-25T00:00:00Z


def junit(path: Path, outcome: str = "passed", ids: list[str] | None = None) -> Path:
    """One test case per requirement id, each tagged with it."""
    ids = ids if ids is not None else [r.id for r in load_catalogue().requirements]
    cases = []
    for i, req in enumerate(ids):
        bad = '<failure message="boom">tb</failure>' if outcome == "failed" and i == 0 else ""
        cases.append(
            f'<testcase classname="tests.x" name="test_{i}"><properties>'
            f'<property name="sr" value="{req}"/></properties>{bad}</testcase>'
        )
    path.write_text(f"<testsuites><testsuite>{''.join(cases)}</testsuite></testsuites>")
    return path


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    code = main(["report", "--iec62443", *argv, "--format", "json"])
    return code, json.loads(capsys.readouterr().out)


def requirement(data: dict[str, Any], zone: str, req: str) -> dict[str, Any]:
    z = next(z for z in data["zones"] if z["zone"] == zone)
    return next(r for r in z["requirements"] if r["id"] == req)


def test_every_asked_requirement_is_listed_with_evidence_or_a_gap(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results = junit(tmp_path / "results.xml")
    assert main(["report", "--iec62443", str(EXAMPLE), "--tests", str(results)]) == 0
    md = capsys.readouterr().out
    for req in load_catalogue().requirements:
        assert f"#### {req.id}: " in md, req.id
    code, data = run_json(capsys, str(EXAMPLE), "--tests", str(results))
    assert code == 0
    for z in data["zones"]:
        for r in z["requirements"]:
            assert r["evidence"] or r["gaps"], (z["zone"], r["id"])
            assert r["status"] in ("met", "gap", "outside")


def test_removed_approval_appears_as_a_gap(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = tmp_path / "plant"
    shutil.copytree(EXAMPLE, copy)
    results = junit(tmp_path / "results.xml")
    _, before = run_json(capsys, str(copy), "--tests", str(results))
    conduits = copy / "conduits.yaml"
    conduits.write_text(
        conduits.read_text().replace("    approval: {by: [shift-lead], max: 4h}\n", "")
    )
    _, after = run_json(capsys, str(copy), "--tests", str(results))

    def gaps(data: dict[str, Any]) -> list[str]:
        r = requirement(data, "plant-a/control", "SR 1.13 RE1")
        return [g["text"] for g in r["gaps"] if "vendor-maintenance" in g["text"]]

    assert gaps(before) == []
    assert gaps(after) == [
        "vendor-maintenance admits people into this level-3 zone without approval"
    ]
    assert after["counts"]["gap"] >= before["counts"]["gap"]


def test_red_or_missing_test_evidence_fails_loudly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    red = junit(tmp_path / "red.xml", "failed")
    code, data = run_json(capsys, str(EXAMPLE), "--tests", str(red))
    assert code == 1
    assert requirement(data, "plant-a/control", "SR 1.1")["status"] == "failed"
    partial = junit(tmp_path / "partial.xml", ids=["SR 2.1"])
    code, data = run_json(capsys, str(EXAMPLE), "--tests", str(partial))
    assert code == 1
    texts = [g["text"] for g in requirement(data, "plant-a/control", "SR 2.6")["gaps"]]
    assert any("is tagged SR 2.6" in t for t in texts)
    assert main(["report", "--iec62443", str(EXAMPLE), "--summary"]) == 1  # no tests given


def test_unusable_inputs_are_usage_errors_naming_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.xml"
    assert main(["report", "--iec62443", str(EXAMPLE), "--tests", str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err
    log = tmp_path / "flows.jsonl"
    assert main(["report", "--iec62443", str(EXAMPLE), "--logs", str(log)]) == 2
    assert str(log) in capsys.readouterr().err
    assert main(["report", str(EXAMPLE), "--tests", str(missing)]) == 2
    assert "only with --iec62443" in capsys.readouterr().err
    assert main(["report", "--iec62443", str(EXAMPLE), "--gateway", "plant-c"]) == 2
    assert "no site 'plant-c'" in capsys.readouterr().err


def test_one_gateway_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results = junit(tmp_path / "results.xml")
    _, data = run_json(capsys, str(EXAMPLE), "--tests", str(results), "--gateway", "plant-b")
    assert [z["zone"] for z in data["zones"]] == ["plant-b/control", "plant-b/ops"]


def _audit(ts: float, action: str, actor: str, **details: Any) -> str:
    return audit_record("plant-a", AuditEvent(action, actor=actor, details=details), ts=ts).line


def _flow(uid: str, start: str, end: str, identity: str, conduit: str) -> str:
    return json.dumps(
        {
            "ts": start, "event": "flow", "flow_state": "end", "gateway": "plant-a", "uid": uid,
            "verdict": "allow", "identity": identity, "conduit": conduit, "ts_end": end,
            "dst_asset": "plant-a/plc-1",
        }
    )  # fmt: skip


def _deny(ts: str, identity: str, reason: str, asset: str, zone: str) -> str:
    return json.dumps(
        {
            "ts": ts, "event": "deny", "gateway": "plant-a", "verdict": "deny", "reason": reason,
            "identity": identity, "dst_asset": asset, "dst_zone": zone,
        }
    )  # fmt: skip


def test_gateway_log_evidence(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "flows.jsonl"
    vm = {"conduit": "vendor-maintenance", "identity": "vendor-tech"}
    lines = [
        _audit(T0, "grant_approved", "shift-lead-1", duration="2h", reason="pump 3", **vm),
        _flow("Cold", "2026-11-25T00:30:00Z", "2026-11-25T00:31:00Z", "vendor-tech", vm["conduit"]),
        _flow("Copen", "2026-11-25T00:40:00Z", "2026-11-25T01:10:00Z", "vendor-tech", vm["conduit"]),
        _audit(T0 + 3600, "grant_revoked", "shift-lead-1", **vm),
        _audit(T0 + 60, "emergency_opened", "safety-engineer-1", conduit="safety-emergency",
               identity="safety-engineer-1"),
        _audit(T0 + 90, "grant_approved", "engineer-1", **vm),  # not an approver
        _deny("2026-11-25T00:50:00Z", "vendor-tech", "function", "plant-a/plc-1", "plant-a/control"),
        _deny("2026-11-25T00:51:00Z", "vendor-tech", "default", "plant-a/sis-1", "plant-a/safety"),
        _deny("2026-11-25T00:51:30Z", "vendor-tech", "function", "plant-a/plc-1", "plant-a/control"),
        json.dumps({"ts": "2026-11-25T00:52:00Z", "event": "loss", "gateway": "plant-a",
                    "source": "nflog", "lost": 3, "lost_total": 3}),
        "this is not a record",
    ]  # fmt: skip
    log.write_text("\n".join(lines) + '\n{"ts": "2026-11-25T01:20:00Z", "eve')  # torn last line
    results = junit(tmp_path / "results.xml")
    code, data = run_json(capsys, str(EXAMPLE), "--tests", str(results), "--logs", str(log))
    assert code == 1  # the log contradicts the topology and lost records
    tables = {t["title"]: t["rows"] for t in data["gateway_evidence"]}
    approvals = tables["Approvals"]
    assert [(r["by"], r["identity"], r["reason"]) for r in approvals] == [
        ("shift-lead-1", "vendor-tech", "pump 3"),
        ("engineer-1", "vendor-tech", ""),
    ]
    assert [r["by"] for r in tables["Emergency uses"]] == ["safety-engineer-1"]
    (revocation,) = tables["Revocations and the sessions they ended"]
    assert revocation["sessions ended"] == "Copen"  # open at 01:00, the old one was not
    denials = {
        (r["conduit tried"], r["reason"], r["to"]): r["attempts"]
        for r in tables["Denials per conduit"]
    }
    assert denials == {
        ("vendor-maintenance", "function", "plant-a/plc-1"): "2",
        ("no conduit", "default", "plant-a/sis-1"): "1",
    }
    sr113 = requirement(data, "plant-a/control", "SR 1.13 RE1")
    runtime = [g["text"] for g in sr113["gaps"] if g["kind"] == "runtime"]
    assert len(runtime) == 1 and "engineer-1 approved vendor-tech" in runtime[0]
    sr28 = [g["text"] for g in requirement(data, "plant-a/control", "SR 2.8")["gaps"]]
    assert any("3 records were lost (nflog 3)" in t for t in sr28)
    assert any("1 line(s) of the log are not records" in t for t in sr28)
    sr26 = requirement(data, "plant-a/control", "SR 2.6")["evidence"]
    assert any(e["text"] == "1 revocation(s) ended 1 open session(s)" for e in sr26)

    assert main(["report", "--iec62443", str(EXAMPLE), "--logs", str(log), "--summary"]) == 1
    summary = capsys.readouterr().out
    assert "gateway log: Approvals: 2; Emergency uses: 1; " in summary
    assert "Denials per conduit: 3;" in summary  # attempts, not rows

    # a period without the bad approval and the loss: the log no longer contradicts
    code, data = run_json(
        capsys, str(EXAMPLE), "--tests", str(results), "--logs", str(log),
        "--since", "2026-11-25T00:59:00Z",
    )  # fmt: skip
    tables = {t["title"]: t["rows"] for t in data["gateway_evidence"]}
    assert tables["Approvals"] == [] and len(tables["Revocations and the sessions they ended"]) == 1


def test_html_to_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report.html"
    results = junit(tmp_path / "results.xml")
    argv = ["report", "--iec62443", str(EXAMPLE), "--tests", str(results), "--format", "html"]
    assert main([*argv, "-o", str(out)]) == 0
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>") and "<svg" in page and "SR 7.6 RE1" in page
    assert "requirement checks over 5 zones" in capsys.readouterr().err


def test_tags_reach_the_results_file_that_scripts_test_writes(tmp_path: Path) -> None:
    """marker -> conftest -> pytest's JUnit XML -> the report's reader, for real."""
    root = Path(__file__).resolve().parents[2]
    assert f"--junitxml={DEFAULT_RESULTS}" in (root / "scripts" / "test").read_text()
    out = tmp_path / "results.xml"
    node = "tests/policyd/test_grants.py::test_revoke_by_holder_approver_or_administrator_only"
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", node, f"--junitxml={out}"],
        cwd=root, capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    (case,) = read_results(out).for_requirement("SR 2.6")
    assert case.passed and case.name.endswith(
        "::test_revoke_by_holder_approver_or_administrator_only"
    )


@pytest.mark.sr("SR 3.9")
def test_the_audit_chain_is_evidence_and_an_edit_is_a_gap(tmp_path: Path) -> None:
    from policyd.flowlog.auditchain import AuditChain
    from zonegate.iec62443 import audit_chain_evidence

    log = tmp_path / "flows.jsonl"
    chain = AuditChain()
    lines = []
    for i in range(3):
        rec = audit_record("plant-a", AuditEvent("grant_approved", actor="a", message=f"g{i}"))
        chain.seal(rec.data)
        lines.append(rec.line)
    log.write_text("\n".join(lines) + "\n")
    [ok] = audit_chain_evidence([log])
    assert ok.text == "audit chain intact: 3 records, seq 1..3"
    log.write_text(log.read_text().replace('"g1"', '"g9"'))  # someone edits a record
    gaps = audit_chain_evidence([log])
    assert gaps and all(getattr(g, "kind", "") == "runtime" for g in gaps)
