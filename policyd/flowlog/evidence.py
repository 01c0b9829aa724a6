"""What a gateway's flow and audit log shows over a period, for an evidence report.

Approvals and emergency uses with who decided, revocations with the sessions that were
open when they came (and so were ended), denials per conduit, session recordings,
policy changes and lost records. Read-only; lines that are not JSON records are
counted, never skipped silently. Only a last line without its newline (the recorder
is writing it) is left out, and counted as `partial`.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from policyd.flowlog.records import parse_ts
from policyd.flowlog.sinks import rotated_paths
from topology.model import TargetKind, Topology


@dataclass(frozen=True)
class Decision:
    """A grant decision or emergency use from the audit trail."""

    ts: str
    gateway: str
    action: str  # grant_approved, emergency_opened, grant_revoked, grant_denied, ...
    conduit: str
    identity: str
    actor: str  # who decided (approver, revoker) or who opened the emergency
    duration: str = ""
    reason: str = ""
    sessions_ended: tuple[str, ...] = ()  # uids of flows open at a revocation


@dataclass
class LogEvidence:
    files: list[str] = field(default_factory=list)
    records: int = 0
    unreadable: int = 0  # lines that are not JSON records
    partial: int = 0  # a last line still being written (no newline yet)
    first_ts: str = ""
    last_ts: str = ""
    decisions: list[Decision] = field(default_factory=list)
    denials: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # conduit, reason, to
    flows: Counter[str] = field(default_factory=Counter)  # conduit -> ended flows
    recordings: Counter[str] = field(default_factory=Counter)  # conduit -> pcap files
    recording_failures: int = 0
    lost: Counter[str] = field(default_factory=Counter)  # loss source -> records lost
    policy_applied: int = 0
    policy_rejected: int = 0
    gateways: set[str] = field(default_factory=set)

    def of(self, action: str) -> list[Decision]:
        return [d for d in self.decisions if d.action == action]


def _lines(paths: Iterable[Path]) -> Iterator[tuple[str, str]]:
    for path in paths:
        files = rotated_paths(path)
        if not files:
            raise FileNotFoundError(f"{path}: no such log (nor rotations {path.name}.N)")
        for p in files:
            with open(p, encoding="utf-8", errors="replace") as fh:
                for line in fh:
                    yield str(p), line


def _conduits_for_deny(topo: Topology | None, rec: dict[str, Any]) -> str:
    """The conduits a denied attempt tried (same source and target), or 'no conduit'."""
    if topo is None:
        return ""
    ident = topo.identities.get(str(rec.get("identity", "")))
    names = []
    for c in topo.conduits.values():
        if c.target.kind is TargetKind.ZONE:
            hit = rec.get("dst_zone") == c.target.ref
        else:
            hit = rec.get("dst_asset") == c.target.ref
        if not hit:
            continue
        if ident is not None:
            admitted = c.sources.admits(ident)
        else:
            admitted = rec.get("src_zone") in c.sources.zones
        if admitted:
            names.append(c.name)
    return ", ".join(sorted(names)) or "no conduit"


def read_evidence(
    paths: Iterable[Path],
    topo: Topology | None = None,
    since: float | None = None,
    until: float | None = None,
) -> LogEvidence:
    """Read the logs (and their rotations) and sum up what they show in [since, until)."""
    out = LogEvidence()
    flows: list[dict[str, Any]] = []
    revokes: list[dict[str, Any]] = []
    seen_files: set[str] = set()
    for name, line in _lines(paths):
        seen_files.add(name)
        if not line.strip():
            continue
        if not line.endswith("\n"):
            out.partial += 1
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            out.unreadable += 1
            continue
        if not isinstance(rec, dict) or "ts" not in rec or "event" not in rec:
            out.unreadable += 1
            continue
        try:
            ts = parse_ts(str(rec.get("ts_end") or rec["ts"]))
        except ValueError:
            out.unreadable += 1
            continue
        if (since is not None and ts < since) or (until is not None and ts >= until):
            continue
        out.records += 1
        out.first_ts = min(out.first_ts or rec["ts"], rec["ts"])
        out.last_ts = max(out.last_ts, rec["ts"])
        out.gateways.add(str(rec.get("gateway", "")))
        _take(out, rec, topo, flows, revokes)
    out.files = sorted(seen_files)
    for rec in revokes:
        at = parse_ts(rec["ts"])
        details = rec.get("details") or {}
        ended = tuple(
            str(f.get("uid", ""))
            for f in flows
            if f.get("identity") == details.get("identity")
            and f.get("conduit") == details.get("conduit")
            and parse_ts(f["ts"]) <= at <= parse_ts(f.get("ts_end") or f["ts"])
        )
        out.decisions.append(_decision(rec, ended))
    out.decisions.sort(key=lambda d: d.ts)
    return out


def _decision(rec: dict[str, Any], ended: tuple[str, ...] = ()) -> Decision:
    d = rec.get("details") or {}
    return Decision(
        ts=str(rec["ts"]),
        gateway=str(rec.get("gateway", "")),
        action=str(rec.get("action", "")),
        conduit=str(d.get("conduit", "")),
        identity=str(d.get("identity", "")),
        actor=str(rec.get("actor") or d.get("decided_by") or ""),
        duration=str(d.get("duration", "") or ""),
        reason=str(d.get("reason", "") or ""),
        sessions_ended=ended,
    )


def _take(
    out: LogEvidence,
    rec: dict[str, Any],
    topo: Topology | None,
    flows: list[dict[str, Any]],
    revokes: list[dict[str, Any]],
) -> None:
    kind = rec["event"]
    if kind == "flow" and rec.get("flow_state") == "end":
        out.flows[str(rec.get("conduit", "unknown conduit"))] += 1
        flows.append(rec)
    elif kind == "deny":
        to = str(rec.get("dst_asset") or rec.get("dst_zone") or rec.get("id.resp_h", ""))
        out.denials[(_conduits_for_deny(topo, rec), str(rec.get("reason", "")), to)] += 1
    elif kind == "loss":
        out.lost[str(rec.get("source", ""))] += int(rec.get("lost", 0) or 0)
    elif kind == "audit":
        action = rec.get("action")
        if action == "grant_revoked":
            revokes.append(rec)
        elif action in ("grant_approved", "emergency_opened", "grant_denied", "grant_expired"):
            out.decisions.append(_decision(rec))
        elif action == "session_recorded":
            details = rec.get("details") or {}
            out.recordings[str(details.get("conduit", ""))] += 1
            if rec.get("outcome") == "failure":
                out.recording_failures += 1
        elif action == "policy_applied":
            out.policy_applied += 1
        elif action == "policy_rejected":
            out.policy_rejected += 1
