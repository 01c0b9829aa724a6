"""`scripts/bench handshake`: what the hybrid handshake costs, measured, never asserted.

1. compute: two in-memory endpoints, CPU time per side, handshakes/s per core, bytes;
   also for every KEM suite x backend combination (ML-KEM alone or with an HQC third
   component; cryptography or pqcrypto), with the peers one core keeps rotating every
   120 s.
2. rotation: TCP over loopback + PSK install into two real wireguard-go interfaces
   (UAPI), p50/p99 of one full rotation (needs root and wireguard-go).
3. first packet: two daemons in two namespaces; time from start to the first ping
   answered through the tunnel (needs root).
Results go to bench/results/handshake.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tunneld.handshake import Endpoint
from tunneld.handshake_types import LocalIdentity, PeerConfig, PskReady, Send
from tunneld.hybrid import HybridPrivateKey, HybridPublicKey
from tunneld.kem import PARAMS, get_backend
from tunneld.keys import keygen, wg_public_key
from tunneld.wg import InterfaceSpec, PeerSpec, WireGuard

ROOT = Path(__file__).resolve().parents[1]


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def time_ns(self) -> int:
        return time.time_ns()


def _pair(kem: str, backend: str = "cryptography") -> tuple[Endpoint, Endpoint, _Clock]:
    be = get_backend(backend)
    ident_kem = PARAMS[kem].components[0]  # identity keys are ML-KEM; HQC is ephemeral
    a = HybridPrivateKey(be, ident_kem, secrets.token_bytes(32), secrets.token_bytes(64))
    b = HybridPrivateKey(be, ident_kem, secrets.token_bytes(32), secrets.token_bytes(64))
    wa, wb = secrets.token_bytes(32), secrets.token_bytes(32)
    clock = _Clock()

    def pub(k: HybridPrivateKey) -> HybridPublicKey:
        return HybridPublicKey(be, ident_kem, k.x_public, k.kem_public)

    ea = Endpoint(
        LocalIdentity("a", a, wa),
        [PeerConfig("b", pub(b), wb, "initiator", kem)],
        backend=be,
        clock=clock,
        rng=secrets.token_bytes,
    )
    eb = Endpoint(
        LocalIdentity("b", b, wb),
        [PeerConfig("a", pub(a), wa, "responder", kem)],
        backend=be,
        clock=clock,
        rng=secrets.token_bytes,
    )
    return ea, eb, clock


def _one(ea: Endpoint, eb: Endpoint, clock: _Clock) -> tuple[float, float, int, bytes]:
    """One handshake; returns (cpu initiator, cpu responder, wire bytes, psk)."""
    clock.now = max(clock.now + 200.0, ea.next_deadline())
    pt = time.process_time
    t0 = pt()
    (m1,) = [e.data for e in ea.poll() if isinstance(e, Send)]
    t1 = pt()
    (m2,) = [e.data for e in eb.receive(m1) if isinstance(e, Send)]
    t2 = pt()
    (m3,) = [e.data for e in ea.receive(m2) if isinstance(e, Send)]
    t3 = pt()
    out = eb.receive(m3)
    t4 = pt()
    (m4,) = [e.data for e in out if isinstance(e, Send)]
    res = ea.receive(m4)
    t5 = pt()
    (psk,) = [e.psk for e in res if isinstance(e, PskReady)]
    wire = sum(len(m) + 2 for m in (m1, m2, m3, m4))  # + 2-byte TCP framing each
    return (t1 - t0) + (t3 - t2) + (t5 - t4), (t2 - t1) + (t4 - t3), wire, psk


def bench_compute(n: int, kem: str, backend: str = "cryptography") -> dict[str, Any]:
    ea, eb, clock = _pair(kem, backend)
    for _ in range(min(20, n)):
        _one(ea, eb, clock)
    ci, cr, wire = [], [], 0
    for _ in range(n):
        i, r, wire, _psk = _one(ea, eb, clock)
        ci.append(i)
        cr.append(r)
    per = statistics.mean(ci) + statistics.mean(cr)
    return {
        "kem": kem,
        "handshakes": n,
        "cpu_initiator_us": round(statistics.mean(ci) * 1e6, 1),
        "cpu_responder_us": round(statistics.mean(cr) * 1e6, 1),
        "handshakes_per_second_per_core": round(1.0 / per),
        "bytes_on_wire": wire,
        "bytes_note": "4 messages + 2-byte length framing; TCP/IP headers not counted",
    }


# Every suite x backend a pair can pin (`kem`/`code_kem` in the topology, --kem-backend).
# HQC always comes from pqcrypto; "cryptography" there means ML-KEM from cryptography.
COMBINATIONS = [
    ("ml-kem-768", "cryptography"),
    ("ml-kem-768", "pqcrypto"),
    ("ml-kem-1024", "cryptography"),
    ("ml-kem-1024", "pqcrypto"),
    ("ml-kem-768+hqc-128", "pqcrypto"),
    ("ml-kem-768+hqc-192", "pqcrypto"),
    ("ml-kem-768+hqc-256", "pqcrypto"),
    ("ml-kem-768+hqc-256", "cryptography"),
    ("ml-kem-1024+hqc-256", "pqcrypto"),
]
ROTATION_S = 120.0


def bench_combinations(n_two: int, n_three: int) -> list[dict[str, Any]]:
    """One row per combination, same run, same method as `bench_compute`."""
    rows = []
    for kem, backend in COMBINATIONS:
        row = bench_compute(n_three if "+" in kem else n_two, kem, backend)
        row["backend"] = backend
        # A gateway rekeys each peer every 120 s whatever the suite: one core keeps this
        # many peers rotating (CPU only; the rotation interval is never stretched).
        row["peers_per_core_at_120s"] = int(row["handshakes_per_second_per_core"] * ROTATION_S)
        rows.append(row)
    return rows


def _frame(sock: socket.socket, data: bytes) -> None:
    sock.sendall(len(data).to_bytes(2, "big") + data)


def _read(sock: socket.socket) -> bytes:
    def exact(n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("closed")
            buf += chunk
        return buf

    return exact(int.from_bytes(exact(2), "big"))


def bench_rotation(n: int) -> dict[str, Any]:
    """Full rotations over TCP loopback, PSKs installed into wireguard-go via UAPI."""
    if os.geteuid() != 0 or not shutil.which("wireguard-go"):
        return {"skipped": "needs root and wireguard-go (Debian package wireguard-go)"}
    tag = secrets.token_hex(2)
    ns = f"ztb{tag}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    wgs = [WireGuard(f"ztb{tag}{s}", netns=ns) for s in "ab"]
    try:
        for w in wgs:
            w.create()
        keys = [secrets.token_bytes(32) for _ in wgs]
        pubs = [wg_public_key(k) for k in keys]
        for i, w in enumerate(wgs):
            peer = PeerSpec(pubs[1 - i], (f"100.64.0.{2 - i}/32",))
            w.reconcile(InterfaceSpec(keys[i], 0, (peer,)))
        ea, eb, clock = _pair("ml-kem-768")
        server = socket.create_server(("127.0.0.1", 0))
        port = server.getsockname()[1]
        times = []
        for _ in range(n + 10):
            clock.now = max(clock.now + 200.0, ea.next_deadline())
            t0 = time.perf_counter()
            c = socket.create_connection(("127.0.0.1", port))
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s, _ = server.accept()
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for e in ea.poll():
                if isinstance(e, Send):
                    _frame(c, e.data)
            for e in eb.receive(_read(s)):
                if isinstance(e, Send):
                    _frame(s, e.data)
            for e in ea.receive(_read(c)):
                if isinstance(e, Send):
                    _frame(c, e.data)
            for e in eb.receive(_read(s)):
                if isinstance(e, PskReady):
                    wgs[1].set_psk(pubs[0], e.psk)
                elif isinstance(e, Send):
                    _frame(s, e.data)
            for e in ea.receive(_read(c)):
                if isinstance(e, PskReady):
                    wgs[0].set_psk(pubs[1], e.psk)
            times.append(time.perf_counter() - t0)
            c.close()
            s.close()
        server.close()
        times = sorted(times[10:])
        return {
            "rotations": n,
            "p50_ms": round(statistics.median(times) * 1000, 3),
            "p99_ms": round(times[int(0.99 * (len(times) - 1))] * 1000, 3),
            "max_ms": round(times[-1] * 1000, 3),
            "includes": "TCP connect on loopback, 4 messages, both PSK installs (UAPI)",
        }
    finally:
        for w in wgs:
            w.destroy()
        subprocess.run(["ip", "netns", "del", ns], check=False)


TOPO = """version: 1
sites:
  site-a:
    gateway: {{underlay: 10.98.0.1, port: 51820, overlay: 100.64.0.1}}
    zones: {{lan: {{cidr: 10.10.1.0/24, security_level: 1}}}}
  site-b:
    gateway: {{underlay: 10.98.0.2, port: 51820, overlay: 100.64.0.2}}
    zones: {{lan: {{cidr: 10.20.1.0/24, security_level: 1}}}}
identities:
  site-a: {{kind: site, keys: {a}/identity.pub}}
  site-b: {{kind: site, keys: {b}/identity.pub}}
"""


def bench_first_packet(runs: int) -> dict[str, Any]:
    """Two daemons in two namespaces; seconds from launch until a ping gets through."""
    if os.geteuid() != 0 or not shutil.which("wireguard-go"):
        return {"skipped": "needs root and wireguard-go"}
    results = []
    for _ in range(runs):
        tag = secrets.token_hex(2)
        nss = [f"ztf{tag}a", f"ztf{tag}b"]
        procs: list[subprocess.Popen[bytes]] = []
        with tempfile.TemporaryDirectory() as tmp:
            base = Path(tmp)
            try:
                for ns in nss:
                    subprocess.run(["ip", "netns", "add", ns], check=True)
                va, vb = f"ztf{tag}va", f"ztf{tag}vb"
                subprocess.run(
                    [
                        "ip",
                        "link",
                        "add",
                        va,
                        "netns",
                        nss[0],
                        "type",
                        "veth",
                        "peer",
                        vb,
                        "netns",
                        nss[1],
                    ],
                    check=True,
                )
                for ns, dev, ip in ((nss[0], va, "10.98.0.1"), (nss[1], vb, "10.98.0.2")):
                    for cmd in (
                        ["ip", "addr", "add", f"{ip}/24", "dev", dev],
                        ["ip", "link", "set", dev, "up"],
                    ):
                        subprocess.run(["ip", "netns", "exec", ns, *cmd], check=True)
                kd = {n: base / n for n in ("site-a", "site-b")}
                for d in kd.values():
                    keygen(d)
                (base / "topo.yaml").write_text(TOPO.format(a=kd["site-a"], b=kd["site-b"]))
                env = dict(os.environ, PYTHONPATH=str(ROOT))
                t0 = time.perf_counter()
                for ns, name in zip(nss, ("site-a", "site-b"), strict=True):
                    argv = [
                        "ip",
                        "netns",
                        "exec",
                        ns,
                        sys.executable,
                        "-m",
                        "tunneld.cli",
                        "--topology",
                        str(base / "topo.yaml"),
                        "--node",
                        name,
                        "--keys",
                        str(kd[name]),
                        "--ifname",
                        f"ztf{tag}w{name[-1]}",
                        "--status-socket",
                        str(base / f"{name}.sock"),
                    ]
                    procs.append(
                        subprocess.Popen(
                            argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                        )
                    )
                ok = False
                while time.perf_counter() - t0 < 30:
                    r = subprocess.run(
                        ["ip", "netns", "exec", nss[0], "ping", "-c1", "-W0.2", "100.64.0.2"],
                        capture_output=True,
                        check=False,
                    )
                    if r.returncode == 0:
                        ok = True
                        break
                if ok:
                    results.append(time.perf_counter() - t0)
            finally:
                for p in procs:
                    p.terminate()
                for p in procs:
                    try:
                        p.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        p.kill()
                for ns in nss:
                    subprocess.run(["ip", "netns", "del", ns], check=False)
    if not results:
        return {"runs": runs, "failed": "no packet got through within 30 s"}
    return {
        "runs": runs,
        "median_s": round(statistics.median(results), 3),
        "max_s": round(max(results), 3),
        "includes": "python start-up, topology load, wireguard-go start, first-handshake "
        "start jitter (0-0.5 s), PQ handshake, WireGuard handshake, ping (polled every ~0.2 s)",
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="scripts/bench handshake")
    ap.add_argument("-n", type=int, default=1000, help="handshakes for the compute benchmark")
    ap.add_argument("--combo-n", type=int, default=300, help="handshakes per 2-part suite")
    ap.add_argument("--combo-n3", type=int, default=40, help="handshakes per HQC suite")
    ap.add_argument("--rotations", type=int, default=300)
    ap.add_argument("--first-packet-runs", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "handshake.json")
    args = ap.parse_args(argv)
    result = {
        "machine": {
            "python": platform.python_version(),
            "cpu": platform.processor() or "",
            "cores": os.cpu_count(),
        },
        "compute_ml_kem_768": bench_compute(args.n, "ml-kem-768"),
        "compute_ml_kem_1024": bench_compute(max(100, args.n // 4), "ml-kem-1024"),
        "compute_combinations": bench_combinations(args.combo_n, args.combo_n3),
        "rotation_loopback": bench_rotation(args.rotations),
        "daemon_start_to_first_packet": bench_first_packet(args.first_packet_runs),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
