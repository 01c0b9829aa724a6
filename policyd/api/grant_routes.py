"""/v1/grants and /v1/emergency: just-in-time access over the API.

Every step goes through the GrantBook's rules, then the kernel (an element with a
timeout, or its removal plus the identity's live sessions), then the audit trail.
"""

from __future__ import annotations

from datetime import timedelta

from aiohttp import web

from policyd.api import schemas
from policyd.api.context import LOCAL, STATE, Caller, ControlState, caller_of, grant_view
from policyd.api.errors import body
from policyd.grants import Grant, GrantError, GrantState
from topology.fields import parse_duration

routes = web.RouteTableDef()


def _duration(text: str) -> timedelta:
    value = parse_duration(text)
    if value is None or value <= timedelta(0):
        raise GrantError(422, f"duration: '{text}' is not a duration like 30m or 2h")
    return value


def _open(state: ControlState, grant: Grant, before: Grant | None) -> None:
    """Put an active grant into the kernel; if the kernel refuses, the book forgets it."""
    book = state.book
    ident, conduit = book.topology.identities[grant.identity], book.topology.conduits[grant.conduit]
    assert grant.expires_at is not None
    timeout = grant.expires_at - state.clock()
    try:
        state.enforcer.open_grant(ident, conduit, max(timeout, timedelta(seconds=1)))
    except Exception:
        if before is None:
            del book.grants[grant.id]
        else:
            book.grants[grant.id] = before
        raise


def _close(state: ControlState, grant: Grant) -> None:
    book = state.book
    ident, conduit = book.topology.identities[grant.identity], book.topology.conduits[grant.conduit]
    state.enforcer.close_grant(ident, conduit)


def _audit(state: ControlState, event: str, grant: Grant, caller: Caller) -> None:
    state.audit(event, {"grant": grant_view(grant), "by": caller.label(), "gateway": state.gateway})


async def _new_grant(request: web.Request, emergency: bool) -> web.Response:
    state = request.app[STATE]
    data = await body(request, schemas.EMERGENCY_REQUEST if emergency else schemas.GRANT_REQUEST)
    caller = caller_of(request, data.get("as"))
    make = state.book.emergency if emergency else state.book.request
    grant = make(
        caller.identity, data["conduit"], _duration(data["duration"]), data["reason"], state.clock()
    )
    if emergency:
        _open(state, grant, before=None)
    _audit(state, "emergency_opened" if emergency else "grant_requested", grant, caller)
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
    caller = caller_of(request, data.get("as"))
    before = state.book.get(request.match_info["grant_id"])
    grant = state.book.approve(before.id, caller.identity, state.clock())
    _open(state, grant, before)
    _audit(state, "grant_approved", grant, caller)
    return web.json_response(grant_view(grant))


@routes.post("/v1/grants/{grant_id}/deny")
async def deny(request: web.Request) -> web.Response:
    state = request.app[STATE]
    data = await body(request, schemas.DECISION)
    caller = caller_of(request, data.get("as"))
    grant = state.book.deny(
        request.match_info["grant_id"], caller.identity, state.clock(), data.get("note", "")
    )
    _audit(state, "grant_denied", grant, caller)
    return web.json_response(grant_view(grant))


@routes.post("/v1/grants/{grant_id}/revoke")
async def revoke(request: web.Request) -> web.Response:
    state = request.app[STATE]
    data = await body(request, schemas.DECISION)
    caller = caller_of(request, data.get("as"))
    was_active = state.book.get(request.match_info["grant_id"]).state is GrantState.ACTIVE
    grant = state.book.revoke(
        request.match_info["grant_id"], caller.identity, state.clock(), admin=caller.local
    )
    if was_active:
        _close(state, grant)
    _audit(state, "grant_revoked", grant, caller)
    return web.json_response(grant_view(grant))


@routes.get("/v1/grants")
async def list_grants(request: web.Request) -> web.Response:
    state = request.app[STATE]
    state.book.expire(state.clock())
    if request.app[LOCAL]:
        grants = list(state.book.grants.values())
    else:
        grants = state.book.visible_to(caller_of(request, None).identity)
    grants.sort(key=lambda g: g.requested_at)
    return web.json_response({"grants": [grant_view(g) for g in grants]})
