"""`python -m bench.policy` (`scripts/bench policy`): compile/apply cost against scale.

Needs root: applies in a private network namespace (named zp + 4 hex), never in the
caller's. Measures, for 100, 1k, 10k and 100k identities (roles = identities/1000,
at least 4; two conduits per role; zones and assets grow with identities):
compile time, apply time (check + commit of the whole table), rules in hook chains
and in total; one membership change (set element add or delete through the
persistent handle, sent over nfnetlink) at 1k and 100k; UDP packet rate through a
gateway namespace with the 100k-identity policy against the same path with no
policy, in one run (established packets pass the per-conduit verification); and one
identity with 1,000 open flows revoked: how many next packets still get through (the
kernel's drop) and how long the conntrack cleanup takes.
Writes bench/results/policy.json.
"""

from __future__ import annotations

import json
import os
import secrets
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from ipaddress import IPv4Address, IPv4Network
from itertools import pairwise
from pathlib import Path
from typing import Any

from topology.model import (
    Asset,
    Conduit,
    Gateway,
    Identity,
    Role,
    Service,
    ServiceRef,
    Site,
    Sources,
    Target,
    TargetKind,
    Topology,
    Zone,
    frozen_map,
)
from topology.services import BUILTIN_SERVICES

SIZES = (100, 1_000, 10_000, 100_000)
NOW = datetime(2026, 3, 4, 10, 0, tzinfo=UTC)
BENCH_PORT = 5201
ROOT = Path(__file__).resolve().parents[1]


def synthetic(n: int) -> Topology:
    """n identities; roles n/1000 (>= 4); 2 conduits per role; a zone per 2000 identities."""
    roles = max(4, n // 1000)
    zones_n = max(2, -(-n // 2000))
    zones, assets = {}, {}
    for z in range(zones_n):
        net = IPv4Network((int(IPv4Address("10.128.0.0")) + z * 256, 24))
        zones[f"z{z}"] = Zone("site", f"z{z}", net, 2)
        for a in range(50):
            assets[f"a{z}-{a}"] = Asset("site", f"a{z}-{a}", f"z{z}", net.network_address + 10 + a)
    zones["bench"] = Zone("site", "bench", IPv4Network("10.10.1.0/24"), 2)
    assets["sink"] = Asset("site", "sink", "bench", IPv4Address("10.10.1.5"))
    site = Site(
        "site",
        Gateway("192.0.2.1", 51820, IPv4Address("100.64.0.1")),
        frozen_map(zones),
        frozen_map(assets),
    )
    base = int(IPv4Address("100.64.1.0"))
    idents = {
        f"u{i}": Identity(f"u{i}", "user", (f"r{i % roles}",), IPv4Address(base + i))
        for i in range(n)
    }
    idents["bench-client"] = Identity(
        "bench-client", "user", ("bench",), IPv4Address("100.127.0.10")
    )
    services = dict(BUILTIN_SERVICES)
    services["bench-udp"] = Service("bench-udp", "udp", (BENCH_PORT,), builtin=False)
    services["bench-tcp"] = Service("bench-tcp", "tcp", (BENCH_PORT,), builtin=False)
    conduits = {}
    for r in range(roles):
        z = r % zones_n
        conduits[f"r{r}-zone"] = Conduit(
            f"r{r}-zone",
            Sources(roles=(f"r{r}",)),
            Target(TargetKind.ZONE, "site", f"z{z}"),
            (ServiceRef("ssh"), ServiceRef("modbus", ("read",))),
        )
        conduits[f"r{r}-asset"] = Conduit(
            f"r{r}-asset",
            Sources(roles=(f"r{r}",)),
            Target(TargetKind.ASSET, "site", f"a{z}-{r % 50}"),
            (ServiceRef("modbus", ("read", "write")), ServiceRef("https")),
        )
    conduits["bench"] = Conduit(
        "bench",
        Sources(roles=("bench",)),
        Target(TargetKind.ASSET, "site", "sink"),
        (ServiceRef("bench-udp"), ServiceRef("bench-tcp")),
    )
    return Topology(
        sites=frozen_map({"site": site}),
        roles=frozen_map(
            {r.name: r for r in [Role(f"r{i}") for i in range(roles)] + [Role("bench")]}
        ),
        identities=frozen_map(idents),
        services=frozen_map(services),
        conduits=frozen_map(conduits),
        tests=(),
        files=(),
    )


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check)


def in_ns(ns: str, code: str) -> Any:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=600,
    )
    if out.returncode != 0:
        raise RuntimeError(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


KERNEL_CODE = """
import json, time, statistics
from datetime import UTC, datetime
from bench.policy import synthetic, NOW
from policyd.compiler import compile_ruleset, CompileOptions
from policyd.kernel import NftHandle
n = {n}
topo = synthetic(n)
t0 = time.perf_counter()
rs = compile_ruleset(topo, "site", now=NOW, options=CompileOptions(tunnels=("{tunnel}",)))
t_compile = time.perf_counter() - t0
h = NftHandle()
t0 = time.perf_counter(); h.apply_ruleset(rs); t_first = time.perf_counter() - t0
# steady state: replace a table of the same size (what a reload does)
t0 = time.perf_counter(); h.apply_ruleset(rs); t_apply = time.perf_counter() - t0
t0 = time.perf_counter(); h.apply_ruleset(rs, check=False); t_commit = time.perf_counter() - t0
res = dict(n=n, compile_s=t_compile, first_apply_s=t_first, apply_s=t_apply,
           commit_only_s=t_commit,
           hook_rules=rs.hook_rule_count(),
           rules=sum(1 for o in rs.objects if "rule" in o),
           elements=sum(len(o.get("set", o.get("map", {{}})).get("elem", [])) for o in rs.objects))
if {changes}:
    import logging; logging.disable(logging.INFO)
    s = rs.conduits["r0-zone"].identity_set
    lat = []
    for i in range(1000):
        addr = "100.126.%d.%d" % (i // 250, i % 250 + 1)
        t0 = time.perf_counter(); h.add_elements(s, [addr]); lat.append(time.perf_counter() - t0)
        t0 = time.perf_counter(); h.delete_elements(s, [addr]); lat.append(time.perf_counter() - t0)
    lat.sort()
    res["change_p50_ms"] = lat[len(lat) // 2] * 1e3
    res["change_p99_ms"] = lat[int(len(lat) * 0.99)] * 1e3
print(json.dumps(res))
"""


def packet_rate(tag: str, gw: str, cli: str, srv: str, seconds: int) -> float:
    out = sh(
        "ip",
        "netns",
        "exec",
        cli,
        "iperf3",
        "-c",
        "10.10.1.5",
        "-p",
        str(BENCH_PORT),
        "-u",
        "-l",
        "64",
        "-b",
        "0",
        "-t",
        str(seconds),
        "-B",
        "100.127.0.10",
        "-J",
        check=False,
    )
    data = json.loads(out.stdout)
    if "error" in data:
        raise RuntimeError(data["error"])
    end = data["end"]["sum"]
    return float(end["packets"] - end.get("lost_packets", 0)) / float(end["seconds"])


FLOWS = 1000
CLIENT_CODE = """
import socket, sys
socks = []
for i in range({flows}):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("100.127.0.10", 20000 + i))
    socks.append(s)
for line in sys.stdin:
    for s in socks:
        s.sendto(b"x" * 32, ("10.10.1.5", {port}))
    print("sent", flush=True)
"""
REVOKE_CODE = """
import json, time
from datetime import UTC, datetime
from ipaddress import IPv4Address
from bench.policy import synthetic, NOW
from policyd.compiler import compile_ruleset, CompileOptions
from policyd.flowlog import conntrack
from policyd.kernel import NftHandle
from policyd.session_end import of_source
topo = synthetic(100_000)
rs = compile_ruleset(topo, "site", now=NOW, options=CompileOptions(tunnels=("{tunnel}",)))
plan = rs.conduits["bench"]
h = NftHandle()
before = len([f for f in conntrack.dump() if f.mark == plan.mark])
t0 = time.perf_counter()
h.delete_elements(plan.identity_set, ["100.127.0.10"])  # the revocation: one element
t_kernel = time.perf_counter() - t0
t0 = time.perf_counter()
ended = of_source(conntrack.dump(), plan.mark, IPv4Address("100.127.0.10"), "revoked")
deleted = conntrack.delete([e.flow for e in ended])
t_clean = time.perf_counter() - t0
left = len([f for f in conntrack.dump() if f.mark == plan.mark])
print(json.dumps(dict(open_flows=before, kernel_change_ms=t_kernel * 1e3,
                      conntrack_clean_ms=t_clean * 1e3, deleted=deleted, left=left)))
"""
SINK_RULES = (
    "add table inet bench; add counter inet bench sink; "
    "add chain inet bench in { type filter hook input priority 0; }; "
    "add rule inet bench in udp dport %d counter name sink"
)


def sink_packets(srv: str) -> int:
    out = sh("ip", "netns", "exec", srv, "nft", "-j", "list", "counter", "inet", "bench", "sink")
    for o in json.loads(out.stdout)["nftables"]:
        if "counter" in o:
            return int(o["counter"]["packets"])
    raise RuntimeError("no sink counter")


def revoke_sessions(tag: str, gw: str, cli: str, srv: str) -> dict[str, Any]:
    """One identity with FLOWS open UDP flows loses its admission (one element deleted):
    how many of the flows' next packets still reach the server, and how long policyd's
    cleanup (conntrack dump, select, delete) takes. The 100k policy must be in place."""
    sh("ip", "netns", "exec", srv, "nft", SINK_RULES % BENCH_PORT)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    client = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            cli,
            sys.executable,
            "-c",
            CLIENT_CODE.format(flows=FLOWS, port=BENCH_PORT),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert client.stdin is not None and client.stdout is not None
    try:
        client.stdin.write("go\n")
        client.stdin.flush()
        client.stdout.readline()
        time.sleep(0.3)
        first = sink_packets(srv)
        r: dict[str, Any] = in_ns(gw, REVOKE_CODE.format(tunnel=tag + "t"))
        client.stdin.write("go\n")
        client.stdin.flush()
        client.stdout.readline()
        time.sleep(0.3)
        r["reached_before"] = first
        r["reached_after_revoke"] = sink_packets(srv) - first
    finally:
        client.kill()
        client.wait()
    return r


def main() -> int:
    if os.geteuid() != 0:
        print("bench.policy needs root (network namespaces)", file=sys.stderr)
        return 2
    tag = "zp" + secrets.token_hex(2)
    gw, cli, srv = tag + "g", tag + "c", tag + "s"
    results: dict[str, Any] = {
        "machine": os.uname().release,
        "cpus": os.cpu_count(),
        "when": datetime.now(UTC).isoformat(),
        "sizes": [],
    }
    made = []
    try:
        for ns in (gw, cli, srv):
            sh("ip", "netns", "add", ns)
            made.append(ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh(
            "ip",
            "link",
            "add",
            tag + "t",
            "netns",
            gw,
            "type",
            "veth",
            "peer",
            "name",
            tag + "a",
            "netns",
            cli,
        )
        sh(
            "ip",
            "link",
            "add",
            tag + "l",
            "netns",
            gw,
            "type",
            "veth",
            "peer",
            "name",
            tag + "b",
            "netns",
            srv,
        )
        for ns, dev, addr in (
            (gw, tag + "t", "100.64.0.1/10"),
            (gw, tag + "l", "10.10.1.1/24"),
            (cli, tag + "a", "100.127.0.10/10"),
            (srv, tag + "b", "10.10.1.5/24"),
        ):
            sh("ip", "-n", ns, "addr", "add", addr, "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
        sh("ip", "-n", cli, "route", "add", "10.10.1.0/24", "via", "100.64.0.1")
        sh("ip", "-n", srv, "route", "add", "default", "via", "10.10.1.1")
        sh("ip", "netns", "exec", gw, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        for n in SIZES:
            t0 = time.perf_counter()
            synthetic(n)
            build = time.perf_counter() - t0
            r = in_ns(gw, KERNEL_CODE.format(n=n, tunnel=tag + "t", changes=n in (1_000, 100_000)))
            r["build_model_s"] = build
            results["sizes"].append(r)
            print(json.dumps(r), flush=True)
        # Packet rate, alternating three states (the 100k policy is applied last above).
        server = subprocess.Popen(
            ["ip", "netns", "exec", srv, "iperf3", "-s", "-p", str(BENCH_PORT)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.5)
        try:
            # The same stream through: the 100k-identity policy; an empty policy (the same
            # stateful table, no identities but the benchmark's own client); no table.
            policy_rates, empty_rates, bare_rates = [], [], []
            for _ in range(3):
                policy_rates.append(packet_rate(tag, gw, cli, srv, 3))
                in_ns(gw, KERNEL_CODE.format(n=0, tunnel=tag + "t", changes=False))
                empty_rates.append(packet_rate(tag, gw, cli, srv, 3))
                sh("ip", "netns", "exec", gw, "nft", "delete", "table", "inet", "zonegate")
                bare_rates.append(packet_rate(tag, gw, cli, srv, 3))
                in_ns(gw, KERNEL_CODE.format(n=100_000, tunnel=tag + "t", changes=False))
        finally:
            server.kill()
            server.wait()
        results["packet_rate"] = {
            "identities": 100_000,
            "udp_payload_bytes": 64,
            "policy_pps": policy_rates,
            "empty_policy_pps": empty_rates,
            "no_firewall_pps": bare_rates,
            "ratio": statistics.median(policy_rates) / statistics.median(empty_rates),
            "ratio_vs_no_firewall": statistics.median(policy_rates) / statistics.median(bare_rates),
        }
        print(json.dumps(results["packet_rate"]), flush=True)
        results["revoke_sessions"] = revoke_sessions(tag, gw, cli, srv)
        print(json.dumps(results["revoke_sessions"]), flush=True)
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
    sizes = {r["n"]: r for r in results["sizes"]}
    results["ratios"] = {
        "apply_10x": [sizes[b]["apply_s"] / sizes[a]["apply_s"] for a, b in pairwise(SIZES)],
        "commit_10x": [
            sizes[b]["commit_only_s"] / sizes[a]["commit_only_s"] for a, b in pairwise(SIZES)
        ],
        "change_100k_over_1k": sizes[100_000]["change_p99_ms"] / sizes[1_000]["change_p99_ms"],
    }
    out = ROOT / "bench" / "results" / "policy.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
