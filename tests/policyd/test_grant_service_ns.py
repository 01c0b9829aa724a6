"""The grant service on the real kernel: tagged elements, topology changes, kill -9 at
chosen steps (failpoints), a corrupt state file, and reconciliation of foreign elements.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.policyd.nsnet import ENV, PLC2, PY, Net, topology_yaml
from tests.policyd.test_daemon_ns import Policyd
from tests.policyd.test_grants_ns import records

pytestmark = pytest.mark.root


class Daemon(Policyd):
    """policyd with a fixed run directory (so restarts share state) and a failpoint."""

    def __init__(self, net: Net, topo: Path, run: Path, failpoint: str = "") -> None:
        self.flow_log = run / "flows.jsonl"
        self.socket = run / "policyd.sock"
        env = ["env", f"ZONEGATE_FAILPOINT={failpoint}"]
        self.proc = net.spawn(
            net.gw,
            *env,
            PY,
            "-m",
            "policyd.cli",
            "--topology",
            str(topo),
            "--gateway",
            "plant-a",
            "--tunnel",
            net.tunnel,
            "--poll",
            "0.2",
            "--reconcile-every",
            "1",
            "--api-socket",
            str(self.socket),
            "--flow-log",
            str(self.flow_log),
            "--state-dir",
            str(run),
            "--no-sessions",
        )
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.wait_for("control API on")


def grant(d: Daemon, who: str, *args: str) -> tuple[int, dict[str, Any]]:
    zg = [PY, "-m", "zonegate.cli", "grant", "--socket", str(d.socket), "--json", "--as", who]
    out = subprocess.run([*zg, *args], capture_output=True, text=True, env=ENV, check=False)
    try:
        return out.returncode, json.loads(out.stdout)
    except ValueError:
        return out.returncode, {"error": out.stdout + out.stderr}


def request_and_approve(d: Daemon) -> str:
    rc, body = grant(
        d,
        "vendor-1",
        "request",
        "--conduit",
        "vendor-maintenance",
        "--duration",
        "1h",
        "--reason",
        "calibration",
    )
    assert rc == 0, body
    gid = str(body["id"])
    rc, body = grant(d, "lead-1", "approve", gid, "--note", "ticket 42")
    assert rc == 0, body
    return gid


def kernel_grants(net: Net) -> list[dict[str, Any]]:
    out = json.loads(net.ns(net.gw, "nft", "-j", "list", "sets", "inet").stdout)
    elems = []
    for o in out["nftables"]:
        s = o.get("set")
        if s and s["name"].startswith("grant_") and "vendor" in s["name"]:
            elems += [e["elem"] if isinstance(e, dict) else {"val": e} for e in s.get("elem", [])]
    return elems


def grant_set(net: Net) -> str:
    out = json.loads(net.ns(net.gw, "nft", "-j", "list", "sets", "inet").stdout)
    return next(
        o["set"]["name"]
        for o in out["nftables"]
        if "set" in o and o["set"]["name"].startswith("grant_") and "vendor" in o["set"]["name"]
    )


def audits(d: Daemon) -> list[dict[str, Any]]:
    return [r for r in records(d.flow_log) if r.get("event") == "audit"]


def wait(cond: Any, what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def test_grant_is_a_tagged_element_and_a_role_change_ends_it(net: Net, tmp_path: Path) -> None:
    """Finding: a role removed from the topology left the element; revoke said 200."""
    topo = tmp_path / "topo.yaml"
    topo.write_text(topology_yaml())
    d = Daemon(net, topo, tmp_path / "run")
    gid = request_and_approve(d)
    [el] = kernel_grants(net)
    assert el["val"] == "100.64.2.10" and el["comment"] == gid
    assert net.modbus("vendor-1", PLC2, "write")
    approved = next(a for a in audits(d) if a["action"] == "grant_approved")
    assert approved["details"]["note"] == "ticket 42"  # notes are audited

    text = topology_yaml().replace(
        "vendor-1: {kind: user, roles: [vendor]", "vendor-1: {kind: user"
    )
    topo.write_text(text)
    wait(lambda: not kernel_grants(net), "the element of the invalidated grant stayed")
    assert not net.modbus("vendor-1", PLC2, "write")
    wait(lambda: any(a["action"] == "grant_ended" for a in audits(d)), "no grant_ended audit")
    rc, body = grant(d, "lead-1", "revoke", gid)
    assert rc != 0 and "already revoked" in body["error"], body


@pytest.mark.parametrize(
    ("failpoint", "state_after"),
    [("after-intent-open", "requested"), ("after-kernel-open", "active")],
)
def test_kill_9_between_steps_is_completed_or_rolled_back_at_restart(
    net: Net, tmp_path: Path, failpoint: str, state_after: str
) -> None:
    """Finding: a kill between the kernel and the state file left a grant no API could close."""
    topo = tmp_path / "topo.yaml"
    topo.write_text(topology_yaml())
    run = tmp_path / "run"
    d = Daemon(net, topo, run, failpoint=failpoint)
    rc, body = grant(
        d,
        "vendor-1",
        "request",
        "--conduit",
        "vendor-maintenance",
        "--duration",
        "1h",
        "--reason",
        "x",
    )
    gid = body["id"]
    grant(d, "lead-1", "approve", gid)
    d.proc.wait(timeout=10)
    assert d.proc.returncode == -9, d.log()
    in_kernel = bool(kernel_grants(net))
    assert in_kernel == (state_after == "active")

    d2 = Daemon(net, topo, run)
    rc, body = grant(d2, "lead-1", "list")
    [g] = [g for g in body["grants"] if g["id"] == gid]
    assert g["state"] == state_after, body
    if state_after == "active":
        assert any(
            a["action"] == "grant_approved" and a["details"].get("recovered") for a in audits(d2)
        )
        rc, body = grant(d2, "lead-1", "revoke", gid)
        assert rc == 0 and body["state"] == "revoked", body
    assert not kernel_grants(net)
    # the audit chain survived the kill and continued across the restart
    from policyd.flowlog.auditchain import verify

    v = verify([d2.flow_log])
    assert v.ok and v.records >= 5, v.problems


def test_a_corrupt_state_file_is_moved_aside_and_grants_rebuilt(net: Net, tmp_path: Path) -> None:
    """Finding: a corrupt state file crashed policyd after the ruleset was applied."""
    topo = tmp_path / "topo.yaml"
    topo.write_text(topology_yaml())
    run = tmp_path / "run"
    d = Daemon(net, topo, run)
    gid = request_and_approve(d)
    d.proc.kill()
    d.proc.wait(timeout=5)
    (run / "grants-plant-a.json").write_text("")
    d2 = Daemon(net, topo, run)
    _rc, body = grant(d2, "lead-1", "list")
    assert [g["id"] for g in body["grants"] if g["state"] == "active"] == [gid], body
    assert list(run.glob("grants-plant-a.json.corrupt-*"))
    actions = [a["action"] for a in audits(d2)]
    assert "grant_state_corrupt" in actions and "grant_recovered" in actions
    _rc, body = grant(
        d2,
        "vendor-1",
        "request",
        "--conduit",
        "vendor-maintenance",
        "--duration",
        "1h",
        "--reason",
        "y",
    )
    assert body["id"] != gid


def test_reconcile_removes_an_element_nobody_granted(net: Net, tmp_path: Path) -> None:
    topo = tmp_path / "topo.yaml"
    topo.write_text(topology_yaml())
    d = Daemon(net, topo, tmp_path / "run")
    name = grant_set(net)
    net.ns(net.gw, "nft", "add", "element", "inet", "zonegate", name, "{ 100.64.2.10 timeout 1h }")
    wait(lambda: not kernel_grants(net), "reconciliation left the foreign element")
    assert any(a["action"] == "grant_element_removed" for a in audits(d))
