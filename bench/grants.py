"""`python -m bench.grants` (`scripts/bench grants`): the grant service against scale.

Needs root: runs in a private network namespace (zb + 4 hex) with the real ruleset,
nfnetlink, an fsynced state journal and an audit log with its hash chain.

- approve -> kernel element present, p50/p99, with 10,000 grants in the book;
- reconcile 100,000 kernel elements against a book of 100,000 active grants (a full
  pass, and the timer's pass when the ruleset generation shows no other change);
- 2,000 concurrent client connections against the API: up, and RSS growth.

Writes bench/results/grants.json.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BOOK = 10_000
OPS = 500
RECONCILE = 100_000
CLIENTS = 2_000


def topology(n: int) -> Any:
    """n requesters on one approval conduit, plus an approver."""
    from topology.model import (
        Approval,
        Asset,
        Conduit,
        Gateway,
        Identity,
        Role,
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

    net = IPv4Network("10.10.1.0/24")
    site = Site(
        "site",
        Gateway("192.0.2.1", 51820, IPv4Address("100.64.0.1")),
        frozen_map({"plant": Zone("site", "plant", net, 2)}),
        frozen_map({"plc": Asset("site", "plc", "plant", IPv4Address("10.10.1.5"))}),
    )
    base = int(IPv4Address("100.65.0.0"))
    idents = {
        f"u{i}": Identity(f"u{i}", "user", ("vendor",), IPv4Address(base + i)) for i in range(n)
    }
    idents["lead"] = Identity("lead", "user", ("lead",), IPv4Address("100.64.0.10"))
    jit = Conduit(
        "jit",
        Sources(roles=("vendor",)),
        Target(TargetKind.ASSET, "site", "plc"),
        (ServiceRef("modbus", ("read", "write")),),
        approval=Approval(("lead",), (), timedelta(hours=8)),
    )
    return Topology(
        sites=frozen_map({"site": site}),
        roles=frozen_map({r: Role(r) for r in ("vendor", "lead")}),
        identities=frozen_map(idents),
        services=frozen_map(dict(BUILTIN_SERVICES)),
        conduits=frozen_map({"jit": jit}),
        tests=(),
        files=(),
    )


def _service(n: int, workdir: Path) -> Any:
    from policyd.compiler import CompileOptions, compile_ruleset
    from policyd.enforcer import KernelGrants
    from policyd.flowlog.auditchain import AuditChain
    from policyd.flowlog.records import AuditEvent, audit_record
    from policyd.flowlog.sinks import JsonLinesFile
    from policyd.grant_service import GrantService
    from policyd.grant_store import GrantStore
    from policyd.grants import GrantBook
    from policyd.kernel import NftHandle

    topo = topology(n)
    rs = compile_ruleset(
        topo, "site", now=datetime.now(UTC), options=CompileOptions(tunnels=("zb",))
    )
    nft = NftHandle()
    nft.apply_ruleset(rs)
    daemon = SimpleNamespace(current=rs, nft=nft)
    sink, chain = JsonLinesFile(workdir / "audit.jsonl"), AuditChain()

    def audit(event: AuditEvent) -> None:
        rec = audit_record("site", event)
        chain.seal(rec.data)
        sink.write(rec)
        sink.flush()

    store = GrantStore(workdir / "grants.json")
    return GrantService(GrantBook(topo), KernelGrants(daemon), audit, store), rs, nft  # type: ignore[arg-type]


async def approve_latency(workdir: Path) -> dict[str, Any]:
    import logging

    logging.disable(logging.INFO)
    svc, rs, nft = _service(BOOK + OPS, workdir)
    await svc.start()
    hour = timedelta(hours=1)
    for i in range(BOOK):  # half active (kernel elements), half waiting
        g = await svc.request(f"u{i}", "jit", hour, "bench", f"u{i}")
        if i % 2 == 0:
            await svc.approve(g.id, "lead", "lead")
    gset = rs.conduits["jit"].identity_set
    added: list[float] = []
    add = svc.kernel.add

    def timed_add(grant: Any, timeout: timedelta) -> None:
        add(grant, timeout)
        added.append(time.perf_counter())  # the element is in the kernel from here on

    svc.kernel.add = timed_add
    present, answered = [], []
    for i in range(BOOK, BOOK + OPS):
        g = await svc.request(f"u{i}", "jit", hour, "bench", f"u{i}")
        t0 = time.perf_counter()
        await svc.approve(g.id, "lead", "lead")
        answered.append(time.perf_counter() - t0)
        present.append(added[-1] - t0)
        found = nft.element(gset, str(rs.conduits["jit"].identities[f"u{i}"]))
        assert found is not None and found[0] == g.id
    present.sort()
    answered.sort()

    def pct(xs: list[float], q: float) -> float:
        return xs[min(len(xs) - 1, int(len(xs) * q))] * 1e3

    return {
        "book": len(svc.book.grants),
        "active": len(svc.book.active()),
        "approvals": OPS,
        "present_p50_ms": pct(present, 0.5),
        "present_p99_ms": pct(present, 0.99),
        "answered_p50_ms": pct(answered, 0.5),
        "answered_p99_ms": pct(answered, 0.99),
        "note": "present: intent fsynced + element added; answered: + read back, audit, commit",
    }


async def reconcile_time(workdir: Path) -> dict[str, Any]:
    import logging

    from policyd.grants import Grant, GrantState

    logging.disable(logging.INFO)
    svc, rs, nft = _service(RECONCILE, workdir)
    plan = rs.conduits["jit"]
    now = datetime.now(UTC)
    elems = []
    for i in range(RECONCILE):
        gid = f"g{i + 1}-bench"
        svc.book.grants[gid] = Grant(
            gid,
            "jit",
            f"u{i}",
            "bench",
            timedelta(hours=1),
            now,
            GrantState.ACTIVE,
            decided_by="lead",
            decided_at=now,
            expires_at=now + timedelta(hours=1),
        )
        elems.append(
            {"elem": {"val": str(plan.identities[f"u{i}"]), "timeout": 3600, "comment": gid}}
        )
    t0 = time.perf_counter()
    for k in range(0, len(elems), 10_000):
        nft.add_elements(plan.identity_set, elems[k : k + 10_000])
    fill = time.perf_counter() - t0
    await asyncio.sleep(5)  # let the kernel finish growing the set's hash table
    runs = []
    for _ in range(3):
        t0 = time.perf_counter()
        report = await svc.reconcile(full=True)
        runs.append(time.perf_counter() - t0)
        assert report == {"removed": 0, "ended": 0, "recovered": 0}, report
    t0 = time.perf_counter()
    await svc.reconcile()  # the timer's pass: the generation says nothing else changed
    periodic = time.perf_counter() - t0
    return {
        "elements": RECONCILE,
        "fill_s": fill,
        "reconcile_s": sorted(runs)[1],
        "runs_s": runs,
        "periodic_unchanged_s": periodic,
    }


def inside(which: str) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="zg-bench-grants-"))
    coro = approve_latency(workdir) if which == "approve" else reconcile_time(workdir)
    print(json.dumps(asyncio.run(coro)))


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def connections() -> dict[str, Any]:
    """2,000 clients from 40 source addresses at once against the API process."""
    import aiohttp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tmp = Path(tempfile.mkdtemp(prefix="zg-bench-api-"))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.policyd.api_server",
            str(tmp / "api.sock"),
            "127.0.0.1",
            str(port),
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
    )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 8192), max(hard, 8192)))
        before = _rss_kb(server.pid)

        async def one(i: int) -> int:
            conn = aiohttp.TCPConnector(local_addr=(f"127.0.0.{2 + i % 40}", 0), force_close=True)
            try:
                async with (
                    aiohttp.ClientSession(
                        connector=conn, timeout=aiohttp.ClientTimeout(total=60)
                    ) as s,
                    s.get(f"http://127.0.0.1:{port}/v1/grants") as r,
                ):
                    await r.read()
                    return r.status
            except (TimeoutError, aiohttp.ClientError, OSError):
                return 0

        async def storm() -> list[int]:
            return await asyncio.gather(*(one(i) for i in range(CLIENTS)))

        t0 = time.perf_counter()
        statuses = asyncio.run(storm())
        took = time.perf_counter() - t0
        alive = server.poll() is None
        grown = (_rss_kb(server.pid) - before) / 1024 if alive else None
    finally:
        server.send_signal(signal.SIGKILL)
        server.wait()
    return {
        "clients": CLIENTS,
        "alive": alive,
        "rss_growth_mb": grown,
        "answered": sum(1 for s in statuses if s),
        "refused_at_cap": statuses.count(0),
        "seconds": took,
    }


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--inside":
        inside(sys.argv[2])
        return 0
    if os.geteuid() != 0:
        print("bench.grants needs root (a network namespace)", file=sys.stderr)
        return 2
    ns = "zb" + secrets.token_hex(2)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    results: dict[str, Any] = {
        "machine": os.uname().release,
        "cpus": os.cpu_count(),
        "when": datetime.now(UTC).isoformat(),
    }
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        for which in ("approve", "reconcile"):
            out = subprocess.run(
                [
                    "ip",
                    "netns",
                    "exec",
                    ns,
                    sys.executable,
                    "-m",
                    "bench.grants",
                    "--inside",
                    which,
                ],
                capture_output=True,
                text=True,
                env=env,
                cwd=ROOT,
                timeout=1800,
                check=False,
            )
            if out.returncode != 0:
                raise RuntimeError(out.stderr)
            results[which] = json.loads(out.stdout.strip().splitlines()[-1])
            print(json.dumps({which: results[which]}), flush=True)
            subprocess.run(["ip", "netns", "exec", ns, "nft", "flush", "ruleset"], check=False)
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
    results["connections"] = connections()
    print(json.dumps({"connections": results["connections"]}), flush=True)
    out_path = ROOT / "bench" / "results" / "grants.json"
    out_path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
