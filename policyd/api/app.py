"""Build the aiohttp applications and serve them: unix socket and overlay address."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from aiohttp import web

from policyd.api import flow_routes, grant_routes, status_routes
from policyd.api.context import LOCAL, STATE, ControlState
from policyd.api.errors import json_errors
from policyd.conventions import API_PORT

IP_FREEBIND = 15  # linux/in.h; not exported by the socket module


def make_app(state: ControlState, local: bool) -> web.Application:
    app = web.Application(middlewares=[json_errors], client_max_size=64 * 1024)
    app[STATE] = state
    app[LOCAL] = local
    app.add_routes(grant_routes.routes)
    app.add_routes(status_routes.routes)
    app.add_routes(flow_routes.routes)
    return app


def overlay_socket(address: str, port: int) -> socket.socket:
    """A listening socket on the overlay address, even before tunneld has added it.

    IP_FREEBIND lets policyd start first; the socket answers once the address exists.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
    sock.bind((address, port))
    sock.listen(128)
    sock.setblocking(False)
    return sock


async def serve(
    state: ControlState, socket_path: Path, overlay: str | None, port: int = API_PORT
) -> list[web.AppRunner]:
    """Start both listeners; the caller keeps the runners and cleans them up."""
    runners = []
    socket_path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
    local = web.AppRunner(make_app(state, local=True), access_log=None)
    await local.setup()
    if socket_path.exists():
        socket_path.unlink()
    await web.UnixSite(local, str(socket_path)).start()
    os.chmod(socket_path, 0o660)
    runners.append(local)
    if overlay is not None:
        remote = web.AppRunner(make_app(state, local=False), access_log=None)
        await remote.setup()
        await web.SockSite(remote, overlay_socket(overlay, port)).start()
        runners.append(remote)
    return runners
