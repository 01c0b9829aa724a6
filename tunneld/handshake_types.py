"""What the handshake state machine takes and gives: configuration and events.

Kept apart from the state machine (handshake.py) so the daemon, the plan and the
benchmark depend on these small value types, not on the machine's internals.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

from tunneld import messages as m
from tunneld import transcript as t
from tunneld.hybrid import HybridPrivateKey, HybridPublicKey

Role = Literal["initiator", "responder"]


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def time_ns(self) -> int: ...


Random = Callable[[int], bytes]


@dataclass(frozen=True)
class LocalIdentity:
    name: str
    static: HybridPrivateKey
    wg_public: bytes

    @property
    def id(self) -> bytes:
        return t.identity_id(self.static.digest, self.wg_public)


@dataclass(frozen=True)
class PeerConfig:
    """A pinned peer: its public static keys and WireGuard key, and who initiates."""

    name: str
    static: HybridPublicKey
    wg_public: bytes
    role: Role  # our role towards this peer
    kem: str = "ml-kem-768"  # ephemeral KEM of this pair
    # Responder: send RekeyRequests when we lack a PSK. Off for peers we can not reach
    # (a user behind NAT has no endpoint); they rekey on their own schedule.
    nudge: bool = True

    @property
    def id(self) -> bytes:
        return t.identity_id(self.static.digest, self.wg_public)


@dataclass(frozen=True)
class RefusedIdentity:
    """An identity we know but do not admit; its InitHello gets an authenticated Refused."""

    name: str
    static: HybridPublicKey
    wg_public: bytes
    code: int  # messages.REFUSED_NOT_YET_VALID, _EXPIRED or _NO_CONDUIT

    @property
    def id(self) -> bytes:
        return t.identity_id(self.static.digest, self.wg_public)


# --- events ---------------------------------------------------------------------


@dataclass(frozen=True)
class Send:
    """Transmit `data` to `peer`; `reply` means on the connection the input came from.

    `cached`: the same answer again for an input identical to one already answered (a
    retransmission, or a replay of a recorded message); it proves nothing about the
    sender, so the daemon does not count it as proof for the connection's slot."""

    peer: str
    data: bytes
    reply: bool
    cached: bool = False


@dataclass(frozen=True)
class PskReady:
    """A confirmed new PSK: install it now (WireGuard uses it from its next handshake)."""

    peer: str
    psk: bytes = field(repr=False)
    role: Role


@dataclass(frozen=True)
class PskExpired:
    """No new PSK within the lifetime: replace it by a random one (fail closed)."""

    peer: str


@dataclass(frozen=True)
class Rejected:
    peer: str | None
    reason: str


@dataclass(frozen=True)
class Timeout:
    peer: str
    reason: str


@dataclass(frozen=True)
class Refusal:
    """Initiator: `peer` refused our InitHello with `code` (authenticated or only a hint)."""

    peer: str
    code: int
    authenticated: bool


Event = Send | PskReady | PskExpired | Rejected | Timeout | Refusal

_REFUSAL_TEXT = {
    m.REFUSED_UNKNOWN: "it does not know this identity's keys (not in its topology, revoked, "
    "or the topology pins other keys)",
    m.REFUSED_NOT_FOR_US: "its keys are not the ones pinned here (get a new profile)",
    m.REFUSED_NOT_YET_VALID: "identity {ident} is outside its validity window (not valid yet)",
    m.REFUSED_EXPIRED: "identity {ident} is outside its validity window (it has ended)",
    m.REFUSED_NO_CONDUIT: "identity {ident} has no conduit into this site",
}


def describe_refusal(peer: str, code: int, authenticated: bool, ident: str) -> str:
    """The line a user reads: 'gateway plant-a refused: identity x is outside ...'."""
    text = _REFUSAL_TEXT.get(code, f"code {code}").format(ident=ident)
    note = "" if authenticated else " [unauthenticated reply]"
    return f"gateway {peer} refused: {text}{note}"


# --- per-peer state -------------------------------------------------------------
