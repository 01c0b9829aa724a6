"""The console's pages, form actions and live-update stream (aiohttp + Jinja2)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import shutil
from collections.abc import Awaitable, Callable
from datetime import timedelta
from importlib import resources
from typing import Any
from urllib.parse import urlencode

import jinja2
from aiohttp import web

from policyd.api.context import STATE, Caller, ControlState, caller_of
from policyd.api.errors import STATUS, ApiError
from policyd.api.second_factor import require_second_factor
from policyd.console import views
from policyd.console.views import Viewer
from policyd.grants import GrantError, GrantState
from topology import diagram
from topology.fields import parse_duration

routes = web.RouteTableDef()
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",  # no-referrer would make browsers send Origin: null
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
STATIC = {"console.js": "text/javascript", "console.css": "text/css"}
RECENT = 200  # records on the flows and audit pages
POLL, KEEPALIVE = 0.5, 15.0  # seconds: notice a closed stream, keep proxies from idling it out
PAGES = ("requests", "grants", "flows", "audit", "diagram")

_env = jinja2.Environment(
    loader=jinja2.PackageLoader("policyd.console", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)
_env.filters["when"] = views.when


@web.middleware
async def console_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Strict headers on every console response, errors as pages (not JSON)."""
    if not request.path.startswith("/console"):
        return await handler(request)
    try:
        resp = await handler(request)
    except ApiError as exc:
        resp = _page("error.html", None, status=exc.status, message=exc.reason)
    except GrantError as exc:
        resp = _page("error.html", None, status=STATUS[exc.kind], message=exc.reason)
    resp.headers.update(HEADERS)
    return resp


def form_token(state: ControlState, identity: str) -> str:
    """The anti-forgery token for this identity's forms (HMAC, per-daemon secret)."""
    mac = hmac.new(state.form_secret, f"console-form:{identity}".encode(), hashlib.sha256)
    return mac.hexdigest()


def _page(name: str, viewer: Viewer | None, status: int = 200, **ctx: Any) -> web.Response:
    text = _env.get_template(name).render(viewer=viewer, pages=PAGES, **ctx)
    return web.Response(text=text, content_type="text/html", status=status)


def _number(request: web.Request) -> int:
    try:
        return int(request.query.get("page", "1"))
    except ValueError:
        return 1


async def _viewer(request: web.Request) -> tuple[ControlState, Caller, Viewer]:
    state = request.app[STATE]
    caller = await caller_of(request, None)
    return state, caller, Viewer(caller.identity, caller.identity in state.operators)


@routes.get("/console")
async def index(request: web.Request) -> web.Response:
    raise web.HTTPSeeOther("/console/requests")


@routes.get("/console/requests")
async def requests_page(request: web.Request) -> web.Response:
    state, _caller, viewer = await _viewer(request)
    book = state.service.book
    pending = views.page_of(book, viewer, [GrantState.REQUESTED], _number(request))
    askable = views.requestable(book.topology, viewer.identity)
    return _page(
        "requests.html",
        viewer,
        page="requests",
        listing=pending,
        rows=pending.rows,
        requestable=[views.opens(book.topology, c) for c in askable],
        token=form_token(state, viewer.identity),
        done=request.query.get("done", ""),
    )


@routes.get("/console/grants")
async def grants_page(request: web.Request) -> web.Response:
    state, _caller, viewer = await _viewer(request)
    book = state.service.book
    listing = views.page_of(book, viewer, [GrantState.ACTIVE], _number(request))
    active = listing.rows
    sessions: dict[str, list[dict[str, Any]]] = {}
    for row in active:  # one conntrack lookup per grant shown
        ident = book.topology.identities.get(row.grant.identity)
        if ident is not None and ident.overlay is not None:
            sessions[row.grant.id] = await state.sessions(row.grant.conduit, str(ident.overlay))
    ended = [GrantState.DENIED, GrantState.REVOKED, GrantState.EXPIRED]
    recent = views.page_of(book, viewer, ended, newest_first=True).rows[:50]
    return _page(
        "grants.html",
        viewer,
        page="grants",
        listing=listing,
        rows=active,
        ended=recent,
        sessions=sessions,
        token=form_token(state, viewer.identity),
        done=request.query.get("done", ""),
    )


@routes.get("/console/flows")
async def flows_page(request: web.Request) -> web.Response:
    state, _caller, viewer = await _viewer(request)
    approves = views.approved_conduits(state.service.book.topology, viewer.identity)
    recs = [
        r
        for r in views.tail_records(state.flow_log, RECENT * 5)
        if r.get("event") in ("flow", "deny") and views.flow_visible(r, viewer, approves)
    ][:RECENT]
    return _page("flows.html", viewer, page="flows", records=recs)


@routes.get("/console/audit")
async def audit_page(request: web.Request) -> web.Response:
    state, _caller, viewer = await _viewer(request)
    book = state.service.book
    recs = []
    for r in views.tail_records(state.flow_log, RECENT * 5):
        if r.get("event") != "audit":
            continue
        grant = r.get("details") if isinstance(r.get("details"), dict) else None
        if viewer.operator or (grant and views.grant_visible(book, viewer, grant)):
            recs.append(r)
    return _page("audit.html", viewer, page="audit", records=recs[:RECENT])


@routes.get("/console/diagram")
async def diagram_page(request: web.Request) -> web.Response:
    _state, _caller, viewer = await _viewer(request)
    return _page("diagram.html", viewer, page="diagram", have_dot=bool(shutil.which("dot")))


@routes.get("/console/diagram.svg")
async def diagram_svg(request: web.Request) -> web.Response:
    state = request.app[STATE]
    await caller_of(request, None)  # only identities see the plant's layout
    if not shutil.which("dot"):
        raise ApiError(503, "Graphviz (dot) is not installed on the gateway")
    source = diagram.dot(state.service.book.topology).encode()
    proc = await asyncio.create_subprocess_exec(
        "dot",
        "-Tsvg",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(source), 20)
    if proc.returncode != 0:
        raise ApiError(500, f"dot failed: {err.decode(errors='replace')[:200]}")
    return web.Response(body=out, content_type="image/svg+xml")


async def _form(request: web.Request, state: ControlState, viewer: Viewer) -> Any:
    form = await request.post()
    token = str(form.get("token", ""))
    if not hmac.compare_digest(token, form_token(state, viewer.identity)):
        raise ApiError(403, "the form is stale or forged (no valid token): reload the page")
    return form


@routes.post("/console/request")
async def ask(request: web.Request) -> web.Response:
    state, caller, viewer = await _viewer(request)
    form = await _form(request, state, viewer)
    duration = parse_duration(str(form.get("duration", "")))
    if duration is None or duration <= timedelta(0):
        raise ApiError(422, "duration: give one like 30m or 2h")
    reason = str(form.get("reason", "")).strip()[:500]
    if not reason:
        raise ApiError(422, "say why you need access (reason)")
    grant = await state.service.request(
        caller.identity, str(form.get("conduit", "")), duration, reason, caller.label()
    )
    raise web.HTTPSeeOther(f"/console/requests?{urlencode({'done': f'{grant.id}: requested'})}")


@routes.post("/console/grants/{grant_id}/{action}")
async def act(request: web.Request) -> web.Response:
    state, caller, viewer = await _viewer(request)
    action = request.match_info["action"]
    if action not in ("approve", "deny", "revoke"):
        raise ApiError(404, f"no action '{action}'")
    form = await _form(request, state, viewer)
    note = str(form.get("note", ""))[:500]
    code = str(form.get("code", "")) or None
    gid = request.match_info["grant_id"]
    service = state.service
    grant = service.book.get(gid)
    if action == "approve":
        require_second_factor(state, caller, grant.conduit, code, "approve")
        grant = await service.approve(gid, caller.identity, caller.label(), note)
    elif action == "deny":
        grant = await service.deny(gid, caller.identity, caller.label(), note)
    else:
        require_second_factor(state, caller, grant.conduit, code, "revoke")
        grant = await service.revoke(gid, caller.identity, caller.label(), admin=False, note=note)
    back = "grants" if action == "revoke" or grant.state is GrantState.ACTIVE else "requests"
    msg = f"{gid}: {grant.state.value}"
    if grant.state is GrantState.REQUESTED:
        msg += f" ({len(grant.approvals)} approval(s) so far)"
    raise web.HTTPSeeOther(f"/console/{back}?{urlencode({'done': msg})}")


@routes.get("/console/events")
async def events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: one `grant` event per change this viewer may see."""
    state, _caller, viewer = await _viewer(request)
    book = state.service.book
    sub = state.events.subscribe(lambda e: views.grant_visible(book, viewer, e.get("grant", {})))
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", **HEADERS})
    await resp.prepare(request)
    try:
        await resp.write(b": connected\n\n")
        idle = 0.0
        while request.transport is not None and not request.transport.is_closing():
            try:
                event = await asyncio.wait_for(sub.queue.get(), POLL)
            except TimeoutError:
                idle += POLL
                if idle >= KEEPALIVE:
                    idle = 0.0
                    await resp.write(b": keep-alive\n\n")
                continue
            data = json.dumps({"action": event["action"], "grant": event["grant"].get("id")})
            await resp.write(f"event: grant\ndata: {data}\n\n".encode())
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        state.events.unsubscribe(sub)
    return resp


@routes.get("/console/static/{name}")
async def static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in STATIC:
        raise ApiError(404, "no such file")
    body = resources.files("policyd.console").joinpath("static", name).read_bytes()
    return web.Response(body=body, content_type=STATIC[name])
