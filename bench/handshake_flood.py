"""`scripts/bench handshake`, attack part (issue 14): measured, never asserted.

1. flood: a real tunneld (site-b, real wireguard-go) in one namespace; from another, one
   source address floods its handshake port with junk frames (target 10,000/s, many
   pipelined per connection) while holding as many idle connections as it can, and a
   second address runs genuine handshakes (site-a's keys) one after another. Reported:
   genuine handshake latency with and without the flood, what the flood achieved, and
   what tunneld counted (its /metrics).
2. compute: handshakes/s/core of the state machine now and of the one before issue 14
   (`git show BEFORE:tunneld/handshake.py`), measured in the same run.

Results go to bench/results/handshake_flood.json. Needs root and wireguard-go for (1).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BEFORE = "1c38dd6"  # main as merged into issue 14's branch: the handshake without it
PORT = 51820
TOPO = """version: 1
sites:
  site-a:
    gateway: {{underlay: 10.97.0.1, port: 51820, overlay: 100.64.0.1}}
    zones: {{lan: {{cidr: 10.10.1.0/24, security_level: 1}}}}
  site-b:
    gateway: {{underlay: 10.97.0.2, port: 51820, overlay: 100.64.0.2}}
    zones: {{lan: {{cidr: 10.20.1.0/24, security_level: 1}}}}
identities:
  site-a: {{kind: site, keys: {a}/identity.pub}}
  site-b: {{kind: site, keys: {b}/identity.pub}}
"""


# -- run inside the attacker's namespace -----------------------------------------------


async def _flood(host: str, src: str, seconds: float, rate: int, holders: int) -> dict[str, Any]:
    """Junk frames at `rate`/s, 100 pipelined per connection, plus idle held connections."""
    end = time.monotonic() + seconds
    sent = conns = held = batches = 0
    per_conn = 100
    start = time.monotonic()

    async def junk() -> None:
        nonlocal sent, conns, batches
        while time.monotonic() < end:
            due = start + batches * per_conn / rate  # one schedule for all workers
            batches += 1
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            try:
                _, w = await asyncio.open_connection(host, PORT, local_addr=(src, 0))
            except OSError:
                continue
            conns += 1
            frames = b"".join(
                len(f).to_bytes(2, "big") + f
                for f in (secrets.token_bytes(secrets.randbelow(64)) for _ in range(per_conn))
            )
            try:  # fire and forget: the next connection does not wait for this one
                w.write(frames)
                await w.drain()
                sent += per_conn
            except OSError:
                pass
            w.close()

    async def hold() -> None:
        nonlocal held
        while time.monotonic() < end:
            try:
                r, w = await asyncio.open_connection(host, PORT, local_addr=(src, 0))
                held += 1
                await asyncio.wait_for(r.read(100), max(0.1, end - time.monotonic()))
                w.close()
            except (OSError, TimeoutError):
                pass
            await asyncio.sleep(0.01)

    t0 = time.monotonic()
    await asyncio.gather(*[junk() for _ in range(40)], *[hold() for _ in range(holders)])
    took = time.monotonic() - t0
    return {
        "junk_frames_sent_per_s": round(sent / took),
        "junk_connections_per_s": round(conns / took),
        "idle_connections_opened_per_s": round(held / took),
        "held_connection_tasks": holders,
    }


def _genuine(host: str, src: str, keys_a: str, pub_b: str, n: int, gap: float) -> list[float]:
    """n full handshakes as site-a over TCP; seconds from connect to RespConf each."""
    from tunneld.handshake import Endpoint
    from tunneld.handshake_types import LocalIdentity, PeerConfig, PskReady, Send
    from tunneld.kem import get_backend
    from tunneld.keys import load_keyset, load_public

    class Clock:
        def monotonic(self) -> float:
            return time.monotonic()

        def time_ns(self) -> int:
            return time.time_ns()

    be = get_backend()
    ka, b = load_keyset(keys_a, be), load_public(pub_b)
    ep = Endpoint(
        LocalIdentity("site-a", ka.static, ka.public.wireguard),
        [PeerConfig("site-b", b.hybrid(be), b.wireguard, "initiator", b.kem)],
        backend=be,
        clock=Clock(),
        rng=secrets.token_bytes,
    )

    async def one() -> float:
        ep.rekey_now("site-b")
        (m1,) = [e.data for e in ep.poll() if isinstance(e, Send)]
        t0 = time.perf_counter()
        r, w = await asyncio.open_connection(host, PORT, local_addr=(src, 0))
        try:
            w.write(len(m1).to_bytes(2, "big") + m1)
            while True:
                size = int.from_bytes(await r.readexactly(2), "big")
                out = ep.receive(await r.readexactly(size))
                if any(isinstance(e, PskReady) for e in out):
                    return time.perf_counter() - t0
                sends = [e.data for e in out if isinstance(e, Send)]
                if not sends:
                    raise RuntimeError(f"handshake rejected: {out}")
                w.write(b"".join(len(d).to_bytes(2, "big") + d for d in sends))
        finally:
            w.close()

    async def run() -> list[float]:
        times = []
        for _ in range(n):
            try:
                times.append(await asyncio.wait_for(one(), 10.0))
            except (OSError, TimeoutError, RuntimeError, asyncio.IncompleteReadError):
                times.append(float("inf"))
            await asyncio.sleep(gap)
        return times

    return asyncio.run(run())


# -- the driver ----------------------------------------------------------------------


def _sh(*args: str) -> None:
    subprocess.run(list(args), check=True, capture_output=True)


def _in(ns: str, *args: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *args]


def _summary(times: list[float]) -> dict[str, Any]:
    ok = sorted(t for t in times if t != float("inf"))
    return {
        "handshakes": len(times),
        "completed": len(ok),
        "p50_ms": round(statistics.median(ok) * 1000, 1) if ok else None,
        "max_ms": round(ok[-1] * 1000, 1) if ok else None,
    }


def bench_flood(seconds: float, rate: int, samples: int) -> dict[str, Any]:
    if os.geteuid() != 0 or not shutil.which("wireguard-go"):
        return {"skipped": "needs root and wireguard-go (Debian package wireguard-go)"}
    tag = secrets.token_hex(2)
    na, nb = f"zfl{tag}a", f"zfl{tag}b"
    me = str(Path(__file__).resolve())
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    daemon: subprocess.Popen[bytes] | None = None
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        try:
            for ns in (na, nb):
                _sh("ip", "netns", "add", ns)
            _sh("ip", "link", "add", f"zfl{tag}va", "netns", na, "type", "veth", "peer",
                f"zfl{tag}vb", "netns", nb)  # fmt: skip
            for ns, dev, ips in (
                (na, f"zfl{tag}va", ("10.97.0.1/24", "10.97.0.3/24")),
                (nb, f"zfl{tag}vb", ("10.97.0.2/24",)),
            ):
                for ip in ips:
                    _sh(*_in(ns, "ip", "addr", "add", ip, "dev", dev))
                _sh(*_in(ns, "ip", "link", "set", dev, "up"))
                _sh(*_in(ns, "ip", "link", "set", "lo", "up"))
            from tunneld.keys import keygen

            for n in ("a", "b"):
                keygen(base / n)
            (base / "topo.yaml").write_text(TOPO.format(a=base / "a", b=base / "b"))
            sock = base / "b.sock"
            argv = _in(nb, sys.executable, "-m", "tunneld.cli", "--topology")
            argv += [str(base / "topo.yaml"), "--node", "site-b", "--keys", str(base / "b")]
            argv += ["--ifname", f"zfl{tag}w", "--status-socket", str(sock)]
            daemon = subprocess.Popen(
                argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            deadline = time.monotonic() + 20
            while not sock.exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            genuine = _in(na, sys.executable, me, "genuine", "10.97.0.2", "10.97.0.1")
            genuine += [str(base / "a"), str(base / "b" / "identity.pub"), str(samples)]
            quiet = subprocess.run(genuine, env=env, capture_output=True, check=True)
            flood = subprocess.Popen(
                [
                    *_in(na, sys.executable, me, "flood", "10.97.0.2", "10.97.0.3"),
                    str(seconds),
                    str(rate),
                ],
                env=env,
                stdout=subprocess.PIPE,
            )
            time.sleep(2.0)  # the flood holds what it can first
            loud = subprocess.run(genuine, env=env, capture_output=True, check=True)
            out, _ = flood.communicate(timeout=seconds + 60)
            metrics = _metrics(sock)
            return {
                "genuine_idle": _summary(json.loads(quiet.stdout)),
                "genuine_under_flood": _summary(json.loads(loud.stdout)),
                "flood": json.loads(out),
                "tunneld_counted": metrics,
                "setup": "one tunneld (responder, real wireguard-go) in a namespace; flood "
                "and genuine initiator from two addresses of another namespace over veth; "
                "one 2-core machine shared by all three processes",
            }
        finally:
            if daemon is not None:
                daemon.terminate()
                try:
                    daemon.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    daemon.kill()
            for ns in (na, nb):
                pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
                for pid in pids.stdout.split():
                    subprocess.run(["kill", pid], check=False, capture_output=True)
                subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


def _metrics(sock: Path) -> dict[str, float]:
    from aiohttp import ClientSession, UnixConnector

    async def get() -> str:
        async with (
            ClientSession(connector=UnixConnector(path=str(sock))) as s,
            s.get("http://tunneld/metrics") as r,
        ):
            return await r.text()

    wanted = (
        "tunneld_rejected_frames_total",
        "tunneld_connections_total",
        "tunneld_suppressed_log_lines_total",
        "tunneld_handshakes_total",
    )
    out: dict[str, float] = {}
    for line in asyncio.run(get()).splitlines():
        if line.startswith(wanted):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def _load_before() -> Any:
    """The handshake module as it was before issue 14, from git, as a separate module."""
    src = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{BEFORE}:tunneld/handshake.py"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    path = Path(tempfile.mkdtemp()) / "handshake_before.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("handshake_before", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["handshake_before"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def bench_compute(n: int) -> dict[str, Any]:
    """Handshakes/s/core now and before issue 14, interleaved in rounds (same noise)."""
    from bench import handshake as tb
    from tunneld import handshake

    try:
        before = _load_before()
    except (subprocess.CalledProcessError, OSError) as exc:
        return {"skipped": f"cannot read the pre-issue-14 handshake from git: {exc}"}
    rates: dict[str, list[float]] = {"now": [], "before": []}
    for _ in range(5):
        for label, module in (("now", handshake), ("before", before)):
            setattr(tb, "Endpoint", module.Endpoint)  # noqa: B010 (_pair builds this class)
            ea, eb, clock = tb._pair("ml-kem-768")
            for _ in range(10):
                tb._one(ea, eb, clock)
            cpu = [sum(tb._one(ea, eb, clock)[:2]) for _ in range(n // 5)]
            rates[label].append(1.0 / statistics.mean(cpu))
    setattr(tb, "Endpoint", handshake.Endpoint)  # noqa: B010
    now, was = statistics.median(rates["now"]), statistics.median(rates["before"])
    return {
        "kem": "ml-kem-768",
        "handshakes_per_second_per_core_now": round(now),
        "handshakes_per_second_per_core_before": round(was),
        "ratio": round(now / was, 3),
        "before": f"tunneld/handshake.py at {BEFORE}",
    }


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "flood":
        host, src, seconds, rate = args[1], args[2], float(args[3]), int(args[4])
        print(json.dumps(asyncio.run(_flood(host, src, seconds, rate, holders=200))))
        return 0
    if args and args[0] == "genuine":
        print(json.dumps(_genuine(args[1], args[2], args[3], args[4], int(args[5]), 1.2)))
        return 0
    ap = argparse.ArgumentParser(prog="scripts/bench handshake (flood part)")
    ap.add_argument("-n", type=int, default=1000, help="handshakes for the compute comparison")
    ap.add_argument("--flood-rate", type=int, default=10_000, help="junk frames per second")
    ap.add_argument("--samples", type=int, default=10, help="genuine handshakes per phase")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "handshake_flood.json")
    ns = ap.parse_args(args)
    result = {
        "compute": bench_compute(ns.n),
        "flood": bench_flood(ns.samples * 1.2 + 6, ns.flood_rate, ns.samples),
    }
    ns.out.parent.mkdir(parents=True, exist_ok=True)
    ns.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
