"""YAML traps: YAML 1.2 scalars, ambiguous numbers, tabs and indentation named as such,
and one mistake giving one error."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.topology.conftest import BASE
from topology import TopologyError, load
from topology.diagnostics import Diagnostic
from topology.fields import NAME_RE
from topology.yamlnodes import LEADING_ZERO_RE

Write = Callable[..., Path]


def problems(path: Path) -> list[Diagnostic]:
    with pytest.raises(TopologyError) as info:
        load(path)
    return info.value.diagnostics


def test_no_yes_on_off_stay_names(write_topology: Write) -> None:
    text = (
        BASE.replace("pc-1: {zone: office", "no: {zone: office")
        .replace("  auditor: {}\n", "  auditor: {}\n  on: {}\n  yes: {}\n")
        .replace("[lead, auditor]", "[lead, auditor, on, yes]")
    )
    topo = load(write_topology(text)).topology
    assert "no" in topo.sites["site-a"].assets
    assert {"on", "yes"} <= set(topo.roles)


def test_a_leading_zero_key_stays_as_written(write_topology: Write) -> None:
    text = BASE.replace("office: {cidr", "010: {cidr").replace("zone: office", "zone: '010'")
    text = text.replace("site-a/office", "site-a/010")
    topo = load(write_topology(text)).topology
    assert "010" in topo.sites["site-a"].zones and "8" not in topo.sites["site-a"].zones


def test_an_ambiguous_number_is_one_error_with_a_hint(write_topology: Write) -> None:
    text = BASE.replace("security_level: 2}", "security_level: 010}")
    (d,) = problems(write_topology(text))
    assert d.code == "ZG-E004" and "octal 8, YAML 1.2 as 10" in d.message
    assert "write 10" in d.hint and d.location is not None
    assert (
        d.location.line
        == text.splitlines().index("      control: {cidr: 10.1.1.0/24, security_level: 010}") + 1
    )


def test_a_yaml11_boolean_where_a_boolean_belongs_gets_a_hint(write_topology: Write) -> None:
    text = BASE.replace("allow: [https]\n", "allow: [https]\n    record: yes\n")
    (d,) = problems(write_topology(text))
    assert d.code == "ZG-E022" and "write true" in d.hint


def test_sexagesimal_looking_values_stay_strings(write_topology: Write) -> None:
    # YAML 1.1 reads 20:00 as 1200 (base 60); YAML 1.2 and Zonegate read the text.
    text = BASE.replace("allow: [https]\n", "allow: [https]\n    schedule: {hours: 06:00-20:00}\n")
    c = load(write_topology(text)).topology.conduits["lead-office"]
    assert c.schedule is not None and f"{c.schedule.end:%H:%M}" == "20:00"


def test_dates_without_quotes_are_read(write_topology: Write) -> None:
    text = BASE.replace("overlay: 100.64.1.2}", "overlay: 100.64.1.2, valid_from: 2026-01-01}")
    ident = load(write_topology(text)).topology.identities["lead-1"]
    assert ident.valid_from is not None and ident.valid_from.year == 2026


def test_a_tab_is_named_with_its_line(write_topology: Write) -> None:
    text = BASE.replace("  lead: {}\n", "\tlead: {}\n")
    (d,) = problems(write_topology(text))
    assert d.code == "ZG-E002" and "tab character" in d.message
    line = text.splitlines().index("\tlead: {}") + 1
    assert d.location is not None and d.location.line == line and d.location.col == 1


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("      office: {cidr", "     office: {cidr"),  # one space short
        ("      office: {cidr", "        office: {cidr"),  # two spaces deep
        ("  lead-1: {kind", " lead-1: {kind"),
    ],
)
def test_bad_indentation_is_one_error_that_says_indentation(
    write_topology: Write, old: str, new: str
) -> None:
    text = BASE.replace(old, new)
    diags = problems(write_topology(text))
    assert len(diags) == 1, "\n".join(map(str, diags))
    (d,) = diags
    assert d.code == "ZG-E003" and "indentation" in d.message
    line = next(i for i, ln in enumerate(text.splitlines(), 1) if ln.startswith(new))
    assert d.location is not None and d.location.line == line


def test_a_file_that_cannot_be_parsed_hides_its_follow_ons(tmp_path: Path) -> None:
    (tmp_path / "sites.yaml").write_text(
        BASE.split("\nroles:")[0].replace("  site-a:", " site-a:\n  x")
    )
    (tmp_path / "rest.yaml").write_text("version: 1\nroles:" + BASE.split("\nroles:")[1])
    diags = problems(tmp_path)
    assert len(diags) == 1, "\n".join(map(str, diags))
    assert diags[0].location is not None and diags[0].location.file.endswith("sites.yaml")
    assert "reference error(s) elsewhere are not shown" in diags[0].hint


def test_a_site_without_gateway_is_one_error(write_topology: Write) -> None:
    text = BASE.replace("    gateway: {underlay: 192.0.2.1, overlay: 100.64.0.1}\n", "")
    diags = problems(write_topology(text))
    assert len(diags) == 1, "\n".join(map(str, diags))
    assert diags[0].code == "ZG-E021" and "needs 'gateway'" in diags[0].message


def test_a_broken_zone_is_one_error(write_topology: Write) -> None:
    text = BASE.replace("office: {cidr: 10.1.9.0/24", "office: {cidr: 10.1.9.0/33")
    diags = problems(write_topology(text))
    assert len(diags) == 1, "\n".join(map(str, diags))


def test_a_date_in_valid_until_is_the_end_of_that_day_in_the_site_time_zone(
    write_topology: Write,
) -> None:
    text = BASE.replace(
        "    gateway: {underlay: 192.0.2.1",
        "    tz: America/New_York\n    gateway: {underlay: 192.0.2.1",
    ).replace("overlay: 100.64.1.2}", "overlay: 100.64.1.2, valid_until: 2026-12-31}")
    ident = load(write_topology(text)).topology.identities["lead-1"]
    assert ident.valid_until is not None
    assert ident.valid_until.isoformat() == "2027-01-01T05:00:00+00:00"  # midnight in New York


def test_a_date_is_an_error_when_sites_disagree_on_the_time_zone(write_topology: Write) -> None:
    text = (
        BASE.replace(
            "    gateway: {underlay: 192.0.2.1",
            "    tz: America/New_York\n    gateway: {underlay: 192.0.2.1",
        )
        .replace(
            "roles:\n",
            "  site-b:\n    tz: Europe/Berlin\n    gateway: {underlay: 192.0.2.2, overlay: 100.64.0.2}\n"
            "    zones: {}\nroles:\n",
            1,
        )
        .replace("overlay: 100.64.1.2}", "overlay: 100.64.1.2, valid_until: 2026-12-31}")
    )
    diags = problems(write_topology(text))
    (d,) = [d for d in diags if d.severity == "error"]
    assert d.code == "ZG-E028" and "different time zones" in d.message and "T23:59:59" in d.hint


NAMES = st.from_regex(NAME_RE, fullmatch=True).filter(lambda n: not LEADING_ZERO_RE.match(n))
TRAPS = st.sampled_from(
    [
        "no",
        "yes",
        "on",
        "off",
        "y",
        "n",
        "true",
        "null",
        "1e3",
        "2024",
        "0x1f",
        "0o17",
        "1_000",
        "2026-01-01",
        "inf",
        "nan",
    ]
).filter(NAME_RE.match)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(zone=st.one_of(TRAPS, NAMES), asset=st.one_of(TRAPS, NAMES), role=st.one_of(TRAPS, NAMES))
def test_every_valid_name_is_read_as_written_as_key_and_as_reference(
    tmp_path_factory: pytest.TempPathFactory, zone: str, asset: str, role: str
) -> None:
    """A name that passes the name rule means itself wherever it is written, unquoted:
    YAML 1.1 would turn `no` into False, `0o17` into 15 and `12:30` into 750."""
    text = (
        BASE.replace("office: {cidr", f"{zone}: {{cidr")
        .replace("zone: office", f"zone: {zone}")
        .replace("site-a/office", f"site-a/{zone}")
        .replace("plc-1", asset)
        .replace("  auditor: {}\n", f"  {role}: {{}}\n")
        .replace("[lead, auditor]", f"[lead, {role}]")
    )
    if role in ("engineer", "lead") or asset == "pc-1":
        return  # collides with a name BASE already uses
    path = tmp_path_factory.mktemp("names") / "t.yaml"
    path.write_text(text)
    topo = load(path).topology
    assert zone in topo.sites["site-a"].zones
    assert asset in topo.sites["site-a"].assets
    assert role in topo.roles and role in topo.conduits["lead-office"].sources.roles
    assert topo.conduits["eng-read"].target.name == asset


def test_a_key_dedented_to_the_level_of_names_is_one_indentation_error(
    write_topology: Write,
) -> None:
    # Valid YAML: `allow` becomes a conduit of its own, and eng-read lacks `allow`.
    text = BASE.replace("    allow: [{modbus: read}, ssh]\n", "  allow: [{modbus: read}, ssh]\n")
    diags = problems(write_topology(text))
    assert len(diags) == 1, "\n".join(map(str, diags))
    (d,) = diags
    assert d.code == "ZG-E003" and "'allow' is at the level of conduit names" in d.message
    assert d.location is not None
    assert d.location.line == text.splitlines().index("  allow: [{modbus: read}, ssh]") + 1
