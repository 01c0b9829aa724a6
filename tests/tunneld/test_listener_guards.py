"""Pure parts of the listener's defences and of WireGuard error handling (issue 14)."""

from __future__ import annotations

import logging
import socket
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tunneld import wg as wg_mod
from tunneld.observe import Metrics, RateLimitedLog, message_kind
from tunneld.slots import Slot, Slots
from tunneld.wg import WgError, WireGuard


def slot(source: str, closed: list[Slot], proven: bool = False) -> Slot:
    s = Slot(source, 0.0, lambda: None, proven)
    s.close = lambda: closed.append(s)
    return s


def test_a_full_source_evicts_its_oldest_unproven_connection() -> None:
    closed: list[Slot] = []
    slots = Slots(total=100, per_source=2)
    a1, a2, a3 = (slot("10.0.0.9", closed) for _ in range(3))
    assert [slots.admit(s) for s in (a1, a2, a3)] == ["accepted", "accepted", "evicted"]
    assert closed == [a1] and len(slots) == 2


def test_proven_connections_are_never_evicted() -> None:
    closed: list[Slot] = []
    slots = Slots(total=100, per_source=2)
    p1, p2 = slot("10.0.0.9", closed, True), slot("10.0.0.9", closed, True)
    slots.admit(p1)
    slots.admit(p2)
    assert slots.admit(slot("10.0.0.9", closed)) == "refused" and closed == []


def test_one_source_cannot_take_the_slots_of_others() -> None:
    closed: list[Slot] = []
    slots = Slots(total=4, per_source=3)
    flood = [slot("10.0.0.66", closed) for _ in range(10)]
    for s in flood:
        slots.admit(s)
    genuine = slot("10.0.0.1", closed)
    assert slots.admit(genuine) == "accepted"
    other = slot("10.0.0.2", closed)
    assert slots.admit(other) == "evicted"  # total full: the biggest source pays
    assert genuine not in closed and other not in closed


@given(st.lists(st.tuples(st.integers(0, 5), st.booleans(), st.booleans()), max_size=200))
def test_caps_always_hold(ops: list[tuple[int, bool, bool]]) -> None:
    closed: list[Slot] = []
    slots = Slots(total=10, per_source=3)
    live: list[Slot] = []
    for src, proven, release in ops:
        if release and live:
            s = live.pop(0)
            slots.release(s)
            continue
        s = slot(f"10.0.0.{src}", closed, proven)
        if slots.admit(s) != "refused":
            live.append(s)
        live = [x for x in live if x not in closed]
        assert len(slots) == len(live) <= 10
        for n in range(6):
            assert sum(1 for x in live if x.source == f"10.0.0.{n}") <= 3


def test_rejection_log_is_rate_limited_and_counts_what_it_holds_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = Metrics()
    rl = RateLimitedLog(logging.getLogger("t"), metrics, rate=1.0, burst=3)
    with caplog.at_level(logging.WARNING):
        for i in range(100):
            rl.warning(0.0, "junk %d", i)
        rl.warning(5.0, "later")
    lines = [r.getMessage() for r in caplog.records]
    assert lines[:3] == ["junk 0", "junk 1", "junk 2"]
    assert "97 similar warnings suppressed" in lines[3] and lines[4] == "later"
    assert b"tunneld_suppressed_log_lines_total 97.0" in metrics.text()


def test_rejection_metric_labels_are_bounded() -> None:
    assert message_kind("InitHello: bad MAC1 (x)") == "InitHello"
    assert message_kind("truncated header: 0 bytes") == "frame"
    assert message_kind("attacker-chosen: text") == "frame"


def test_a_hung_wireguard_go_is_a_wgerror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: socket.timeout escaped _uapi_set and ended the timer loop."""
    monkeypatch.setattr(wg_mod, "UAPI_DIR", tmp_path)
    w = WireGuard("zghung0")
    w.uapi_timeout = 0.2
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(w.uapi_path))
        server.listen(1)  # accepts, never answers
        with pytest.raises(WgError, match="UAPI set on zghung0 failed"):
            w.set_psk(bytes(32), bytes(32))
    with pytest.raises(WgError, match="UAPI set on zghung0 failed"):  # socket gone
        w.use_uapi = True
        w.set_psk(bytes(32), bytes(32))


def test_a_wg_timeout_is_a_wgerror(monkeypatch: pytest.MonkeyPatch) -> None:
    def hang(*args: object, **kw: object) -> None:
        raise subprocess.TimeoutExpired("wg", 10)

    monkeypatch.setattr(wg_mod.subprocess, "run", hang)
    w = WireGuard("zghung1")
    w.use_uapi = False
    with pytest.raises(WgError, match="timed out"):
        w.set_psk(bytes(32), bytes(32))
