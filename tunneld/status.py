"""Status over a local unix socket: the daemon serves JSON, `tunneld status` prints it."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from aiohttp import ClientSession, UnixConnector, web
from prometheus_client import CONTENT_TYPE_LATEST

from tunneld.messages import REFUSAL_CODES


class HasSnapshot(Protocol):
    def snapshot(self) -> dict[str, Any]: ...


SNAPSHOT = web.AppKey("snapshot", HasSnapshot)
METRICS: web.AppKey[Callable[[], bytes]] = web.AppKey("metrics")


async def _status(request: web.Request) -> web.Response:
    return web.json_response(request.app[SNAPSHOT].snapshot())


async def _metrics(request: web.Request) -> web.Response:
    body = request.app[METRICS]()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def serve_status(
    source: HasSnapshot, path: Path, metrics: Callable[[], bytes] | None = None
) -> web.AppRunner:
    """Serve GET /status (and GET /metrics, Prometheus text) on `path` (0660, directory
    0755); returns the runner to clean up."""
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    if path.is_socket():
        path.unlink()
    app = web.Application()
    app[SNAPSHOT] = source
    app.router.add_get("/status", _status)
    if metrics is not None:
        app[METRICS] = metrics
        app.router.add_get("/metrics", _metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.UnixSite(runner, str(path)).start()
    os.chmod(path, 0o660)
    return runner


async def fetch_status(path: Path) -> dict[str, Any]:
    async with (
        ClientSession(connector=UnixConnector(path=str(path))) as session,
        session.get("http://tunneld/status") as resp,
    ):
        resp.raise_for_status()
        data: dict[str, Any] = await resp.json()
        return data


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    if seconds < 120:
        return f"{seconds:.1f}s"
    return f"{seconds / 60:.1f}m"


def render(status: dict[str, Any]) -> str:
    """Human-readable table: one line per peer, failures with their last reason."""
    width = max([15, *(len(n) for n in status["peers"])]) + 1
    lines = [
        f"node {status['node']}  interface {status['interface']} ({status['wireguard_backend']})"
        f"  KEM backend {status['kem_backend']}  up {_age(status['uptime'])}",
        "",
        f"{'PEER':<{width}}{'ROLE':<11}{'LAST HANDSHAKE':<16}{'PSK AGE':<9}{'ROTATIONS':>9}"
        f"{'FAILURES':>9}  LAST FAILURE",
    ]
    for name, p in sorted(status["peers"].items()):
        lines.append(
            f"{name:<{width}}{p['role']:<11}{_age(p['last_handshake_ago']) + ' ago':<16}"
            f"{_age(p['psk_age']) if p['psk_age'] is not None else 'none':<9}"
            f"{p['rotations']:>9}{p['failures']:>9}  {p['last_failure'] or '-'}"
        )
    if status.get("fingerprint"):
        lines.append("\nkey fingerprints (compare with the peer's own, e.g. over the phone):")
        lines.append(f"  {status['node']:<{width}}{status['fingerprint']}  (this node)")
        for name, p in sorted(status["peers"].items()):
            lines.append(f"  {name:<{width}}{p.get('fingerprint', '?')}")
    refused = status.get("refused_identities") or {}
    if refused:
        names = ", ".join(
            f"{name} ({REFUSAL_CODES.get(code, code)})" for name, code in sorted(refused.items())
        )
        lines.append(f"\nrefused here: {names}")
    if status.get("profile_expires"):
        lines.append(f"profile expires {status['profile_expires']}")
    if status.get("unattributed_failures"):
        lines.append(
            f"\nrejected from unknown senders: {status['unattributed_failures']} "
            f"(last: {status['last_unattributed_failure']})"
        )
    unavailable = [b for b in status.get("kem_backends", []) if not b["available"]]
    for b in unavailable:
        lines.append(f"KEM backend {b['name']}: unavailable ({b['reason']})")
    return "\n".join(lines)


def dumps(status: dict[str, Any]) -> str:
    return json.dumps(status, indent=2, sort_keys=True)
