"""/metrics through prometheus_client: counters are counters, levels are gauges.

A collector reads the daemon's numbers at scrape time (nothing is updated on the
hot path for metrics' sake, and a scrape changes nothing).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from policyd.api.guard import Guard
    from policyd.flowlog.recorder import FlowRecorder
    from policyd.grant_service import GrantService


@dataclass
class Sample:
    """One metric: `counter` (only ever grows) or `gauge`, by label values."""

    name: str
    help: str
    kind: str
    labels: tuple[str, ...] = ()
    values: dict[tuple[str, ...], float] = field(default_factory=dict)


class _Reader(Collector):
    def __init__(self, read: Callable[[], list[Sample]]) -> None:
        self.read = read

    def collect(self) -> Iterator[Metric]:
        for s in self.read():
            family: GaugeMetricFamily | CounterMetricFamily
            if s.kind == "counter":
                family = CounterMetricFamily(f"zonegate_{s.name}", s.help, labels=s.labels)
            else:
                family = GaugeMetricFamily(f"zonegate_{s.name}", s.help, labels=s.labels)
            for labels, value in s.values.items():
                family.add_metric(list(labels), value)
            yield family


def exposition(read: Callable[[], list[Sample]]) -> Callable[[], bytes]:
    """A function that renders the samples `read` returns in the Prometheus text format."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Reader(read))
    return lambda: generate_latest(registry)


def _one(name: str, text: str, kind: str, value: float) -> Sample:
    return Sample(name, text, kind, values={(): value})


def gateway_samples(
    applied: bool, grants: GrantService | None, guard: Guard, recorder: FlowRecorder | None
) -> list[Sample]:
    """What policyd exports: policy, grants, the API's connections, the flow recorder."""
    out = [_one("policy_applied", "1 when a policy is in force.", "gauge", float(applied))]
    if grants is not None:
        c = grants.counters
        out += [
            Sample(
                "grants",
                "Grants in the book, by state.",
                "gauge",
                ("state",),
                {(k,): float(v) for k, v in grants.counts().items()},
            ),
            Sample(
                "grant_events_total",
                "Audited grant events.",
                "counter",
                ("event",),
                {(k,): float(v) for k, v in c.by_event.items()},
            ),
            _one(
                "grant_reconcile_removed_total",
                "Unknown elements removed.",
                "counter",
                c.reconciled_removed,
            ),
            _one(
                "grant_reconcile_ended_total",
                "Grants whose element was gone.",
                "counter",
                c.reconciled_ended,
            ),
            _one(
                "grant_state_write_failures_total",
                "Failed state saves.",
                "counter",
                c.state_write_failures,
            ),
            _one(
                "grant_kernel_failures_total",
                "Kernel changes not confirmed.",
                "counter",
                c.kernel_failures,
            ),
        ]
    api = guard.stats()
    out += [
        _one("api_connections", "Open API connections.", "gauge", api["connections"]),
        _one(
            "api_refused_connections_total",
            "Connections over a cap.",
            "counter",
            api["refused_connections"],
        ),
    ]
    if recorder is not None:
        out += [
            Sample(
                "flow_records_total",
                "Records written, by kind.",
                "counter",
                ("kind",),
                {(k,): float(v) for k, v in recorder.counts.items()},
            ),
            Sample(
                "flow_records_lost_total",
                "Records lost, by where.",
                "counter",
                ("at",),
                {(k,): float(v) for k, v in recorder.lost.items()},
            ),
            _one("flow_overruns_total", "Netlink receive overruns.", "counter", recorder.overruns),
        ]
    return out
