"""/v1/health, /v1/status and /metrics (operators only), /v1/openapi.json.

None of them changes anything: grants expire on the service's timer, not on a read.
"""

from __future__ import annotations

from aiohttp import web

from policyd.api.context import STATE, require_operator
from policyd.api.openapi import spec

routes = web.RouteTableDef()
PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"


@routes.get("/v1/health")
async def health(request: web.Request) -> web.Response:
    return web.json_response({"ok": True, "gateway": request.app[STATE].gateway})


@routes.get("/v1/status")
async def status(request: web.Request) -> web.Response:
    state = request.app[STATE]
    await require_operator(request)
    grants = state.service.counts()
    return web.json_response({"gateway": state.gateway, "grants": grants, **state.status()})


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    state = request.app[STATE]
    await require_operator(request)
    return web.Response(body=state.metrics(), headers={"Content-Type": PROMETHEUS})


@routes.get("/v1/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    return web.json_response(spec())
