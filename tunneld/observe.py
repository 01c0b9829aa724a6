"""What tunneld counts (Prometheus metrics) and how it logs floods (rate-limited, counted).

A flood of junk frames must not become a flood of log lines: rejected-frame warnings go
through `RateLimitedLog`, which lets a burst through, then counts what it holds back and
says how many lines it suppressed when it next speaks. Nothing is dropped silently: every
rejection is also counted in `tunneld_rejected_frames_total`. Each daemon has its own
registry (tests run several daemons in one process); `/metrics` on the status socket
serves it.
"""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from tunneld.timers import TokenBucket


class Metrics:
    """One daemon's metrics. Label values are bounded: peer names come from the plan,
    message kinds from the codec, reasons from a fixed list."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.rejected = Counter(
            "tunneld_rejected_frames",
            "Handshake frames rejected, by message kind (the connection is closed).",
            ["message"],
            registry=r,
        )
        self.connections = Counter(
            "tunneld_connections",
            "Incoming handshake connections: accepted, refused (caps), evicted (unproven).",
            ["outcome"],
            registry=r,
        )
        self.open_connections = Gauge(
            "tunneld_open_connections", "Incoming handshake connections now open.", registry=r
        )
        self.handshakes = Counter(
            "tunneld_handshakes", "PSKs installed from completed handshakes.", ["peer"], registry=r
        )
        self.psk_expired = Counter(
            "tunneld_psk_expired",
            "PSKs replaced by a random one because no handshake completed in time.",
            ["peer"],
            registry=r,
        )
        self.wg_errors = Counter(
            "tunneld_wireguard_errors",
            "WireGuard operations that failed, by operation (each leaves a random PSK).",
            ["operation"],
            registry=r,
        )
        self.loop_errors = Counter(
            "tunneld_timer_loop_errors",
            "Unexpected errors caught by the supervised timer loop (it keeps running).",
            registry=r,
        )
        self.suppressed_logs = Counter(
            "tunneld_suppressed_log_lines",
            "Rejected-frame warnings not written because of the log rate limit.",
            registry=r,
        )

    def text(self) -> bytes:
        return generate_latest(self.registry)


def message_kind(reason: str) -> str:
    """Bounded label for a rejection reason: the message type before ':' or 'frame'."""
    head = reason.split(":", 1)[0]
    known = ("InitHello", "RespHello", "InitConf", "RespConf", "Refused", "RekeyRequest")
    return head if head in known else "frame"


class RateLimitedLog:
    """At most `burst` lines at once and `rate` per second after that; the rest counted."""

    def __init__(
        self, logger: logging.Logger, metrics: Metrics, rate: float = 1.0, burst: int = 10
    ) -> None:
        self.logger = logger
        self.metrics = metrics
        self.bucket = TokenBucket(burst, rate, float(burst), 0.0)
        self.suppressed = 0

    def warning(self, now: float, fmt: str, *args: object) -> None:
        tokens = self.bucket.available(now)
        if tokens < 1.0:
            self.suppressed += 1
            self.metrics.suppressed_logs.inc()
            return
        self.bucket.take(now, tokens)
        if self.suppressed:
            self.logger.warning(
                "%d similar warnings suppressed (rate limit; all counted in "
                "tunneld_rejected_frames_total)",
                self.suppressed,
            )
            self.suppressed = 0
        self.logger.warning(fmt, *args)
