"""The OpenAPI 3.1 description of the control API, built from the same schemas."""

from __future__ import annotations

from typing import Any

from policyd.api import schemas


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _op(summary: str, request: dict[str, Any] | None, ok: int = 200) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "responses": {
            str(ok): {"description": "success", **_json(schemas.GRANT)},
            "4XX": {"description": "refused, with a reason", **_json(schemas.ERROR)},
        },
    }
    if request is not None:
        op["requestBody"] = {"required": True, **_json(request)}
    return op


def spec() -> dict[str, Any]:
    grant_id = [{"name": "grant_id", "in": "path", "required": True, "schema": {"type": "string"}}]
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Zonegate policyd control API",
            "version": "1",
            "description": "Remote callers are identified by their tunnel source address "
            "only; on the local unix socket by their uid (SO_PEERCRED), and 'as' names "
            "which of the identities that uid may act as. Mutations need "
            "Content-Type: application/json; cross-site requests are refused.",
        },
        "paths": {
            "/v1/grants": {
                "get": {"summary": "list grants", "responses": {"200": {"description": "ok"}}},
                "post": _op("request a grant on an approval conduit", schemas.GRANT_REQUEST, 201),
            },
            "/v1/grants/{grant_id}/approve": {
                "post": {**_op("approve", schemas.DECISION), "parameters": grant_id}
            },
            "/v1/grants/{grant_id}/deny": {
                "post": {**_op("deny", schemas.DECISION), "parameters": grant_id}
            },
            "/v1/grants/{grant_id}/revoke": {
                "post": {
                    **_op("revoke; ends live sessions", schemas.DECISION),
                    "parameters": grant_id,
                }
            },
            "/v1/emergency": {"post": _op("open emergency access", schemas.EMERGENCY_REQUEST, 201)},
            "/v1/flows": {
                "get": {
                    "summary": "live flow and audit records as JSON lines (a remote identity "
                    "sees its own); ?events=flow,deny,audit,loss",
                    "responses": {"200": {"description": "application/x-ndjson stream"}},
                }
            },
            "/v1/status": {
                "get": {"summary": "status", "responses": {"200": {"description": "ok"}}}
            },
            "/v1/health": {
                "get": {"summary": "health", "responses": {"200": {"description": "ok"}}}
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {"200": {"description": "ok"}},
                }
            },
        },
    }
