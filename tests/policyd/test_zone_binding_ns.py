"""Zones live behind their interfaces (issue 11), on the real kernel with rp_filter off.

A host on a security-level-1 LAN that takes a level-2 zone's address must not reach the
level-3 zone the level-2 zone may reach, over TCP or UDP. The witness device's journal
and the gateway's conntrack table show what got through.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.policyd.nsnet import PLC1, Net, require_tools
from tests.policyd.test_continuous_ns import kernel
from zonegate.lab.modbus_device import read_journal, writes

pytestmark = pytest.mark.root

CELL_HOST, OFFICE_HOST, SPOOFED = "10.10.2.9", "10.10.3.9", "10.10.2.50"

TOPOLOGY = """version: 1
sites:
  plant-a:
    gateway: {underlay: 192.0.2.10, port: 51820, overlay: 100.64.0.1}
    zones:
      control: {cidr: 10.10.1.0/24, security_level: 3}
      cell: {cidr: 10.10.2.0/24, security_level: 2INTERFACE}
      office: {cidr: 10.10.3.0/24, security_level: 1}
    assets:
      plc-1: {zone: control, address: 10.10.1.5}
services:
  modbus-udp:
    transport: udp
    ports: [502]
    payload_offset: 56
    classes: {read: [1, 2, 3, 4], write: [5, 6, 15, 16]}
conduits:
  cell-reads:
    from: {zones: [plant-a/cell]}
    to: {asset: plant-a/plc-1}
    allow: [{modbus: read}, {modbus-udp: read}]
"""


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Net]:
    require_tools()
    n = Net(prefix="zb")
    try:
        n.up()
        n.cell = n.add_lan("c", "10.10.2.1/24", CELL_HOST + "/24")  # type: ignore[attr-defined]
        n.office = n.add_lan("o", "10.10.3.1/24", OFFICE_HOST + "/24")  # type: ignore[attr-defined]
        n.ns(n.office, "ip", "addr", "add", SPOOFED + "/32", "dev", n.tag + "op")
        for key in ("all", "default", n.tag + "c", n.tag + "o", n.tag + "l"):
            n.ns(n.gw, "sysctl", "-qw", f"net.ipv4.conf.{key}.rp_filter=0")
        n.start_witness(tmp_path / "journal.jsonl")
        yield n
    finally:
        n.down()


def peers(tmp_path: Path) -> list[str]:
    return [e["peer"] for e in read_journal(tmp_path / "journal.jsonl")]


@pytest.mark.parametrize("explicit", [False, True], ids=["routes", "interface"])
@pytest.mark.sr("SR 5.1", "SR 5.2")
def test_spoofed_zone_address_is_dropped(net: Net, tmp_path: Path, explicit: bool) -> None:
    iface = f", interface: {net.tag}c" if explicit else ""
    topo = tmp_path / "topo.yaml"
    topo.write_text(TOPOLOGY.replace("INTERFACE", iface))
    kernel(net, topo, "apply")
    cell = net.session(CELL_HOST, PLC1, ns=net.cell)  # type: ignore[attr-defined]
    assert cell.ask("udp read") and cell.ask("tcp read")
    spoof = net.session(SPOOFED, PLC1, ns=net.office)  # type: ignore[attr-defined]
    spoof.ask("udp read")
    spoof.ask("tcp connect")
    assert SPOOFED not in peers(tmp_path), peers(tmp_path)
    table = net.ns(net.gw, "conntrack", "-L", "-s", SPOOFED, check=False)
    assert SPOOFED not in table.stdout, table.stdout
    assert peers(tmp_path).count(CELL_HOST) == 2


@pytest.mark.sr("SR 5.1", "SR 5.2")
def test_overlay_address_from_a_lan_cannot_join_an_open_flow(net: Net, tmp_path: Path) -> None:
    """An identity's UDP flow is open through the tunnel; a LAN host that takes the
    identity's overlay address and the same ports is dropped (the route to the overlay
    address is the tunnel), though conntrack would call its datagram established."""
    topo = tmp_path / "topo.yaml"
    text = (
        TOPOLOGY.replace("INTERFACE", "")
        + """identities:
  engineer-1: {kind: user, overlay: 100.64.1.10}
"""
    )
    text = text.replace(
        "conduits:\n",
        "conduits:\n  eng-udp:\n    from: {identities: [engineer-1]}\n"
        "    to: {asset: plant-a/plc-1}\n    allow: [{modbus-udp: [read, write]}]\n",
    )
    topo.write_text(text)
    kernel(net, topo, "apply")
    net.ns(net.gw, "ip", "route", "add", "100.64.0.0/16", "dev", net.tunnel, check=False)
    eng = net.session("100.64.1.10", PLC1)
    assert eng.ask("udp:40100 read")
    net.ns(net.office, "ip", "addr", "add", "100.64.1.10/32", "dev", net.tag + "op")  # type: ignore[attr-defined]
    spoof = net.session("100.64.1.10", PLC1, ns=net.office)  # type: ignore[attr-defined]
    spoof.ask("udp:40100 write")
    assert writes(tmp_path / "journal.jsonl") == [], read_journal(tmp_path / "journal.jsonl")
