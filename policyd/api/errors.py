"""One place that turns every failure into a JSON body with a reason."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import jsonschema
from aiohttp import web

from policyd.grants import GrantError

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(status: int, reason: str) -> web.Response:
    return web.json_response({"error": reason, "status": status}, status=status)


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except GrantError as exc:
        return error_response(exc.status, exc.reason)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(exc.status, exc.reason)


async def body(request: web.Request, schema: dict[str, Any]) -> dict[str, Any]:
    """The request's JSON body, validated; a bad body is a 400/422 naming the problem."""
    if not request.can_read_body:
        data: Any = {}
    else:
        raw = await request.read()
        if len(raw) > 16384:
            raise GrantError(413, "request body larger than 16 KiB")
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise GrantError(400, f"body is not valid JSON: {exc}") from None
    try:
        jsonschema.validate(data, schema)
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "body"
        raise GrantError(422, f"{where}: {exc.message}") from None
    result: dict[str, Any] = data
    return result
