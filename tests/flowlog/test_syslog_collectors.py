"""Syslog over TLS and TCP into Debian's rsyslogd, started by the tests."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from policyd.flowlog.auditchain import AuditChain, verify
from policyd.flowlog.records import AuditEvent, Record, audit_record
from policyd.flowlog.syslog_stream import SyslogStream, octet_counted
from policyd.nfnetlink import in_netns
from tests.flowlog.collectors import (
    CollectorNet,
    make_pki,
    received_lines,
    require,
    start_rsyslogd,
)
from tests.flowlog.plant import wait_for

pytestmark = pytest.mark.root

PORT = 6514
SERVER_NAME = "siem.plant.test"


@pytest.fixture
def net() -> Iterator[CollectorNet]:
    require("rsyslogd")
    n = CollectorNet("zf" + secrets.token_hex(2))
    try:
        yield n
    finally:
        n.close()


def sink(net: CollectorNet, address: str, **kw: object) -> SyslogStream:
    with in_netns(net.ns):
        return SyslogStream(address, hostname="gw-a", **kw)  # type: ignore[arg-type]


def audits(n: int, start: int = 0) -> list[Record]:
    return [
        audit_record(
            "site-a",
            AuditEvent(
                "policy_rejected" if i % 3 == 0 else "grant_approved",
                "failure" if i % 3 == 0 else "success",
                message=f'record {i}: ünïcode, "quotes", newline\\n',
                errors=[f"x.yaml:{i}:1: bad"] if i % 3 == 0 else (),
                details={"seq": i},
            ),
        )
        for i in range(start, start + n)
    ]


@pytest.mark.sr("SR 2.8 RE1", "SR 3.9", "SR 6.1 RE1")
def test_every_audit_record_reaches_rsyslog_over_tls_byte_for_byte_chain_intact(
    net: CollectorNet, tmp_path: Path
) -> None:
    pki = make_pki(tmp_path, SERVER_NAME)
    _, out = start_rsyslogd(net, PORT, tmp_path, pki)
    s = sink(net, f"tls://127.0.0.1:{PORT}", cafile=str(pki["ca"]), server_name=SERVER_NAME)
    records = audits(500)
    chain = AuditChain()
    for r in records:
        chain.seal(r.data)  # as the recorder seals every audit record (issue 13)
        s.write(r)
    wait_for(lambda: len(received_lines(out)) >= 500, what="500 messages at rsyslogd")
    s.close()
    got = received_lines(out)
    assert [msg for _, _, _, msg in got] == [r.line for r in records]  # unchanged, in order
    at_siem = tmp_path / "at-siem.jsonl"
    at_siem.write_text("".join(msg + "\n" for *_, msg in got), encoding="utf-8")
    verdict = verify([at_siem])  # `zonegate audit verify` on what the SIEM received
    assert verdict.ok and verdict.records == 500 and verdict.last == 500, verdict.problems
    assert {(app, msgid) for app, msgid, _, _ in got} == {("zonegate", "audit")}
    assert [pri for _, _, pri, _ in got[:3]] == ["132", "133", "133"]  # local0.warning/notice
    assert s.stats()["sent"] == 500 and s.take_lost() == 0


@pytest.mark.sr("SR 3.9")
def test_server_certificate_from_another_ca_or_for_another_name_is_refused(
    net: CollectorNet, tmp_path: Path
) -> None:
    pki = make_pki(tmp_path, SERVER_NAME)
    (tmp_path / "other").mkdir()
    other = make_pki(tmp_path / "other", SERVER_NAME)
    _, out = start_rsyslogd(net, PORT, tmp_path, pki)
    for kw, why in (
        ({"cafile": str(other["ca"]), "server_name": SERVER_NAME}, "certificate verify failed"),
        ({"cafile": str(pki["ca"]), "server_name": "evil.test"}, "certificate verify failed"),
    ):
        s = sink(net, f"tls://127.0.0.1:{PORT}", **kw)
        for r in audits(5):
            s.write(r)
        wait_for(lambda s=s: s.stats()["connect_failures"] >= 1, what="a refused handshake")  # type: ignore[misc]
        s.close(timeout=0.2)
        stats = s.stats()
        assert why in stats["last_error"] and stats["connects"] == 0, stats
        assert s.take_lost() == 5, "queued records that never left are counted lost"
    time.sleep(0.3)
    assert received_lines(out) == []


@pytest.mark.sr("SR 2.8 RE1")
def test_reconnects_with_backoff_after_rsyslog_restarts_and_loses_nothing(
    net: CollectorNet, tmp_path: Path
) -> None:
    pki = make_pki(tmp_path, SERVER_NAME)
    proc, out = start_rsyslogd(net, PORT, tmp_path, pki)
    s = sink(net, f"tls://127.0.0.1:{PORT}", cafile=str(pki["ca"]), server_name=SERVER_NAME)
    first = audits(50)
    for r in first:
        s.write(r)
    wait_for(lambda: len(received_lines(out)) >= 50, what="the first 50 messages")
    net.stop(proc)
    second = audits(50, start=50)
    for r in second:  # written while the SIEM is down: queued, then sent after reconnecting
        s.write(r)
    time.sleep(0.5)
    start_rsyslogd(net, PORT, tmp_path, pki)
    wait_for(
        lambda: {m for *_, m in received_lines(out)} >= {r.line for r in first + second},
        what=f"all 100 messages after the restart: {s.stats()}",
        timeout=40,
    )
    s.close()
    stats = s.stats()
    assert stats["connects"] >= 2 and s.take_lost() == 0, stats


def test_a_full_queue_while_the_siem_is_away_is_counted_exactly(
    net: CollectorNet, tmp_path: Path
) -> None:
    s = sink(net, f"tcp://127.0.0.1:{PORT}", max_queue=30)  # nobody listens
    for r in audits(80):
        s.write(r)
    assert s.take_lost() == 50 and s.take_lost() == 0
    s.close(timeout=0.2)
    assert s.take_lost() == 30 and s.stats()["sent"] == 0


def test_plain_tcp_with_octet_counting_framing(net: CollectorNet, tmp_path: Path) -> None:
    _, out = start_rsyslogd(net, PORT, tmp_path, None)
    s = sink(net, f"tcp://127.0.0.1:{PORT}", events={"audit", "loss"})
    flow = Record({"ts": "2026-01-01T00:00:00.000000Z", "event": "flow", "n": 1})
    records = [*audits(20), flow]
    for r in records:
        s.write(r)
    wait_for(lambda: len(received_lines(out)) >= 20, what="20 messages over TCP")
    s.close()
    assert [json.loads(m)["details"]["seq"] for *_, m in received_lines(out)] == list(range(20))
    assert octet_counted(b"<13>1 - - - - - - hi") == b"20 <13>1 - - - - - - hi"
