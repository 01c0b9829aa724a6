"""The zonegate CLI as a user meets it: exit codes, FILE:LINE:COL, --json."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from topology import load
from zonegate.cli import main

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "plant"


@pytest.mark.sr("SR 7.6")
def test_check_example_passes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(EXAMPLE), "--strict"]) == 0
    out = capsys.readouterr().out
    assert "21/21 policy tests pass" in out


def test_check_broken_copy_names_the_role_and_place(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = tmp_path / "plant"
    shutil.copytree(EXAMPLE, copy)
    conduits = copy / "conduits.yaml"
    text = conduits.read_text().replace(
        "from: {roles: [vendor-acme]}", "from: {roles: [vendor-acne]}"
    )
    conduits.write_text(text)
    assert main(["check", str(copy)]) == 1
    err = capsys.readouterr().err
    line = next(i for i, ln in enumerate(text.splitlines(), 1) if "vendor-acne" in ln)
    assert f"conduits.yaml:{line}:" in err
    assert "unknown role 'vendor-acne'" in err
    assert "did you mean 'vendor-acme'?" in err


def test_check_failing_policy_test_prints_its_place(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = tmp_path / "plant"
    shutil.copytree(EXAMPLE, copy)
    tests = copy / "tests.yaml"
    text = tests.read_text().replace("service: rdp, expect: deny", "service: rdp, expect: allow")
    tests.write_text(text)
    assert main(["check", str(copy)]) == 1
    captured = capsys.readouterr()
    line = next(i for i, ln in enumerate(text.splitlines(), 1) if "rdp" in ln)
    assert f"tests.yaml:{line}:" in captured.err
    assert "expected allow, got deny" in captured.err
    assert "20/21 policy tests pass" in captured.out


@pytest.mark.sr("SR 7.6 RE1")
def test_check_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(EXAMPLE), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is True and len(data["tests"]) == 21
    assert all(t["passed"] for t in data["tests"])


def test_explain_gives_verdict_conduit_and_conditions(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["explain", str(EXAMPLE), "--from", "vendor-tech", "--to", "plant-a/plc-1"]
    assert main([*args, "--service", "modbus/write"]) == 0
    out = capsys.readouterr().out
    assert "verdict:    deny" in out and "conduit:    vendor-maintenance" in out
    assert "needs a grant" in out
    assert main([*args, "--service", "modbus/write", "--granted", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["verdict"] == "allow" and data["conduit"] == "vendor-maintenance"
    assert "recorded" in data["conditions"]


def test_explain_every_declared_test_of_the_example(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(EXAMPLE), "--json"]) == 0
    for t in json.loads(capsys.readouterr().out)["tests"]:
        args = ["explain", str(EXAMPLE), "--from", t["from"], "--to", t["to"]]
        args += ["--service", t["service"], "--json"]
        if t["at"]:
            args += ["--at", t["at"]]
        if t["granted"]:
            args.append("--granted")
        assert main(args) == 0
        data = json.loads(capsys.readouterr().out)
        assert (data["verdict"], data["conduit"]) == (t["expect"], t["conduit"])


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["explain", str(EXAMPLE), "--from", "engineer-1"])
    assert info.value.code == 2
    code = main(
        ["explain", str(EXAMPLE), "--from", "nobody", "--to", "plant-a/plc-1", "--service", "ssh"]
    )
    assert code == 2
    assert "unknown identity" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(
            ["explain", str(EXAMPLE), "--from", "a", "--to", "b", "--service", "c", "--at", "noon"]
        )
    assert info.value.code == 2


def test_report_lists_what_each_gateway_enforces(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(EXAMPLE)]) == 0
    out = capsys.readouterr().out
    assert "gateway plant-a" in out and "gateway plant-b" in out
    assert "vendor-maintenance" in out and "approval by shift-lead, at most 4h" in out


def test_console_script_runs() -> None:
    exe = Path(sys.executable).parent / "zonegate"
    result = subprocess.run([str(exe), "--help"], capture_output=True, text=True, check=False)
    assert result.returncode == 0
    assert "check" in result.stdout and "explain" in result.stdout


def test_the_documented_example_is_valid(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = (EXAMPLE.parents[1] / "docs" / "topology.md").read_text()
    example = doc.split("```yaml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "doc.yaml").write_text(example)
    assert main(["check", str(tmp_path / "doc.yaml"), "--strict"]) == 0, capsys.readouterr().err


def test_fleet_example_is_valid_and_big_enough(capsys: pytest.CaptureFixture[str]) -> None:
    fleet = EXAMPLE.parent / "fleet"
    assert main(["check", str(fleet), "--strict", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["counts"]["sites"] == 3
    users = load(fleet).topology.identities.values()
    assert sum(1 for i in users if i.kind == "user") >= 20


def test_fleet_example_is_what_its_generator_writes(tmp_path: Path) -> None:
    """The committed files are the generator's output (nobody edited them by hand)."""
    fleet = EXAMPLE.parent / "fleet"
    before = {p.name: p.read_text() for p in fleet.glob("*.yaml")}
    result = subprocess.run(
        [sys.executable, str(EXAMPLE.parent / "generate_fleet.py")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert {p.name: p.read_text() for p in fleet.glob("*.yaml")} == before


def test_render_summary_names_each_conduit_and_its_mark(capsys: pytest.CaptureFixture[str]) -> None:
    from topology.model import conduit_mark

    assert main(["render", str(EXAMPLE), "--gateway", "plant-a", "--summary"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("gateway plant-a: table inet zonegate")
    assert (
        f"conduit vendor-maintenance       ct mark {conduit_mark('vendor-maintenance'):#010x}"
        in out
    )
    assert "closed until granted (set grant_vendor_maintenance)" in out
    assert "engineers-plant-b" not in out  # plant-b's conduit is enforced by plant-b


@pytest.mark.sr("SR 5.2 RE1", "SR 7.6 RE1")
def test_explain_compiled_agrees_with_the_model_on_every_declared_test(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["check", str(EXAMPLE), "--json"]) == 0
    pinned = "2026-11-25T10:00:00+01:00"  # inside the engineers' hours, so allows are real
    for t in json.loads(capsys.readouterr().out)["tests"]:
        args = ["explain", str(EXAMPLE), "--from", t["from"], "--to", t["to"]]
        args += ["--service", t["service"], "--compiled", "--at", t["at"] or pinned]
        if t["granted"]:
            args.append("--granted")
        assert main(args) == 0, capsys.readouterr().out
        out = capsys.readouterr().out
        assert f"compiled:   {t['expect']} by the nftables rules of" in out, out
        assert "agrees with the model" in out
