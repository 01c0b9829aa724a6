"""Just-in-time access: requests, approvals, emergency access, revocation, expiry.

Pure bookkeeping with an injected clock. It decides who may do what (IEC 62443 SR
2.1: an approver the conduit names, never the requester; SR 1.13: time-boxed); the
kernel does the enforcing: an active grant is a set element with a timeout, so it
expires even if policyd is dead. `GrantError` carries an HTTP-like status and a
reason the API returns as is.
"""

from __future__ import annotations

import itertools
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


class GrantError(Exception):
    """A refused grant operation: `status` is the HTTP status the API answers with."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


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
        }


def admits(topo: Topology, conduit: Conduit, identity: Identity) -> bool:
    """Whether the conduit's `from` names this identity directly or by role."""
    s = conduit.sources
    return identity.name in s.identities or any(r in s.roles for r in identity.roles)


@dataclass
class GrantBook:
    """Every grant this gateway has seen; the active ones mirror kernel set elements."""

    topology: Topology
    grants: dict[str, Grant] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def _new_id(self) -> str:
        return f"g{next(self._ids)}-{secrets.token_hex(3)}"

    def _identity(self, name: str) -> Identity:
        ident = self.topology.identities.get(name)
        if ident is None:
            raise GrantError(403, f"unknown identity '{name}'")
        return ident

    def _conduit(self, name: str) -> Conduit:
        conduit = self.topology.conduits.get(name)
        if conduit is None:
            raise GrantError(404, f"no conduit '{name}'")
        return conduit

    def get(self, grant_id: str) -> Grant:
        grant = self.grants.get(grant_id)
        if grant is None:
            raise GrantError(404, f"no grant '{grant_id}'")
        return grant

    def request(
        self, identity: str, conduit: str, duration: timedelta, reason: str, now: datetime
    ) -> Grant:
        ident, c = self._identity(identity), self._conduit(conduit)
        if c.approval is None:
            hint = " (it is an emergency conduit)" if c.emergency else ""
            raise GrantError(409, f"conduit '{conduit}' takes no approval requests{hint}")
        self._check_requester(ident, c, now, reason)
        if duration > c.approval.max_duration:
            raise GrantError(
                422,
                f"duration {format_duration(duration)} exceeds conduit '{conduit}' maximum "
                f"of {format_duration(c.approval.max_duration)}",
            )
        grant = Grant(self._new_id(), conduit, identity, reason, duration, now)
        self.grants[grant.id] = grant
        return grant

    def emergency(
        self, identity: str, conduit: str, duration: timedelta, reason: str, now: datetime
    ) -> Grant:
        ident, c = self._identity(identity), self._conduit(conduit)
        if c.emergency is None:
            raise GrantError(409, f"conduit '{conduit}' is not declared for emergency access")
        self._check_requester(ident, c, now, reason)
        if duration > c.emergency.max_duration:
            raise GrantError(
                422,
                f"emergency access on '{conduit}' is capped at "
                f"{format_duration(c.emergency.max_duration)}",
            )
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
            raise GrantError(422, "a reason is required (it goes to the audit trail)")
        if not admits(self.topology, c, ident):
            raise GrantError(403, f"conduit '{c.name}' does not admit identity '{ident.name}'")
        if not ident.valid_at(now):
            raise GrantError(403, f"identity '{ident.name}' is not valid now")

    @staticmethod
    def _expiry(ident: Identity, wanted: datetime) -> datetime:
        """A grant never outlives the identity's validity window."""
        if ident.valid_until is not None and ident.valid_until < wanted:
            return ident.valid_until
        return wanted

    def approve(self, grant_id: str, approver: str, now: datetime) -> Grant:
        grant = self._pending(grant_id)
        self._check_approver(grant, approver)
        ident = self._identity(grant.identity)
        if not ident.valid_at(now):
            raise GrantError(409, f"identity '{ident.name}' is no longer valid")
        done = replace(
            grant,
            state=GrantState.ACTIVE,
            decided_by=approver,
            decided_at=now,
            expires_at=self._expiry(ident, now + grant.duration),
        )
        self.grants[grant_id] = done
        return done

    def deny(self, grant_id: str, approver: str, now: datetime, note: str = "") -> Grant:
        grant = self._pending(grant_id)
        self._check_approver(grant, approver)
        done = replace(
            grant, state=GrantState.DENIED, decided_by=approver, decided_at=now, note=note
        )
        self.grants[grant_id] = done
        return done

    def _pending(self, grant_id: str) -> Grant:
        grant = self.get(grant_id)
        if grant.state is not GrantState.REQUESTED:
            raise GrantError(409, f"grant '{grant_id}' is {grant.state.value}, not requested")
        return grant

    def may_decide(self, grant: Grant, identity: str) -> bool:
        """Whether the conduit's `approval.by` names this identity, directly or by role."""
        conduit = self.topology.conduits.get(grant.conduit)
        who = self.topology.identities.get(identity)
        if conduit is None or conduit.approval is None or who is None:
            return False
        approval = conduit.approval
        return identity in approval.by_identities or any(r in approval.by_roles for r in who.roles)

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
            raise GrantError(403, "the requester cannot approve or deny its own grant")
        if self.may_decide(grant, approver):
            return
        approval = self._conduit(grant.conduit).approval
        assert approval is not None  # only approval conduits have requested grants
        raise GrantError(
            403,
            f"identity '{approver}' may not decide grants on '{grant.conduit}' "
            f"({approval.describe()})",
        )

    def revoke(self, grant_id: str, by: str, now: datetime, admin: bool = False) -> Grant:
        """Revoke: by the grant's identity, an approver of its conduit, or an administrator."""
        grant = self.get(grant_id)
        if not (admin or by == grant.identity or self.may_decide(grant, by)):
            raise GrantError(403, f"identity '{by}' may not revoke this grant")
        if grant.state not in (GrantState.ACTIVE, GrantState.REQUESTED):
            raise GrantError(409, f"grant '{grant_id}' is already {grant.state.value}")
        who = f"local:{by}" if admin else by
        done = replace(grant, state=GrantState.REVOKED, note=f"revoked by {who} at {now}")
        self.grants[grant_id] = done
        return done

    def expire(self, now: datetime) -> list[Grant]:
        """Mark active grants past their expiry; the kernel has already closed them."""
        expired = []
        for gid, grant in list(self.grants.items()):
            if grant.state is GrantState.ACTIVE and grant.expires_at and grant.expires_at <= now:
                done = replace(grant, state=GrantState.EXPIRED)
                self.grants[gid] = done
                expired.append(done)
        return expired

    def drop_orphans(self, now: datetime) -> list[Grant]:
        """After a reload: grants whose conduit or identity is gone are revoked."""
        dropped = []
        for gid, grant in list(self.grants.items()):
            if grant.state not in (GrantState.ACTIVE, GrantState.REQUESTED):
                continue
            if (
                grant.conduit in self.topology.conduits
                and grant.identity in self.topology.identities
            ):
                continue
            done = replace(
                grant, state=GrantState.REVOKED, note=f"removed from the topology at {now}"
            )
            self.grants[gid] = done
            dropped.append(done)
        return dropped

    def active(self) -> list[Grant]:
        return [g for g in self.grants.values() if g.state is GrantState.ACTIVE]
