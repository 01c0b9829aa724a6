"""Attribution and record building on the example plant, without a kernel."""

from __future__ import annotations

import json

import pytest

import topology
from policyd.flowlog.attribution import Attributor
from policyd.flowlog.conntrack import CtEvent
from policyd.flowlog.nflog import DeniedPacket
from policyd.flowlog.records import AuditEvent, audit_record, deny_record, flow_record, iso

PLANT = topology.load("examples/plant").topology
MARK = PLANT.conduits["engineers-read-plcs"].mark


@pytest.fixture
def attr() -> Attributor:
    return Attributor(PLANT, "plant-a")


def test_unknown_gateway_is_refused() -> None:
    with pytest.raises(ValueError, match="no site 'plant-z'"):
        Attributor(PLANT, "plant-z")


@pytest.mark.parametrize(
    ("address", "identity", "zone", "asset"),
    [
        ("100.64.1.10", "engineer-1", None, None),
        ("10.10.1.5", None, "plant-a/control", "plant-a/plc-1"),
        ("10.10.1.77", None, "plant-a/control", None),
        ("10.20.5.10", None, "plant-b/ops", "plant-b/scada-b"),
        ("192.0.2.99", None, None, None),
        ("2001:db8::1", None, None, None),
    ],
)
def test_source_places(
    attr: Attributor, address: str, identity: str | None, zone: str | None, asset: str | None
) -> None:
    place = attr.source(address)
    assert (place.identity, place.zone, place.asset) == (identity, zone, asset)


def test_services_prefer_the_conduit_and_read_function_classes(attr: Attributor) -> None:
    conduit = PLANT.conduits["engineers-read-plcs"]
    assert attr.service(6, 502, conduit) == "modbus"
    assert attr.service(6, 502, None, bytes.fromhex("000100000006010600010003")) == "modbus/write"
    assert attr.service(6, 502, None, bytes.fromhex("000100000006010300000001")) == "modbus/read"
    assert attr.service(6, 502, None, b"\x00\x01") == "modbus"  # too short to say
    assert attr.service(6, 4711, None) == "tcp/4711"
    assert attr.service(17, 34964, None) == "profinet"
    assert attr.service(1, 8, None) == "icmp"


def end_event(mark: int = MARK) -> CtEvent:
    return CtEvent(
        destroy=True,
        ct_id=9,
        proto=6,
        src="100.64.1.10",
        dst="10.10.1.5",
        sport=40000,
        dport=502,
        mark=mark,
        status=0x0E,
        tcp_state=7,
        orig_pkts=6,
        orig_bytes=372,
        reply_pkts=5,
        reply_bytes=520,
    )


@pytest.mark.sr("SR 2.8")
def test_flow_end_record_names_everything(attr: Attributor) -> None:
    rec = flow_record(attr, end_event(), "end", 1_700_000_000.0, 1_700_000_002.5).data
    assert rec["ts"] == "2023-11-14T22:13:20.000000Z"
    assert rec["ts_end"] == "2023-11-14T22:13:22.500000Z" and rec["duration"] == 2.5
    assert rec["identity"] == "engineer-1" and rec["roles"] == ["plc-engineer"]
    assert rec["dst_asset"] == "plant-a/plc-1" and rec["dst_zone"] == "plant-a/control"
    assert rec["conduit"] == "engineers-read-plcs" and rec["conduit_mark"] == f"0x{MARK:08x}"
    assert rec["reason"] == "conduit engineers-read-plcs" and rec["verdict"] == "allow"
    assert rec["service"] == "modbus" and rec["end_reason"] == "closed"
    assert (rec["orig_pkts"], rec["orig_ip_bytes"], rec["resp_pkts"], rec["resp_ip_bytes"]) == (
        6,
        372,
        5,
        520,
    )
    assert rec["community_id"].startswith("1:") and rec["uid"].startswith("C")
    assert "src_zone" not in rec and "resync" not in rec
    start = flow_record(attr, end_event(), "start", 1_700_000_000.0).data
    assert start["uid"] == rec["uid"] and "duration" not in start and "orig_pkts" not in start


def test_unknown_mark_is_still_recorded(attr: Attributor) -> None:
    rec = flow_record(attr, end_event(0x5A000001), "end", 1.0, 2.0).data
    assert "conduit" not in rec and rec["reason"] == "unknown conduit mark"


@pytest.mark.sr("SR 2.8", "SR 5.2")
def test_deny_record() -> None:
    attr = Attributor(PLANT, "plant-a")
    pkt = DeniedPacket(
        1_700_000_000.25,
        "zg deny default",
        6,
        "100.64.2.10",
        "10.10.1.5",
        40001,
        502,
        52,
        3,
        bytes.fromhex("000100000006010600010003"),
    )
    rec = deny_record(attr, pkt).data
    assert rec["event"] == "deny" and rec["verdict"] == "deny" and rec["reason"] == "default"
    assert rec["identity"] == "vendor-tech" and rec["service"] == "modbus/write"
    assert rec["orig_pkts"] == 1 and rec["orig_ip_bytes"] == 52
    assert rec["ts"] == "2023-11-14T22:13:20.250000Z"


def test_audit_record_and_json_line() -> None:
    ev = AuditEvent("policy_rejected", "failure", "2 errors", errors=("a.yaml:3:5: x", "b"))
    r = audit_record("plant-a", ev, ts=0.0)
    assert json.loads(r.line) == {
        "ts": "1970-01-01T00:00:00.000000Z",
        "event": "audit",
        "gateway": "plant-a",
        "action": "policy_rejected",
        "outcome": "failure",
        "message": "2 errors",
        "errors": ["a.yaml:3:5: x", "b"],
    }
    assert r.line is r.line  # encoded once, whatever the number of sinks


def test_iso_rounds_microseconds_up_into_the_next_second() -> None:
    assert iso(1.9999999) == "1970-01-01T00:00:02.000000Z"
