"""/v1/flows: the live flow and audit stream as JSON lines (one record per line).

Root on the local socket sees everything; a remote identity sees only its own flows and denials.
A client that falls behind gets a `loss` record saying how many it missed.
"""

from __future__ import annotations

from aiohttp import web

from policyd.api.context import STATE, readers_of
from policyd.api.errors import ApiError

routes = web.RouteTableDef()
EVENTS = ("flow", "deny", "audit", "loss")


@routes.get("/v1/flows")
async def flows(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    if state.live is None:
        raise ApiError(503, "this policyd records no flows (started with --no-flow-log)")
    wanted = request.query.get("events", ",".join(EVENTS)).split(",")
    unknown = [e for e in wanted if e not in EVENTS]
    if unknown:
        raise ApiError(422, f"events: unknown {', '.join(unknown)}; choose from {EVENTS}")
    only = await readers_of(request)  # None: root on the gateway sees everything
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)
    sub = state.live.subscribe(events=wanted)
    try:
        async for record in sub:
            if only is not None and record.data.get("identity") not in only:
                continue
            await response.write(record.line.encode() + b"\n")
    except (ConnectionResetError, ConnectionError):
        pass
    finally:
        sub.close()
    return response
