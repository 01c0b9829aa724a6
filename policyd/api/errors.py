"""One place that turns every failure into a JSON body with a reason and a status.

The grant domain refuses with a `Refusal` kind (policyd/grants.py); HTTP status
codes exist only here. `ApiError` is a refusal of the HTTP layer itself (a body that
is not JSON, a cross-site request, a cap).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import jsonschema
from aiohttp import web

from policyd.grants import GrantError, Refusal

log = logging.getLogger("policyd")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

STATUS = {
    Refusal.INVALID: 422,
    Refusal.FORBIDDEN: 403,
    Refusal.NOT_FOUND: 404,
    Refusal.CONFLICT: 409,
    Refusal.TOO_MANY: 429,
    Refusal.UNAVAILABLE: 503,
}
MAX_BODY = 16 * 1024
BODY_TIMEOUT = 5.0  # seconds for the whole body once the headers are in


class ApiError(Exception):
    """A refusal of the HTTP layer: `status` and a reason naming the problem."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def error_response(status: int, reason: str) -> web.Response:
    return web.json_response({"error": reason, "status": status}, status=status)


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except GrantError as exc:
        return error_response(STATUS[exc.kind], exc.reason)
    except ApiError as exc:
        return error_response(exc.status, exc.reason)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(exc.status, exc.reason)
    except (asyncio.CancelledError, ConnectionError):
        raise
    except Exception:
        log.exception("control API: %s %s failed", request.method, request.path)
        return error_response(500, "internal error (logged by policyd)")


async def body(request: web.Request, schema: dict[str, Any]) -> dict[str, Any]:
    """The request's JSON object, validated; every bad body is a 4xx naming the problem.

    Mutations must say `Content-Type: application/json` (a browser cannot send that
    cross-site without a CORS preflight, which policyd never grants) and carry an
    object (`{}` at least).
    """
    ctype = request.headers.get("Content-Type", "")
    if ctype.split(";", 1)[0].strip().lower() != "application/json":
        raise ApiError(415, f"Content-Type must be application/json, not '{ctype or 'none'}'")
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise ApiError(413, f"request body larger than {MAX_BODY // 1024} KiB")
    try:
        raw = await asyncio.wait_for(_read_body(request), BODY_TIMEOUT)
    except TimeoutError:
        raise ApiError(408, f"request body not received within {BODY_TIMEOUT:g} s") from None
    if len(raw) > MAX_BODY:
        raise ApiError(413, f"request body larger than {MAX_BODY // 1024} KiB")
    if not raw.strip():
        raise ApiError(400, "a JSON object body is required ({} at least)")
    try:
        data: Any = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"body is not valid JSON: {exc}") from None
    bad = _unencodable(data)
    if bad:
        raise ApiError(422, f"{bad}: not valid Unicode text (a lone surrogate)")
    try:
        jsonschema.validate(data, schema)
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "body"
        raise ApiError(422, f"{where}: {exc.message}") from None
    result: dict[str, Any] = data
    return result


async def _read_body(request: web.Request) -> bytes:
    """The whole body, or its first MAX_BODY + 1 bytes (enough to refuse it)."""
    chunks, size = [], 0
    while size <= MAX_BODY:
        chunk = await request.content.read(MAX_BODY + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _unencodable(data: Any, where: str = "body") -> str:
    """The path of the first string UTF-8 cannot encode ('' when there is none)."""
    if isinstance(data, str):
        try:
            data.encode("utf-8")
        except UnicodeEncodeError:
            return where
    elif isinstance(data, dict):
        for k, v in data.items():
            found = _unencodable(k, where) or _unencodable(v, f"{where}/{k}")
            if found:
                return found
    elif isinstance(data, list):
        for i, v in enumerate(data):
            found = _unencodable(v, f"{where}/{i}")
            if found:
                return found
    return ""
