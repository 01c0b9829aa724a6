"""policyd as a process in the gateway namespace: reload, reject, fail closed."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.policyd.nsnet import PLC1, PY, Net, topology_yaml

pytestmark = pytest.mark.root


class Policyd:
    def __init__(self, net: Net, topo: Path, *extra: str) -> None:
        run = topo.parent / f"run-{len(list(topo.parent.glob('run-*')))}"
        self.flow_log = run / "flows.jsonl"
        self.socket = run / "policyd.sock"
        self.proc = net.spawn(
            net.gw,
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
            "--api-socket",
            str(self.socket),
            "--flow-log",
            str(self.flow_log),
            "--state-dir",
            str(run),
            "--sessions",
            str(run / "sessions"),
            *extra,
        )
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def wait_for(self, pattern: str, count: int = 1, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if sum(1 for ln in self.lines if re.search(pattern, ln)) >= count:
                return
            if self.proc.poll() is not None and not self.proc.stdout:
                break
            time.sleep(0.05)
        raise AssertionError(f"policyd never logged {pattern!r} x{count}:\n{''.join(self.lines)}")

    def log(self) -> str:
        return "".join(self.lines)


@pytest.mark.sr("SR 5.2 RE3", "SR 7.6")
def test_reload_reject_and_fail_closed(net: Net, tmp_path: Path) -> None:
    topo = tmp_path / "topo.yaml"
    good = topology_yaml()
    topo.write_text(good)
    d = Policyd(net, topo)
    d.wait_for("applied ruleset for plant-a")
    assert net.modbus("engineer-1", PLC1, "read"), d.log()
    assert not net.modbus("engineer-1", PLC1, "write"), d.log()
    assert not net.tcp("guest", PLC1, 22)

    # A broken file: every error logged, the last good policy stays.
    topo.write_text(good.replace("plant-a/plc-1", "plant-a/plc-9").replace("mon-sun", "funday"))
    d.wait_for("rejected")
    d.wait_for("keeping the last good policy")
    assert len(re.findall(r"error: ", d.log())) >= 2, d.log()
    assert net.modbus("engineer-1", PLC1, "read"), d.log()
    assert not net.modbus("engineer-1", PLC1, "write"), d.log()

    # A good change on SIGHUP: guest gets ssh to plc-1 -> a structural change, applied.
    topo.write_text(
        good
        + """  guest-ssh:
    from: {identities: [guest]}
    to: {asset: plant-a/plc-1}
    allow: [ssh]
"""
    )
    os.kill(d.proc.pid, signal.SIGHUP)
    d.wait_for("applied ruleset for plant-a", count=2)
    assert net.tcp("guest", PLC1, 22), d.log()

    # Membership only: lead-1 becomes an engineer -> element add, no reload.
    topo.write_text(
        topo.read_text().replace(
            "roles: [shift-lead], overlay", "roles: [shift-lead, plc-engineer], overlay"
        )
    )
    d.wait_for("membership synced: 1 added")
    assert net.modbus("lead-1", PLC1, "read"), d.log()

    # SIGHUP with nothing changed: reloads, and only syncs (nothing to add or delete).
    os.kill(d.proc.pid, signal.SIGHUP)
    d.wait_for(r"reload \(SIGHUP\)")
    d.wait_for("membership synced: 0 added, 0 deleted")

    # Killing policyd leaves enforcement in place: kernel rules keep working, and the
    # Modbus conduits, whose OT tier died with it, carry nothing (fail closed).
    assert net.tcp("engineer-1", PLC1, 22)
    d.proc.kill()
    d.proc.wait(timeout=5)
    assert net.tcp("engineer-1", PLC1, 22)
    assert not net.tcp("night-1", PLC1, 22)  # its schedule is closed
    assert not net.modbus("engineer-1", PLC1, "read")
    assert not net.modbus("engineer-1", PLC1, "write")
    assert not net.modbus("guest", PLC1, "read")


@pytest.mark.sr("SR 5.2 RE3")
def test_sigterm_keeps_rules_unless_flush(net: Net, tmp_path: Path) -> None:
    topo = tmp_path / "topo.yaml"
    topo.write_text(topology_yaml())
    d = Policyd(net, topo)
    d.wait_for("applied ruleset")
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(timeout=10) == 0
    assert "left in place" in d.log()
    assert "policy drop" in net.table_text()
    assert not net.modbus("engineer-1", PLC1, "write")

    d2 = Policyd(net, topo, "--flush-on-exit")
    d2.wait_for("applied ruleset")
    d2.proc.send_signal(signal.SIGTERM)
    assert d2.proc.wait(timeout=10) == 0
    assert net.table_text() == ""
    assert net.modbus("engineer-1", PLC1, "write")  # no table: the path is open again


@pytest.mark.sr("SR 5.2 RE3")
def test_broken_file_at_start_fails_closed(net: Net, tmp_path: Path) -> None:
    """A broken file at first start: deny-all table (ssh kept), policyd keeps running and
    applies the first good file; before, it exited and the gateway forwarded everything."""
    topo = tmp_path / "topo.yaml"
    topo.write_text("version: 1\nsites: [\n")
    d = Policyd(net, topo)
    d.wait_for("deny-all table installed")
    assert d.proc.poll() is None
    table = net.table_text()
    assert "policy drop" in table and "tcp dport 22 accept" in table, table
    assert not net.modbus("engineer-1", PLC1, "read")
    topo.write_text(topology_yaml())
    d.wait_for("applied ruleset for plant-a")
    assert net.modbus("engineer-1", PLC1, "read")
    assert not net.modbus("engineer-1", PLC1, "write")
    d.wait_for("recording flows")
    actions = [a["action"] for a in audit_records(d.flow_log)]
    assert actions.index("fail_closed") < actions.index("policy_applied"), actions


@pytest.mark.sr("SR 5.2", "SR 7.6")
def test_drift_is_repaired_and_audited(net: Net, tmp_path: Path) -> None:
    """A table flushed by hand is restored on SIGHUP and by the periodic check."""
    topo = tmp_path / "topo.yaml"
    topo.write_text(topology_yaml())
    d = Policyd(net, topo, "--drift-check", "3600")
    d.wait_for("applied ruleset for plant-a")
    net.ns(net.gw, "nft", "flush", "table", "inet", "zonegate")
    assert not net.modbus("engineer-1", PLC1, "read")  # flushed: empty chains drop all
    os.kill(d.proc.pid, signal.SIGHUP)
    d.wait_for(r"policy drift \(SIGHUP\)")
    assert net.modbus("engineer-1", PLC1, "read")
    assert not net.modbus("engineer-1", PLC1, "write")
    drifts = [a for a in audit_records(d.flow_log) if a["action"] == "policy_drift"]
    assert len(drifts) == 1 and "forward" in json.dumps(drifts), drifts
    d.proc.kill()
    d.proc.wait(timeout=5)
    d2 = Policyd(net, topo, "--drift-check", "1")
    d2.wait_for("applied ruleset for plant-a")
    time.sleep(2.5)  # two periodic checks of an untouched table: no false drift
    assert "policy drift" not in d2.log(), d2.log()
    from topology.model import conduit_mark

    mark = f"0x{conduit_mark('engineers-read'):08x}"
    net.ns(net.gw, "nft", "delete", "element", "inet", "zonegate", "verify", f"{{ {mark} }}")
    d2.wait_for(r"policy drift \(periodic check\)")
    deadline = time.monotonic() + 10
    while mark not in net.ns(net.gw, "nft", "list", "map", "inet", "zonegate", "verify").stdout:
        assert time.monotonic() < deadline, "the deleted map element was not restored"
        time.sleep(0.1)
    net.ns(net.gw, "nft", "flush", "chain", "inet", "zonegate", "established")
    d2.wait_for(r"policy drift \(periodic check\)", count=2)
    assert net.modbus("engineer-1", PLC1, "read")
    assert not net.modbus("engineer-1", PLC1, "write")
    assert "ct mark vmap @verify" in net.table_text()


def audit_records(flow_log: Path) -> list[dict[str, Any]]:
    if not flow_log.exists():
        return []
    recs = [json.loads(x) for x in flow_log.read_text().splitlines() if x.strip()]
    return [r for r in recs if r.get("event") == "audit"]


@pytest.mark.sr("SR 7.6 RE1")
def test_render_and_diff_commands(net: Net, tmp_path: Path) -> None:
    topo = tmp_path / "topo.yaml"
    topo.write_text(topology_yaml())
    code = (
        "import argparse, sys\n"
        "from policyd.commands import add_render_arguments, render_command, diff_command\n"
        "p = argparse.ArgumentParser(); add_render_arguments(p)\n"
        "a = p.parse_args(sys.argv[2:])\n"
        "sys.exit({'render': render_command, 'diff': diff_command}[sys.argv[1]](a))\n"
    )
    base = [str(topo), "--gateway", "plant-a", "--tunnel", net.tunnel]
    out = net.ns(net.gw, PY, "-c", code, "diff", *base, check=False)
    assert out.returncode == 1 and "+table inet zonegate" in out.stdout, out.stdout + out.stderr
    out = net.ns(net.gw, PY, "-c", code, "diff", *base, "--json", check=False)
    doc = json.loads(out.stdout)
    assert out.returncode == 1 and doc["schema"] == "zonegate.diff/1" and not doc["in_sync"]
    assert "+table inet zonegate {" in doc["diff"] and doc["gateway"] == "plant-a"
    d = Policyd(net, topo)
    d.wait_for("applied ruleset")
    out = net.ns(net.gw, PY, "-c", code, "diff", *base, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    out = net.ns(net.gw, PY, "-c", code, "diff", *base, "--json", check=False)
    assert out.returncode == 0 and json.loads(out.stdout)["in_sync"] is True
    out = net.ns(net.gw, PY, "-c", code, "render", *base, "--json", check=False)
    assert out.returncode == 0 and '"nftables"' in out.stdout
    bad = subprocess.run(
        [PY, "-c", code, "render", str(topo), "--gateway", "nowhere"],
        capture_output=True,
        text=True,
        env=net_env(),
        check=False,
    )
    assert bad.returncode == 2 and "unknown gateway" in bad.stderr


def net_env() -> dict[str, str]:
    from tests.policyd.nsnet import ENV

    return ENV
