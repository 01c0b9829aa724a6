"""Remote users in the emulated plant: a tunnel profile each, `tunneld join` on its host.

Done the way a user would: the network team issues the profile from the topology
(`zonegate profile issue`, which checks the pinned public keys), and the user's host
runs `tunneld join PROFILE --keys DIR` with its own keys. A user for whom no profile
can be issued (no conduit admits it, not valid now) gets no tunnel; its host then
sends the test traffic straight to the gateways over the WAN, which must drop it.
Ready means: every joined user pings the overlay address of every gateway in its
profile through its tunnel.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from zonegate.lab.emulation import PlantNet
from zonegate.lab.plant_daemons import Daemon, in_host, source_env


@dataclass
class UserTunnels:
    plant: PlantNet
    topology_dir: Path
    keys: dict[str, Path]  # identity -> key directory
    workdir: Path
    rekey_interval: float = 120.0
    daemons: list[Daemon] = field(default_factory=list)
    without: dict[str, str] = field(default_factory=dict)  # identity -> why it cannot send
    refused: dict[str, str] = field(default_factory=dict)  # identity -> why no profile
    gateways: dict[str, list[str]] = field(default_factory=dict)  # identity -> overlays

    @property
    def users(self) -> list[str]:
        return [h.label for h in self.plant.plan.hosts if h.kind == "user"]

    @property
    def signer_dir(self) -> Path:
        """The lab's profile-signing key (the network team's, in a real plant)."""
        return self.workdir / "signer"

    def signer_fingerprint(self) -> str:
        """Made on first use; users are given its fingerprint (here: on the command line)."""
        from tunneld.signing import load_signer, signer_keygen

        if not self.signer_dir.exists():
            signer_keygen(self.signer_dir)
        return load_signer(self.signer_dir).public.fingerprint

    def issue(self, identity: str) -> Path | None:
        self.signer_fingerprint()
        out = self.workdir / "profiles" / f"{identity}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "zonegate.cli", "profile", "issue"]
        argv += [str(self.topology_dir), "--identity", identity, "--out", str(out)]
        argv += ["--pubkeys", str(self.keys[identity] / "identity.pub")]
        argv += ["--signing-key", str(self.signer_dir)]
        res = subprocess.run(argv, capture_output=True, text=True, env=source_env(), check=False)
        if res.returncode != 0:
            why = (res.stderr.strip().splitlines() or ["profile issue failed"])[-1]
            self.refused[identity] = why.removeprefix("zonegate profile issue: ")
            self.try_without_tunnel(identity)
            return None
        doc = json.loads(out.read_text())
        self.gateways[identity] = [str(g["overlay"]) for g in doc["gateways"]]
        return out

    def try_without_tunnel(self, identity: str) -> None:
        """No profile, so no tunnel: the user's host then tries the plant directly, with a
        route to every zone via its site's gateway on the WAN. The gateway must drop it
        (identities are only believed when they arrive through their tunnel)."""
        host = self.plant.host(identity)
        dev = f"{self.plant.plan.host(identity).node}-eth0"
        for site in self.plant.topology.sites.values():
            for zone in site.zones.values():
                host.cmd(f"ip route add {zone.cidr} via {site.gateway.underlay} dev {dev} onlink")

    def notes(self) -> dict[str, str]:
        return {name: "no tunnel: sent over the WAN" for name in self.refused}

    def start(self) -> None:
        for identity in self.users:
            profile = self.issue(identity)
            if profile is None:
                continue
            argv = [sys.executable, "-m", "tunneld.cli", "join", str(profile)]
            argv += ["--keys", str(self.keys[identity]), "--ifname", "zg0"]
            argv += ["--rekey-interval", str(self.rekey_interval)]
            argv += ["--signer", self.signer_fingerprint()]
            log = self.workdir / "logs" / f"join-{identity}.log"
            d = Daemon(f"join@{identity}", self.plant.host(identity), argv, log)
            self.daemons.append(d)
            d.start()

    def wait(self, timeout: float = 60.0) -> None:
        """Until each joined user pings all its gateways' overlay addresses."""
        deadline = time.monotonic() + timeout
        pending = [(u, gw) for u in sorted(self.gateways) for gw in self.gateways[u]]
        while pending:
            dead = [d.name for d in self.daemons if not d.alive()]
            if dead:
                raise RuntimeError(f"tunneld join exited: {', '.join(dead)}\n{self._tails()}")
            pending = [
                (u, gw)
                for u, gw in pending
                if in_host(self.plant.host(u), ["ping", "-c1", "-W1", gw])[0] != 0
            ]
            if pending and time.monotonic() > deadline:
                left = ", ".join(f"{u}->{gw}" for u, gw in pending)
                raise RuntimeError(f"user tunnels not up within {timeout:.0f}s: {left}")

    def _tails(self) -> str:
        return "\n".join(f"--- {d.name} ({d.log})\n{d.tail()}" for d in self.daemons)

    def stop(self) -> None:
        for d in reversed(self.daemons):
            d.stop()
        self.daemons.clear()
