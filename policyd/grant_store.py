"""The grant book on disk: schema-checked, atomic, fsynced, the previous version kept.

The kernel keeps enforcing (and expiring) grants while policyd is down; this file lets
the restarted daemon list, revoke and audit them by id. It also holds the *intents*
of the grant service (an operation written before the kernel is touched), so a crash
between steps leaves a record the next start completes or rolls back.

A file that is corrupt, fails the schema or cannot be read never stops the daemon:
it is moved aside (`*.corrupt-<time>`), `load` says so, and the service rebuilds the
book from the kernel's tagged grant elements.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema

from policyd import failpoints
from policyd.grants import Grant, GrantBook

log = logging.getLogger("policyd")

VERSION = 2
_WHEN = {"type": ["string", "null"]}
SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["version", "next_id", "grants", "intents"],
    "properties": {
        "version": {"const": VERSION},
        "next_id": {"type": "integer", "minimum": 1},
        "grants": {
            "type": "array",
            "items": {
                "type": "object",
                "required": [
                    "id",
                    "conduit",
                    "identity",
                    "reason",
                    "duration_seconds",
                    "requested_at",
                    "state",
                    "emergency",
                ],
                "properties": {
                    "id": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$"},
                    "conduit": {"type": "string"},
                    "identity": {"type": "string"},
                    "reason": {"type": "string"},
                    "duration_seconds": {"type": "integer", "minimum": 0},
                    "requested_at": {"type": "string"},
                    "state": {"enum": ["requested", "active", "denied", "revoked", "expired"]},
                    "emergency": {"type": "boolean"},
                    "decided_at": _WHEN,
                    "expires_at": _WHEN,
                    "ended_at": _WHEN,
                    "approvals": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
        "intents": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "required": ["op", "before"],
                "properties": {
                    "op": {"enum": ["open", "close"]},
                    "before": {"type": ["object", "null"]},
                },
            },
        },
    },
}


@dataclass(frozen=True)
class Intent:
    """An operation written down before the kernel is touched.

    `open`: the grant (as in the book) is to get its kernel element; `before` is what
    the book held before (None for an emergency grant that did not exist).
    `close`: the grant has ended in the book; its kernel element is to go.
    """

    op: str
    before: Grant | None

    def as_dict(self) -> dict[str, Any]:
        return {"op": self.op, "before": self.before.as_dict() if self.before else None}


@dataclass
class Loaded:
    """What `load` found: grants and intents, or why the file could not be used."""

    grants: dict[str, Grant] = field(default_factory=dict)
    intents: dict[str, Intent] = field(default_factory=dict)
    next_id: int = 1
    missing: bool = False
    problem: str = ""  # set when the file was unusable (and moved to `moved_to`)
    moved_to: Path | None = None


class StateError(OSError):
    """The state file could not be written; nothing the caller asked for happened."""


class GrantStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.previous = path.with_name(path.name + ".prev")

    def load(self) -> Loaded:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return Loaded(missing=True)
        except OSError as exc:
            return self._aside(f"unreadable: {exc}")
        try:
            data = json.loads(raw)
            jsonschema.validate(data, SCHEMA)
            grants = {g["id"]: Grant.from_dict(g) for g in data["grants"]}
            intents = {
                gid: Intent(i["op"], Grant.from_dict(i["before"]) if i["before"] else None)
                for gid, i in data["intents"].items()
            }
        except jsonschema.ValidationError as exc:
            where = "/".join(str(p) for p in exc.absolute_path) or "top level"
            return self._aside(f"schema: {where}: {exc.message}")
        except (ValueError, KeyError, TypeError) as exc:
            return self._aside(f"not a grant state file: {exc}")
        return Loaded(grants, intents, int(data["next_id"]))

    def _aside(self, problem: str) -> Loaded:
        target = self.path.with_name(f"{self.path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
        try:
            os.replace(self.path, target)
        except OSError as exc:
            log.error("grant state %s: cannot move aside (%s)", self.path, exc)
            return Loaded(problem=problem)
        log.error("grant state %s %s; moved to %s", self.path, problem, target)
        return Loaded(problem=problem, moved_to=target)

    def save(self, book: GrantBook, intents: dict[str, Intent]) -> None:
        """Write atomically (temp file, fsync, rename, fsync the directory); the file
        being replaced is kept as `*.prev`. Raises StateError, leaving the old file."""
        data = {
            "version": VERSION,
            "next_id": book.next_id,
            "grants": [g.as_dict() for g in book.grants.values()],
            "intents": {gid: i.as_dict() for gid, i in intents.items()},
        }
        text = json.dumps(data, indent=1, ensure_ascii=True).encode()
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                view = memoryview(text)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            failpoints.hit("state-before-rename")
            if self.path.exists():  # a hard link: the live name never goes missing
                self.previous.unlink(missing_ok=True)
                os.link(self.path, self.previous)
            os.replace(tmp, self.path)
            dfd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise StateError(exc.errno or 0, f"grant state {self.path} not written: {exc}") from exc
