"""The example plant as a Mininet network: addressing, routing and real services."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import require
from topology import load
from zonegate.lab.emulation import plan_network, running_plant

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "plant"
pytestmark = [pytest.mark.root, pytest.mark.mininet]


def test_plan_covers_every_site_zone_asset_and_user() -> None:
    topo = load(EXAMPLE).topology
    plan = plan_network(topo)
    labels = {h.label for h in plan.hosts}
    assert set(topo.sites) <= labels
    assert {a.ref for s in topo.sites.values() for a in s.assets.values()} <= labels
    users = {i.name for i in topo.identities.values() if i.kind == "user"}
    assert users <= labels
    assert {s.label for s in plan.switches} == {"wan"} | {
        z.ref for s in topo.sites.values() for z in s.zones.values()
    }
    # Node and interface names fit the kernel's 15-character limit.
    assert all(len(f"{h.node}-eth{len(h.interfaces)}") <= 15 for h in plan.hosts)
    gw = plan.host("plant-a")
    assert [str(i.address) for i in gw.interfaces][:2] == ["192.0.2.10/32", "10.10.1.1/24"]
    assert plan.host("plant-a/plc-1").modbus


def probe(host: object, address: str, service: str) -> bool:
    cmd = f"{sys.executable} -m zonegate.lab.probe {address} {service} --timeout 2"
    out: str = host.cmd(cmd + "; echo rc=$?")  # type: ignore[attr-defined]
    return out.strip().endswith("rc=0")


def test_plant_comes_up_with_real_services_and_tears_down() -> None:
    require("brctl", "ip")
    topo = load(EXAMPLE).topology
    with running_plant(topo, prefix="zmt") as plant:
        gw_a, gw_b = plant.host("plant-a"), plant.host("plant-b")
        # Each gateway reaches the real services of the assets behind it.
        assert probe(gw_a, "10.10.1.5", "modbus/read")
        assert probe(gw_a, "10.10.1.5", "modbus/write")
        assert probe(gw_a, "10.10.1.20", "vnc")
        assert probe(gw_a, "10.10.2.5", "ssh")
        assert probe(gw_b, "10.20.5.10", "https")
        assert not probe(gw_a, "10.10.1.5", "ssh")  # plc-1 serves only Modbus
        # The underlay connects gateways and users.
        assert "1 received" in gw_b.cmd("ping -c1 -W2 192.0.2.10")
        assert "1 received" in plant.host("vendor-tech").cmd("ping -c1 -W2 192.0.2.10")
        # Each host has its own /var/run/wireguard for its own wireguard-go.
        gw_a.cmd("touch /var/run/wireguard/marker")
        assert "marker" not in gw_b.cmd("ls /var/run/wireguard")
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True)
    assert "zmt" not in links.stdout, "emulated links left behind"
