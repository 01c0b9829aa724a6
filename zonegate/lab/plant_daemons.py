"""The real daemons inside the emulated plant: tunneld and policyd on every gateway host.

Each daemon runs in its Mininet host (its own network and mount namespace, so its own
/run/zonegate and /var/run/wireguard) from this source tree (PYTHONPATH points here,
not at whatever is installed), logging to a file in the scenario's work directory.
Everything started here is stopped by `stop()`, which is safe to call at any point
of a failed start. `dump()` collects what a person needs to debug a mismatch.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zonegate.lab.emulation import PlantNet

SOURCE_ROOT = Path(__file__).resolve().parents[1]


def source_env() -> dict[str, str]:
    """Environment for our processes in hosts: this tree's code, UTC, no buffering."""
    return dict(
        os.environ,
        PYTHONPATH=str(SOURCE_ROOT),
        PYTHONUNBUFFERED="1",
        WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD="1",
    )


def in_host(host: Any, argv: list[str], timeout: float = 20.0) -> tuple[int, str]:
    """Run a command in a host to completion; (exit code, stdout+stderr)."""
    proc = host.popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=source_env(),
        cwd=str(SOURCE_ROOT),
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        return 124, out.decode(errors="replace") + f"\n(timed out after {timeout}s)"
    return proc.returncode, out.decode(errors="replace")


@dataclass
class Daemon:
    """One long-running process in a host, with its log file."""

    name: str  # e.g. "tunneld@plant-a"
    host: Any
    argv: list[str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            out.write(f"[scenario] {shlex.join(self.argv)}\n".encode())
            out.flush()
            self.proc = self.host.popen(
                self.argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=source_env(),
                cwd=str(SOURCE_ROOT),
            )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None

    def tail(self, chars: int = 2000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


@dataclass
class GatewayDaemons:
    """tunneld + policyd per gateway of a running `PlantNet`."""

    plant: PlantNet
    topology_dir: Path
    keys: dict[str, Path]  # site -> its identity's key directory
    workdir: Path
    rekey_interval: float = 120.0
    daemons: list[Daemon] = field(default_factory=list)

    @property
    def sites(self) -> list[str]:
        return [h.label for h in self.plant.plan.hosts if h.kind == "gateway"]

    def flow_log(self, site: str) -> Path:
        return self.workdir / "flows" / f"flows-{site}.jsonl"

    def start(self) -> None:
        """policyd first, so the gateway is closed before any tunnel exists (tunneld's
        own handshakes must then pass policyd's input chain), then tunneld."""
        py = sys.executable
        topo = self.plant.topology
        for site in self.sites:
            policyd = [py, "-m", "policyd.cli", "--topology", str(self.topology_dir)]
            policyd += ["--gateway", site, "--tunnel", "zg0", "--flush-on-exit"]
            policyd += ["--api-listen", str(topo.sites[site].gateway.overlay)]
            policyd += ["--flow-log", str(self.flow_log(site))]
            policyd += ["--state-dir", str(self.workdir / "state" / site)]
            self._start("policyd", site, policyd)
        self._wait("policyd's table", lambda site: self._has_table(site), 30.0)
        for site in self.sites:
            tunneld = [py, "-m", "tunneld.cli", "--topology", str(self.topology_dir)]
            tunneld += ["--node", site, "--keys", str(self.keys[site]), "--ifname", "zg0"]
            tunneld += ["--rekey-interval", str(self.rekey_interval)]
            self._start("tunneld", site, tunneld)

    def _start(self, name: str, site: str, argv: list[str]) -> None:
        d = Daemon(f"{name}@{site}", self.plant.host(site), argv, self.logs / f"{name}-{site}.log")
        self.daemons.append(d)
        d.start()

    def _has_table(self, site: str) -> bool:
        argv = ["nft", "list", "table", "inet", "zonegate"]
        return in_host(self.plant.host(site), argv)[0] == 0

    def _wait(self, what: str, ready: Callable[[str], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pending = list(self.sites)
        while pending:
            if self.dead():
                names = ", ".join(d.name for d in self.dead())
                raise RuntimeError(f"daemon(s) exited during start: {names}\n{self._tails()}")
            pending = [s for s in pending if not ready(s)]
            if pending and time.monotonic() > deadline:
                raise RuntimeError(
                    f"no {what} within {timeout:.0f}s on {', '.join(pending)}\n{self._tails()}"
                )
            if pending:
                time.sleep(0.2)

    def status(self, site: str) -> dict[str, Any] | None:
        """`tunneld status --json` in the gateway host; None while it does not answer."""
        cmd = [sys.executable, "-m", "tunneld.cli", "status", "--node", site, "--json"]
        rc, out = in_host(self.plant.host(site), cmd)
        if rc != 0:
            return None
        try:
            data: dict[str, Any] = json.loads(out)
        except json.JSONDecodeError:
            return None
        return data

    def status_text(self, site: str) -> str:
        cmd = [sys.executable, "-m", "tunneld.cli", "status", "--node", site]
        return in_host(self.plant.host(site), cmd)[1]

    def dead(self) -> list[Daemon]:
        return [d for d in self.daemons if not d.alive()]

    def wait_for_psks(
        self, expected: set[str] | None = None, timeout: float = 60.0
    ) -> dict[str, dict[str, Any]]:
        """Until every gateway holds a post-quantum PSK for each of its peers that is in
        `expected` (default: all); returns the last status of every gateway."""
        statuses: dict[str, dict[str, Any]] = {}

        def ready(site: str) -> bool:
            st = self.status(site)
            if st is None:
                return False
            statuses[site] = st
            peers = st["peers"]
            return all(
                p["psk_age"] is not None
                for name, p in peers.items()
                if expected is None or name in expected
            )

        self._wait("post-quantum PSKs", ready, timeout)
        return statuses

    def wait_for_data_path(self, timeout: float = 20.0) -> None:
        """Until every gateway pings every other gateway's overlay address through zg0.

        A PSK in place is not yet a WireGuard session: the first packets trigger the
        WireGuard handshake with that PSK, and a probe must not race it."""
        overlays = {s.name: str(s.gateway.overlay) for s in self.plant.topology.sites.values()}
        deadline = time.monotonic() + timeout
        for site in self.sites:
            for peer, address in sorted(overlays.items()):
                if peer == site:
                    continue
                while True:
                    rc, _ = in_host(self.plant.host(site), ["ping", "-c1", "-W1", address])
                    if rc == 0:
                        break
                    if time.monotonic() > deadline:
                        raise RuntimeError(
                            f"{site} cannot ping {peer}'s overlay {address} through the tunnel"
                            f"\n{self._tails()}"
                        )

    @property
    def logs(self) -> Path:
        return self.workdir / "logs"

    def _tails(self) -> str:
        return "\n".join(f"--- {d.name} ({d.log})\n{d.tail()}" for d in self.daemons)

    def stop(self) -> None:
        for d in reversed(self.daemons):
            d.stop()
        self.daemons.clear()

    def dump(self, into: Path) -> None:
        """Per gateway: nft ruleset, wg show, addresses, routes, tunnel status; daemon logs."""
        into.mkdir(parents=True, exist_ok=True)
        commands = {
            "nft-ruleset": ["nft", "list", "ruleset"],
            "wg-show": ["wg", "show", "all"],
            "ip-addr": ["ip", "addr"],
            "ip-route": ["ip", "route"],
            "tunneld-status": [sys.executable, "-m", "tunneld.cli", "status", "--json"],
        }
        for site in self.sites:
            host = self.plant.host(site)
            for what, argv in commands.items():
                if what == "tunneld-status":
                    argv = [*argv, "--node", site]
                _, out = in_host(host, argv)
                (into / f"{site}-{what}.txt").write_text(out)
        for log in sorted(self.logs.glob("*.log")):
            (into / log.name).write_text(log.read_text(errors="replace"))
