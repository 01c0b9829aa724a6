"""`scripts/bench flows`: how many new flows per second the recorder keeps, losing none.

Three namespaces (client -- gateway -- sink) and a paced generator of one-packet UDP
flows, each from a new source address/port, forwarded by the gateway under a
zonegate-shaped ruleset (`ct mark set` on accept). Per offered rate we run, on the
same load at the same time: the recorder (JSON file + IPFIX export to Debian's
`nfcapd`; end records only unless --starts), `conntrack -E` and Debian's `ulogd2`
(NFCT destroy events -> JSON), each with a 32 MiB buffer, and report flow ends
recorded, loss counted, their sum against the truth (the accept rule's counter),
flows `nfdump` read back, and each reader's records per second and CPU per record.
Then the gateway's forwarding rate (bulk TCP and a one-packet flood) with the
recorder off, on, and on without start records.

Never run in tests: numbers depend on the machine, and the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
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
    def __init__(self, workdir: Path, pin: bool = True) -> None:
        # The generator stands in for traffic from other hosts, which a gateway forwards
        # in softirq, ahead of any process; pinned apart, the recorder cannot win CPU
        # time from the generator instead of costing the forwarding path something.
        two = pin and (os.cpu_count() or 1) >= 2
        self.traffic = ["taskset", "-c", "0"] if two else []
        self.readers = ["taskset", "-c", "1"] if two else []
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
        out = sh(*self.traffic, sys.executable, "-c", GEN, str(rate), str(duration), str(offset),
                 ns=self.c)  # fmt: skip
        sent, elapsed = out.split()
        return int(sent), float(elapsed)

    def start_recorder(
        self, log: Path, status: Path, ipfix_port: int | None = None, starts: bool = True
    ) -> subprocess.Popen[str]:
        cmd = [sys.executable, "-m", "policyd.flowlog", str(self.topo), "--gateway", "bench",
               "--netns", self.g, "--log", str(log), "--status", str(status)]  # fmt: skip
        if ipfix_port is not None:
            cmd += ["--ipfix", f"udp://127.0.0.1:{ipfix_port}"]
        if not starts:
            cmd.append("--no-starts")
        env = os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        proc = subprocess.Popen([*self.readers, *cmd], stderr=subprocess.PIPE, text=True, env=env)
        assert proc.stderr is not None
        line = proc.stderr.readline()
        if "recording" not in line:
            raise RuntimeError(f"recorder did not start: {line}{proc.stderr.read()}")
        return proc

    def start_conntrack_e(self, out: Path) -> subprocess.Popen[bytes]:
        fh, err = open(out, "wb"), open(out.with_suffix(".err"), "wb")  # noqa: SIM115
        cmd = [*self.readers, "ip", "netns", "exec", self.g, "conntrack", "-E", "-e",
               "NEW,DESTROY", "-b", str(32 * 1024 * 1024)]  # fmt: skip
        proc = subprocess.Popen(cmd, stdout=fh, stderr=err)
        fh.close()
        err.close()
        return proc

    def start_ulogd(self, out: Path) -> subprocess.Popen[bytes]:
        """Debian's ulogd2 reading the gateway's conntrack DESTROY events into JSON lines."""
        conf = out.with_suffix(".conf")
        # ulogd sets the size only if it is below the maximum: allow it to grow once
        conf.write_text(ULOGD_CONF.format(out=out, buf=32 << 20, bufmax=64 << 20))
        err = open(out.with_suffix(".err"), "wb")  # noqa: SIM115
        cmd = [*self.readers, "ip", "netns", "exec", self.g, "ulogd", "-c", str(conf)]
        proc = subprocess.Popen(cmd, stdout=err, stderr=err)
        err.close()
        return proc

    def start_nfcapd(self, flowdir: Path) -> tuple[subprocess.Popen[bytes], int]:
        """Debian's nfcapd on the host's loopback, a free port: the SOC's collector."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        flowdir.mkdir(parents=True, exist_ok=True)
        cmd = [*self.readers, "nfcapd", "-p", str(port), "-b", "127.0.0.1", "-w", str(flowdir),
               "-t", "3600", "-B", str(32 * 1024 * 1024)]  # fmt: skip
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        return proc, port

    def iperf(self, seconds: float) -> float:
        """Bulk TCP through the gateway (bits/s): the forwarding rate of long flows."""
        server = subprocess.Popen([*self.traffic, "ip", "netns", "exec", self.s, "iperf3", "-s",
                                   "-1"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            time.sleep(0.5)
            out = sh(*self.traffic, "iperf3", "-c", "10.2.2.2", "-t", str(seconds), "-J",
                     ns=self.c)  # fmt: skip
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


def run_rate(b: Bench, rate: float, duration: float, step: int, starts: bool) -> dict[str, Any]:
    sh("conntrack", "-F", ns=b.g, check=False)
    log, status, ctlog, ulog, flowdir = (
        b.workdir / f"{n}-{step}" for n in ("flows.jsonl", "status", "ct", "ulogd.json", "nf")
    )
    nfcapd, port = b.start_nfcapd(flowdir)
    rec = b.start_recorder(log, status, ipfix_port=port, starts=starts)
    cte = b.start_conntrack_e(ctlog)
    uld = b.start_ulogd(ulog)
    time.sleep(1.0)
    before = b.counter(b.g)
    sent, elapsed = b.generate(rate, duration, step * 10_000_000)
    time.sleep(2.5)  # the 1 s UDP timeout runs out and garbage collection ends the flows
    sh("conntrack", "-F", ns=b.g, check=False)
    truth = b.counter(b.g) - before
    time.sleep(1.5)
    cpu = stop(rec)
    stop(cte, signal.SIGINT)
    ulogd_cpu = stop(uld)
    time.sleep(0.5)
    stop(nfcapd)
    st = json.loads(status.read_text())
    destroys = sum(1 for line in ctlog.read_bytes().splitlines() if b"[DESTROY]" in line)
    ulogd_records = len(ulog.read_bytes().splitlines()) if ulog.exists() else 0
    ulogd_err = ulog.with_suffix(".err")
    ulogd_warnings = ulogd_err.read_bytes().count(b"losing events") if ulogd_err.exists() else 0
    errlog = ctlog.with_suffix(".err")
    enobufs = errlog.read_bytes().count(b"ENOBUFS") if errlog.exists() else 0
    ended, lost = st["counts"]["flow_end"], st["lost"]["conntrack-destroy"]
    ipfix = next(v for k, v in st["sinks"].items() if k.startswith("ipfix:"))
    collected = nfdump_count(flowdir)
    for p in (log, status, ctlog, errlog, ulog, ulogd_err):
        p.unlink(missing_ok=True)
    shutil.rmtree(flowdir, ignore_errors=True)
    return {
        "offered_per_s": round(sent / elapsed),
        "flows": truth,
        "recorded": ended,
        "lost_counted": lost,
        "lost_new_events": st["lost"]["conntrack-new"],
        "accounted": ended + lost == truth,
        "ipfix_exported": ipfix["exported"],
        "ipfix_lost": ipfix["lost"],
        "nfdump_read_back": collected,
        "conntrack_E": destroys,
        "conntrack_E_enobufs": enobufs,
        "ulogd2": ulogd_records,
        "ulogd2_losing_events_warnings": ulogd_warnings,
        "ratio_vs_conntrack_E": round(ended / destroys, 3) if destroys else None,
        "ratio_vs_ulogd2": round(ended / ulogd_records, 3) if ulogd_records else None,
        "recorder_cpu_s": round(cpu, 2),
        "recorder_cpu_us_per_flow": per_record(cpu, ended),
        "ulogd2_cpu_s": round(ulogd_cpu, 2),
        "ulogd2_cpu_us_per_flow": per_record(ulogd_cpu, ulogd_records),
    }


def forwarding(b: Bench, mode: str, duration: float) -> tuple[float, float]:
    """(bulk TCP bits/s, one-packet new flows/s delivered) with the recorder in `mode`:
    "off", "on" (JSON file + IPFIX, start and end records) or "ends" (no start records,
    so no NEW events: what an IPFIX-only gateway needs)."""
    sh("conntrack", "-F", ns=b.g, check=False)
    rec = nfcapd = None
    if mode != "off":
        nfcapd, port = b.start_nfcapd(b.workdir / "fwd-nf")
        rec = b.start_recorder(
            b.workdir / "fwd.jsonl", b.workdir / "fwd-status", ipfix_port=port,
            starts=mode == "on",
        )  # fmt: skip
    time.sleep(0.5)
    bulk = b.iperf(duration)
    before = b.counter(b.s)
    offset = 90_000_000 + {"off": 0, "on": 1, "ends": 2}[mode] * 10_000_000
    _, elapsed = b.generate(0, duration, offset)
    delivered = b.counter(b.s) - before
    if rec is not None and nfcapd is not None:
        time.sleep(1.0)
        stop(rec)
        stop(nfcapd)
        shutil.rmtree(b.workdir / "fwd-nf", ignore_errors=True)
    return bulk, delivered / elapsed


ULOGD_CONF = """\
[global]
logfile="stdout"
loglevel=5
plugin="/usr/lib/x86_64-linux-gnu/ulogd/ulogd_inpflow_NFCT.so"
plugin="/usr/lib/x86_64-linux-gnu/ulogd/ulogd_filter_IP2STR.so"
plugin="/usr/lib/x86_64-linux-gnu/ulogd/ulogd_output_JSON.so"
stack=ct1:NFCT,ip2str1:IP2STR,json1:JSON

[ct1]
event_mask=4
hash_enable=0
netlink_socket_buffer_size={buf}
netlink_socket_buffer_maxsize={bufmax}

[json1]
file="{out}"
sync=0
"""


def nfdump_count(flowdir: Path) -> int:
    """Flows nfcapd stored, as `nfdump -r` reads them back."""
    total = 0
    for f in sorted(flowdir.glob("nfcapd.*")):
        if f.name[7:].isdigit():
            out = sh("nfdump", "-r", str(f), "-q", "-o", "fmt:%pr", check=False)
            total += sum(1 for line in out.splitlines() if line.strip())
    return total


def per_record(cpu: float, records: int) -> float | None:
    return round(cpu / records * 1e6, 1) if records else None


MODES = ("off", "on", "ends")


def _cost(on: float, off: float) -> float | None:
    return round(1 - on / off, 3) if off else None


RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results" / "flows.json"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/bench flows", description=__doc__)
    p.add_argument("--rates", default="5000,10000,20000,30000,40000", help="flows/s, comma list")
    p.add_argument("--duration", type=float, default=3.0, help="seconds per rate")
    p.add_argument("--repeat", type=int, default=3, help="forwarding runs per mode")
    p.add_argument(
        "--no-pin",
        action="store_true",
        help="let traffic and readers share both CPUs (default: traffic on CPU 0, "
        "recorder and the other readers on CPU 1)",
    )
    p.add_argument(
        "--starts",
        action="store_true",
        help="rate table with start records too (default: ends only, as a gateway "
        "exporting to a SOC runs: --no-flow-starts)",
    )
    p.add_argument("--json", action="store_true", help="print results as JSON")
    args = p.parse_args(argv)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="zf-bench-") as tmp:
        b = Bench(Path(tmp), pin=not args.no_pin)
        try:
            b.setup()
            rows = [
                {"target_per_s": int(r)} | run_rate(b, float(r), args.duration, i, args.starts)
                for i, r in enumerate(args.rates.split(","))
            ]
            # Interleave the modes and take medians: the machine's cores are shared and noisy.
            runs: dict[str, list[tuple[float, float]]] = {m: [] for m in MODES}
            for _ in range(args.repeat):
                for mode in MODES:
                    runs[mode].append(forwarding(b, mode, 2.0))
        finally:
            b.close()
    bulk = {m: statistics.median(r[0] for r in runs[m]) for m in MODES}
    flood = {m: statistics.median(r[1] for r in runs[m]) for m in MODES}
    zero_loss = [
        r["offered_per_s"]
        for r in rows
        if r["lost_counted"] == 0 and r["accounted"] and r["nfdump_read_back"] == r["recorded"]
    ]
    bulk_cost = {m: _cost(bulk[m], bulk["off"]) for m in MODES[1:]}
    flood_cost = {m: _cost(flood[m], flood["off"]) for m in MODES[1:]}
    result: dict[str, Any] = {
        "machine": os.uname().release,
        "cpus": os.cpu_count(),
        "load_before": load_before,
        "pinned": not args.no_pin,
        "rate_table_recorder": "start+end records" if args.starts else "end records only",
        "when": datetime.now(UTC).isoformat(),
        "rates": rows,
        "max_zero_loss_per_s": max(zero_loss) if zero_loss else 0,
        "bulk_tcp_bps": {m: round(v) for m, v in bulk.items()},
        "new_flow_flood_per_s": {m: round(v) for m, v in flood.items()},
        "bulk_cost": bulk_cost,
        "flood_cost": flood_cost,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    cols = ["target_per_s", "offered_per_s", "flows", "recorded", "lost_counted", "accounted",
            "nfdump_read_back", "conntrack_E", "ulogd2", "recorder_cpu_us_per_flow",
            "ulogd2_cpu_us_per_flow"]  # fmt: skip
    print(" ".join(c[:12].ljust(12) for c in cols))
    for r in rows:
        print(" ".join(str(r[c]).ljust(12) for c in cols))
    print(f"max sustained new flows/s with zero loss (and all in nfdump): "
          f"{result['max_zero_loss_per_s']}")  # fmt: skip
    for m in MODES[1:]:
        print(
            f"recorder {m}: bulk TCP {bulk[m] / 1e9:.2f} vs {bulk['off'] / 1e9:.2f} Gbit/s "
            f"(cost {bulk_cost[m] or 0:.1%}); one-packet flood {flood[m]:.0f} vs "
            f"{flood['off']:.0f}/s (cost {flood_cost[m] or 0:.1%})"
        )
    print(f"results: {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
