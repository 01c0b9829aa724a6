"""The "new team" test: a water utility's network team writes a topology from the docs'
own example, split into files and subdirectories as a team would, and makes one mistake
of each kind. Each mistake must give exactly one diagnostic, with its stable code and
its FILE:LINE:COL, and the unchanged topology must give none."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from zonegate.cli import main

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "topology.md").read_text()
EXAMPLE = DOC.split("```yaml\n", 1)[1].split("```", 1)[0]

# Where each top-level section of the example goes.
LAYOUT = {
    "sites": "sites/plants.yaml",
    "roles": "people.yaml",
    "identities": "people.yaml",
    "services": "conduits/services.yaml",
    "conduits": "conduits/conduits.yaml",
    "tests": "tests.yaml",
}


def split_example() -> dict[str, str]:
    files: dict[str, str] = {}
    for block in re.split(r"\n(?=[a-z]+:)", EXAMPLE):
        section = block.split(":", 1)[0]
        if section == "version":
            continue
        name = LAYOUT[section]
        files[name] = files.get(name, "version: 1\n") + block.rstrip("\n") + "\n"
    return files


@dataclass(frozen=True)
class Mistake:
    id: str
    file: str  # which file of LAYOUT (or a new one) the mistake is in
    old: str  # text replaced (first occurrence); "" = append `new`; "DELETE" = no such file
    new: str
    code: str
    at: str  # the text (first occurrence) whose first character is the reported LINE:COL
    where: str = ""  # the file the diagnostic is in, when not `file`


MISTAKES = [
    # YAML traps.
    Mistake(
        "ambiguous-number",
        "sites/plants.yaml",
        "security_level: 3}",
        "security_level: 03}",
        "ZG-E004",
        "03}",
    ),
    Mistake(
        "yaml11-boolean",
        "conduits/conduits.yaml",
        "    record: true\n",
        "    record: yes\n",
        "ZG-E022",
        "yes",
    ),
    Mistake("tab", "people.yaml", "  engineer-1:", "\tengineer-1:", "ZG-E002", "\tengineer-1:"),
    Mistake(
        "indentation", "sites/plants.yaml", "      safety:", "     safety:", "ZG-E003", "safety:"
    ),
    Mistake(
        "unclosed-bracket",
        "conduits/conduits.yaml",
        "allow: [ssh, vnc, {modbus: read}]",
        "allow: [ssh, vnc, {modbus: read}",
        "ZG-E001",
        "[ssh, vnc",
    ),
    Mistake(
        "key-at-name-level",
        "conduits/conduits.yaml",
        "    allow: [{modbus: [read, write]}]",
        "  allow: [{modbus: [read, write]}]",
        "ZG-E003",
        "allow: [{modbus: [read, write]}]",
    ),
    # Root causes: one error, not one per reference.
    Mistake(
        "site-without-gateway",
        "sites/plants.yaml",
        "    gateway: {underlay: 192.0.2.20, overlay: 100.64.0.2, management: "
        "[{from: [plant-b/ops], allow: [ssh, api]}]}\n",
        "",
        "ZG-E021",
        "tz: Europe/Berlin\n    zones:\n      control: {cidr: 10.20",
    ),
    Mistake(
        "bad-cidr",
        "sites/plants.yaml",
        "ops:     {cidr: 10.20.5.0/24",
        "ops:     {cidr: 10.20.5.0/33",
        "ZG-E025",
        "10.20.5.0/33",
    ),
    Mistake(
        "role-typo",
        "conduits/conduits.yaml",
        "from: {roles: [vendor-acme]}",
        "from: {roles: [vendor-acne]}",
        "ZG-E031",
        "vendor-acne",
    ),
    Mistake(
        "key-typo",
        "conduits/conduits.yaml",
        "    schedule: {days",
        "    shedule: {days",
        "ZG-E020",
        "shedule:",
    ),
    Mistake(
        "name-twice",
        "roles.yaml",
        "",
        "version: 1\nroles:\n  shift-lead: {}\n",
        "ZG-E030",
        "shift-lead:",
    ),
    Mistake(
        "date-and-two-time-zones",
        "sites/plants.yaml",
        "    tz: Europe/Berlin\n    zones:\n      control: {cidr: 10.20",
        "    tz: America/Chicago\n    zones:\n      control: {cidr: 10.20",
        "ZG-E028",
        "2026-01-01",
        where="people.yaml",
    ),
    Mistake(
        "empty-risk-reason",
        "conduits/conduits.yaml",
        "accept_risk: always-on SCADA polling; compensated by read-only Modbus and the flow log",
        "accept_risk: ''",
        "ZG-E022",
        "''",
    ),
    # Warnings.
    Mistake(
        "risk-not-accepted",
        "conduits/conduits.yaml",
        "    accept_risk: always-on SCADA polling; compensated by read-only Modbus and the flow log\n",
        "",
        "ZG-W001",
        "plant-b-scada-reads-a:",
    ),
    Mistake(
        "identity-without-role",
        "people.yaml",
        "  plant-b: {kind: site}\n",
        "  plant-b: {kind: site}\n  contractor-2: {kind: user, overlay: 100.64.2.11}\n",
        "ZG-W002",
        "contractor-2:",
    ),
    Mistake(
        "unused-role",
        "people.yaml",
        "  safety-engineer: {}\n",
        "  safety-engineer: {}\n  auditor: {}\n",
        "ZG-W003",
        "auditor:",
    ),
    Mistake(
        "unused-service",
        "conduits/services.yaml",
        "Historian replication}\n",
        "Historian replication}\n  old-proto: {transport: udp, ports: [9000]}\n",
        "ZG-W004",
        "old-proto:",
    ),
    Mistake(
        "unused-zone",
        "sites/plants.yaml",
        "      ops:     {cidr: 10.20.5.0/24, security_level: 2}\n",
        "      ops:     {cidr: 10.20.5.0/24, security_level: 2}\n      lab: {cidr: 10.20.6.0/24, security_level: 1}\n",
        "ZG-W005",
        "lab:",
    ),
    Mistake(
        "no-tests",
        "tests.yaml",
        "DELETE",
        "",
        "ZG-W006",
        "version: 1",
        where="conduits/conduits.yaml",
    ),
    Mistake("file-not-read", "conduits/more.yaml.bak", "", "version: 1\n", "ZG-W007", "version: 1"),
    Mistake(
        "needless-risk-acceptance",
        "conduits/conduits.yaml",
        "    emergency: {max: 1h}                   # break-glass: opened without approval\n",
        "    emergency: {max: 1h}\n    accept_risk: just in case\n",
        "ZG-W008",
        "safety-emergency:",
    ),
]


def write(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "utility"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def check(root: Path, capsys: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    main(["check", str(root), "--json"])
    data = json.loads(capsys.readouterr().out)
    return data["diagnostics"]  # type: ignore[no-any-return]


def test_the_docs_example_split_into_files_is_clean(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = split_example()
    assert set(files) == set(LAYOUT.values())
    assert main(["check", str(write(tmp_path, files)), "--strict"]) == 0
    assert "5/5 policy tests pass" in capsys.readouterr().out


@pytest.mark.parametrize("m", MISTAKES, ids=lambda m: m.id)
def test_one_mistake_one_diagnostic_with_code_and_place(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], m: Mistake
) -> None:
    files = split_example()
    if m.old == "DELETE":
        del files[m.file]
    elif m.old:
        assert m.old in files[m.file], f"the docs example no longer has {m.old!r}"
        files[m.file] = files[m.file].replace(m.old, m.new, 1)
    else:
        files[m.file] = files.get(m.file, "") + m.new
    root = write(tmp_path, files)
    diags = check(root, capsys)
    shown = "\n".join(
        f"{d['file']}:{d['line']}:{d['column']}: {d['code']} {d['message']}" for d in diags
    )
    assert len(diags) == 1, f"{m.id}: expected one diagnostic, got:\n{shown}"
    (d,) = diags
    assert d["code"] == m.code, shown
    where = m.where or m.file
    text = files[where]
    pos = text.index(m.at)
    line = text.count("\n", 0, pos) + 1
    col = pos - text.rfind("\n", 0, pos)
    assert str(d["file"]).endswith(where), shown
    assert (d["line"], d["column"]) == (line, col), f"{m.id}: {shown}; expected {line}:{col}"
