"""/v1/health, /v1/status, /metrics (Prometheus text) and /v1/openapi.json."""

from __future__ import annotations

from aiohttp import web

from policyd.api.context import STATE
from policyd.api.openapi import spec
from policyd.grants import GrantState

routes = web.RouteTableDef()


@routes.get("/v1/health")
async def health(request: web.Request) -> web.Response:
    return web.json_response({"ok": True, "gateway": request.app[STATE].gateway})


@routes.get("/v1/status")
async def status(request: web.Request) -> web.Response:
    state = request.app[STATE]
    state.book.expire(state.clock())
    counts = {s.value: 0 for s in GrantState}
    for g in state.book.grants.values():
        counts[g.state.value] += 1
    return web.json_response({"gateway": state.gateway, "grants": counts, **state.status()})


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    state = request.app[STATE]
    state.book.expire(state.clock())
    lines = [
        "# HELP zonegate_grants Grants known to this gateway, by state.",
        "# TYPE zonegate_grants gauge",
    ]
    for s in GrantState:
        n = sum(1 for g in state.book.grants.values() if g.state is s)
        lines.append(f'zonegate_grants{{state="{s.value}"}} {n}')
    for name, value in sorted(state.metrics().items()):
        lines.append(f"# TYPE zonegate_{name} gauge")
        lines.append(f"zonegate_{name} {value}")
    return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")


@routes.get("/v1/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    return web.json_response(spec())
