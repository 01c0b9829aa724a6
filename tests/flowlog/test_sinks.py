"""Sinks: file rotation by size and age, RFC 5424 syslog, the live stream."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from pathlib import Path

import pytest

import topology
from policyd.flowlog.reader import read_records
from policyd.flowlog.recorder import FlowRecorder
from policyd.flowlog.records import AuditEvent, Record, audit_record
from policyd.flowlog.sinks import JsonLinesFile, LiveStream, Syslog5424, rotated_paths


def rec(i: int, kind: str = "audit") -> Record:
    return Record({"ts": "2026-01-01T00:00:00.000000Z", "event": kind, "n": i, "pad": "x" * 50})


@pytest.mark.sr("SR 2.8")
def test_rotation_by_size_keeps_order_and_never_deletes(tmp_path: Path) -> None:
    """Finding: rotation deleted old files (and a failed one deleted all ten)."""
    path = tmp_path / "flows.jsonl"
    sink = JsonLinesFile(path, max_bytes=1000)
    for i in range(100):
        sink.write(rec(i))
    sink.close()
    files = rotated_paths(path)
    assert [p.name for p in files[:3]] == ["flows.jsonl.1", "flows.jsonl.2", "flows.jsonl.3"]
    assert files[-1] == path and len(files) == sink.rotations + 1
    assert all(p.stat().st_size <= 1000 for p in files)
    assert all(p.stat().st_mode & 0o777 == 0o640 for p in files)
    assert [r["n"] for r in read_records(path)] == list(range(100)), "everything, in order"
    assert sink.written == 100 and sink.lost == 0


def test_rotation_by_age(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "flows.jsonl"
    sink = JsonLinesFile(path, max_age=60.0)
    sink.write(rec(0))
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 61)
    sink.write(rec(1))
    sink.close()
    sink.flush()
    sink.close()
    assert [r["n"] for r in read_records(path.with_name("flows.jsonl.1"))] == [0]
    assert [r["n"] for r in read_records(path)] == [0, 1]  # read_records includes rotations


def test_file_sink_event_filter_and_reopen_appends(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    sink = JsonLinesFile(path, events={"audit"})
    sink.write(rec(0, "flow"))
    sink.write(rec(1))
    sink.close()
    sink = JsonLinesFile(path, events={"audit"})
    sink.write(rec(2))
    sink.close()
    assert [r["n"] for r in read_records(path)] == [1, 2]


@pytest.mark.sr("SR 2.8 RE1", "SR 6.1 RE1")
def test_syslog_rfc5424_over_udp() -> None:
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.settimeout(5)
    port = server.getsockname()[1]
    sink = Syslog5424(f"127.0.0.1:{port}", facility="local0", hostname="gw-a")
    ev = AuditEvent("policy_rejected", "failure", errors=["x.yaml:1:1: bad"])
    sink.write(audit_record("plant-a", ev))
    sink.write(rec(1, "flow"))
    first, second = server.recv(4096).decode(), server.recv(4096).decode()
    sink.close()
    server.close()
    pattern = r"<(\d+)>1 \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z gw-a zonegate \d+ (\w+) - (\{.*\})$"
    m = re.match(pattern, first)
    assert m, first
    assert m.group(1) == str(16 * 8 + 4) and m.group(2) == "audit"  # local0.warning
    assert json.loads(m.group(3))["errors"] == ["x.yaml:1:1: bad"]
    m2 = re.match(pattern, second)
    assert m2 and m2.group(1) == str(16 * 8 + 6) and m2.group(2) == "flow"  # local0.info
    assert sink.stats()["sent"] == 2


def test_syslog_to_a_missing_socket_counts_errors_without_raising(tmp_path: Path) -> None:
    sink = Syslog5424(str(tmp_path / "no-such-log"))
    sink.write(rec(0))
    assert sink.stats()["errors"] == 1 and sink.stats()["sent"] == 0
    sink.close()


@pytest.mark.sr("SR 6.1 RE1", "SR 6.2")
def test_live_stream_fans_out_and_reports_its_own_gaps() -> None:
    async def scenario() -> tuple[list[Record], list[Record]]:
        live = LiveStream("plant-a")
        fast = live.subscribe()
        slow = live.subscribe(maxsize=3, events={"audit"})
        for i in range(5):
            live.write(rec(i))
        live.write(rec(99, "flow"))
        got_fast = [await anext(fast) for _ in range(6)]
        got_slow = [await anext(slow) for _ in range(4)]
        slow.close()
        live.close()
        assert [r async for r in fast] == []  # closed: iteration ends
        return got_fast, got_slow

    got_fast, got_slow = asyncio.run(scenario())
    assert [r.data["n"] for r in got_fast] == [0, 1, 2, 3, 4, 99]
    assert got_slow[0].kind == "loss" and got_slow[0].data["lost"] == 2
    assert got_slow[0].data["source"] == "live"
    assert [r.data["n"] for r in got_slow[1:]] == [2, 3, 4]


@pytest.mark.sr("SR 2.8")
def test_recorder_audit_events_reach_every_sink(tmp_path: Path) -> None:
    topo = topology.load("examples/plant").topology
    path = tmp_path / "flows.jsonl"
    recorder = FlowRecorder(topo, "plant-a", [JsonLinesFile(path)])
    sub = recorder.live.subscribe()
    recorder.emit_audit(AuditEvent("daemon_start", details={"version": "0.1.0"}))
    recorder.emit_audit(AuditEvent("policy_rejected", "failure", errors=["e1", "e2"]))
    got = [sub.get_nowait(), sub.get_nowait()]
    assert [r.data["action"] for r in got if r] == ["daemon_start", "policy_rejected"]
    assert [r["action"] for r in read_records(path)] == ["daemon_start", "policy_rejected"]
    status = recorder.status()
    assert status["counts"]["audit"] == 2 and not status["running"]


def test_no_input_stops_a_sink(tmp_path: Path) -> None:
    """Finding: a reason with a lone surrogate made the file sink raise."""
    path = tmp_path / "flows.jsonl"
    sink = JsonLinesFile(path)
    sink.write(Record({"ts": "t", "event": "audit", "reason": "x\ud800"}))
    sink.write(Record({"ts": "t", "event": "audit", "odd": {1, 2}}))  # not JSON at all
    sink.write(rec(3))
    sink.close()
    got = list(read_records(path))
    assert got[0]["reason"] == "x\ud800" and got[2]["n"] == 3 and sink.written == 3


def test_a_failed_rotation_keeps_logging_and_deletes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    path = tmp_path / "flows.jsonl"
    sink = JsonLinesFile(path, max_bytes=300)
    for i in range(10):
        sink.write(rec(i))
    sink.flush()

    def refuse(*_a: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "rename", refuse)
    for i in range(10, 20):
        sink.write(rec(i))
    sink.flush()
    monkeypatch.undo()
    sink.close()
    assert [r["n"] for r in read_records(path)] == list(range(20))
    assert sink.errors > 0 and sink.lost == 0


def test_a_file_that_cannot_be_opened_is_retried_and_its_loss_counted(tmp_path: Path) -> None:
    import policyd.flowlog.sinks as sinks

    path = tmp_path / "logs" / "flows.jsonl"
    (tmp_path / "logs").write_text("not a directory")
    sink = JsonLinesFile(path, gateway="gw")
    for i in range(3):
        sink.write(rec(i))
    sink.flush()
    assert sink.errors >= 1
    (tmp_path / "logs").unlink()
    sink._next_open = 0.0  # the retry second has passed
    sink.write(rec(3))
    sink.flush()
    sink.close()
    assert sinks.RETRY_OPEN > 0
    got = list(read_records(path))
    # nothing lost: records wait in the buffer until the file opens
    assert [r.get("n") for r in got if r["event"] == "audit"] == [0, 1, 2, 3]


def test_close_on_failure_never_raises(tmp_path: Path) -> None:
    path = tmp_path / "flows.jsonl"
    sink = JsonLinesFile(path)
    sink.write(rec(0))
    assert sink._fd is not None
    import os

    os.close(sink._fd)  # the descriptor goes bad under it
    sink.close()
    assert sink.lost == 1 and sink.errors >= 1
