"""/v1/grants and /v1/emergency: just-in-time access over the API.

Handlers establish who calls and hand over to the GrantService, which owns the book,
the kernel elements, the audit trail and the state file. Listing changes nothing.
"""

from __future__ import annotations

from datetime import timedelta

from aiohttp import web

from policyd.api import schemas
from policyd.api.context import STATE, caller_of, grant_view, readers_of
from policyd.api.errors import ApiError, body
from policyd.api.second_factor import require_second_factor
from topology.fields import parse_duration

routes = web.RouteTableDef()


def _duration(text: str) -> timedelta:
    value = parse_duration(text)
    if value is None or value <= timedelta(0):
        raise ApiError(422, f"duration: '{text}' is not a duration like 30m or 2h")
    return value


async def _new_grant(request: web.Request, emergency: bool) -> web.Response:
    state = request.app[STATE]
    data = await body(request, schemas.EMERGENCY_REQUEST if emergency else schemas.GRANT_REQUEST)
    caller = await caller_of(request, data.get("as"))
    if emergency:
        require_second_factor(
            state, caller, data["conduit"], data.get("second_factor"), "emergency"
        )
    make = state.service.emergency if emergency else state.service.request
    grant = await make(
        caller.identity,
        data["conduit"],
        _duration(data["duration"]),
        data["reason"],
        caller.label(),
    )
    return web.json_response(grant_view(grant), status=201)


@routes.post("/v1/grants")
async def request_grant(request: web.Request) -> web.Response:
    return await _new_grant(request, emergency=False)


@routes.post("/v1/emergency")
async def emergency(request: web.Request) -> web.Response:
    return await _new_grant(request, emergency=True)


@routes.post("/v1/grants/{grant_id}/approve")
async def approve(request: web.Request) -> web.Response:
    state = request.app[STATE]
    data = await body(request, schemas.DECISION)
    caller = await caller_of(request, data.get("as"))
    conduit = state.service.book.get(request.match_info["grant_id"]).conduit
    require_second_factor(state, caller, conduit, data.get("second_factor"), "approve")
    grant = await state.service.approve(
        request.match_info["grant_id"], caller.identity, caller.label(), data.get("note", "")
    )
    return web.json_response(grant_view(grant))


@routes.post("/v1/grants/{grant_id}/deny")
async def deny(request: web.Request) -> web.Response:
    state = request.app[STATE]
    data = await body(request, schemas.DECISION)
    caller = await caller_of(request, data.get("as"))
    grant = await state.service.deny(
        request.match_info["grant_id"], caller.identity, caller.label(), data.get("note", "")
    )
    return web.json_response(grant_view(grant))


@routes.post("/v1/grants/{grant_id}/revoke")
async def revoke(request: web.Request) -> web.Response:
    state = request.app[STATE]
    data = await body(request, schemas.DECISION)
    caller = await caller_of(request, data.get("as"))
    conduit = state.service.book.get(request.match_info["grant_id"]).conduit
    require_second_factor(state, caller, conduit, data.get("second_factor"), "revoke")
    grant = await state.service.revoke(
        request.match_info["grant_id"],
        caller.identity,
        caller.label(),
        admin=caller.admin,
        note=data.get("note", ""),
    )
    return web.json_response(grant_view(grant))


@routes.get("/v1/grants")
async def list_grants(request: web.Request) -> web.Response:
    book = request.app[STATE].service.book
    readers = await readers_of(request)
    if readers is None:
        grants = list(book.grants.values())
    else:
        seen = {g.id: g for who in sorted(readers) for g in book.visible_to(who)}
        grants = list(seen.values())
    grants.sort(key=lambda g: g.requested_at)
    return web.json_response({"grants": [grant_view(g) for g in grants]})
