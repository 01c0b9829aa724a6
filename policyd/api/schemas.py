"""Request body schemas: validated before anything acts, and published as OpenAPI."""

from __future__ import annotations

from typing import Any

DURATION = {
    "type": "string",
    "pattern": r"^(?:\d+d)?(?:\d+h)?(?:\d+m)?(?:\d+s)?$",
    "minLength": 2,
    "description": "e.g. 30m, 2h, 1h30m",
}
SECOND_FACTOR = {
    "type": "string",
    "maxLength": 16,
    "description": "the caller's TOTP code, where the conduit asks for a second factor",
}
ACTING_AS = {
    "type": "string",
    "description": "local socket only: the identity acting (remote callers are their tunnel)",
}

GRANT_REQUEST: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["conduit", "duration", "reason"],
    "properties": {
        "conduit": {"type": "string", "minLength": 1},
        "duration": DURATION,
        "reason": {"type": "string", "minLength": 1, "maxLength": 500},
        "as": ACTING_AS,
    },
}
EMERGENCY_REQUEST: dict[str, Any] = {
    **GRANT_REQUEST,
    "properties": {**GRANT_REQUEST["properties"], "second_factor": SECOND_FACTOR},
}
DECISION: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "as": ACTING_AS,
        "note": {"type": "string", "maxLength": 500},
        "second_factor": SECOND_FACTOR,
    },
}

GRANT: dict[str, Any] = {
    "type": "object",
    "properties": {
        k: {"type": ["string", "integer", "boolean", "null"]}
        for k in (
            "id",
            "conduit",
            "identity",
            "reason",
            "duration",
            "duration_seconds",
            "requested_at",
            "state",
            "emergency",
            "decided_by",
            "decided_at",
            "expires_at",
            "note",
        )
    },
}
ERROR: dict[str, Any] = {
    "type": "object",
    "properties": {"error": {"type": "string"}, "status": {"type": "integer"}},
}
