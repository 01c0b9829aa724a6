"""Build the aiohttp applications and serve them: unix socket and overlay address."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from aiohttp import web

from policyd.api import flow_routes, grant_routes, status_routes
from policyd.api.context import LOCAL, STATE, ControlState
from policyd.api.errors import MAX_BODY, json_errors
from policyd.api.guard import Guard
from policyd.console import routes as console_routes
from policyd.conventions import API_PORT

IP_FREEBIND = 15  # linux/in.h; not exported by the socket module


def make_app(state: ControlState, local: bool, guard: Guard | None = None) -> web.Application:
    guard = guard or Guard()
    middlewares = [json_errors, guard.middleware, console_routes.console_headers]
    app = web.Application(middlewares=middlewares, client_max_size=MAX_BODY)
    app[STATE] = state
    app[LOCAL] = local
    app.add_routes(grant_routes.routes)
    app.add_routes(status_routes.routes)
    app.add_routes(flow_routes.routes)
    if not local:  # browsers reach the gateway through their tunnel, not its unix socket
        app.add_routes(console_routes.routes)
    return app


def overlay_socket(address: str, port: int) -> socket.socket:
    """A listening socket on the overlay address, even before tunneld has added it.

    IP_FREEBIND lets policyd start first; the socket answers once the address exists.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
    sock.bind((address, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


async def _runner(state: ControlState, local: bool, guard: Guard) -> web.AppRunner:
    runner = web.AppRunner(make_app(state, local, guard), **guard.runner_kwargs())
    await runner.setup()
    assert runner.server is not None
    guard.install(runner.server)
    return runner


async def serve(
    state: ControlState,
    socket_path: Path,
    overlay: str | None,
    port: int = API_PORT,
    guard: Guard | None = None,
) -> list[web.AppRunner]:
    """Start both listeners (one guard, one set of caps); the caller cleans them up."""
    guard = guard or Guard()
    runners = []
    socket_path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
    local = await _runner(state, True, guard)
    if socket_path.exists():
        socket_path.unlink()
    await web.UnixSite(local, str(socket_path)).start()
    os.chmod(socket_path, 0o660)
    runners.append(local)
    if overlay is not None:
        remote = await _runner(state, False, guard)
        await web.SockSite(remote, overlay_socket(overlay, port)).start()
        runners.append(remote)
    return runners
