"""What the API handlers share, and how a caller's identity is established.

Remote callers are their tunnel: the source address must arrive through a tunnel
interface and be an identity's overlay address. Local (unix socket) callers are
their peer credentials (SO_PEERCRED): root may act as any declared identity (it is
the gateway's administrator); another uid only as the identities `--local-user`
maps it to. `as` in a body names which of those acts; it is checked, never trusted.
Both listeners (and a later web console) share these rules through `caller_of`.
"""

from __future__ import annotations

import secrets
import socket
import struct
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from aiohttp import web

from policyd.api.errors import ApiError
from policyd.console.events import Broadcaster
from policyd.flowlog.records import AuditEvent
from policyd.flowlog.sinks import LiveStream
from policyd.grant_service import GrantService
from policyd.grants import Grant, GrantError, Refusal
from policyd.totp import TotpStore


def peer_uid(request: web.Request) -> int | None:
    """The uid of the process at the other end of a unix socket, from the kernel."""
    sock = request.transport.get_extra_info("socket") if request.transport else None
    if sock is None or sock.family != socket.AF_UNIX:
        return None
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


async def _no_tunnel(_address: IPv4Address) -> bool:
    return False


Sessions = Callable[[str, str], Awaitable[list[dict[str, Any]]]]  # (conduit, address)


async def _no_sessions(_conduit: str, _address: str) -> list[dict[str, Any]]:
    return []


@dataclass
class ControlState:
    service: GrantService
    gateway: str
    status: Callable[[], dict[str, Any]] = dict
    metrics: Callable[[], bytes] = lambda: b""
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    # True when the source address reached us through a tunnel (a netlink route check).
    via_tunnel: Callable[[IPv4Address], Awaitable[bool]] = _no_tunnel
    live: LiveStream | None = None  # the flow recorder's live stream, if it runs
    local_users: Mapping[int, frozenset[str]] = field(default_factory=dict)
    operators: frozenset[str] = frozenset()  # identities that may read status and metrics
    peer_uid: Callable[[web.Request], int | None] = peer_uid
    # Second factor (policyd/totp.py): None means no store, so conduits that ask for one
    # refuse their actions until the network team enrols approvers.
    totp: TotpStore | None = None
    audit: Callable[[AuditEvent], None] = lambda _e: None  # for refusals the book never sees
    events: Broadcaster = field(default_factory=Broadcaster)  # live console updates
    flow_log: Path | None = None  # the console's recent flows and audit trail
    sessions: Sessions = _no_sessions  # a grant's live sessions, from conntrack
    form_secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))


STATE: web.AppKey[ControlState] = web.AppKey("state", ControlState)
LOCAL: web.AppKey[bool] = web.AppKey("local", bool)


@dataclass(frozen=True)
class Caller:
    identity: str
    local: bool  # on the unix socket
    admin: bool = False  # root on the gateway itself

    def label(self) -> str:
        return f"local:{self.identity}" if self.local else self.identity


async def caller_of(request: web.Request, acting_as: str | None) -> Caller:
    state = request.app[STATE]
    identities = state.service.book.topology.identities
    if request.app[LOCAL]:
        uid = state.peer_uid(request)
        if uid is None:
            raise ApiError(403, "cannot read the caller's credentials on the local socket")
        if uid == 0:
            if not acting_as:
                raise ApiError(400, "on the local socket, say which identity acts ('as')")
            if acting_as not in identities:
                raise GrantError(Refusal.FORBIDDEN, f"unknown identity '{acting_as}'")
            return Caller(acting_as, local=True, admin=True)
        allowed = state.local_users.get(uid, frozenset()) & identities.keys()
        if not allowed:
            raise ApiError(403, f"uid {uid} is mapped to no identity (policyd --local-user)")
        names = ", ".join(sorted(allowed))
        if acting_as is None:
            if len(allowed) > 1:
                raise ApiError(400, f"say which identity acts ('as'): one of {names}")
            acting_as = next(iter(allowed))
        if acting_as not in allowed:
            raise ApiError(403, f"uid {uid} may act only as {names}, not '{acting_as}'")
        return Caller(acting_as, local=True)
    if acting_as:
        raise ApiError(400, "'as' is not accepted remotely: your tunnel says who you are")
    peer = request.transport.get_extra_info("peername") if request.transport else None
    try:
        address = IPv4Address(peer[0] if peer else "")
    except (TypeError, ValueError, IndexError):
        raise ApiError(403, "cannot tell the caller's address") from None
    if not await state.via_tunnel(address):
        raise ApiError(403, f"{address} did not arrive through a tunnel")
    for ident in identities.values():
        if ident.overlay == address:
            return Caller(ident.name, local=False)
    raise ApiError(403, f"{address} is not an identity's overlay address")


async def readers_of(request: web.Request) -> frozenset[str] | None:
    """Whose view a read gets: None for root on the local socket (everything), else
    the caller's identities (a local user may be mapped to several)."""
    state = request.app[STATE]
    if request.app[LOCAL]:
        uid = state.peer_uid(request)
        if uid == 0:
            return None
        if uid is None:
            raise ApiError(403, "cannot read the caller's credentials on the local socket")
        allowed = (
            state.local_users.get(uid, frozenset()) & state.service.book.topology.identities.keys()
        )
        if not allowed:
            raise ApiError(403, f"uid {uid} is mapped to no identity (policyd --local-user)")
        return frozenset(allowed)
    return frozenset({(await caller_of(request, None)).identity})


async def require_operator(request: web.Request) -> None:
    """Status and metrics: root locally, or an identity declared with --operator."""
    who = await readers_of(request)
    if who is not None and not who & request.app[STATE].operators:
        names = ", ".join(sorted(who))
        raise ApiError(403, f"{names}: not an operator (policyd --operator)")


def grant_view(grant: Grant) -> dict[str, object]:
    return grant.as_dict()
