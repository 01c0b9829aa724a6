"""Timer settings, retransmission backoff with jitter, and the InitHello rate limit.

Defaults follow Rosenpass and WireGuard: a new PSK every 120 s (minus up to 10 s of
jitter so the initiators of many peers drift apart instead of firing together), a PSK
older than 180 s is replaced by a random one, lost messages are retried after 1, 2, 4,
... s (capped, +-25 % jitter). Tests shrink these to fractions of a second.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Timers:
    rekey_interval: float = 120.0
    rekey_jitter: float = 10.0  # initiator rekeys at interval - U(0, jitter)
    psk_lifetime: float = 180.0  # after this without a new PSK: random PSK
    start_jitter: float = 0.5  # first handshake at start + U(0, start_jitter)
    retransmit_initial: float = 1.0
    retransmit_max: float = 16.0
    retransmit_jitter: float = 0.25  # +- fraction of the backoff
    conf_retries: int = 4  # InitConf sends before starting over with InitHello
    responder_timeout: float = 10.0  # responder drops a half-done handshake after this
    nudge_grace: float = 15.0  # responder asks for a rekey when the PSK is this overdue
    init_rate: float = 1.0  # accepted InitHello per second per peer (token bucket)
    init_burst: int = 5
    # An InitHello's timestamp must lie within this many seconds of the responder's
    # clock: a forged far-future one cannot block later hellos, and a recorded one can
    # be replayed only this long, also after a responder restart (docs/handshake.md 9b).
    clock_skew: float = 120.0

    def __post_init__(self) -> None:
        if self.psk_lifetime <= self.rekey_interval:
            raise ValueError("psk_lifetime must exceed rekey_interval")
        if self.rekey_jitter >= self.rekey_interval:
            raise ValueError("rekey_jitter must be smaller than rekey_interval")

    @classmethod
    def fast(cls, interval: float) -> Timers:
        """Short timers for tests and benchmarks, same proportions as the defaults."""
        return cls(
            rekey_interval=interval,
            rekey_jitter=interval / 12,
            psk_lifetime=interval * 1.5,
            start_jitter=min(0.5, interval / 10),
            retransmit_initial=min(1.0, interval / 4),
            retransmit_max=min(16.0, interval),
            responder_timeout=min(10.0, interval),
            nudge_grace=interval / 8,
            init_rate=max(1.0, 10.0 / interval),
            init_burst=10,
            clock_skew=120.0,
        )


def backoff(timers: Timers, attempt: int, unit: float) -> float:
    """Delay before retry `attempt` (0-based); `unit` in [0, 1) supplies the jitter."""
    base = min(timers.retransmit_initial * float(2 ** min(attempt, 30)), timers.retransmit_max)
    return base * (1.0 + timers.retransmit_jitter * (2.0 * unit - 1.0))


@dataclass
class TokenBucket:
    """Per-peer budget of expensive InitHello processing.

    `available()` is pure; tokens are only taken (`take`) once a message was accepted,
    so a rejected message never changes the bucket.
    """

    burst: int
    rate: float
    tokens: float
    updated: float

    def available(self, now: float) -> float:
        return min(float(self.burst), self.tokens + max(0.0, now - self.updated) * self.rate)

    def take(self, now: float, available: float) -> None:
        self.tokens = available - 1.0
        self.updated = now
