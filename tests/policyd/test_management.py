"""Management access in the topology: parsed, checked, compiled into the input chain."""

from __future__ import annotations

from datetime import UTC, datetime
from ipaddress import IPv4Address as IP
from pathlib import Path

import pytest

import topology
from policyd.compiler import API_PORT, compile_ruleset
from policyd.ruleset_eval import Packet, RulesetEvaluator
from topology.diagnostics import TopologyError

NOW = datetime(2026, 11, 25, 12, tzinfo=UTC)
TEXT = """version: 1
sites:
  plant-a:
    gateway:
      underlay: 192.0.2.10
      overlay: 100.64.0.1
      management: MGMT
    zones:
      control: {cidr: 10.10.1.0/24, security_level: 2}
      office: {cidr: 10.10.9.0/24, security_level: 1}
identities:
  admin: {kind: user, overlay: 100.64.1.5}
  other: {kind: user, overlay: 100.64.1.6}
"""


def load(tmp_path: Path, mgmt: str) -> topology.Loaded:
    path = tmp_path / "t.yaml"
    text = TEXT.replace("MGMT", mgmt)
    if not mgmt:
        text = text.replace("      management: \n", "")
    path.write_text(text)
    return topology.load(path)


def test_compiled_into_the_input_chain(tmp_path: Path) -> None:
    mgmt = "[{from: [plant-a/office, 198.51.100.0/24], allow: [ssh]}, {from: [admin], allow: [ssh, api]}]"
    topo = load(tmp_path, mgmt).topology
    ev = RulesetEvaluator(compile_ruleset(topo, "plant-a", now=NOW).objects, NOW)

    def reaches(iif: str, src: str, dport: int) -> bool:
        pkt = Packet(iif=iif, saddr=IP(src), daddr=IP("10.10.9.1"), proto="tcp", dport=dport)
        return ev.evaluate("input", pkt, NOW).accepted

    assert reaches("eth1", "10.10.9.20", 22)  # the office zone
    assert reaches("eth0", "198.51.100.7", 22)  # a CIDR
    assert not reaches("eth1", "10.10.1.20", 22)  # control is not named
    assert not reaches("eth1", "10.10.9.20", API_PORT)  # the office may ssh only
    assert reaches("zg3", "100.64.1.5", 22) and reaches("zg3", "100.64.1.5", API_PORT)
    assert not reaches("eth1", "100.64.1.5", 22)  # an identity only through a tunnel
    assert not reaches("zg3", "100.64.1.6", 22)
    assert not reaches("zg3", "10.10.9.20", 22)  # a zone never through a tunnel


def test_no_management_access_is_a_warning(tmp_path: Path) -> None:
    loaded = load(tmp_path, "")
    warnings = [d.message for d in loaded.diagnostics if d.severity == "warning"]
    assert any("declares no management access" in w for w in warnings), warnings
    codes = [d.code for d in loaded.diagnostics if "no management access" in d.message]
    assert codes == ["ZG-W009"], codes
    fixed = load(tmp_path, "[{from: [plant-a/office], allow: [ssh]}]").diagnostics
    assert not [d for d in fixed if "no management access" in d.message], fixed


@pytest.mark.parametrize(
    ("mgmt", "message"),
    [
        ("[{from: [nowhere], allow: [ssh]}]", "'nowhere' is no zone, identity or CIDR"),
        ("[{from: [plant-a/lab], allow: [ssh]}]", "unknown zone 'plant-a/lab'"),
        ("[{from: [plant-a/office], allow: [sshh]}]", "unknown service 'sshh'"),
        ("[{from: [plant-a/office], allow: [ssh], to: x}]", "to"),
        ("[{allow: [ssh]}]", "from"),
    ],
)
def test_bad_management_entries(tmp_path: Path, mgmt: str, message: str) -> None:
    with pytest.raises(TopologyError) as exc:
        load(tmp_path, mgmt)
    text = "\n".join(str(d) for d in exc.value.diagnostics)
    assert message in text and "t.yaml:" in text, text
    assert any(d.code in ("ZG-E044", "ZG-E020", "ZG-E021") for d in exc.value.diagnostics), text


@pytest.mark.parametrize("iface", ["eth1", "eth1.20", "enp3s0f1"])
def test_zone_interface(tmp_path: Path, iface: str) -> None:
    mgmt = "[{from: [plant-a/office], allow: [ssh]}]"
    loaded = load(tmp_path, mgmt)
    path = tmp_path / "t.yaml"
    path.write_text(
        path.read_text().replace("security_level: 1}", f"security_level: 1, interface: {iface}}}")
    )
    zone = topology.load(path).topology.zone("plant-a/office")
    assert loaded and zone is not None and zone.interface == iface


def test_bad_zone_interface(tmp_path: Path) -> None:
    load(tmp_path, "[{from: [plant-a/office], allow: [ssh]}]")
    path = tmp_path / "t.yaml"
    path.write_text(
        path.read_text().replace("security_level: 1}", "security_level: 1, interface: 'eth 1'}")
    )
    with pytest.raises(TopologyError) as exc:
        topology.load(path)
    text = "\n".join(str(d) for d in exc.value.diagnostics)
    assert "t.yaml:10:" in text and "interface 'eth 1' is not an interface name" in text, text
