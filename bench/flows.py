"""`scripts/bench flows`: how many new flows per second the recorder keeps, losing none.

Three namespaces (client -- gateway -- sink) and a paced generator of one-packet UDP
flows, each from a new source address/port, forwarded by the gateway under a
zonegate-shaped ruleset (`ct mark set` on accept). Per offered rate we run the
recorder and `conntrack -E` (the reference reader, same buffer size) on the same
load at the same time and report flow ends recorded, loss counted, their sum
against the truth (the accept rule's counter), and the ratio to `conntrack -E`.
Then the gateway's forwarding rate with the recorder off and on.

Never run in tests: numbers depend on the machine, and the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from topology.model import conduit_mark

GEN = r"""
import socket, struct, sys, time
rate, duration, offset = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
dst = socket.inet_aton("10.2.2.2")
pkt = bytearray(struct.pack("!BBHHHBBH4s4sHHHH", 0x45, 0, 44, 0, 0, 64, 17, 0,
                            b"\0\0\0\0", dst, 0, 9, 24, 0) + b"z" * 16)
sent, t0 = 0, time.perf_counter()
end = t0 + duration
while True:
    now = time.perf_counter()
    if now >= end:
        break
    due = int((now - t0) * rate) if rate > 0 else sent + 256
    while sent < due:
        n = offset + sent
        struct.pack_into("!4s", pkt, 12, bytes((100, 64, 1 + (n // 64000) % 250, 0)))
        pkt[15] = 1 + (n // 64000 // 250) % 250
        struct.pack_into("!H", pkt, 20, 1024 + n % 64000)
        try:
            s.sendto(pkt, ("10.2.2.2", 0))
        except OSError:
            break
        sent += 1
    if rate > 0:
        time.sleep(0.0005)
print(sent, time.perf_counter() - t0)
"""

TOPOLOGY = """\
version: 1
sites:
  bench:
    gateway: {underlay: 192.0.2.1, overlay: 100.64.0.1}
    zones:
      plant: {cidr: 10.2.2.0/24, security_level: 1}
    assets:
      sink: {zone: plant, address: 10.2.2.2}
roles:
  engineer: {}
identities:
  eng-1: {kind: user, roles: [engineer], overlay: 100.64.1.1}
services:
  discard: {transport: udp, ports: [9]}
conduits:
  bench-flows:
    from: {roles: [engineer]}
    to: {asset: bench/sink}
    allow: [discard]
"""


def sh(*cmd: str, ns: str | None = None, check: bool = True) -> str:
    full = ["ip", "netns", "exec", ns, *cmd] if ns else list(cmd)
    proc = subprocess.run(full, capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(full)}: {proc.stderr.strip()}")
    return proc.stdout


class Bench:
    def __init__(self, workdir: Path) -> None:
        self.tag = "zf" + secrets.token_hex(2)
        self.c, self.g, self.s = (f"{self.tag}-{x}" for x in "cgs")
        self.workdir = workdir
        self.topo = workdir / "topology.yaml"
        self.topo.write_text(TOPOLOGY)
        self.made: list[str] = []

    def setup(self) -> None:
        t = self.tag
        for ns in (self.c, self.g, self.s):
            sh("ip", "netns", "add", ns)
            self.made.append(ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "link", "add", f"{t}c", "netns", self.c, "type", "veth", "peer", f"{t}gc",
           "netns", self.g)  # fmt: skip
        sh("ip", "link", "add", f"{t}s", "netns", self.s, "type", "veth", "peer", f"{t}gs",
           "netns", self.g)  # fmt: skip
        for ns, dev, addr in (
            (self.c, f"{t}c", "100.64.1.254/16"),
            (self.g, f"{t}gc", "100.64.0.1/16"),
            (self.g, f"{t}gs", "10.2.2.1/24"),
            (self.s, f"{t}s", "10.2.2.2/24"),
        ):
            sh("ip", "-n", ns, "addr", "add", addr, "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
        sh("ip", "-n", self.c, "route", "add", "default", "via", "100.64.0.1")
        sh("ip", "-n", self.s, "route", "add", "default", "via", "10.2.2.1")
        sh("sysctl", "-qw", "net.ipv4.ip_forward=1", ns=self.g)
        sh("sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0", ns=self.g)
        sh("sysctl", "-qw", "net.netfilter.nf_conntrack_udp_timeout=1", ns=self.g)
        mark = conduit_mark("bench-flows")
        ruleset = f"""
table inet zonegate {{
  chain forward {{
    type filter hook forward priority 0; policy drop;
    ct state established,related accept
    ip daddr 10.2.2.2 udp dport 9 ct state new counter ct mark set 0x{mark:08x} accept
    ip daddr 10.2.2.2 tcp dport 5201 ct state new ct mark set 0x{mark:08x} accept
  }}
}}"""
        subprocess.run(["ip", "netns", "exec", self.g, "nft", "-f", "-"], input=ruleset,
                       text=True, check=True)  # fmt: skip
        sink = """table inet b {
  chain pre {
    type filter hook prerouting priority -300;
    udp dport 9 counter drop
  }
}"""
        subprocess.run(["ip", "netns", "exec", self.s, "nft", "-f", "-"], input=sink,
                       text=True, check=True)  # fmt: skip

    def close(self) -> None:
        for ns in reversed(self.made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)

    def counter(self, ns: str) -> int:
        out = json.loads(sh("nft", "-j", "list", "ruleset", ns=ns))
        for item in out["nftables"]:
            for expr in item.get("rule", {}).get("expr", []):
                if "counter" in expr:
                    return int(expr["counter"]["packets"])
        raise RuntimeError("no counter")

    def generate(self, rate: float, duration: float, offset: int) -> tuple[int, float]:
        out = sh(sys.executable, "-c", GEN, str(rate), str(duration), str(offset), ns=self.c)
        sent, elapsed = out.split()
        return int(sent), float(elapsed)

    def start_recorder(self, log: Path, status: Path) -> subprocess.Popen[str]:
        cmd = [sys.executable, "-m", "policyd.flowlog", str(self.topo), "--gateway", "bench",
               "--netns", self.g, "--log", str(log), "--status", str(status)]  # fmt: skip
        env = os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)
        assert proc.stderr is not None
        line = proc.stderr.readline()
        if "recording" not in line:
            raise RuntimeError(f"recorder did not start: {line}{proc.stderr.read()}")
        return proc

    def start_conntrack_e(self, out: Path) -> subprocess.Popen[bytes]:
        fh, err = open(out, "wb"), open(out.with_suffix(".err"), "wb")  # noqa: SIM115
        cmd = ["ip", "netns", "exec", self.g, "conntrack", "-E", "-e", "NEW,DESTROY",
               "-b", str(32 * 1024 * 1024)]  # fmt: skip
        proc = subprocess.Popen(cmd, stdout=fh, stderr=err)
        fh.close()
        err.close()
        return proc

    def iperf(self, seconds: float) -> float:
        """Bulk TCP through the gateway (bits/s): the forwarding rate of long flows."""
        server = subprocess.Popen(["ip", "netns", "exec", self.s, "iperf3", "-s", "-1"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            time.sleep(0.5)
            out = sh("iperf3", "-c", "10.2.2.2", "-t", str(seconds), "-J", ns=self.c)
            return float(json.loads(out)["end"]["sum_received"]["bits_per_second"])
        finally:
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def stop(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM) -> float:
    """Stop a child and return its CPU seconds (user + system)."""
    proc.send_signal(sig)
    _, _, usage = os.wait4(proc.pid, 0)
    proc.returncode = 0
    return float(usage.ru_utime + usage.ru_stime)


def run_rate(b: Bench, rate: float, duration: float, step: int) -> dict[str, Any]:
    sh("conntrack", "-F", ns=b.g, check=False)
    log, status, ctlog = (b.workdir / f"{n}-{step}" for n in ("flows.jsonl", "status", "ct"))
    rec = b.start_recorder(log, status)
    cte = b.start_conntrack_e(ctlog)
    time.sleep(0.5)
    before = b.counter(b.g)
    sent, elapsed = b.generate(rate, duration, step * 10_000_000)
    time.sleep(2.5)  # the 1 s UDP timeout runs out and garbage collection ends the flows
    sh("conntrack", "-F", ns=b.g, check=False)
    truth = b.counter(b.g) - before
    time.sleep(1.5)
    cpu = stop(rec)
    stop(cte, signal.SIGINT)
    st = json.loads(status.read_text())
    destroys = sum(1 for line in ctlog.read_bytes().splitlines() if b"[DESTROY]" in line)
    errlog = ctlog.with_suffix(".err")
    enobufs = errlog.read_bytes().count(b"ENOBUFS") if errlog.exists() else 0
    errlog.unlink(missing_ok=True)
    ended, lost = st["counts"]["flow_end"], st["lost"]["conntrack-destroy"]
    for p in (log, status, ctlog):
        p.unlink(missing_ok=True)
    return {
        "offered_per_s": round(sent / elapsed),
        "flows": truth,
        "recorded": ended,
        "lost_counted": lost,
        "lost_new_events": st["lost"]["conntrack-new"],
        "accounted": ended + lost == truth,
        "conntrack_E": destroys,
        "conntrack_E_enobufs": enobufs,
        "ratio_vs_conntrack_E": round(ended / destroys, 3) if destroys else None,
        "recorder_cpu_s": round(cpu, 2),
    }


def forwarding(b: Bench, with_recorder: bool, duration: float) -> tuple[float, float]:
    """(bulk TCP bits/s, one-packet new flows/s delivered) with the recorder off or on."""
    sh("conntrack", "-F", ns=b.g, check=False)
    rec = None
    if with_recorder:
        rec = b.start_recorder(b.workdir / "fwd.jsonl", b.workdir / "fwd-status")
    time.sleep(0.5)
    bulk = b.iperf(duration)
    before = b.counter(b.s)
    _, elapsed = b.generate(0, duration, 90_000_000 + (10_000_000 if with_recorder else 0))
    delivered = b.counter(b.s) - before
    if rec is not None:
        time.sleep(1.0)
        stop(rec)
    return bulk, delivered / elapsed


RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results" / "flows.json"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/bench flows", description=__doc__)
    p.add_argument("--rates", default="5000,10000,20000,30000,40000", help="flows/s, comma list")
    p.add_argument("--duration", type=float, default=3.0, help="seconds per rate")
    p.add_argument("--json", action="store_true", help="print results as JSON")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="zf-bench-") as tmp:
        b = Bench(Path(tmp))
        try:
            b.setup()
            rows = [
                {"target_per_s": int(r)} | run_rate(b, float(r), args.duration, i)
                for i, r in enumerate(args.rates.split(","))
            ]
            # Alternate off/on and take medians: the machine's cores are shared and noisy.
            runs = [forwarding(b, i % 2 == 1, 2.0) for i in range(6)]
            bulk_off = statistics.median(r[0] for r in runs[0::2])
            bulk_on = statistics.median(r[0] for r in runs[1::2])
            off = statistics.median(r[1] for r in runs[0::2])
            on = statistics.median(r[1] for r in runs[1::2])
        finally:
            b.close()
    zero_loss = [r["offered_per_s"] for r in rows if r["lost_counted"] == 0 and r["accounted"]]
    result = {
        "machine": os.uname().release,
        "cpus": os.cpu_count(),
        "when": datetime.now(UTC).isoformat(),
        "rates": rows,
        "max_zero_loss_per_s": max(zero_loss) if zero_loss else 0,
        "bulk_tcp_bps": {"recorder_off": round(bulk_off), "recorder_on": round(bulk_on)},
        "bulk_cost": round(1 - bulk_on / bulk_off, 3) if bulk_off else None,
        "new_flow_flood_per_s": {"recorder_off": round(off), "recorder_on": round(on)},
        "flood_cost": round(1 - on / off, 3) if off else None,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    cols = ["target_per_s", "offered_per_s", "flows", "recorded", "lost_counted", "accounted",
            "conntrack_E", "conntrack_E_enobufs", "ratio_vs_conntrack_E",
            "recorder_cpu_s"]  # fmt: skip
    print(" ".join(c[:12].ljust(12) for c in cols))
    for r in rows:
        print(" ".join(str(r[c]).ljust(12) for c in cols))
    print(f"max sustained new flows/s with zero loss: {result['max_zero_loss_per_s']}")
    print(
        f"bulk TCP through the gateway: off {bulk_off / 1e9:.2f} Gbit/s, "
        f"on {bulk_on / 1e9:.2f} Gbit/s, cost {result['bulk_cost']:.1%}"
    )
    print(
        f"one-packet new-flow flood: off {off:.0f}/s, on {on:.0f}/s, "
        f"cost {result['flood_cost']:.1%} (recorder saturated, loss counted)"
    )
    print(f"results: {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
