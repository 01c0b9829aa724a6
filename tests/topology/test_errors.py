"""Every bad input gets a message that names the problem and its FILE:LINE:COL."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.topology.conftest import BASE
from topology import TopologyError, load
from topology.diagnostics import Diagnostic


def line_of(text: str, needle: str) -> int:
    for number, line in enumerate(text.splitlines(), start=1):
        if needle in line:
            return number
    raise AssertionError(f"{needle!r} not in text")


def errors_of(path: Path, strict: bool = False) -> list[Diagnostic]:
    with pytest.raises(TopologyError) as info:
        load(path, strict=strict)
    return info.value.diagnostics


# (case id, text to replace in BASE, replacement, expected message part, line needle)
CASES = [
    (
        "yaml-syntax",
        "allow: [{modbus: read}, ssh]",
        "allow: [{modbus: read}, ssh",
        "YAML syntax",
        "allow: [{modbus: read}, ssh",
    ),
    ("unknown-top-key", "conduits:\n", "conduit:\n", "unknown key 'conduit'", "conduit:"),
    (
        "duplicate-key",
        "  lead: {}\n",
        "  lead: {}\n  lead: {description: again}\n",
        "duplicate key 'lead'",
        "again",
    ),
    ("missing-version", "version: 1\n", "", "missing 'version'", "sites:"),
    ("wrong-version", "version: 1", "version: 3", "unsupported format version 3", "version: 3"),
    ("bad-cidr", "10.1.9.0/24", "10.1.9.0/33", "is not an IPv4 network", "office:"),
    ("host-bits", "10.1.9.0/24", "10.1.9.1/24", "has host bits set", "office:"),
    ("level-range", "security_level: 1}", "security_level: 5}", "between 1 and 4", "office:"),
    ("level-type", "security_level: 1}", "security_level: high}", "must be an integer", "office:"),
    ("asset-zone", "zone: office, address", "zone: offise, address", "does not define", "pc-1:"),
    ("asset-outside", "address: 10.1.9.7", "address: 10.1.8.7", "outside its zone", "pc-1:"),
    ("identity-role", "roles: [lead]", "roles: [leed]", "unknown role 'leed'", "lead-1:"),
    (
        "conduit-role",
        "from: {roles: [engineer]}",
        "from: {roles: [engineers]}",
        "unknown role 'engineers'",
        "from:",
    ),
    (
        "conduit-zone",
        "to: {asset: site-a/plc-1}",
        "to: {zone: site-a/ctrl}",
        "has no zone 'ctrl'",
        "to:",
    ),
    (
        "conduit-asset",
        "to: {asset: site-a/plc-1}",
        "to: {asset: site-a/plc-9}",
        "has no asset 'plc-9'",
        "to:",
    ),
    (
        "conduit-site",
        "to: {asset: site-a/plc-1}",
        "to: {asset: site-b/plc-1}",
        "unknown site 'site-b'",
        "to:",
    ),
    (
        "unknown-service",
        "{modbus: read}, ssh]",
        "{modbus: read}, sshh]",
        "unknown service 'sshh'",
        "allow:",
    ),
    ("unknown-class", "{modbus: read}", "{modbus: erase}", "no function class 'erase'", "allow:"),
    (
        "slash-in-allow",
        "{modbus: read}, ssh]",
        "modbus/read, ssh]",
        "write '{modbus: read}'",
        "allow:",
    ),
    (
        "target-both",
        "to: {asset: site-a/plc-1}",
        "to: {asset: site-a/plc-1, zone: site-a/office}",
        "exactly one",
        "to:",
    ),
    (
        "approver",
        "allow: [{modbus: read}, ssh]",
        "allow: [ssh]\n    approval: {by: [boss], max: 4h}",
        "approver 'boss'",
        "approval:",
    ),
    (
        "bad-duration",
        "allow: [{modbus: read}, ssh]",
        "allow: [ssh]\n    approval: {by: [lead], max: 4 hours}",
        "is not a duration",
        "approval:",
    ),
    ("overlap", "10.1.9.0/24", "10.1.0.0/16", "overlaps zone", "office:"),
    (
        "unknown-code-kem",
        "overlay: 100.64.0.1}\n",
        "overlay: 100.64.0.1}\n    code_kem: hqc-129\n",
        "unknown code_kem 'hqc-129'",
        "code_kem:",
    ),
    (
        "conduit-code-kem",
        "allow: [{modbus: read}, ssh]",
        "allow: [{modbus: read}, ssh]\n    code_kem: hqc-265",
        "did you mean 'hqc-256'?",
        "code_kem:",
    ),
    (
        "code-kem-mceliece",
        "overlay: 100.64.0.1}\n",
        "overlay: 100.64.0.1}\n    code_kem: mceliece-460896\n",
        "expected one of: hqc-128, hqc-192, hqc-256",
        "code_kem:",
    ),
    (
        "overlay-collision",
        "overlay: 100.64.1.2}",
        "overlay: 100.64.1.1}",
        "already used by identity eng-1",
        "lead-1:",
    ),
    (
        "overlay-in-zone",
        "overlay: 100.64.1.2}",
        "overlay: 10.1.9.200}",
        "falls inside zone site-a/office",
        "lead-1:",
    ),
    (
        "no-members",
        "allow: [{modbus: read}, ssh]",
        "allow: [ssh]\n    approval: {by: [auditor], max: 1h}",
        "role 'auditor', which has no members",
        "eng-read:",
    ),
    (
        "never-open",
        "allow: [{modbus: read}, ssh]",
        "allow: [ssh]\n    schedule: {hours: '08:00-08:00'}",
        "never open",
        "eng-read:",
    ),
    (
        "bad-tz",
        "allow: [{modbus: read}, ssh]",
        "allow: [ssh]\n    schedule: {hours: '08:00-17:00', tz: Mars/Olympus}",
        "unknown time zone",
        "schedule:",
    ),
    (
        "bad-day",
        "allow: [{modbus: read}, ssh]",
        "allow: [ssh]\n    schedule: {days: mon-fry}",
        "unknown day 'fry'",
        "schedule:",
    ),
    (
        "bad-hours",
        "allow: [{modbus: read}, ssh]",
        "allow: [ssh]\n    schedule: {hours: 'morning'}",
        "must be HH:MM-HH:MM",
        "schedule:",
    ),
    (
        "no-overlay",
        "lead-1: {kind: user, roles: [lead], overlay: 100.64.1.2}",
        "lead-1: {kind: user, roles: [lead]}",
        "needs 'overlay'",
        "lead-1:",
    ),
    (
        "never-valid",
        "overlay: 100.64.1.2}",
        "overlay: 100.64.1.2, valid_from: 2026-06-01, valid_until: 2026-01-01}",
        "never valid",
        "lead-1:",
    ),
    (
        "bad-kind",
        "lead-1: {kind: user",
        "lead-1: {kind: person",
        "unknown kind 'person'",
        "lead-1:",
    ),
    ("bad-address", "address: 10.1.9.7", "address: 10.1.9.300", "is not an IPv4 address", "pc-1:"),
    ("bad-name", "  lead: {}\n", "  Lead Role: {}\n", "not a valid name", "Lead Role"),
    (
        "zones-as-list",
        "      control: {cidr: 10.1.1.0/24, security_level: 2}\n"
        "      office: {cidr: 10.1.9.0/24, security_level: 1}\n",
        "      - control\n",
        "must be a mapping, found list",
        "- control",
    ),
    ("test-identity", "- {from: eng-1,", "- {from: eng-9,", "unknown identity 'eng-9'", "- {from"),
    (
        "test-service-hint",
        "service: modbus/read",
        "service: modbus-read",
        "did you mean 'modbus/read'",
        "- {from",
    ),
    ("test-expect", "expect: allow}", "expect: maybe}", "expect must be allow or deny", "- {from"),
    (
        "both-approval-emergency",
        "allow: [{modbus: read}, ssh]",
        "allow: [ssh]\n    approval: {by: [lead], max: 1h}\n    emergency: {max: 1h}",
        "both approval and emergency",
        "emergency:",
    ),
    ("empty-from", "from: {roles: [engineer]}", "from: {}", "names nobody", "from:"),
    (
        "builtin-service",
        "roles:\n",
        "services:\n  ssh: {transport: tcp, ports: [2222]}\nroles:\n",
        "built in",
        "ssh: {transport",
    ),
]


@pytest.mark.parametrize(
    ("old", "new", "message", "needle"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_bad_input_is_reported_with_place(
    write_topology: Callable[[str], Path], old: str, new: str, message: str, needle: str
) -> None:
    assert old in BASE, "case must change the base text"
    text = BASE.replace(old, new, 1)
    path = write_topology(text)
    diags = errors_of(path)
    matching = [d for d in diags if message in f"{d.message} {d.hint}" and d.severity == "error"]
    assert matching, f"no error containing {message!r}; got:\n" + "\n".join(map(str, diags))
    d = matching[0]
    assert d.location is not None and d.location.file.endswith("topo.yaml")
    assert d.location.line == line_of(text, needle), str(d)
    assert str(d).startswith(f"{d.location.file}:{d.location.line}:{d.location.col}: error:")


def test_base_is_valid(write_topology: Callable[[str], Path]) -> None:
    loaded = load(write_topology(BASE))
    assert "eng-read" in loaded.topology.conduits


def test_every_problem_is_reported_at_once(write_topology: Callable[[str], Path]) -> None:
    text = (
        BASE.replace("roles: [lead]", "roles: [leed]")
        .replace("10.1.9.0/24", "10.1.9.0/33")
        .replace("{modbus: read}", "{modbus: erase}")
    )
    messages = [d.message for d in errors_of(write_topology(text))]
    assert any("unknown role 'leed'" in m for m in messages)
    assert any("is not an IPv4 network" in m for m in messages)
    assert any("no function class 'erase'" in m for m in messages)


def test_hint_suggests_close_name(write_topology: Callable[[str], Path]) -> None:
    diags = errors_of(write_topology(BASE.replace("roles: [engineer]}", "roles: [enginer]}", 1)))
    assert any("did you mean 'engineer'" in d.hint for d in diags)


def test_risky_conduit_is_a_warning_and_strict_makes_it_an_error(
    write_topology: Callable[[str], Path],
) -> None:
    text = BASE.replace("security_level: 2}", "security_level: 3}")
    path = write_topology(text)
    loaded = load(path)
    warnings = [d for d in loaded.diagnostics if d.severity == "warning" and not _mgmt(d)]
    assert len(warnings) == 1 and "security level 3" in warnings[0].message
    assert warnings[0].location is not None
    assert warnings[0].location.line == line_of(text, "eng-read:")
    diags = errors_of(path, strict=True)
    assert any("without approval, schedule or recording" in d.message for d in diags)
    # Any one compensating control removes the warning.
    recorded = text.replace("allow: [{modbus: read}, ssh]", "allow: [ssh]\n    record: true")
    assert [d for d in load(write_topology(recorded, "rec.yaml")).diagnostics if not _mgmt(d)] == []


def _mgmt(d: Diagnostic) -> bool:
    """The warning for a gateway without management access (BASE declares none)."""
    return "management access" in d.message


def test_duplicate_name_across_files(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(BASE)
    (tmp_path / "b.yaml").write_text("version: 1\nroles:\n  engineer: {}\n")
    diags = errors_of(tmp_path)
    d = next(d for d in diags if "defined twice" in d.message)
    assert d.location is not None and d.location.file.endswith("b.yaml") and d.location.line == 3
    assert "a.yaml:12" in d.message


def test_missing_key_file_is_an_error(write_topology: Callable[[str], Path]) -> None:
    text = BASE.replace("overlay: 100.64.1.2}", "overlay: 100.64.1.2, keys: keys/lead-1.pub}")
    diags = errors_of(write_topology(text))
    assert any("key file 'keys/lead-1.pub' does not exist" in d.message for d in diags)


def test_missing_path_and_empty_directory(tmp_path: Path) -> None:
    assert "no such file" in errors_of(tmp_path / "nope.yaml")[0].message
    assert "no .yaml" in errors_of(tmp_path)[0].message


def test_not_a_mapping_and_empty_file(write_topology: Callable[[str], Path]) -> None:
    assert "must be a mapping" in errors_of(write_topology("- a\n- b\n"))[0].message
    assert "file is empty" in errors_of(write_topology("", "empty.yaml"))[0].message
