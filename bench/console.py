"""`scripts/bench console`: the approvals console at scale, and how fast decisions show.

- Page render: GET /console/requests with 1,000 pending requests and /console/grants
  with 10,000 active grants, over real HTTP on loopback, as an operator (who sees all).
- Decision latency: from an approval to (a) the event on an open console's stream and
  (b) the requester's `zonegate grant request --wait` noticing it (its poll loop).

Writes bench/results/console.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from policyd.api.app import make_app
from policyd.api.context import ControlState
from policyd.console.events import Broadcaster
from policyd.flowlog.records import AuditEvent
from policyd.grant_client import _wait
from policyd.grant_service import GrantService, KernelGrant
from policyd.grants import Grant, GrantBook
from topology import load

ROOT = Path(__file__).resolve().parents[1]
OPERATOR = "127.0.2.1"


def topology(n: int) -> str:
    users = "".join(
        f"  v{i}: {{kind: user, roles: [vendor], overlay: 127.1.{i // 250}.{i % 250 + 1}}}\n"
        for i in range(n)
    )
    return f"""version: 1
sites:
  plant-a:
    gateway: {{underlay: 192.0.2.10, overlay: 127.0.2.254}}
    zones:
      control: {{cidr: 10.10.1.0/24, security_level: 2}}
    assets:
      plc-1: {{zone: control, address: 10.10.1.5}}
roles:
  vendor: {{}}
  lead: {{}}
identities:
  operator-1: {{kind: user, roles: [lead], overlay: {OPERATOR}}}
  lead-2: {{kind: user, roles: [lead], overlay: 127.0.2.2}}
{users}conduits:
  vendor-writes:
    from: {{roles: [vendor]}}
    to: {{asset: plant-a/plc-1}}
    allow: [{{modbus: [read, write]}}]
    approval: {{by: [lead], max: 4h}}
"""


class NullKernel:
    """Grants open and close instantly: the bench measures the console, not nft."""

    def __init__(self) -> None:
        self.tags: dict[str, str] = {}

    def ready(self) -> bool:
        return True

    def elements(self, conduit: str | None = None) -> list[KernelGrant]:
        return [KernelGrant("vendor-writes", a, t, 3600) for a, t in self.tags.items()]

    def address_of(self, conduit: str, identity: str) -> str | None:
        return identity

    def add(self, grant: Grant, timeout: timedelta) -> None:
        self.tags[grant.identity] = grant.id

    def delete(self, conduit: str, address: str) -> None:
        self.tags.pop(address, None)

    async def end_sessions(self, conduit: str, address: str) -> int:
        return 0


async def timed_get(session: aiohttp.ClientSession, url: str, runs: int) -> dict[str, float]:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        async with session.get(url) as r:
            body = await r.read()
            assert r.status == 200, body[:200]
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return {
        "p50_ms": round(statistics.median(times), 1),
        "p99_ms": round(times[min(len(times) - 1, int(len(times) * 0.99))], 1),
        "bytes": len(body),
    }


async def run(pending: int, active: int, runs: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "t.yaml"
        path.write_text(topology(pending + active))
        topo = load(path).topology
    book = GrantBook(topo)
    kernel = NullKernel()
    events = Broadcaster()

    def audit(e: AuditEvent) -> None:
        if e.action.startswith("grant_"):
            events.publish({"action": e.action, "grant": dict(e.details)})

    service = GrantService(book, kernel, audit)  # type: ignore[arg-type]
    now = datetime.now(UTC)
    for i in range(active):
        g = book.request(f"v{i}", "vendor-writes", timedelta(hours=1), "bench", now)
        book.approve(g.id, "operator-1", now)
    for i in range(active, active + pending):
        book.request(f"v{i}", "vendor-writes", timedelta(hours=1), "bench", now)

    async def tunnel(_a: IPv4Address) -> bool:
        return True

    state = ControlState(
        service=service,
        gateway="plant-a",
        via_tunnel=tunnel,
        operators=frozenset({"operator-1"}),
        events=events,
    )
    runner = web.AppRunner(make_app(state, local=False))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    out: dict[str, Any] = {"pending": pending, "active": active}
    conn = aiohttp.TCPConnector(local_addr=(OPERATOR, 0))
    async with aiohttp.ClientSession(connector=conn) as s:
        out["requests_page"] = await timed_get(s, base + "/console/requests", runs)
        out["grants_page"] = await timed_get(s, base + "/console/grants", runs)

        # decision latency: a console's event stream, and a requester's --wait loop
        latencies_sse, latencies_wait = [], []
        for i in range(5):
            ident = f"v{active + i}"
            gid = next(g.id for g in book.grants.values() if g.identity == ident)
            sse = await s.get(base + "/console/events")
            await sse.content.readline()  # ": connected"
            wait_conn = aiohttp.TCPConnector(local_addr=(OPERATOR, 0))
            async with aiohttp.ClientSession(connector=wait_conn) as ws:
                waiter = asyncio.create_task(_wait(ws, base, gid, 30))
                await asyncio.sleep(0.3)
                t0 = time.perf_counter()
                await service.approve(gid, "lead-2", "lead-2")
                while True:
                    line = await sse.content.readline()
                    if line.startswith(b"data:") and gid.encode() in line:
                        break
                latencies_sse.append((time.perf_counter() - t0) * 1000)
                await waiter
                latencies_wait.append((time.perf_counter() - t0) * 1000)
            sse.close()
        out["decision_to_console_ms_max"] = round(max(latencies_sse), 1)
        out["decision_to_wait_ms_max"] = round(max(latencies_wait), 1)
    await runner.cleanup()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--pending", type=int, default=1000)
    p.add_argument("--active", type=int, default=10000)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "console.json")
    args = p.parse_args()
    result = asyncio.run(run(args.pending, args.active, args.runs))
    result["measured_at"] = datetime.now(UTC).isoformat()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
