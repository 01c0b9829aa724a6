"""Two tunneld daemons in two namespaces with real wireguard-go (fixture `sites`)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from tests import netns
from tests.netns import stop
from tests.tunneld.nsutil import Pair, in_ns, need, ns_pair
from tunneld.keys import keygen

ROOT = Path(__file__).resolve().parents[2]
INTERVAL = 2.0  # seconds between rotations in these tests

TOPOLOGY = """\
version: 1
sites:
  site-a:
    gateway: {{underlay: {ip_a}, port: 51820, overlay: 100.64.0.1}}
    zones:
      lan: {{cidr: 10.10.1.0/24, security_level: 1}}
  site-b:
    gateway: {{underlay: {ip_b}, port: 51820, overlay: 100.64.0.2}}
    zones:
      lan: {{cidr: 10.20.1.0/24, security_level: 1}}
identities:
  site-a: {{kind: site, keys: {keys_a}}}
  site-b: {{kind: site, keys: {keys_b}}}
"""


class Node:
    def __init__(self, pair: Pair, ns: str, name: str, base: Path) -> None:
        self.pair, self.ns, self.name, self.base = pair, ns, name, base
        self.ifname = pair.ifname("w" + name[-1])
        self.sock = base / f"{name}.sock"
        self.log = base / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(
        self,
        topology: Path,
        keys: Path,
        interval: float = INTERVAL,
        kem_backend: str = "cryptography",
    ) -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        argv = ["ip", "netns", "exec", self.ns, sys.executable, "-m", "tunneld.cli"]
        argv += ["--topology", str(topology), "--node", self.name, "--keys", str(keys)]
        argv += ["--kem-backend", kem_backend]
        argv += ["--ifname", self.ifname, "--status-socket", str(self.sock)]
        argv += ["--rekey-interval", str(interval)]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(argv, env=env, stdout=log, stderr=log, cwd=ROOT)

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
        self.proc = None

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait_log(self, text: str, timeout: float) -> None:
        wait_for(lambda: text in self.log_tail(20000), timeout, repr(text), self)

    def status(self) -> dict[str, object] | None:
        res = subprocess.run(
            [sys.executable, "-m", "tunneld.cli", "status", "--socket", str(self.sock), "--json"],
            capture_output=True,
            timeout=20,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
            check=False,
        )
        return json.loads(res.stdout) if res.returncode == 0 else None

    def peer(self) -> dict[str, object]:
        st = self.status()
        assert st is not None, f"no status from {self.name}; log:\n{self.log_tail()}"
        peers = st["peers"]
        assert isinstance(peers, dict)
        (p,) = peers.values()
        assert isinstance(p, dict)
        return p

    def psk_digest(self) -> str:
        """Hash of the PSK WireGuard holds (tests compare digests, never print keys)."""
        dump = in_ns(self.ns, "wg", "show", self.ifname, "dump").splitlines()
        psk = dump[1].split("\t")[1]
        assert psk != "(none)"
        return hashlib.sha256(psk.encode()).hexdigest()[:12]

    def log_tail(self, n: int = 3000) -> str:
        return self.log.read_text()[-n:] if self.log.exists() else "(no log)"


def wait_for(cond: Callable[[], bool], timeout: float, what: str, *nodes: Node) -> None:
    netns.wait_for(
        cond,
        timeout,
        what,
        [n.proc for n in nodes if n.proc is not None],
        lambda: "\n".join(f"--- {n.name}\n{n.log_tail()}" for n in nodes),
        poll=0.2,
    )


def rotations(node: Node) -> int:
    st = node.status()
    if st is None:
        return -1
    peers = st["peers"]
    assert isinstance(peers, dict)
    return sum(int(p["rotations"]) for p in peers.values())


class Sites:
    def __init__(self, pair: Pair, base: Path) -> None:
        self.pair, self.base = pair, base
        self.keys = {n: base / "keys" / n for n in ("site-a", "site-b")}
        for d in self.keys.values():
            keygen(d)
        self.a = Node(pair, pair.a, "site-a", base)
        self.b = Node(pair, pair.b, "site-b", base)

    def topology(self, name: str, pin_b: Path | None = None, code_kem_b: str = "") -> Path:
        """`code_kem_b`: site-b asks for that code-based third component on its tunnels."""
        d = self.base / f"topo-{name}"
        d.mkdir(exist_ok=True)
        text = TOPOLOGY.format(
            ip_a=self.pair.ip_a,
            ip_b=self.pair.ip_b,
            keys_a=self.keys["site-a"] / "identity.pub",
            keys_b=(pin_b or self.keys["site-b"]) / "identity.pub",
        )
        if code_kem_b:
            anchor = "overlay: 100.64.0.2}\n"
            text = text.replace(anchor, anchor + f"    code_kem: {code_kem_b}\n")
        (d / "plant.yaml").write_text(text)
        return d


def sites_fixture(tmp_path: Path) -> Iterator[Sites]:
    need("wireguard-go", "wireguard-go")
    need("wg", "wireguard-tools")
    with ns_pair() as pair:
        s = Sites(pair, tmp_path)
        try:
            yield s
        finally:
            s.a.stop()
            s.b.stop()


def both_up(s: Sites) -> None:
    topo = s.topology("shared")
    s.a.start(topo, s.keys["site-a"])
    s.b.start(topo, s.keys["site-b"])
    wait_for(lambda: rotations(s.a) >= 1 and rotations(s.b) >= 1, 20, "first PSK", s.a, s.b)


def send_raw(ns: str, host: str, frames: list[bytes]) -> None:
    code = (
        "import socket,sys,struct\n"
        f"s=socket.create_connection(('{host}',51820),timeout=3)\n"
        "d=sys.stdin.buffer.read()\n"
        "s.sendall(d)\n"
        "s.settimeout(1)\n"
        "try:\n s.recv(100)\nexcept Exception:\n pass\n"
    )
    data = b"".join(len(f).to_bytes(2, "big") + f for f in frames)
    subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-c", code], input=data, timeout=20, check=True
    )
