"""/metrics through prometheus_client: counters are counters, levels are gauges.

A collector reads the daemon's numbers at scrape time (nothing is updated on the
hot path for metrics' sake, and a scrape changes nothing).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


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
