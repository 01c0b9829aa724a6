"""Three network namespaces: identity -- gateway -- zone, named zpXXXX* per run.

The identity namespace's link into the gateway stands in for a WireGuard tunnel: on
the gateway it is named `<tag>t` and passed to the compiler as the tunnel interface.
nft only ever runs inside these namespaces.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tests.netns import Namespaces, require

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
PY = sys.executable
ENV = {**os.environ, "PYTHONPATH": f"{ROOT}:{HERE}"}

IDENTITIES = {
    "engineer-1": "100.64.1.10",
    "lead-1": "100.64.1.20",
    "night-1": "100.64.1.30",
    "vendor-1": "100.64.2.10",
    "guest": "100.64.3.1",
}
PLC1, PLC2 = "10.10.1.5", "10.10.1.6"


def require_tools() -> None:
    require({"ip": "iproute2", "nft": "nftables", "sysctl": "procps"})
    try:
        import nftables  # noqa: F401
    except ImportError as e:
        raise AssertionError("python3-nftables missing: apt-get install python3-nftables") from e


def topology_yaml(now: datetime | None = None) -> str:
    """One site; the night-only conduit's schedule is built to be closed right now."""
    now = now or datetime.now(UTC)
    start, end = now + timedelta(hours=2), now + timedelta(hours=3)
    return f"""version: 1
sites:
  plant-a:
    gateway: {{underlay: 192.0.2.10, port: 51820, overlay: 100.64.0.1}}
    zones:
      control: {{cidr: 10.10.1.0/24, security_level: 2}}
    assets:
      plc-1: {{zone: control, address: {PLC1}}}
      plc-2: {{zone: control, address: {PLC2}}}
roles:
  plc-engineer: {{}}
  shift-lead: {{}}
  night-shift: {{}}
  vendor: {{}}
identities:
  engineer-1: {{kind: user, roles: [plc-engineer], overlay: 100.64.1.10}}
  lead-1: {{kind: user, roles: [shift-lead], overlay: 100.64.1.20}}
  night-1: {{kind: user, roles: [night-shift], overlay: 100.64.1.30}}
  vendor-1: {{kind: user, roles: [vendor], overlay: 100.64.2.10}}
  guest: {{kind: user, overlay: 100.64.3.1}}
conduits:
  engineers-read:
    from: {{roles: [plc-engineer]}}
    to: {{asset: plant-a/plc-1}}
    allow: [{{modbus: read}}, ssh]
  lead-writes:
    from: {{roles: [shift-lead]}}
    to: {{asset: plant-a/plc-2}}
    allow: [{{modbus: [read, write]}}]
  night-only:
    from: {{roles: [night-shift]}}
    to: {{asset: plant-a/plc-1}}
    allow: [ssh]
    schedule: {{days: mon-sun, hours: "{start:%H:%M}-{end:%H:%M}", tz: UTC}}
  vendor-maintenance:
    from: {{roles: [vendor]}}
    to: {{asset: plant-a/plc-2}}
    allow: [{{modbus: [read, write]}}]
    approval: {{by: [shift-lead], max: 4h}}
"""


class Session:
    """A running witness_client: `ask("tcp write")` -> whether a reply came."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc

    def ask(self, command: str) -> bool:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], 10)
        assert ready, f"client did not answer {command!r}"
        line = self.proc.stdout.readline()
        assert line, f"client died on {command!r}"
        return bool(json.loads(line)["reply"])


class Net:
    """identity -- gateway -- zone (and `add_lan` hosts) on `tests.netns.Namespaces`."""

    def __init__(self, prefix: str = "zp") -> None:
        self.nets = Namespaces(prefix, env=ENV)
        self.tag = self.nets.tag
        self.ident, self.gw, self.zone = self.tag + "i", self.tag + "g", self.tag + "z"
        self.tunnel = self.tag + "t"
        self.procs = self.nets.procs
        self.made = self.nets.made

    def sh(
        self, *argv: str, check: bool = True, timeout: float = 20
    ) -> subprocess.CompletedProcess[str]:
        return self.nets.run(None, *argv, check=check, timeout=timeout)

    def ns(
        self, ns: str, *argv: str, check: bool = True, timeout: float = 20
    ) -> subprocess.CompletedProcess[str]:
        return self.nets.run(ns, *argv, check=check, timeout=timeout)

    def up(self) -> None:
        for ns in (self.ident, self.gw, self.zone):
            self.nets.add(ns)
        t = self.tag
        self.nets.veth(
            (self.gw, t + "t"),
            (self.ident, t + "a"),
            ["100.64.0.1/16"],
            [f"{addr}/16" for addr in IDENTITIES.values()],
        )
        self.nets.veth(
            (self.gw, t + "l"), (self.zone, t + "b"), ["10.10.1.1/24"], [f"{PLC1}/24", f"{PLC2}/24"]
        )
        self.ns(self.ident, "ip", "route", "add", "10.10.1.0/24", "via", "100.64.0.1")
        self.ns(self.zone, "ip", "route", "add", "default", "via", "10.10.1.1")
        self.ns(self.gw, "sysctl", "-qw", "net.ipv4.ip_forward=1")

    def spawn(self, ns: str, *argv: str) -> subprocess.Popen[str]:
        return self.nets.spawn(ns, argv)

    def start_servers(self) -> None:
        argv = ["--modbus", "502", "--tcp", "22", "--tcp", "5900"]
        self.wait_ready(
            self.spawn(self.zone, PY, "-m", "zonegate.lab.assetsim", *argv), "zone servers"
        )

    def wait_ready(self, p: subprocess.Popen[str], what: str) -> None:
        assert p.stdout is not None
        seen = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            ready, _, _ = select.select([p.stdout], [], [], 0.5)
            if not ready:
                continue
            line = p.stdout.readline()
            seen.append(line)
            if line.strip() == "ready" or not line:
                break
        assert seen and seen[-1].strip() == "ready", f"{what} did not start: {seen}"

    def start_witness(self, journal: Path, ns: str | None = None) -> None:
        """The witness Modbus device (TCP and UDP 502) in the zone: it journals every
        request it executes, the only proof that a write did not land."""
        argv = [PY, "-m", "zonegate.lab.modbus_device", "--journal", str(journal), "--udp", "502"]
        self.wait_ready(self.spawn(ns or self.zone, *argv), "witness device")

    def session(self, src: str, dst: str, ns: str | None = None) -> Session:
        """A raw Modbus client from `src` (TCP connection kept open; UDP per datagram)."""
        argv = [PY, str(HERE / "witness_client.py"), src, dst]
        p = self.nets.spawn(ns or self.ident, argv, stdin=subprocess.PIPE)
        return Session(p)

    def add_lan(self, suffix: str, gw_cidr: str, host_cidr: str) -> str:
        """Another LAN behind the gateway (interface `<tag><suffix>`) with one host
        namespace; returns the host namespace's name."""
        ns = self.nets.add(self.tag + suffix + "h")
        self.nets.veth(
            (self.gw, self.tag + suffix), (ns, self.tag + suffix + "p"), [gw_cidr], [host_cidr]
        )
        self.ns(ns, "ip", "route", "add", "default", "via", gw_cidr.split("/")[0])
        return ns

    def probe(self, who: str, dst: str, service: str) -> bool:
        """Real traffic from an identity's address (zonegate.lab.probe); True if it passed."""
        argv = [PY, "-m", "zonegate.lab.probe", dst, service, "--source", IDENTITIES[who]]
        out = self.ns(self.ident, *argv, "--timeout", "1.5", check=False)
        return out.returncode == 0

    def modbus(self, who: str, dst: str, op: str) -> bool:
        return self.probe(who, dst, f"modbus/{op}")

    def tcp(self, who: str, dst: str, port: int) -> bool:
        return self.probe(who, dst, f"tcp/{port}")

    def gw_python(self, code: str, check: bool = True) -> Any:
        """Run `code` in the gateway namespace; it must print one JSON value last."""
        out = self.ns(self.gw, PY, "-c", code, check=False, timeout=60)
        if check and out.returncode != 0:
            raise AssertionError(f"gateway code failed:\n{out.stdout}\n{out.stderr}")
        return json.loads(out.stdout.strip().splitlines()[-1])

    def table_text(self) -> str:
        return self.ns(self.gw, "nft", "list", "table", "inet", "zonegate", check=False).stdout

    def down(self) -> None:
        self.nets.close()
