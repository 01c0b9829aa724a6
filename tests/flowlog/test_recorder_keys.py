"""The recorder's open-flow table: keyed so conntrack id reuse loses nothing, bounded,
and resynced (pure: events are fed in decoded, no kernel)."""

from __future__ import annotations

from pathlib import Path

import pytest

import topology
from policyd.flowlog import conntrack
from policyd.flowlog.attribution import MARK_TAG
from policyd.flowlog.recorder import FlowRecorder, RecorderConfig
from policyd.flowlog.sinks import LiveStream
from policyd.nfnetlink import NFNL_HDRLEN, attr, nfnl_message


def ev(ct_id: int, src: str, sport: int, destroy: bool = False) -> conntrack.CtEvent:
    return conntrack.CtEvent(destroy, ct_id, 6, src, "10.0.0.5", sport, 502, MARK_TAG | 1)


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> tuple[FlowRecorder, list[conntrack.CtEvent]]:
    topo = topology.load(Path(__file__).resolve().parents[2] / "examples" / "plant").topology
    feed: list[conntrack.CtEvent] = []
    monkeypatch.setattr(conntrack, "decode_datagram", lambda _b, _n: list(feed))
    rec = FlowRecorder(topo, "plant-a", [LiveStream("plant-a")], RecorderConfig(max_open_flows=3))
    return rec, feed


def _feed(rec: FlowRecorder, feed: list[conntrack.CtEvent], *events: conntrack.CtEvent) -> None:
    feed[:] = events
    rec._handle_ct(bytearray(), 0)


def test_a_reused_conntrack_id_is_another_flow(
    recorder: tuple[FlowRecorder, list[conntrack.CtEvent]],
) -> None:
    """Finding: flows keyed by the 32-bit id alone; a reused id dropped the start record."""
    rec, feed = recorder
    _feed(rec, feed, ev(7, "100.64.1.10", 40000))
    # the DESTROY of that flow was lost; the kernel reuses id 7 for a new flow
    _feed(rec, feed, ev(7, "100.64.1.11", 40001))
    assert rec.counts["flow_start"] == 2 and len(rec._open) == 2


def test_the_open_flow_table_is_bounded(
    recorder: tuple[FlowRecorder, list[conntrack.CtEvent]],
) -> None:
    """Finding: the open-flow table leaked after lost end events."""
    rec, feed = recorder
    for i in range(10):
        _feed(rec, feed, ev(i, "100.64.1.10", 40000 + i))
    assert len(rec._open) == 3 and rec.evicted == 7
    assert rec.status()["evicted_open_flows"] == 7


class _OneDatagram:
    """Stands in for an event socket: hands out one datagram, then nothing."""

    def __init__(self, data: bytes) -> None:
        self.data: bytes | None = data

    def recv_into(self, buf: bytearray) -> int:
        if self.data is None:
            return 0
        buf[: len(self.data)] = self.data
        n, self.data = len(self.data), None
        return n


def test_a_malformed_datagram_is_reported_and_reading_goes_on() -> None:
    """A length pointing past the message is an error in status, not a dead reader."""
    topo = topology.load(Path(__file__).resolve().parents[2] / "examples" / "plant").topology
    rec = FlowRecorder(topo, "plant-a", [LiveStream("plant-a")], RecorderConfig())
    bad = bytearray(nfnl_message(1, 2, 0, 2, 0, attr(1, b"\0" * 8)))
    bad[NFNL_HDRLEN] = 200  # the first attribute claims 200 bytes
    rec._socks["conntrack-destroy"] = _OneDatagram(bytes(bad))  # type: ignore[assignment]
    assert rec._drain("conntrack-destroy") == 1
    assert rec.errors == [
        f"conntrack-destroy: attribute at offset {NFNL_HDRLEN}: length 200, 12 left"
    ]
