"""The grant book on disk: schema-checked, atomic, fsynced, the previous version kept.

The kernel keeps enforcing (and expiring) grants while policyd is down; this file lets
the restarted daemon list, revoke and audit them by id. It also holds the *intents*
of the grant service (an operation written before the kernel is touched), so a crash
between steps leaves a record the next start completes or rolls back.

Two files: a snapshot (`grants-GW.json`, rewritten atomically: temp file, fsync,
rename, the previous one kept as `.prev`) and a journal (`grants-GW.journal`): each
change writes the changed grants and intents as one JSON line into preallocated space
and fdatasyncs it, so one approval costs a few hundred bytes and no metadata update,
not the whole book. The service's timer folds the journal into a new snapshot once it
has JOURNAL_MAX lines. Loading replays the journal onto the snapshot up to the first
zero byte; a torn last line (a crash mid-write) is ignored.

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
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema

from policyd import failpoints
from policyd.grants import Grant, GrantBook

log = logging.getLogger("policyd")

VERSION = 2
JOURNAL_MAX = 2000  # journal lines after which the timer writes a snapshot
JOURNAL_CHUNK = 8 << 20  # journal space preallocated at a time (JOURNAL_MAX lines fit)
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


JOURNAL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "put": {"type": "array", "items": SCHEMA["properties"]["grants"]["items"]},
        "drop": {"type": "array", "items": {"type": "string"}},
        "intents": {"type": "object"},
        "next_id": {"type": "integer", "minimum": 1},
    },
}


def _intent(d: dict[str, Any]) -> Intent:
    if d.get("op") not in ("open", "close"):
        raise ValueError(f"intent op {d.get('op')!r}")
    return Intent(d["op"], Grant.from_dict(d["before"]) if d.get("before") else None)


class GrantStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.previous = path.with_name(path.name + ".prev")
        self.journal = path.with_suffix(".journal")
        self._jfd: int | None = None
        self._jlines = 0
        self._jpos = 0  # where the next journal line goes (the rest is preallocated zeros)
        self._jsize = 0

    def load(self) -> Loaded:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            if self.journal.exists():
                return self._aside("the snapshot is missing but a journal exists")
            return Loaded(missing=True)
        except OSError as exc:
            return self._aside(f"unreadable: {exc}")
        try:
            data = json.loads(raw)
            if isinstance(data, dict) and "version" not in data and "grants" in data:
                data = {"version": VERSION, "next_id": 1, "grants": data["grants"], "intents": {}}
            jsonschema.validate(data, SCHEMA)  # (above: the unversioned file of 0.1)
            grants = {g["id"]: Grant.from_dict(g) for g in data["grants"]}
            intents = {gid: _intent(i) for gid, i in data["intents"].items()}
            next_id = int(data["next_id"])
            next_id = self._replay(grants, intents, next_id)
        except jsonschema.ValidationError as exc:
            where = "/".join(str(p) for p in exc.absolute_path) or "top level"
            return self._aside(f"schema: {where}: {exc.message}")
        except (ValueError, KeyError, TypeError) as exc:
            return self._aside(f"not a grant state file: {exc}")
        except OSError as exc:
            return self._aside(f"journal unreadable: {exc}")
        return Loaded(grants, intents, next_id)

    def _replay(self, grants: dict[str, Grant], intents: dict[str, Intent], next_id: int) -> int:
        try:
            data = self.journal.read_bytes()
        except FileNotFoundError:
            return next_id
        end = data.find(b"\0")
        data = data if end < 0 else data[:end]  # the preallocated, never written rest
        self._jpos = len(data)
        lines = data.split(b"\n")
        for n, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                if n == len(lines) - 1:  # torn by a crash mid-append: never acknowledged
                    log.warning("grant journal %s: ignoring a torn last line", self.journal)
                    break
                raise ValueError(f"journal line {n + 1} is not JSON") from None
            jsonschema.validate(entry, JOURNAL_SCHEMA)
            for g in entry.get("put", []):
                grants[g["id"]] = Grant.from_dict(g)
            for gid in entry.get("drop", []):
                grants.pop(gid, None)
            for gid, i in entry.get("intents", {}).items():
                if i is None:
                    intents.pop(gid, None)
                else:
                    intents[gid] = _intent(i)
            next_id = max(next_id, int(entry.get("next_id", 1)))
            self._jlines += 1
        return next_id

    def _aside(self, problem: str) -> Loaded:
        stamp = time.strftime("%Y%m%dT%H%M%S")
        target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        with contextlib.suppress(OSError):
            os.replace(self.journal, self.journal.with_name(f"{self.journal.name}.corrupt-{stamp}"))
        try:
            os.replace(self.path, target)
        except FileNotFoundError:
            return Loaded(problem=problem)
        except OSError as exc:
            log.error("grant state %s: cannot move aside (%s)", self.path, exc)
            return Loaded(problem=problem)
        log.error("grant state %s %s; moved to %s", self.path, problem, target)
        return Loaded(problem=problem, moved_to=target)

    def save(
        self,
        book: GrantBook,
        intents: dict[str, Intent],
        changed: Iterable[str] | None = None,
        sync: bool = True,
    ) -> None:
        """Record `changed` grants (and their intents) in the journal, or (None, or a
        long journal, or no snapshot yet) write a new snapshot. Raises StateError,
        and then nothing of this call is on disk. `sync=False` (clearing an intent)
        leaves the line to the next synced append: losing it only repeats a step's
        audit at restart, marked `recovered`."""
        if changed is None or not self.path.exists():
            self._snapshot(book, intents)
            return
        ids = list(changed)
        entry: dict[str, Any] = {
            "put": [book.grants[g].as_dict() for g in ids if g in book.grants],
            "drop": [g for g in ids if g not in book.grants],
            "intents": {g: intents[g].as_dict() if g in intents else None for g in ids},
            "next_id": book.next_id,
        }
        line = json.dumps(entry, ensure_ascii=True, separators=(",", ":")).encode() + b"\n"
        try:
            fd = self._journal_fd(len(line))
            try:
                written = 0
                while written < len(line):
                    written += os.pwrite(fd, line[written:], self._jpos + written)
                if sync:
                    os.fdatasync(fd)  # preallocated: data only, no metadata
            except OSError:
                with contextlib.suppress(OSError):  # no half line: as if never written
                    os.pwrite(fd, b"\0" * len(line), self._jpos)
                raise
        except OSError as exc:
            raise StateError(
                exc.errno or 0, f"grant journal {self.journal} not written: {exc}"
            ) from exc
        self._jpos += len(line)
        self._jlines += 1

    def needs_snapshot(self) -> bool:
        """The journal is long: the next timer tick folds it into a snapshot (off the
        request path: a snapshot of 10,000 grants costs ~100 ms)."""
        return self._jlines >= JOURNAL_MAX

    def _journal_fd(self, need: int) -> int:
        """The journal, open, with `need` bytes of preallocated (zeroed, synced) room
        at the write position, so an append never changes the file's metadata. On a
        nearly full disk it settles for just the room this line needs."""
        if self._jfd is None:
            self._jfd = os.open(self.journal, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._jsize = os.fstat(self._jfd).st_size
        short = self._jpos + need - self._jsize
        if short > 0:
            try:
                self._grow(max(JOURNAL_CHUNK, short))
            except OSError:
                self._grow(-(-short // 4096) * 4096)
        return self._jfd

    def _grow(self, size: int) -> None:
        assert self._jfd is not None
        zeros = b"\0" * size
        done = 0
        try:
            while done < size:
                done += os.pwrite(self._jfd, zeros[done:], self._jsize + done)
            os.fsync(self._jfd)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(self._jfd, self._jsize)
            raise
        self._jsize += size

    def _snapshot(self, book: GrantBook, intents: dict[str, Intent]) -> None:
        """Write atomically (temp file, fsync, rename, fsync the directory); the file
        being replaced is kept as `*.prev`; then empty the journal it contains."""
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
        try:  # the snapshot holds everything the journal said
            if self._jfd is not None:
                os.ftruncate(self._jfd, 0)
                os.fsync(self._jfd)
                self._jsize = 0
            else:
                self.journal.unlink(missing_ok=True)
            self._jpos = 0
            self._journal_fd(JOURNAL_CHUNK)  # room for the next JOURNAL_MAX lines, now
        except OSError as exc:
            log.warning(
                "grant journal %s not emptied (%s); replaying it is harmless", self.journal, exc
            )
        self._jlines = 0
