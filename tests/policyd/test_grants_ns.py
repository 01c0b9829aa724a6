"""Just-in-time access on the real kernel: the API, grants as expiring set elements,
revocation cutting a live session, and callers identified only by their tunnel.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.policyd.nsnet import ENV, HERE, IDENTITIES, PLC2, PY, Net, topology_yaml
from tests.policyd.test_daemon_ns import Policyd

pytestmark = pytest.mark.root
API = "http://100.64.0.1:9780"


def api(net: Net, ns: str, src: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    argv = [PY, str(HERE / "api_call.py"), src, method, API + path]
    if body is not None:
        argv.append(json.dumps(body))
    out = net.ns(ns, *argv, check=False)
    if out.returncode != 0:
        return 0, out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "no answer"
    data = json.loads(out.stdout.strip().splitlines()[-1])
    return int(data["status"]), data["body"]


def as_identity(net: Net, who: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    return api(net, net.ident, IDENTITIES[who], method, path, body)


def records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.sr("SR 1.13 RE1", "SR 2.1", "SR 2.6")
def test_vendor_grant_opens_and_expires_in_the_kernel(net: Net, tmp_path: Path) -> None:
    topo = tmp_path / "topo.yaml"
    topo.write_text(topology_yaml())
    d = Policyd(net, topo, "--api-listen", "100.64.0.1")
    d.wait_for("control API on")
    assert not net.modbus("vendor-1", PLC2, "write"), d.log()

    status, body = as_identity(
        net,
        "vendor-1",
        "POST",
        "/v1/grants",
        {"conduit": "vendor-maintenance", "duration": "8s", "reason": "replace firmware"},
    )
    assert status == 201, body
    gid = body["id"]
    assert body["identity"] == "vendor-1"  # the tunnel address said who, not the body

    status, body = as_identity(net, "vendor-1", "POST", f"/v1/grants/{gid}/approve", {})
    assert status == 403 and "cannot approve" in body["error"]
    status, body = as_identity(net, "engineer-1", "POST", f"/v1/grants/{gid}/approve", {})
    assert status == 403 and "may not decide" in body["error"]
    assert not net.modbus("vendor-1", PLC2, "write")

    status, body = as_identity(net, "lead-1", "POST", f"/v1/grants/{gid}/approve", {})
    assert status == 200 and body["state"] == "active", body
    assert net.modbus("vendor-1", PLC2, "write"), d.log()
    assert not net.modbus("vendor-1", "10.10.1.5", "write")  # only the conduit's asset

    # policyd dies; the grant still ends on time, in the kernel. (Its Modbus conduits
    # close at once: their OT tier died with policyd.)
    d.proc.kill()
    d.proc.wait(timeout=5)
    assert not net.modbus("vendor-1", PLC2, "write")
    grant_set = ("nft", "list", "set", "inet", "zonegate", "grant_vendor_maintenance")
    assert "100.64.2.10" in net.ns(net.gw, *grant_set).stdout
    deadline = time.monotonic() + 20
    while "100.64.2.10" in net.ns(net.gw, *grant_set).stdout:
        assert time.monotonic() < deadline, "grant never expired in the kernel"
        time.sleep(1)
    assert net.tcp("engineer-1", "10.10.1.5", 22)  # the rest of the policy stands

    actions = [r.get("action") for r in records(d.flow_log) if r.get("event") == "audit"]
    assert actions[:2] == ["daemon_start", "policy_applied"]
    assert "grant_requested" in actions and "grant_approved" in actions
    flows = [r for r in records(d.flow_log) if r.get("conduit") == "vendor-maintenance"]
    assert flows and all(r["identity"] == "vendor-1" for r in flows)


@pytest.mark.sr("SR 2.6")
def test_revoke_ends_a_live_session(net: Net, tmp_path: Path) -> None:
    topo = tmp_path / "topo.yaml"
    topo.write_text(topology_yaml())
    d = Policyd(net, topo)
    d.wait_for("control API on")
    zg = [PY, "-m", "zonegate.cli", "grant", "--socket", str(d.socket), "--json"]
    out = subprocess.run(
        [
            *zg,
            "--as",
            "vendor-1",
            "request",
            "--conduit",
            "vendor-maintenance",
            "--duration",
            "1h",
            "--reason",
            "calibration",
        ],
        capture_output=True,
        text=True,
        env=ENV,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    gid = json.loads(out.stdout)["id"]
    out = subprocess.run(
        [*zg, "--as", "lead-1", "approve", gid],
        capture_output=True,
        text=True,
        env=ENV,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr

    session = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            net.ident,
            PY,
            str(HERE / "modbus_session.py"),
            IDENTITIES["vendor-1"],
            PLC2,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    net.procs.append(session)  # type: ignore[arg-type]
    assert session.stdin is not None and session.stdout is not None

    def step(op: str) -> bool:
        session.stdin.write(op + "\n")  # type: ignore[union-attr]
        session.stdin.flush()  # type: ignore[union-attr]
        return bool(json.loads(session.stdout.readline())["ok"])  # type: ignore[union-attr]

    assert json.loads(session.stdout.readline())["connected"]
    assert step("write") and step("write")
    out = subprocess.run(
        [*zg, "--as", "lead-1", "revoke", gid], capture_output=True, text=True, env=ENV, check=False
    )
    assert out.returncode == 0 and json.loads(out.stdout)["state"] == "revoked", (
        out.stdout + out.stderr
    )
    assert not step("write"), "the open session survived revocation"
    assert not step("read")
    d.wait_for("ended [1-9]\\d* session\\(s\\) no longer admitted")
    deadline = time.monotonic() + 10
    while not any(
        r.get("flow_state") == "end" and r.get("end_reason") == "revoked"
        for r in records(d.flow_log)
    ):
        assert time.monotonic() < deadline, "no flow end record with reason revoked"
        time.sleep(0.2)


@pytest.mark.sr("SR 1.1", "SR 1.13")
def test_api_only_answers_through_the_tunnel(net: Net, tmp_path: Path) -> None:
    topo = tmp_path / "topo.yaml"
    topo.write_text(topology_yaml())
    d = Policyd(net, topo, "--api-listen", "100.64.0.1")
    d.wait_for("control API on")
    status, body = as_identity(net, "lead-1", "GET", "/v1/health")
    assert status == 200 and body["ok"], body
    # A malformed body through the tunnel: a reason, and nothing changes.
    status, body = as_identity(
        net, "vendor-1", "POST", "/v1/grants", {"conduit": "vendor-maintenance"}
    )
    assert status == 422 and "duration" in body["error"]
    # The same overlay address claimed from the plant LAN side: never answered.
    net.ns(net.zone, "ip", "addr", "add", "100.64.2.10/32", "dev", net.tag + "b")
    net.ns(
        net.zone, "ip", "route", "add", "100.64.0.1/32", "via", "10.10.1.1", "src", "100.64.2.10"
    )
    status, _ = api(net, net.zone, "100.64.2.10", "GET", "/v1/grants")
    assert status == 0, "a spoofed overlay source from the LAN reached the API"
    deadline = time.monotonic() + 5
    while not any(
        r.get("event") == "deny" and r.get("id.orig_h") == "100.64.2.10" and "input" in r["reason"]
        for r in records(d.flow_log)
    ):
        assert time.monotonic() < deadline, "the kernel did not drop (and log) the spoofed SYN"
        time.sleep(0.2)
    status, body = as_identity(net, "lead-1", "GET", "/v1/grants")
    assert status == 200 and body["grants"] == []
