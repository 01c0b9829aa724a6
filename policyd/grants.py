"""Just-in-time access: requests, approvals, emergency access, revocation, expiry.

Pure bookkeeping with an injected clock. It decides who may do what (IEC 62443 SR
2.1: an approver the conduit names, never the requester; SR 1.13: time-boxed); the
kernel does the enforcing: an active grant is a set element with a timeout, so it
expires even if policyd is dead. `GrantError` carries a `Refusal` kind and a reason;
the API (not this module) turns the kind into an HTTP status.

One identity holds at most one active grant per conduit: the kernel element of an
active grant is keyed by the identity's address in the conduit's grant set, so a
second one would share (and overwrite) the first's element. Each active grant is
thus exactly one kernel element, tagged with the grant's id (policyd/grant_service.py).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import Enum
from typing import Any

from topology.model import Conduit, Identity, Topology, format_duration


class GrantState(Enum):
    REQUESTED = "requested"
    ACTIVE = "active"  # approved, or an emergency activation
    DENIED = "denied"
    REVOKED = "revoked"
    EXPIRED = "expired"


class Refusal(Enum):
    """Why an operation was refused; the API maps each kind to one HTTP status."""

    INVALID = "invalid"  # the request itself is malformed or out of bounds
    FORBIDDEN = "forbidden"  # the caller may not do this
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"  # not in the current state of the grant or conduit
    TOO_MANY = "too_many"  # a per-identity cap
    UNAVAILABLE = "unavailable"  # the kernel or the state file could not confirm it


class GrantError(Exception):
    """A refused grant operation: `kind` says why, `reason` says it in words."""

    def __init__(self, kind: Refusal, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


ENDED = frozenset({"denied", "revoked", "expired"})
# A requester may have this many grants waiting for a decision at once.
MAX_PENDING_PER_IDENTITY = 8
# Ended grants stay listable this long, then the book forgets them (the audit log keeps them).
RETENTION = timedelta(days=7)


@dataclass(frozen=True)
class Grant:
    id: str
    conduit: str
    identity: str
    reason: str
    duration: timedelta
    requested_at: datetime
    state: GrantState = GrantState.REQUESTED
    emergency: bool = False
    decided_by: str | None = None
    decided_at: datetime | None = None
    expires_at: datetime | None = None
    note: str = ""
    ended_at: datetime | None = None
    ended_by: str | None = None
    approvals: tuple[str, ...] = ()  # who approved so far (dual approval: count > 1)

    def ended(self) -> bool:
        return self.state.value in ENDED

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Grant:
        def when(key: str) -> datetime | None:
            return datetime.fromisoformat(d[key]) if d.get(key) else None

        return cls(
            id=d["id"],
            conduit=d["conduit"],
            identity=d["identity"],
            reason=d["reason"],
            duration=timedelta(seconds=int(d["duration_seconds"])),
            requested_at=datetime.fromisoformat(d["requested_at"]),
            state=GrantState(d["state"]),
            emergency=bool(d["emergency"]),
            decided_by=d.get("decided_by"),
            decided_at=when("decided_at"),
            expires_at=when("expires_at"),
            note=d.get("note") or "",
            ended_at=when("ended_at"),
            ended_by=d.get("ended_by"),
            approvals=tuple(d.get("approvals") or ()),
        )

    def as_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "conduit": self.conduit,
            "identity": self.identity,
            "reason": self.reason,
            "duration": format_duration(self.duration),
            "duration_seconds": int(self.duration.total_seconds()),
            "requested_at": self.requested_at.isoformat(),
            "state": self.state.value,
            "emergency": self.emergency,
            "decided_by": self.decided_by,
            "decided_at": self.decided_at.isoformat() if self.decided_at else None,
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
            "note": self.note,
            "ended_at": self.ended_at.isoformat() if self.ended_at else None,
            "ended_by": self.ended_by,
            "approvals": list(self.approvals),
        }


@dataclass
class GrantBook:
    """Every grant this gateway has seen; each active one is one kernel set element.

    Pure: it decides and records, nothing else. `GrantService` puts the decisions into
    the kernel, the audit trail and the state file, in that order of truth.
    """

    topology: Topology
    grants: dict[str, Grant] = field(default_factory=dict)
    next_id: int = 1  # persisted, so ids stay unique across restarts

    def _new_id(self) -> str:
        n, self.next_id = self.next_id, self.next_id + 1
        return f"g{n}-{secrets.token_hex(3)}"

    def note_id(self, grant_id: str) -> None:
        """Keep `next_id` above an id seen elsewhere (the kernel, an old state file)."""
        head = grant_id[1:].split("-", 1)[0]
        if grant_id.startswith("g") and head.isdigit():
            self.next_id = max(self.next_id, int(head) + 1)

    def _identity(self, name: str) -> Identity:
        ident = self.topology.identities.get(name)
        if ident is None:
            raise GrantError(Refusal.FORBIDDEN, f"unknown identity '{name}'")
        return ident

    def _conduit(self, name: str) -> Conduit:
        conduit = self.topology.conduits.get(name)
        if conduit is None:
            raise GrantError(Refusal.NOT_FOUND, f"no conduit '{name}'")
        return conduit

    def get(self, grant_id: str) -> Grant:
        grant = self.grants.get(grant_id)
        if grant is None:
            raise GrantError(Refusal.NOT_FOUND, f"no grant '{grant_id}'")
        return grant

    def holder(self, identity: str, conduit: str) -> Grant | None:
        """The active grant of `identity` on `conduit`, if any (there is at most one)."""
        for g in self.grants.values():
            if g.state is GrantState.ACTIVE and g.identity == identity and g.conduit == conduit:
                return g
        return None

    def _check_free(self, identity: str, conduit: str) -> None:
        held = self.holder(identity, conduit)
        if held is not None:
            until = held.expires_at.isoformat() if held.expires_at else "?"
            raise GrantError(
                Refusal.CONFLICT,
                f"identity '{identity}' already holds active grant '{held.id}' on "
                f"'{conduit}' until {until}; revoke it first",
            )

    def request(
        self, identity: str, conduit: str, duration: timedelta, reason: str, now: datetime
    ) -> Grant:
        ident, c = self._identity(identity), self._conduit(conduit)
        if c.approval is None:
            hint = " (it is an emergency conduit)" if c.emergency else ""
            raise GrantError(
                Refusal.CONFLICT, f"conduit '{conduit}' takes no approval requests{hint}"
            )
        self._check_requester(ident, c, now, reason)
        if duration > c.approval.max_duration:
            raise GrantError(
                Refusal.INVALID,
                f"duration {format_duration(duration)} exceeds conduit '{conduit}' maximum "
                f"of {format_duration(c.approval.max_duration)}",
            )
        waiting = sum(
            1
            for g in self.grants.values()
            if g.identity == identity and g.state is GrantState.REQUESTED
        )
        if waiting >= MAX_PENDING_PER_IDENTITY:
            raise GrantError(
                Refusal.TOO_MANY,
                f"identity '{identity}' already has {waiting} requests waiting for a decision "
                f"(at most {MAX_PENDING_PER_IDENTITY})",
            )
        grant = Grant(self._new_id(), conduit, identity, reason, duration, now)
        self.grants[grant.id] = grant
        return grant

    def emergency(
        self, identity: str, conduit: str, duration: timedelta, reason: str, now: datetime
    ) -> Grant:
        ident, c = self._identity(identity), self._conduit(conduit)
        if c.emergency is None:
            raise GrantError(
                Refusal.CONFLICT, f"conduit '{conduit}' is not declared for emergency access"
            )
        self._check_requester(ident, c, now, reason)
        if duration > c.emergency.max_duration:
            raise GrantError(
                Refusal.INVALID,
                f"emergency access on '{conduit}' is capped at "
                f"{format_duration(c.emergency.max_duration)}",
            )
        self._check_free(identity, conduit)
        grant = Grant(
            self._new_id(),
            conduit,
            identity,
            reason,
            duration,
            now,
            state=GrantState.ACTIVE,
            emergency=True,
            decided_by=identity,
            decided_at=now,
            expires_at=self._expiry(ident, now + duration),
        )
        self.grants[grant.id] = grant
        return grant

    def _check_requester(self, ident: Identity, c: Conduit, now: datetime, reason: str) -> None:
        if not reason.strip():
            raise GrantError(Refusal.INVALID, "a reason is required (it goes to the audit trail)")
        if not c.sources.admits(ident):
            raise GrantError(
                Refusal.FORBIDDEN, f"conduit '{c.name}' does not admit identity '{ident.name}'"
            )
        if not ident.valid_at(now):
            raise GrantError(Refusal.FORBIDDEN, f"identity '{ident.name}' is not valid now")

    @staticmethod
    def _expiry(ident: Identity, wanted: datetime) -> datetime:
        """A grant never outlives the identity's validity window."""
        if ident.valid_until is not None and ident.valid_until < wanted:
            return ident.valid_until
        return wanted

    def needed(self, grant: Grant) -> int:
        """Approvals still missing before the grant opens (dual approval: count > 1)."""
        conduit = self.topology.conduits.get(grant.conduit)
        count = conduit.approval.count if conduit and conduit.approval else 1
        return max(0, count - len(grant.approvals))

    def approve(self, grant_id: str, approver: str, now: datetime, note: str = "") -> Grant:
        """Record one approval; the grant opens (ACTIVE) with the last one needed."""
        grant = self._pending(grant_id)
        self._check_approver(grant, approver)
        if approver in grant.approvals:
            raise GrantError(
                Refusal.CONFLICT, f"'{approver}' has already approved grant '{grant_id}'"
            )
        ident = self._identity(grant.identity)
        if not ident.valid_at(now):
            raise GrantError(Refusal.CONFLICT, f"identity '{ident.name}' is no longer valid")
        approvals = (*grant.approvals, approver)
        if self.needed(grant) > 1:
            done = replace(grant, approvals=approvals, note=note or grant.note)
            self.grants[grant_id] = done
            return done
        self._check_free(grant.identity, grant.conduit)
        done = replace(
            grant,
            state=GrantState.ACTIVE,
            decided_by=approver,
            decided_at=now,
            expires_at=self._expiry(ident, now + grant.duration),
            note=note,
            approvals=approvals,
        )
        self.grants[grant_id] = done
        return done

    def deny(self, grant_id: str, approver: str, now: datetime, note: str = "") -> Grant:
        grant = self._pending(grant_id)
        self._check_approver(grant, approver)
        done = replace(
            grant,
            state=GrantState.DENIED,
            decided_by=approver,
            decided_at=now,
            note=note,
            ended_at=now,
            ended_by=approver,
        )
        self.grants[grant_id] = done
        return done

    def _pending(self, grant_id: str) -> Grant:
        grant = self.get(grant_id)
        if grant.state is not GrantState.REQUESTED:
            raise GrantError(
                Refusal.CONFLICT, f"grant '{grant_id}' is {grant.state.value}, not requested"
            )
        return grant

    def may_decide(self, grant: Grant, identity: str) -> bool:
        """Whether the conduit's `approval.by` names this identity, directly or by role."""
        conduit = self.topology.conduits.get(grant.conduit)
        who = self.topology.identities.get(identity)
        if conduit is None or conduit.approval is None or who is None:
            return False
        return conduit.approval.names(who)

    def visible_to(self, identity: str) -> list[Grant]:
        """A remote identity sees its own grants and those it may decide."""
        return [
            g
            for g in self.grants.values()
            if g.identity == identity or self.may_decide(g, identity)
        ]

    def _check_approver(self, grant: Grant, approver: str) -> None:
        self._identity(approver)
        if approver == grant.identity:
            raise GrantError(
                Refusal.FORBIDDEN, "the requester cannot approve or deny its own grant"
            )
        if self.may_decide(grant, approver):
            return
        conduit = self.topology.conduits.get(grant.conduit)
        rule = conduit.approval.describe() if conduit and conduit.approval else "no approvers"
        raise GrantError(
            Refusal.FORBIDDEN,
            f"identity '{approver}' may not decide grants on '{grant.conduit}' ({rule})",
        )

    def revoke(
        self, grant_id: str, by: str, now: datetime, admin: bool = False, note: str = ""
    ) -> Grant:
        """Revoke: by the grant's identity, an approver of its conduit, or an administrator."""
        grant = self.get(grant_id)
        if not (admin or by == grant.identity or self.may_decide(grant, by)):
            raise GrantError(Refusal.FORBIDDEN, f"identity '{by}' may not revoke this grant")
        if grant.state not in (GrantState.ACTIVE, GrantState.REQUESTED):
            raise GrantError(Refusal.CONFLICT, f"grant '{grant_id}' is already {grant.state.value}")
        who = f"local:{by}" if admin else by
        return self.end(grant_id, GrantState.REVOKED, who, now, note)

    def end(self, grant_id: str, state: GrantState, by: str, now: datetime, note: str) -> Grant:
        """Move a grant to an ended state (revoked, expired, denied) with who and why."""
        done = replace(self.get(grant_id), state=state, ended_at=now, ended_by=by, note=note)
        self.grants[grant_id] = done
        return done

    def due(self, now: datetime) -> list[Grant]:
        """Active grants past their expiry (the kernel has closed, or is closing, them)."""
        return [
            g
            for g in self.grants.values()
            if g.state is GrantState.ACTIVE and g.expires_at is not None and g.expires_at <= now
        ]

    def invalidated(self, now: datetime) -> list[tuple[Grant, str]]:
        """Open grants the current topology no longer allows, each with why."""
        out = []
        for g in self.grants.values():
            if g.state not in (GrantState.ACTIVE, GrantState.REQUESTED):
                continue
            why = self._invalid(g, now)
            if why:
                out.append((g, why))
        return out

    def _invalid(self, g: Grant, now: datetime) -> str:
        c = self.topology.conduits.get(g.conduit)
        ident = self.topology.identities.get(g.identity)
        if c is None:
            return f"conduit '{g.conduit}' was removed from the topology"
        if ident is None:
            return f"identity '{g.identity}' was removed from the topology"
        if not c.sources.admits(ident):
            return f"conduit '{g.conduit}' no longer admits identity '{g.identity}'"
        if (c.emergency if g.emergency else c.approval) is None:
            kind = "emergency access" if g.emergency else "approval requests"
            return f"conduit '{g.conduit}' no longer takes {kind}"
        if not ident.valid_at(now):
            return f"identity '{g.identity}' is no longer valid"
        return ""

    def prune(self, now: datetime, keep: timedelta = RETENTION) -> list[str]:
        """Forget grants that ended longer than `keep` ago; the audit log still has them."""
        old = [
            gid
            for gid, g in self.grants.items()
            if g.ended() and (g.ended_at or g.decided_at or g.requested_at) < now - keep
        ]
        for gid in old:
            del self.grants[gid]
        return old

    def active(self) -> list[Grant]:
        return [g for g in self.grants.values() if g.state is GrantState.ACTIVE]
