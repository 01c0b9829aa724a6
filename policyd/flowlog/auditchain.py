"""A hash chain over audit records, and its verification (IEC 62443 SR 3.9).

Every audit record carries `seq` (1, 2, 3, ... per log), `prev` (the previous audit
record's hash) and `hash` (SHA-256 of the record's canonical JSON without `hash`).
Editing a record breaks its own hash; deleting or reordering records breaks `seq` and
the next record's `prev`. A gap the file sink itself declared (a `loss` record naming
the lost sequence numbers, after a full disk) is reported as a loss, not tampering.
What a chain cannot show alone is the removal of the newest records: an off-box copy
(syslog) of the latest hash is the anchor for that.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from policyd.flowlog.sinks import rotated_paths

GENESIS = "0" * 64


def digest(data: dict[str, Any]) -> str:
    body = {k: v for k, v in data.items() if k != "hash"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class AuditChain:
    """Seals audit records in the order they are emitted."""

    def __init__(self, seq: int = 0, head: str = GENESIS) -> None:
        self.seq = seq
        self.head = head

    def seal(self, data: dict[str, Any]) -> None:
        self.seq += 1
        data["seq"] = self.seq
        data["prev"] = self.head
        data["hash"] = self.head = digest(data)

    @classmethod
    def resume(cls, path: Path) -> AuditChain:
        """Continue the chain of an existing log (its newest sealed audit record)."""
        for p in reversed(rotated_paths(path)):
            last = None
            for _lineno, rec in _records(p):
                if rec.get("event") == "audit" and isinstance(rec.get("hash"), str):
                    last = rec
            if last is not None and isinstance(last.get("seq"), int):
                return cls(int(last["seq"]), str(last["hash"]))
        return cls()


def _records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for n, line in enumerate(fh, 1):
                try:
                    rec = json.loads(line)
                except ValueError:
                    yield n, {"event": "unparsable", "line": line[:80]}
                    continue
                if isinstance(rec, dict):
                    yield n, rec
    except OSError:
        return


@dataclass
class Verdict:
    records: int = 0
    first: int | None = None
    last: int | None = None
    problems: list[str] = field(default_factory=list)
    declared_losses: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def files_of(paths: Iterable[Path]) -> list[Path]:
    """Each given log with its rotations, oldest first; a rotated file given as is."""
    out: list[Path] = []
    for p in paths:
        for f in rotated_paths(p) if not p.name.split(".")[-1].isdigit() else [p]:
            if f not in out:
                out.append(f)
    return out


def verify(paths: Iterable[Path]) -> Verdict:
    v = Verdict()
    prev_hash: str | None = None
    prev_seq: int | None = None
    declared: set[int] = set()
    for path in files_of(paths):
        for lineno, rec in _records(path):
            where = f"{path}:{lineno}"
            kind = rec.get("event")
            if kind == "unparsable":
                v.problems.append(f"{where}: not a JSON record (edited or torn)")
                continue
            if kind == "loss" and isinstance(rec.get("audit_seqs_lost"), list):
                seqs = [s for s in rec["audit_seqs_lost"] if isinstance(s, int)]
                declared.update(seqs)
                v.declared_losses.append(
                    f"{where}: the log declares {len(seqs)} audit records lost"
                )
                continue
            if kind != "audit" or "hash" not in rec:
                continue
            v.records += 1
            seq, prev, own = rec.get("seq"), rec.get("prev"), rec.get("hash")
            if own != digest(rec):
                v.problems.append(
                    f"{where}: record seq {seq} was changed (its hash does not match)"
                )
            if not isinstance(seq, int):
                v.problems.append(f"{where}: no sequence number")
                continue
            if prev_seq is None:
                v.first = seq
            elif seq != prev_seq + 1:
                missing = set(range(prev_seq + 1, seq))
                if seq <= prev_seq:
                    v.problems.append(
                        f"{where}: seq {seq} after {prev_seq} (reordered or replayed)"
                    )
                elif missing - declared:
                    v.problems.append(
                        f"{where}: seq {seq} follows {prev_seq}: "
                        f"{len(missing - declared)} record(s) deleted"
                    )
            elif prev != prev_hash:
                v.problems.append(f"{where}: seq {seq} does not chain to the record before it")
            prev_seq, prev_hash = seq, own if isinstance(own, str) else None
            v.last = seq
    return v
