"""The shipped systemd units verify, and each unit's ExecStart, run as written, comes up.

PID 1 is not systemd on these machines, so the test does what systemd would for the
parts that matter: reads `EnvironmentFile`, expands `${VAR}` in `ExecStart`, and runs
the line in a fresh network namespace and a private mount namespace in which `/opt`,
`/etc`, `/var` and `/run/zonegate` are overlays or tmpfs. The paths in the unit
(`/opt/zonegate/bin`, `/etc/zonegate`, `/var/lib/zonegate`, `/var/log/zonegate`) are
then real paths, the host's are untouched, and two runs cannot collide.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import require
from tests.netns import Namespaces, stop
from tunneld.keyring import materialize_keys

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "deploy" / "systemd"
VENV = Path(sys.prefix)

pytestmark = pytest.mark.root


def unit_values(path: Path, key: str) -> list[str]:
    """Every value of `key` in a unit file (continuation lines joined)."""
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    return [
        line.split("=", 1)[1].strip() for line in text.splitlines() if line.startswith(key + "=")
    ]


def env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def expand(command: str, env: dict[str, str]) -> list[str]:
    """systemd's `${VAR}` expansion (one word per variable, as in ExecStart=)."""
    words = shlex.split(command)
    return [re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], w) for w in words]


@pytest.mark.parametrize("unit", sorted(p.name for p in UNITS.glob("*.service")))
def test_unit_passes_systemd_analyze_verify(unit: str, tmp_path: Path) -> None:
    require("systemd-analyze", "unshare")
    # verify checks that ExecStart's binary exists: give it /opt/zonegate in a mount ns.
    script = f"""
        set -e
        mount --make-rprivate /
        mount -t tmpfs tmpfs /opt && mkdir /opt/zonegate && mount --bind {VENV} /opt/zonegate
        exec systemd-analyze verify {UNITS / unit}
    """
    res = subprocess.run(
        ["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, check=False
    )
    assert res.returncode == 0 and not res.stderr.strip(), res.stderr


class Gateway:
    """One unit's ExecStart running in its own network and mount namespaces."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.nets = Namespaces("zgu")
        self.ns = self.nets.tag
        self.proc: subprocess.Popen[str] | None = None
        self.log = base / "daemon.log"

    def etc(self) -> Path:
        """/etc/zonegate as the gateway would have it: topology, keys, env file."""
        etc = self.base / "etc-zonegate"
        sites = ["plant-a", "plant-b"]
        made = materialize_keys(ROOT / "examples" / "plant", self.base / "keys", sites)
        shutil.copytree(made.topology, etc / "topology")
        # Pinned public keys travel with the topology; this gateway's private keys are
        # /etc/zonegate/keys (docs/deploy.md).
        (etc / "topology" / "pubkeys").mkdir()
        for name in sites:
            shutil.copy(made.pub(name), etc / "topology" / "pubkeys" / f"{name}.pub")
        for f in (etc / "topology").glob("*.yaml"):
            text = f.read_text()
            for name in sites:
                text = text.replace(f"../keys/{name}/identity.pub", f"pubkeys/{name}.pub")
            f.write_text(text)
        shutil.copytree(made.keys["plant-a"], etc / "keys")
        shutil.copy(ROOT / "deploy" / "zonegate.env", etc / "zonegate.env")
        return etc

    def start(self, unit: str) -> None:
        path = UNITS / unit
        etc = self.etc()
        [env_path] = unit_values(path, "EnvironmentFile")
        env = env_file(etc / Path(env_path).name)
        [exec_start] = unit_values(path, "ExecStart")
        argv = expand(exec_start, env)
        for d in ("etc", "var"):
            (self.base / f"{d}-up").mkdir()
            (self.base / f"{d}-work").mkdir()
        for d in ("/run/zonegate", "/run/wireguard"):
            Path(d).mkdir(exist_ok=True)  # mount points; the host's stay empty
        b = self.base
        script = f"""
            set -e
            mount --make-rprivate /
            mount -t tmpfs tmpfs /opt && mkdir /opt/zonegate && mount --bind {VENV} /opt/zonegate
            mount -t overlay overlay -o lowerdir=/etc,upperdir={b}/etc-up,workdir={b}/etc-work /etc
            mount -t overlay overlay -o lowerdir=/var,upperdir={b}/var-up,workdir={b}/var-work /var
            mount -t tmpfs tmpfs /run/zonegate && mount -t tmpfs tmpfs /run/wireguard
            cp -r {etc} /etc/zonegate && chmod 0700 /etc/zonegate/keys
            mkdir -p /var/lib/zonegate /var/log/zonegate
            ip link set lo up
            exec {shlex.join(argv)}
        """
        self.nets.add(self.ns)
        with self.log.open("wb") as log:
            argv = ["unshare", "-m", "sh", "-c", script]
            self.proc = self.nets.spawn(self.ns, argv, stdout=log, stderr=log)

    def inside(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """Run a command in the daemon's own namespaces (its /run, its network)."""
        assert self.proc is not None
        pid = str(self.proc.pid)
        return subprocess.run(
            ["nsenter", "-t", pid, "-m", "-n", *argv], capture_output=True, text=True, check=False
        )

    def wait(self, cond: Callable[[], bool], what: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                pytest.fail(f"the daemon exited ({self.proc.returncode}):\n{self.log.read_text()}")
            if cond():
                return
            time.sleep(0.2)
        pytest.fail(f"{what} within {timeout}s; daemon log:\n{self.log.read_text()}")

    def close(self) -> None:
        if self.proc is not None:
            stop(self.proc, timeout=15)
        self.nets.close()


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    require("nft", "wireguard-go", "wg", "unshare", "nsenter")
    gw = Gateway(tmp_path)
    try:
        yield gw
    finally:
        gw.close()


def test_policyd_unit_execstart_comes_up(gateway: Gateway) -> None:
    gateway.start("zonegate-policyd.service")
    gateway.wait(
        lambda: gateway.inside("nft", "list", "table", "inet", "zonegate").returncode == 0,
        "policyd's table in the kernel",
    )
    gateway.wait(
        lambda: gateway.inside("test", "-S", "/run/zonegate/policyd-plant-a.sock").returncode == 0,
        "policyd's API socket",
    )
    logs = gateway.inside("ls", "/var/log/zonegate")
    assert "flows.jsonl" in logs.stdout, logs


def test_tunneld_unit_execstart_comes_up(gateway: Gateway) -> None:
    gateway.start("zonegate-tunneld.service")
    gateway.wait(
        lambda: gateway.inside("ip", "link", "show", "zg0").returncode == 0,
        "tunneld's WireGuard interface zg0",
    )
    status = [str(VENV / "bin" / "tunneld"), "status", "--node", "plant-a", "--json"]
    gateway.wait(lambda: gateway.inside(*status).returncode == 0, "tunneld status answers")
