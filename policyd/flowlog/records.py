"""The flow log's records: one JSON object per line, one schema (docs/flowlog.md).

Connection fields carry Zeek conn.log names (`ts`, `uid`, `id.orig_h`, `orig_pkts`,
`orig_ip_bytes`, `duration`, `service`, `community_id`) so a SIEM's existing Zeek
mapping applies; what Zeek has no name for (identity, zones, conduit, verdict) is
ours and documented. Fields that do not apply or are unknown are left out, as
Zeek's JSON writer does, rather than written as null.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from policyd.flowlog.attribution import Attributor, Place
from policyd.flowlog.community_id import community_id
from policyd.flowlog.conntrack import PROTO_NAMES, CtEvent
from policyd.flowlog.nflog import DeniedPacket

SCHEMA_VERSION = 1
EVENT_KINDS = ("flow", "deny", "audit", "loss")

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


class Record:
    """A record and its JSON line, encoded once however many sinks write it."""

    __slots__ = ("_line", "data")

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self._line: str | None = None

    @property
    def kind(self) -> str:
        return str(self.data["event"])

    @property
    def line(self) -> str:
        if self._line is None:
            self._line = _dumps(self.data)
        return self._line

    def __repr__(self) -> str:
        return f"Record({self.line})"


_last_second: list[Any] = [None, ""]


def iso(ts: float) -> str:
    """RFC 3339 UTC with microseconds: what SIEMs parse without a format string.

    The formatted second is cached: at thousands of records a second, most share it.
    """
    sec = int(ts)
    usec = round((ts - sec) * 1e6)
    if usec >= 1_000_000:
        sec, usec = sec + 1, usec - 1_000_000
    if _last_second[0] != sec:
        _last_second[0] = sec
        _last_second[1] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
    return f"{_last_second[1]}.{usec:06d}Z"


def parse_ts(text: str) -> float:
    """A record's `ts` (RFC 3339) as seconds since the epoch."""
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


def flow_uid(gateway: str, ct_id: int, cid: str) -> str:
    """Zeek-style connection uid, the same for a flow's start and end records."""
    return "C" + hashlib.blake2b(f"{gateway}|{ct_id}|{cid}".encode(), digest_size=9).hexdigest()


def _place(rec: dict[str, Any], src: Place, dst: Place) -> None:
    if src.identity is not None:
        rec["identity"] = src.identity
        rec["roles"] = list(src.roles)
    if src.zone is not None:
        rec["src_zone"] = src.zone
    if src.asset is not None:
        rec["src_asset"] = src.asset
    if dst.identity is not None:
        rec["dst_identity"] = dst.identity
    if dst.zone is not None:
        rec["dst_zone"] = dst.zone
    if dst.asset is not None:
        rec["dst_asset"] = dst.asset


def _tuple(rec: dict[str, Any], proto: int, src: str, sport: int, dst: str, dport: int) -> None:
    rec["id.orig_h"] = src
    rec["id.orig_p"] = sport
    rec["id.resp_h"] = dst
    rec["id.resp_p"] = dport
    rec["proto"] = PROTO_NAMES.get(proto, str(proto))


def flow_record(
    attr: Attributor,
    ev: CtEvent,
    state: str,
    start: float,
    end: float | None = None,
    resync: bool = False,
    ended_by: str | None = None,
    former_conduit: str | None = None,
) -> Record:
    """A `flow` record: state "start" (NEW event or resync) or "end" (DESTROY event)."""
    cid = community_id(ev.src, ev.dst, ev.proto, ev.sport, ev.dport)
    conduit = attr.conduit(ev.mark)
    rec: dict[str, Any] = {
        "ts": iso(start),
        "event": "flow",
        "flow_state": state,
        "gateway": attr.gateway,
        "uid": flow_uid(attr.gateway, ev.ct_id, cid),
        "community_id": cid,
        "verdict": "allow",
        "reason": f"conduit {conduit.name}" if conduit else "unknown conduit mark",
    }
    if conduit is None and former_conduit:  # removed by the reload that ended the flow
        rec["reason"] = f"conduit {former_conduit}"
    _place(rec, attr.source(ev.src), attr.target(ev.dst))
    _tuple(rec, ev.proto, ev.src, ev.sport, ev.dst, ev.dport)
    rec["service"] = attr.service(ev.proto, ev.dport, conduit)
    if conduit is not None or former_conduit:
        rec["conduit"] = conduit.name if conduit else former_conduit
    rec["conduit_mark"] = f"0x{ev.mark:08x}"
    if end is not None:
        rec["ts_end"] = iso(end)
        rec["duration"] = round(max(end - start, 0.0), 6)
        rec["orig_pkts"] = ev.orig_pkts
        rec["orig_ip_bytes"] = ev.orig_bytes
        rec["resp_pkts"] = ev.reply_pkts
        rec["resp_ip_bytes"] = ev.reply_bytes
        rec["end_reason"] = ended_by or ev.end_reason  # policy reasons: docs/flowlog.md
    rec["ct_id"] = ev.ct_id
    if resync:
        rec["resync"] = True
    return Record(rec)


def deny_record(attr: Attributor, pkt: DeniedPacket) -> Record:
    """A `deny` record: the first packet of a denied attempt, as NFLOG copied it."""
    cid = community_id(pkt.src, pkt.dst, pkt.proto, pkt.sport, pkt.dport)
    rec: dict[str, Any] = {
        "ts": iso(pkt.ts),
        "event": "deny",
        "gateway": attr.gateway,
        "community_id": cid,
        "verdict": "deny",
        "reason": pkt.reason,
    }
    _place(rec, attr.source(pkt.src), attr.target(pkt.dst))
    _tuple(rec, pkt.proto, pkt.src, pkt.sport, pkt.dst, pkt.dport)
    rec["service"] = attr.service(pkt.proto, pkt.dport, None, pkt.payload)
    rec["orig_pkts"] = 1
    rec["orig_ip_bytes"] = pkt.length
    return Record(rec)


@dataclass(frozen=True)
class AuditEvent:
    """Something the daemon did or decided, for the audit trail.

    `action` names what happened (docs/flowlog.md lists them: policy_applied,
    policy_rejected, daemon_start, daemon_stop, grant_*, tunnel_*); `outcome` is
    "success" or "failure"; `errors` carries every error of a rejected policy.
    """

    action: str
    outcome: str = "success"
    message: str = ""
    errors: Sequence[str] = ()
    actor: str | None = None  # the identity that asked, when one did
    details: Mapping[str, Any] = field(default_factory=dict)


def audit_record(gateway: str, event: AuditEvent, ts: float | None = None) -> Record:
    rec: dict[str, Any] = {
        "ts": iso(time.time() if ts is None else ts),
        "event": "audit",
        "gateway": gateway,
        "action": event.action,
        "outcome": event.outcome,
    }
    if event.message:
        rec["message"] = event.message
    if event.actor is not None:
        rec["actor"] = event.actor
    if event.errors:
        rec["errors"] = list(event.errors)
    if event.details:
        rec["details"] = dict(event.details)
    return Record(rec)


def loss_record(
    gateway: str, source: str, lost: int, lost_total: int, extra: Mapping[str, Any] | None = None
) -> Record:
    """A `loss` record: the kernel (or a slow consumer) dropped `lost` messages."""
    rec: dict[str, Any] = {
        "ts": iso(time.time()),
        "event": "loss",
        "gateway": gateway,
        "source": source,
        "lost": lost,
        "lost_total": lost_total,
    }
    if extra:
        rec.update(extra)
    return Record(rec)
