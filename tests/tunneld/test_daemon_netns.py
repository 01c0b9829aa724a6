"""Two tunneld daemons in two namespaces with real wireguard-go: the whole path."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.tunneld.nsutil import Pair, in_ns, need, ns_pair, ping
from tunneld import messages as m
from tunneld.keys import keygen

pytestmark = pytest.mark.root
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

    def start(self, topology: Path, keys: Path, kem_backend: str = "cryptography") -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        argv = ["ip", "netns", "exec", self.ns, sys.executable, "-m", "tunneld.cli"]
        argv += ["--topology", str(topology), "--node", self.name, "--keys", str(keys)]
        argv += ["--kem-backend", kem_backend]
        argv += ["--ifname", self.ifname, "--status-socket", str(self.sock)]
        argv += ["--rekey-interval", str(INTERVAL)]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(argv, env=env, stdout=log, stderr=log, cwd=ROOT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None

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

    def log_tail(self) -> str:
        return self.log.read_text()[-3000:] if self.log.exists() else "(no log)"


def wait_for(cond: Callable[[], bool], timeout: float, what: str, *nodes: Node) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        if any(n.proc is not None and n.proc.poll() is not None for n in nodes):
            break
        time.sleep(0.2)
    logs = "\n".join(f"--- {n.name}\n{n.log_tail()}" for n in nodes)
    pytest.fail(f"timed out waiting for {what}\n{logs}")


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


@pytest.fixture
def sites(tmp_path: Path) -> Iterator[Sites]:
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


def test_tunnel_up_psk_rotates_and_traffic_flows(sites: Sites) -> None:
    both_up(sites)
    assert ping(sites.pair.a, "100.64.0.2"), sites.a.log_tail()
    first = sites.a.psk_digest()
    assert first == sites.b.psk_digest()
    n = rotations(sites.a)
    wait_for(lambda: rotations(sites.a) >= n + 2, 6 * INTERVAL, "two rotations", sites.a)
    wait_for(lambda: sites.a.psk_digest() == sites.b.psk_digest(), 5, "same PSK", sites.a)
    assert sites.a.psk_digest() != first
    assert ping(sites.pair.a, "100.64.0.2")
    peer = sites.a.peer()
    assert peer["role"] == "initiator" and peer["psk_age"] is not None
    text = subprocess.run(
        [sys.executable, "-m", "tunneld.cli", "status", "--socket", str(sites.a.sock)],
        capture_output=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        timeout=20,
        check=True,
    ).stdout.decode()
    assert "site-b" in text and "initiator" in text


@pytest.mark.sr("SR 1.1")
def test_wrong_identity_key_gets_no_psk_and_no_traffic(sites: Sites) -> None:
    impostor = sites.base / "keys" / "impostor"
    keygen(impostor)
    # a pins site-b's real keys; "site-b" runs with other keys (its own topology pins them).
    sites.a.start(sites.topology("a"), sites.keys["site-a"])
    sites.b.start(sites.topology("b", pin_b=impostor), impostor)
    wait_for(
        lambda: int(sites.b.peer()["failures"]) >= 1 if sites.b.status() else False,
        20,
        "rejections at b",
        sites.a,
        sites.b,
    )
    assert rotations(sites.a) == 0 and rotations(sites.b) == 0
    assert sites.a.psk_digest() != sites.b.psk_digest()
    assert not ping(sites.pair.a, "100.64.0.2", timeout=3.0)
    st = sites.b.status()
    assert st is not None
    reasons = str(st["peers"]) + str(st["last_unattributed_failure"])
    assert "not addressed to this node" in reasons or "bad MAC1" in reasons, reasons


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


@pytest.mark.sr("SR 1.1", "SR 1.13")
def test_tampered_handshake_packets_are_rejected(sites: Sites) -> None:
    both_up(sites)
    before = rotations(sites.b)
    hello = bytearray(m.message_size(m.INIT_HELLO, *[m.PARAMS_BY_WIRE_ID[1]] * 2))
    hello[0:4] = bytes([m.INIT_HELLO, 1, 1, 1])
    garbage = [bytes(hello), b"\x07" * 60, bytes(hello[:100])]
    send_raw(sites.pair.a, sites.pair.ip_b, garbage)

    def rejected() -> bool:
        st = sites.b.status()
        return st is not None and int(str(st["unattributed_failures"])) >= 3

    wait_for(rejected, 10, "three rejections", sites.b)
    st = sites.b.status()
    assert st is not None
    assert "InitHello" in str(st["last_unattributed_failure"]) or "truncated" in str(
        st["last_unattributed_failure"]
    )
    assert ping(sites.pair.a, "100.64.0.2")  # the real tunnel is unaffected
    assert rotations(sites.b) >= before


def test_restarting_one_side_recovers(sites: Sites) -> None:
    both_up(sites)
    sites.b.stop()
    assert not ping(sites.pair.a, "100.64.0.2", timeout=1.5)
    sites.b.start(sites.topology("shared"), sites.keys["site-b"])
    wait_for(lambda: rotations(sites.b) >= 1, 15, "PSK after restart", sites.a, sites.b)
    assert ping(sites.pair.a, "100.64.0.2"), sites.b.log_tail()


def test_three_component_tunnel_across_backends(sites: Sites) -> None:
    """X25519 + ML-KEM + HQC-256 pinned for the pair; site-a computes with pqcrypto,
    site-b with cryptography (ML-KEM) + pqcrypto (HQC). RespHello is 16.7 kB: the
    transport carries it; the tunnel comes up, rotates and carries traffic."""
    topo = sites.topology("hqc", code_kem_b="hqc-256")
    sites.a.start(topo, sites.keys["site-a"], kem_backend="pqcrypto")
    sites.b.start(topo, sites.keys["site-b"], kem_backend="cryptography")
    wait_for(lambda: rotations(sites.a) >= 2, 8 * INTERVAL, "two PSKs", sites.a, sites.b)
    assert sites.a.peer()["kem"] == sites.b.peer()["kem"] == "ml-kem-768+hqc-256"
    wait_for(lambda: sites.a.psk_digest() == sites.b.psk_digest(), 5, "same PSK", sites.a)
    assert ping(sites.pair.a, "100.64.0.2"), sites.a.log_tail()


def test_peer_without_the_third_component_gets_no_tunnel(sites: Sites) -> None:
    """site-b pins HQC; site-a's (stale) topology does not: no PSK, no traffic, and b
    says why. Nothing falls back to two components."""
    sites.a.start(sites.topology("a"), sites.keys["site-a"])
    sites.b.start(sites.topology("b", code_kem_b="hqc-128"), sites.keys["site-b"])
    wait_for(
        lambda: int(sites.b.peer()["failures"]) >= 2 if sites.b.status() else False,
        20,
        "rejections at b",
        sites.a,
        sites.b,
    )
    assert rotations(sites.a) == 0 and rotations(sites.b) == 0
    assert "ephemeral KEM is not ml-kem-768+hqc-128" in str(sites.b.peer()), sites.b.peer()
    assert sites.a.psk_digest() != sites.b.psk_digest()
    assert not ping(sites.pair.a, "100.64.0.2", timeout=3.0)
