"""Issue 6 end to end: a vendor joins with a profile through a real PQ-keyed tunnel,
asks for access through it, a shift lead approves through theirs, the write works,
and the grant ends in the kernel while policyd is dead.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from typing import Any

import pytest

from tests.remote.netns_plant import LAN_HOSTS, PlantNet, Proc, User, wait_for

pytestmark = pytest.mark.root
PY = sys.executable
API = "http://100.64.0.1:9780"


def start_policyd(plant: PlantNet) -> Proc:
    argv = [PY, "-m", "policyd.cli", "--topology", str(plant.topology), "--gateway", "plant-a",
            "--tunnel", plant.gw_ifname, "--api-listen", "100.64.0.1",
            "--api-socket", str(plant.base / "policyd.sock"),
            "--flow-log", str(plant.base / "flows.jsonl"), "--state-dir", str(plant.base),
            "--sessions", str(plant.base / "sessions"), "--poll", "0.5"]  # fmt: skip
    proc = plant.spawn_gw(argv, "policyd.log")
    wait_for(lambda: "control API on" in proc.log_text(), 20, "policyd's API", proc)
    return proc


def probe(plant: PlantNet, user: User, target: str, service: str) -> bool:
    argv = [PY, "-m", "zonegate.lab.probe", LAN_HOSTS[target], service, "--timeout", "1.5"]
    out = subprocess.run(["ip", "netns", "exec", user.ns, *argv], capture_output=True,
                         cwd=plant.base, check=False, timeout=30)  # fmt: skip
    return out.returncode == 0


def grant(plant: PlantNet, user: User, *args: str) -> tuple[int, Any]:
    """`zonegate grant` on the user's machine, through its tunnel: no --as anywhere."""
    argv = [PY, "-m", "zonegate.cli", "grant", "--api", API, "--json", *args]
    out = subprocess.run(["ip", "netns", "exec", user.ns, *argv], capture_output=True, text=True,
                         check=False, timeout=30)  # fmt: skip
    return out.returncode, json.loads(out.stdout) if out.stdout.strip() else out.stderr


@pytest.mark.sr("SR 1.13", "SR 1.13 RE1", "SR 2.1 RE1")
def test_vendor_access_through_real_tunnels(plant: PlantNet) -> None:
    plant.start_gateway()
    plant.spawn_lan(
        [PY, "-m", "zonegate.lab.assetsim", "--modbus", "502", "--tcp", "5900"], "assets.log"
    )
    policyd = start_policyd(plant)
    vendor, lead = plant.join("vendor-tech"), plant.join("shift-lead-1")
    plant.wait_joined(vendor)
    plant.wait_joined(lead)

    assert not probe(plant, vendor, "plc-1", "modbus/write"), plant.logs()
    assert probe(plant, lead, "hmi-1", "vnc"), plant.logs()  # the policy is not deny-all

    rc, body = grant(plant, vendor, "request", "--conduit", "vendor-maintenance",
                     "--duration", "12s", "--reason", "replace pump firmware")  # fmt: skip
    assert rc == 0 and body["identity"] == "vendor-tech", body
    rc, body = grant(plant, vendor, "approve", body["id"])
    assert rc == 1 and "cannot approve" in body["error"], body
    rc, body = grant(plant, lead, "approve", body_id := _only_grant(plant, lead)["id"])
    assert rc == 0 and body["state"] == "active", body
    assert probe(plant, vendor, "plc-1", "modbus/write"), plant.logs()
    assert not probe(plant, vendor, "plc-1", "modbus/diagnostics")  # only what the conduit lists

    # policyd dies; the kernel still closes the grant on time.
    policyd.signal(signal.SIGKILL)
    wait_for(lambda: not probe(plant, vendor, "plc-1", "modbus/write"), 40,
             f"grant {body_id} to expire in the kernel", plant.gateway)  # fmt: skip
    assert probe(plant, lead, "hmi-1", "vnc")
    assert probe(plant, vendor, "plc-1", "modbus/read") is False  # read too needs the grant

    records = [json.loads(x) for x in (plant.base / "flows.jsonl").read_text().splitlines()]
    granted = [r for r in records if r.get("conduit") == "vendor-maintenance"]
    assert granted and {r["identity"] for r in granted} == {"vendor-tech"}
    actions = [r["action"] for r in records if r["event"] == "audit"]
    assert "grant_requested" in actions and "grant_approved" in actions
    # vendor-maintenance is `record: true`: the vendor's session was captured as it ran.
    assert list((plant.base / "sessions" / "vendor-maintenance").glob("*vendor-tech*.pcap"))


def _only_grant(plant: PlantNet, lead: User) -> dict[str, Any]:
    rc, body = grant(plant, lead, "list")
    assert rc == 0 and len(body["grants"]) == 1, body
    return dict(body["grants"][0])
