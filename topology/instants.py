"""Instants: one output format (RFC 3339 in UTC) and one input rule for every command.

Input: `now`, or an ISO 8601 date-time; without an offset it is UTC (said in the docs
and in every answer, which states the instant it was computed for as RFC 3339 UTC).
"""

from __future__ import annotations

from datetime import UTC, datetime


def rfc3339(at: datetime) -> str:
    """`2026-11-25T09:00:00Z`: the one timestamp format of machine and human output."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_instant(text: str, now: datetime | None = None) -> datetime:
    """`now` or an ISO 8601 date-time (UTC when it has no offset); ValueError otherwise."""
    if text.strip().lower() == "now":
        return (now or datetime.now(UTC)).replace(microsecond=0)
    value = datetime.fromisoformat(text.strip())
    return value if value.tzinfo else value.replace(tzinfo=UTC)
