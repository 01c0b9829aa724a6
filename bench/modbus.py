"""`scripts/bench modbus`: what the OT transaction tier costs per Modbus transaction.

Three namespaces, client -- gateway -- device, the client's link standing in for a
tunnel. policyd runs in the gateway (steering + tier + flow log), a small Modbus
responder in the device namespace. Measured:

- added latency: one connection, reads paced at 1,000/s, round trips through the tier
  against the same path with the same kernel rules but no steering (policyd's
  compiled ruleset without the tier, applied by this script);
- throughput: 100 connections, each keeping a few reads in flight; transactions per
  second of the tier's own CPU time (its process's utime+stime), so the client and
  the device sharing the 2 cores do not blur the figure;
- memory: policyd's RSS before and after holding 10,000 idle client connections
  (each also holds one connection to the device).

Never run in tests: numbers depend on the machine, and the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
NOFILE = 65536

TOPOLOGY = """\
version: 1
sites:
  bench:
    gateway: {underlay: 192.0.2.1, port: 51820, overlay: 100.64.0.1}
    zones:
      plant: {cidr: 10.2.2.0/24, security_level: 1}
    assets:
      plc: {zone: plant, address: 10.2.2.2}
roles:
  engineer: {}
identities:
  eng-1: {kind: user, roles: [engineer], overlay: 100.64.1.1}
conduits:
  bench-modbus:
    from: {roles: [engineer]}
    to: {asset: bench/plc}
    allow:
      - modbus:
          units: [1]
          read: {holding_registers: [0-999]}
          write: {holding_registers: [{addresses: 0-99, values: 0-1000}]}
"""

DEVICE = r"""
import asyncio, struct
async def serve(r, w):
    try:
        while True:
            h = await r.readexactly(7)
            tid, _, length, unit = struct.unpack(">HHHB", h)
            pdu = await r.readexactly(length - 1)
            count = struct.unpack_from(">H", pdu, 3)[0] if pdu[0] == 3 else 1
            body = bytes([3, 2 * count]) + bytes(2 * count) if pdu[0] == 3 else pdu
            w.write(struct.pack(">HHHB", tid, 0, len(body) + 1, unit) + body)
            if not r._buffer:
                await w.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    w.close()
async def main():
    s = await asyncio.start_server(serve, "0.0.0.0", 502, backlog=4096)
    print("ready", flush=True)
    await s.serve_forever()
asyncio.run(main())
"""

CLIENT = r"""
import asyncio, json, struct, sys, time
mode, conns, param, duration = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
REQ = struct.Struct(">HHHBBHH")
async def one(i, lat, done, stop_at, rate, window):
    r, w = await asyncio.open_connection("10.2.2.2", 502, local_addr=("100.64.1.1", 0))
    tid = 0
    if mode == "latency":
        t0 = time.perf_counter()
        n = 0
        while time.perf_counter() < stop_at:
            n += 1
            due = t0 + n / rate
            now = time.perf_counter()
            if due > now:
                await asyncio.sleep(due - now)
            tid = (tid + 1) & 0xFFFF
            s = time.perf_counter()
            w.write(REQ.pack(tid, 0, 6, 1, 3, 10, 1))
            await r.readexactly(11)
            lat.append(time.perf_counter() - s)
        w.close()
        return
    async def reader():
        while True:
            await r.readexactly(11)
            done[0] += 1
            sem.release()
    sem = asyncio.Semaphore(window)
    task = asyncio.ensure_future(reader())
    while time.perf_counter() < stop_at:
        await sem.acquire()
        tid = (tid + 1) & 0xFFFF
        w.write(REQ.pack(tid, 0, 6, 1, 3, 10, 1))
    task.cancel()
    w.close()
async def hold(n):
    socks = []
    for i in range(n):
        socks.append(await asyncio.open_connection("10.2.2.2", 502, local_addr=("100.64.1.1", 0)))
        if i % 500 == 499:
            await asyncio.sleep(0.05)
    print(json.dumps({"held": len(socks)}), flush=True)
    sys.stdin.readline()
    for r, w in socks:
        r2 = w.write(REQ.pack(1, 0, 6, 1, 3, 10, 1))
    ok = 0
    for r, w in socks:
        try:
            await asyncio.wait_for(r.readexactly(11), 10)
            ok += 1
        except Exception:
            pass
    print(json.dumps({"answered": ok}), flush=True)
async def main():
    if mode == "hold":
        await hold(conns)
        return
    lat, done = [], [0]
    stop_at = time.perf_counter() + duration
    t0 = time.perf_counter()
    await asyncio.gather(*(one(i, lat, done, stop_at, param, int(param)) for i in range(conns)))
    print(json.dumps({"lat": lat, "done": done[0] + len(lat), "secs": time.perf_counter() - t0}))
asyncio.run(main())
"""


def _nofile() -> None:
    """As many descriptors as the hard limit allows (each proxied connection needs two)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    want = NOFILE if hard == resource.RLIM_INFINITY else min(NOFILE, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def sh(*cmd: str, ns: str | None = None, check: bool = True) -> str:
    full = ["ip", "netns", "exec", ns, *cmd] if ns else list(cmd)
    out = subprocess.run(full, capture_output=True, text=True, check=False)
    if check and out.returncode != 0:
        raise RuntimeError(f"{' '.join(full)}: {out.stderr.strip()}")
    return out.stdout


class Bench:
    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        tag = "zm" + secrets.token_hex(2)
        self.c, self.g, self.d = tag + "c", tag + "g", tag + "d"
        self.tunnel = tag + "t"
        self.tag = tag
        self.procs: list[subprocess.Popen[str]] = []
        self.env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.prefix: list[str] = []  # e.g. chrt -f 10: how policyd is started

    def setup(self) -> None:
        for ns in (self.c, self.g, self.d):
            sh("ip", "netns", "add", ns)
            sh("ip", "link", "set", "lo", "up", ns=ns)
        t = self.tag
        sh("ip", "link", "add", self.tunnel, "netns", self.g, "type", "veth", "peer", t + "a",
           "netns", self.c)  # fmt: skip
        sh("ip", "link", "add", t + "l", "netns", self.g, "type", "veth", "peer", t + "b",
           "netns", self.d)  # fmt: skip
        sh("ip", "addr", "add", "100.64.0.1/16", "dev", self.tunnel, ns=self.g)
        sh("ip", "addr", "add", "10.2.2.1/24", "dev", t + "l", ns=self.g)
        sh("ip", "addr", "add", "100.64.1.1/16", "dev", t + "a", ns=self.c)
        sh("ip", "addr", "add", "10.2.2.2/24", "dev", t + "b", ns=self.d)
        for ns, dev in (
            (self.g, self.tunnel),
            (self.g, t + "l"),
            (self.c, t + "a"),
            (self.d, t + "b"),
        ):
            sh("ip", "link", "set", dev, "up", ns=ns)
        sh("ip", "route", "add", "10.2.2.0/24", "via", "100.64.0.1", ns=self.c)
        sh("ip", "route", "add", "default", "via", "10.2.2.1", ns=self.d)
        sh("sysctl", "-qw", "net.ipv4.ip_forward=1", ns=self.g)
        sh("sysctl", "-qw", "net.ipv4.ip_local_port_range=10000 65000", ns=self.c)
        (self.dir / "topo.yaml").write_text(TOPOLOGY)
        device = self.spawn(self.d, PY, "-c", DEVICE)
        assert device.stdout is not None and device.stdout.readline().strip() == "ready"

    def spawn(
        self, ns: str, *argv: str, stdin: bool = False, log: Path | None = None
    ) -> subprocess.Popen[str]:
        err = (self.dir / f"stderr-{len(self.procs)}.log").open("w")
        p = subprocess.Popen(
            ["ip", "netns", "exec", ns, *argv],
            stdout=log.open("w") if log else subprocess.PIPE,
            stderr=err,
            stdin=subprocess.PIPE if stdin else None,
            text=True,
            env=self.env,
            preexec_fn=_nofile,
        )
        self.procs.append(p)
        return p

    def start_policyd(self) -> subprocess.Popen[str]:
        argv = [*self.prefix, PY, "-m", "policyd.cli", "--topology", str(self.dir / "topo.yaml")]
        argv += ["--gateway", "bench", "--tunnel", self.tunnel, "--no-api", "--no-sessions"]
        argv += ["--flow-log", str(self.dir / "flows.jsonl"), "--state-dir", str(self.dir)]
        log = self.dir / f"policyd-{len(self.procs)}.log"
        p = self.spawn(self.g, *argv, log=log)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and p.poll() is None:
            if "applied ruleset" in log.read_text():
                return p
            time.sleep(0.1)
        raise RuntimeError(f"policyd did not apply its ruleset: {log.read_text()[-2000:]}")

    def apply_without_tier(self) -> None:
        code = (
            "import topology\nfrom datetime import UTC, datetime\n"
            "from policyd.compiler import CompileOptions, compile_ruleset\n"
            "from policyd.kernel import NftHandle\n"
            f"t = topology.load({str(self.dir / 'topo.yaml')!r}).topology\n"
            f"rs = compile_ruleset(t, 'bench', now=datetime.now(UTC), "
            f"options=CompileOptions(tunnels=({self.tunnel!r},)))\n"
            "NftHandle().apply_ruleset(rs)\n"
        )
        sh("nft", "flush", "ruleset", ns=self.g)
        sh(PY, "-c", code, ns=self.g)

    def client(self, mode: str, conns: int, param: float, duration: float) -> dict[str, Any]:
        p = self.spawn(self.c, PY, "-c", CLIENT, mode, str(conns), str(param), str(duration))
        out, _ = p.communicate(timeout=duration + 120)
        result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        return result

    def stderr_of(self, p: subprocess.Popen[str]) -> str:
        return (self.dir / f"stderr-{self.procs.index(p)}.log").read_text()[-2000:]

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        for ns in (self.c, self.g, self.d):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


def _cpu(pid: int) -> float:
    """utime+stime of a process and its threads, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] * 1000


def latency(b: Bench, seconds: float) -> dict[str, Any]:
    rows: dict[str, list[float]] = {}
    for label in ("kernel_only", "tier", "kernel_only", "tier"):
        if label == "tier":
            proc = b.start_policyd()
            time.sleep(2.0)  # past start-up work (the recorder's conntrack resync)
        else:
            b.apply_without_tier()
        lat = b.client("latency", 1, 1000.0, seconds)["lat"]
        if label == "tier":
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=20)
        rows.setdefault(label, []).extend(lat)
    base, tier = rows["kernel_only"], rows["tier"]
    return {
        "rate_per_s": 1000,
        "samples": [len(base), len(tier)],
        "kernel_only_ms": {"p50": _pct(base, 0.5), "p99": _pct(base, 0.99)},
        "tier_ms": {"p50": _pct(tier, 0.5), "p99": _pct(tier, 0.99)},
        "added_p50_ms": round(_pct(tier, 0.5) - _pct(base, 0.5), 3),
        "added_p99_ms": round(_pct(tier, 0.99) - _pct(base, 0.99), 3),
    }


def throughput(b: Bench, seconds: float, conns: int, window: int) -> dict[str, Any]:
    proc = b.start_policyd()
    pid = proc.pid  # `ip netns exec` execs policyd in place
    cpu0, t0 = _cpu(pid), time.monotonic()
    got = b.client("throughput", conns, float(window), seconds)
    cpu, wall = _cpu(pid) - cpu0, time.monotonic() - t0
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=20)
    done = int(got["done"])
    return {
        "connections": conns,
        "in_flight_per_connection": window,
        "transactions": done,
        "per_s_wall": round(done / got["secs"]),
        "tier_cpu_s": round(cpu, 2),
        "tier_cpu_share": round(cpu / wall, 2),
        "per_core_s": round(done / cpu) if cpu else None,
    }


def memory(b: Bench, conns: int) -> dict[str, Any]:
    proc = b.start_policyd()
    pid = proc.pid  # `ip netns exec` execs policyd in place
    time.sleep(1.0)
    before = _rss(pid)
    client = b.spawn(b.c, PY, "-c", CLIENT, "hold", str(conns), "0", "0", stdin=True)
    assert client.stdout is not None and client.stdin is not None
    line = client.stdout.readline()
    if not line:
        raise RuntimeError(f"idle client failed: {b.stderr_of(client)}")
    held = json.loads(line)["held"]
    time.sleep(2.0)
    after = _rss(pid)
    client.stdin.write("\n")
    client.stdin.flush()
    answered = json.loads(client.stdout.readline())["answered"]
    client.wait(timeout=60)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    return {
        "connections": conns,
        "held": held,
        "nofile_hard_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[1],
        "answered_after_holding": answered,
        "rss_before_mib": round(before / 2**20, 1),
        "rss_after_mib": round(after / 2**20, 1),
        "per_connection_kib": round((after - before) / max(held, 1) / 1024, 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/bench modbus", description=__doc__)
    p.add_argument("--seconds", type=float, default=5.0, help="per latency/throughput run")
    p.add_argument("--connections", type=int, default=100)
    p.add_argument("--windows", default="1,16", help="reads in flight per connection, one run each")
    p.add_argument(
        "--idle",
        type=int,
        default=10000,
        help="idle connections to hold (each costs policyd two descriptors: raise its "
        "RLIMIT_NOFILE hard limit above 2x this)",
    )
    p.add_argument("--json", action="store_true", help="print results as JSON")
    p.add_argument(
        "--rt", action="store_true", help="run policyd with SCHED_FIFO priority 10 (chrt -f 10)"
    )
    p.add_argument("--only", choices=["latency", "throughput", "memory"], help="one part, no file")
    args = p.parse_args(argv)
    _nofile()
    with tempfile.TemporaryDirectory(prefix="zm-bench-") as tmp:
        b = Bench(Path(tmp))
        if args.rt:
            b.prefix = ["chrt", "-f", "10"]
        try:
            b.setup()
            if args.only:
                part: object
                if args.only == "latency":
                    part = latency(b, args.seconds)
                elif args.only == "throughput":
                    windows = [int(w) for w in args.windows.split(",")]
                    part = [throughput(b, args.seconds, args.connections, w) for w in windows]
                else:
                    part = memory(b, args.idle)
                print(json.dumps(part, indent=2))
                return 0
            lat = latency(b, args.seconds)
            thr = [
                throughput(b, args.seconds, args.connections, int(w))
                for w in args.windows.split(",")
            ]
            mem = memory(b, args.idle)
        finally:
            b.close()
    result = {
        "machine": os.uname().release,
        "load_average": os.getloadavg(),
        "cpus": os.cpu_count(),
        "when": datetime.now(UTC).isoformat(),
        "latency": lat,
        "throughput": thr,
        "memory": mem,
        "targets": {
            "added_p99_ms_at_1000_per_s": "<= 1",
            "per_core_per_s_100_connections": ">= 10000",
            "per_idle_connection_kib": "<= 64, 10000 held",
        },
    }
    out = ROOT / "bench" / "results" / "modbus.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2) if args.json else _summary(result))
    return 0


def _summary(r: dict[str, Any]) -> str:
    lat, mem = r["latency"], r["memory"]
    thr_lines = [
        f"throughput, {t['connections']} connections x {t['in_flight_per_connection']} in "
        f"flight: {t['per_s_wall']}/s wall, {t['per_core_s']}/s per core of tier CPU "
        f"({t['tier_cpu_share']} cores used)"
        for t in r["throughput"]
    ]
    return "\n".join(
        [
            f"added latency at 1000/s: p50 {lat['added_p50_ms']} ms, p99 {lat['added_p99_ms']} ms "
            f"(kernel only p99 {lat['kernel_only_ms']['p99']:.3f}, "
            f"tier p99 {lat['tier_ms']['p99']:.3f})",
            *thr_lines,
            f"memory: {mem['held']} idle connections held, {mem['per_connection_kib']} KiB each "
            f"({mem['answered_after_holding']} answered afterwards)",
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
