"""What the API handlers share, and how a caller's identity is established."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address
from typing import Any, Protocol

from aiohttp import web

from policyd.flowlog.sinks import LiveStream
from policyd.grants import Grant, GrantBook, GrantError
from topology.model import Conduit, Identity


class Enforcer(Protocol):
    """The kernel side of a grant: open it with a timeout, close it and its sessions."""

    def open_grant(self, identity: Identity, conduit: Conduit, timeout: timedelta) -> None: ...

    def close_grant(self, identity: Identity, conduit: Conduit) -> None: ...


Audit = Callable[[str, dict[str, Any]], None]


@dataclass
class ControlState:
    book: GrantBook
    enforcer: Enforcer
    audit: Audit
    gateway: str
    status: Callable[[], dict[str, Any]] = dict
    metrics: Callable[[], dict[str, float]] = dict
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    # True when the source address reached us through a tunnel (a route check).
    via_tunnel: Callable[[IPv4Address], bool] = field(default=lambda _a: False)
    live: LiveStream | None = None  # the flow recorder's live stream, if it runs


STATE: web.AppKey[ControlState] = web.AppKey("state", ControlState)
LOCAL: web.AppKey[bool] = web.AppKey("local", bool)


@dataclass(frozen=True)
class Caller:
    identity: str
    local: bool  # on the unix socket: an administrator on the gateway itself

    def label(self) -> str:
        return f"local:{self.identity}" if self.local else self.identity


def caller_of(request: web.Request, acting_as: str | None) -> Caller:
    """Remote: the tunnel source address and nothing else. Local: the declared identity."""
    state = request.app[STATE]
    if request.app[LOCAL]:
        if not acting_as:
            raise GrantError(400, "on the local socket, say which identity acts ('as')")
        if acting_as not in state.book.topology.identities:
            raise GrantError(403, f"unknown identity '{acting_as}'")
        return Caller(acting_as, local=True)
    if acting_as:
        raise GrantError(400, "'as' is not accepted remotely: your tunnel says who you are")
    peer = request.transport.get_extra_info("peername") if request.transport else None
    try:
        address = IPv4Address(peer[0] if peer else "")
    except (TypeError, ValueError, IndexError):
        raise GrantError(403, "cannot tell the caller's address") from None
    if not state.via_tunnel(address):
        raise GrantError(403, f"{address} did not arrive through a tunnel")
    for ident in state.book.topology.identities.values():
        if ident.overlay == address:
            return Caller(ident.name, local=False)
    raise GrantError(403, f"{address} is not an identity's overlay address")


def grant_view(grant: Grant) -> dict[str, object]:
    return grant.as_dict()
