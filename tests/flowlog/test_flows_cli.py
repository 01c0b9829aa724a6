"""`zonegate flows` and the log reader: filters, table, JSON, follow across rotation."""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from policyd.flowlog.reader import RecordFilter, follow_records, parse_since
from policyd.flowlog.records import Record, iso
from policyd.flowlog.sinks import JsonLinesFile
from policyd.flows_cli import add_flows_arguments, flows_command

NOW = time.time()


def flow(
    i: int, identity: str, conduit: str, asset: str, age: float, state: str = "end"
) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "ts": iso(NOW - age - 1),
        "event": "flow",
        "flow_state": state,
        "gateway": "plant-a",
        "uid": f"C{i}",
        "community_id": "1:x",
        "verdict": "allow",
        "reason": f"conduit {conduit}",
        "identity": identity,
        "roles": ["r"],
        "id.orig_h": "100.64.1.10",
        "id.orig_p": 40000 + i,
        "id.resp_h": "10.10.1.5",
        "id.resp_p": 502,
        "proto": "tcp",
        "service": "modbus",
        "dst_zone": "plant-a/control",
        "dst_asset": asset,
        "conduit": conduit,
    }
    if state == "end":
        rec |= {
            "ts_end": iso(NOW - age),
            "duration": 1.0,
            "orig_pkts": 6,
            "orig_ip_bytes": 372,
            "resp_pkts": 5,
            "resp_ip_bytes": 520,
            "end_reason": "closed",
        }
    return rec


RECORDS = [
    flow(1, "engineer-1", "engineers-read-plcs", "plant-a/plc-1", age=7200),
    flow(2, "engineer-1", "engineers-read-plcs", "plant-a/plc-2", age=60, state="start"),
    flow(2, "engineer-1", "engineers-read-plcs", "plant-a/plc-2", age=30),
    flow(3, "shift-lead-1", "shift-lead-hmi", "plant-a/hmi-1", age=20),
    {
        "ts": iso(NOW - 10),
        "event": "deny",
        "gateway": "plant-a",
        "verdict": "deny",
        "reason": "default",
        "identity": "vendor-tech",
        "id.orig_h": "100.64.2.10",
        "id.orig_p": 5,
        "id.resp_h": "10.10.1.5",
        "id.resp_p": 502,
        "proto": "tcp",
        "service": "modbus/write",
        "dst_asset": "plant-a/plc-1",
        "orig_pkts": 1,
        "orig_ip_bytes": 52,
    },
    {
        "ts": iso(NOW - 5),
        "event": "audit",
        "gateway": "plant-a",
        "action": "policy_rejected",
        "outcome": "failure",
        "errors": ["conduits.yaml:3:5: unknown role"],
    },
    {
        "ts": iso(NOW - 4),
        "event": "loss",
        "gateway": "plant-a",
        "source": "conntrack-destroy",
        "lost": 3,
        "lost_total": 3,
    },
]


@pytest.fixture
def log(tmp_path: Path) -> Path:
    path = tmp_path / "flows.jsonl"
    sink = JsonLinesFile(path)
    for r in RECORDS:
        sink.write(Record(r))
    sink.close()
    return path


def run(log: Path, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str]]:
    parser = argparse.ArgumentParser()
    add_flows_arguments(parser)
    code = flows_command(parser.parse_args(["--log", str(log), *argv]))
    return code, capsys.readouterr().out.splitlines()


def uids(lines: list[str]) -> list[str]:
    return [json.loads(line).get("uid") or json.loads(line)["event"] for line in lines]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], ["C1", "C2", "C3", "deny", "audit", "loss"]),
        (["--starts"], ["C1", "C2", "C2", "C3", "deny", "audit", "loss"]),
        (["--identity", "engineer-1"], ["C1", "C2"]),
        (["--conduit", "shift-lead-hmi"], ["C3"]),
        (["--asset", "plant-a/plc-1"], ["C1", "deny"]),
        (["--asset", "plc-2"], ["C2"]),
        (["--verdict", "deny"], ["deny"]),
        (["--verdict", "allow", "--since", "1h"], ["C2", "C3"]),
        (["--since", iso(NOW - 15)], ["deny", "audit", "loss"]),
        (["--event", "audit", "--event", "loss"], ["audit", "loss"]),
    ],
)
@pytest.mark.sr("SR 6.1")
def test_filters(
    log: Path, capsys: pytest.CaptureFixture[str], argv: list[str], expected: list[str]
) -> None:
    code, lines = run(log, capsys, "--json", *argv)
    assert code == 0
    assert uids(lines) == expected


@pytest.mark.sr("SR 6.1 RE1")
def test_json_lines_are_the_records_as_logged(
    log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, lines = run(log, capsys, "--json", "--starts")
    assert [json.loads(line) for line in lines] == RECORDS


def test_table_for_people(log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, lines = run(log, capsys)
    assert code == 0
    assert lines[0].split()[:4] == ["time", "kind", "identity", "from"]
    assert len(lines) == 7
    allow = lines[1]
    assert "allow" in allow and "engineer-1" in allow and "plant-a/plc-1 10.10.1.5:502" in allow
    assert "6/5" in allow and "372/520" in allow and allow.endswith("closed")
    assert "deny" in lines[4] and "modbus/write" in lines[4]
    assert "policy_rejected" in lines[5] and "unknown role" in lines[5]
    assert "LOSS" in lines[6] and "lost 3" in lines[6]


def test_missing_log_and_bad_since(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    add_flows_arguments(parser)
    missing = str(tmp_path / "nothing.jsonl")
    assert flows_command(parser.parse_args(["--log", missing])) == 1
    assert "no log at" in capsys.readouterr().err
    assert flows_command(parser.parse_args(["--log", missing, "--since", "soon"])) == 2
    assert "neither a time" in capsys.readouterr().err


def test_parse_since() -> None:
    assert parse_since("90s", now=1000.0) == 910.0
    assert parse_since("2h", now=10_000.0) == 2800.0
    assert parse_since("1970-01-01T00:01:00Z") == 60.0
    with pytest.raises(ValueError, match="neither a time"):
        parse_since("soon")


@pytest.mark.sr("SR 6.1")
def test_filter_on_audit_actor_and_grant_conduit() -> None:
    grant = {
        "event": "audit",
        "ts": iso(NOW),
        "actor": "shift-lead-1",
        "details": {"conduit": "vendor-maintenance"},
    }
    assert RecordFilter(identity="shift-lead-1").matches(grant)
    assert RecordFilter(conduit="vendor-maintenance").matches(grant)
    assert not RecordFilter(conduit="other").matches(grant)


def test_follow_sees_new_records_across_a_rotation(tmp_path: Path) -> None:
    path = tmp_path / "flows.jsonl"
    sink = JsonLinesFile(path, max_bytes=2000)
    sink.write(Record({"ts": iso(NOW), "event": "audit", "n": 0}))
    sink.flush()

    def writer() -> None:
        time.sleep(0.3)
        for i in range(1, 60):
            sink.write(Record({"ts": iso(NOW), "event": "audit", "n": i, "pad": "p" * 40}))
            sink.flush()
            time.sleep(0.005)
        sink.close()

    thread = threading.Thread(target=writer)
    thread.start()
    got = []
    for rec in follow_records(path, poll=0.02, stop_after=1000.0):
        got.append(rec["n"])
        if rec["n"] == 59:
            break
    thread.join()
    assert sink.rotations >= 2
    assert got == list(range(60))
