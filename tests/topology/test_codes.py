"""Every diagnostic has a stable code, the docs list every code, and the warnings a
network team asked for exist (unused names, identities that reach nothing, no tests,
files not read, accepted risks); subdirectories are read, as policyd's watcher sees them."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from policyd.daemon import fingerprint
from tests.topology.conftest import BASE
from tests.topology.test_errors import CASES
from topology import TopologyError, load
from topology.codes import CODES, classify
from topology.diagnostics import Diagnostic
from topology.files import topology_files
from topology.report import gateway_rows

ROOT = Path(__file__).resolve().parents[2]
Write = Callable[..., Path]


def diagnostics(path: Path, strict: bool = False) -> list[Diagnostic]:
    """Every diagnostic but ZG-W009 (BASE's gateway declares no management access;
    tests/policyd/test_management.py covers it)."""
    try:
        found = list(load(path, strict=strict).diagnostics)
    except TopologyError as exc:
        found = exc.diagnostics
    return [d for d in found if d.code != "ZG-W009"]


def test_the_docs_list_every_code_with_its_title() -> None:
    doc = (ROOT / "docs" / "topology.md").read_text()
    listed = dict(re.findall(r"^\| `(ZG-[EWT]\d{3})` \| (.+?) \|", doc, re.M))
    expected = {c.code: c.title for c in CODES} | {"ZG-T001": "a declared policy test fails"}
    assert listed == expected, "docs/topology.md's code table differs from topology/codes.py"


def test_codes_are_unique_and_well_formed() -> None:
    codes = [c.code for c in CODES]
    assert len(codes) == len(set(codes))
    assert all(re.fullmatch(r"ZG-[EW]\d{3}", c) for c in codes)


@pytest.mark.parametrize(("old", "new"), [c[1:3] for c in CASES], ids=[c[0] for c in CASES])
def test_every_error_case_has_a_specific_code(write_topology: Write, old: str, new: str) -> None:
    for d in diagnostics(write_topology(BASE.replace(old, new, 1))):
        assert not d.code.endswith("999"), (
            f"no code for {d.message!r}: add a row to CODES in topology/codes.py "
            "and to the table in docs/topology.md"
        )


def test_an_explicit_code_wins_and_unknown_messages_get_the_catch_all() -> None:
    assert classify("error", "something new went wrong") == "ZG-E999"
    assert classify("warning", "something new to say") == "ZG-W999"
    assert classify("error", "unknown role 'x'") == "ZG-E031"


def test_unused_role_service_zone_and_an_identity_without_role(write_topology: Write) -> None:
    text = (
        BASE.replace("  auditor: {}\n", "  auditor: {}\n  spare: {}\n")
        .replace(
            "roles:\n",
            "services:\n  unused-proto: {transport: tcp, ports: [7000]}\nroles:\n",
            1,
        )
        .replace(
            "      office: {cidr: 10.1.9.0/24, security_level: 1}\n",
            "      office: {cidr: 10.1.9.0/24, security_level: 1}\n"
            "      empty: {cidr: 10.1.7.0/24, security_level: 1}\n",
        )
        .replace(
            "  lead-1: {kind: user, roles: [lead], overlay: 100.64.1.2}\n",
            "  lead-1: {kind: user, roles: [lead], overlay: 100.64.1.2}\n"
            "  nobody: {kind: user, overlay: 100.64.1.3}\n",
        )
    )
    found = {
        (d.code, d.location.line if d.location else 0) for d in diagnostics(write_topology(text))
    }
    lines = text.splitlines()

    def line(prefix: str) -> int:
        return next(i for i, ln in enumerate(lines, 1) if ln.strip().startswith(prefix))

    assert found == {
        ("ZG-W003", line("spare:")),
        ("ZG-W004", line("unused-proto:")),
        ("ZG-W005", line("empty:")),
        ("ZG-W002", line("nobody:")),
    }


def test_no_tests_is_a_warning(write_topology: Write) -> None:
    text = BASE.split("tests:")[0]
    (d,) = diagnostics(write_topology(text))
    assert d.code == "ZG-W006" and d.location is not None and d.location.line == 1


def test_subdirectories_are_read_and_stray_files_are_named(tmp_path: Path) -> None:
    (tmp_path / "sites").mkdir()
    (tmp_path / "sites" / "a.yaml").write_text(BASE.split("\nroles:")[0] + "\n")
    (tmp_path / "rest.yml").write_text("version: 1\nroles:" + BASE.split("\nroles:")[1])
    (tmp_path / "rest.yml.bak").write_text("anything")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "x.yaml").write_text("not: read")
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "a.pub").write_text("key")
    files = topology_files(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in files.files] == ["rest.yml", "sites/a.yaml"]
    assert [p.name for p in files.skipped] == ["rest.yml.bak"]
    (d,) = diagnostics(tmp_path)
    assert d.code == "ZG-W007" and d.location is not None
    assert d.location.file.endswith("rest.yml.bak") and d.location.line == 1


def test_the_reload_watcher_sees_exactly_the_files_the_loader_reads(tmp_path: Path) -> None:
    (tmp_path / "sites").mkdir()
    (tmp_path / "sites" / "a.yaml").write_text(BASE)
    before = fingerprint(tmp_path)
    (tmp_path / "notes.yaml.orig").write_text("x")  # not read: no reload
    (tmp_path / ".swap.yaml").write_text("x")
    assert fingerprint(tmp_path) == before
    (tmp_path / "sites" / "a.yaml").write_text(BASE + "\n")  # read: reload
    assert fingerprint(tmp_path) != before


def test_accepting_the_risk_per_conduit_needs_a_reason_and_shows_in_report(
    write_topology: Write,
) -> None:
    risky = BASE.replace("security_level: 2}", "security_level: 3}")
    (d,) = diagnostics(write_topology(risky), strict=True)
    assert d.code == "ZG-W001" and "accept_risk" in d.hint
    accepted = risky.replace(
        "    allow: [{modbus: read}, ssh]\n",
        "    allow: [{modbus: read}, ssh]\n    accept_risk: SCADA polls every second\n",
    )
    managed = "overlay: 100.64.0.1, management: [{from: [site-a/office], allow: [ssh]}]}"
    accepted = accepted.replace("overlay: 100.64.0.1}", managed, 1)
    loaded = load(write_topology(accepted, "ok.yaml"), strict=True)
    assert loaded.diagnostics == ()
    (row,) = [r for r in gateway_rows(loaded.topology, "site-a") if r["conduit"] == "eng-read"]
    assert "IEC 62443 risk accepted: SCADA polls every second" in row["terms"]
    empty = accepted.replace("accept_risk: SCADA polls every second", "accept_risk: ''")
    (d,) = diagnostics(write_topology(empty, "empty.yaml"))
    assert d.code == "ZG-E022" and "accept_risk" in d.message
    needless = BASE.replace(
        "    allow: [https]\n", "    allow: [https]\n    accept_risk: just in case\n"
    )
    (d,) = diagnostics(write_topology(needless, "needless.yaml"))
    assert d.code == "ZG-W008"
