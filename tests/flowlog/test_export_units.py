"""IPFIX encoding, endpoints and export options, without a network."""

from __future__ import annotations

import itertools
import socket
import struct
import threading
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policyd.cli import parser, settings
from policyd.flowlog.exports import ExportError, ExportOptions, build_sinks
from policyd.flowlog.ipfix import (
    DOCUMENTATION_PEN,
    HEADER,
    TEMPLATES,
    IpfixExporter,
    epoch_ms,
    message,
    varlen,
)
from policyd.flowlog.recorder import FlowRecorder
from policyd.flowlog.records import Record, iso, parse_ts
from policyd.flowlog.stream import parse_endpoint
from topology.model import Topology


@given(st.text(max_size=400))
def test_varlen_prefixes_the_utf8_length_short_or_long(text: str) -> None:
    raw = text.encode()
    out = varlen(text)
    if len(raw) < 255:
        assert out == bytes([len(raw)]) + raw
    else:
        assert out[0] == 255 and struct.unpack("!H", out[1:3])[0] == len(raw) and out[3:] == raw


@given(st.floats(min_value=0, max_value=4e9, allow_nan=False))
def test_epoch_ms_agrees_with_the_record_time(ts: float) -> None:
    text = iso(ts)
    assert epoch_ms(text) == round(parse_ts(text) * 1e6) // 1000


def test_templates_mark_enterprise_elements_with_the_configured_pen() -> None:
    flow4 = TEMPLATES["flow"][0]
    for pen in (DOCUMENTATION_PEN, 4242):
        spec = flow4.spec(pen)
        tid, count = struct.unpack_from("!HH", spec)
        assert (tid, count) == (256, len(flow4.fields))
        assert spec.count(pen.to_bytes(4, "big")) == sum(f.enterprise for f in flow4.fields)
        assert spec.count((29305).to_bytes(4, "big")) == 2  # RFC 5103 reverse counters
    ids = [t.template_id for ts in TEMPLATES.values() for t in ts]
    assert len(ids) == len(set(ids)) and min(ids) >= 256


def test_message_header_counts_its_own_length() -> None:
    msg = message(7, 42, [(256, b"x" * 10)], 1_700_000_000)
    version, length, now, seq, domain = HEADER.unpack_from(msg)
    assert (version, length, now, seq, domain) == (10, len(msg), 1_700_000_000, 42, 7)
    assert struct.unpack_from("!HH", msg, HEADER.size) == (256, 14)


def _flow(port: int) -> Record:
    return Record(
        {
            "ts": "2026-01-01T00:00:00.000000Z",
            "ts_end": "2026-01-01T00:00:01.000000Z",
            "event": "flow",
            "flow_state": "end",
            "id.orig_h": "100.64.1.1",
            "id.orig_p": port,
            "id.resp_h": "10.1.1.5",
            "id.resp_p": 502,
            "proto": "tcp",
            "verdict": "allow",
            "gateway": "g" * 300,  # long string: 3-byte varlen
        }
    )


def test_udp_messages_fit_the_mtu_and_sequence_counts_records() -> None:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(2)
    ex = IpfixExporter(f"udp://127.0.0.1:{rx.getsockname()[1]}", domain=9)
    ex.write(Record({"ts": "2026-01-01T00:00:00Z", "event": "flow", "flow_state": "start"}))
    ex.write(Record({"ts": "2026-01-01T00:00:00Z", "event": "audit", "action": "x"}))
    for port in range(40):
        ex.write(_flow(port))
    ex.close()
    msgs = []
    while True:
        try:
            msgs.append(rx.recv(65536))
        except TimeoutError:
            break
    rx.close()
    assert all(len(m) <= 1400 for m in msgs)
    header = [HEADER.unpack_from(m) for m in msgs]
    assert struct.unpack_from("!H", msgs[0], HEADER.size)[0] == 2  # templates first
    data = header[1:]
    counts = [(b[3] - a[3]) for a, b in itertools.pairwise(data)]
    assert data[0][3] == 0 and sum(counts) + (40 - data[-1][3]) == 40
    assert ex.exported == 40 and ex.skipped == 1 and ex.total_lost() == 0


def test_queue_overflow_is_counted_and_reported_once() -> None:
    ex = IpfixExporter("udp://127.0.0.1:9", domain=1, max_queue=5)
    for port in range(12):
        ex.write(_flow(port))
    assert ex.take_lost() == 7 and ex.take_lost() == 0
    ex.close()


@pytest.mark.parametrize(
    ("address", "error"),
    [
        ("tls://h:1", "IPFIX transport must be udp or tcp"),
        ("sctp://h:1", "unknown transport 'sctp'"),
        ("h", "expected HOST:PORT"),
        ("h:0", "expected HOST:PORT"),
    ],
)
def test_bad_ipfix_addresses_are_named(address: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        IpfixExporter(address, domain=1)


def test_endpoints_parse_with_default_transport_and_ipv6() -> None:
    assert parse_endpoint("[::1]:4739", "udp") == ("udp", "::1", 4739)
    assert parse_endpoint("tls://siem:6514", "tcp") == ("tls", "siem", 6514)


@pytest.mark.parametrize(
    ("opts", "error"),
    [
        (ExportOptions(ipfix="tls://h:1"), "--ipfix tls://h:1: IPFIX transport"),
        (ExportOptions(ipfix="udp://h:1", ipfix_pen=0), "--ipfix-pen: 0"),
        (ExportOptions(ipfix="udp://h:1", ipfix_domain=2**32), "--ipfix-domain"),
        (ExportOptions(syslog="tls://h:1", syslog_ca=Path("/nonexistent")), "--syslog-ca: no"),
        (ExportOptions(syslog="tls://h", syslog_events=None), "--syslog tls://h: "),
        (ExportOptions(syslog="h:1", syslog_events=("flow", "dns")), "unknown record kind"),
    ],
)
def test_bad_export_options_are_refused_naming_the_option(opts: ExportOptions, error: str) -> None:
    with pytest.raises(ExportError, match=error):
        build_sinks(opts, "site-a")


def test_policyd_cli_options_reach_the_settings() -> None:
    args = parser().parse_args(
        [
            "--topology",
            "t",
            "--gateway",
            "site-a",
            "--ipfix",
            "udp://192.0.2.9:4739",
            "--syslog",
            "tls://siem:6514",
            "--syslog-ca",
            "/ca.pem",
            "--ipfix-pen",
            "4242",
            "--syslog-events",
            "audit,loss",
        ]
    )
    exp = settings(args).exports
    assert exp.ipfix == "udp://192.0.2.9:4739" and exp.ipfix_pen == 4242
    assert exp.syslog == "tls://siem:6514" and exp.syslog_ca == Path("/ca.pem")
    assert exp.syslog_events == ("audit", "loss")


def test_recorder_turns_a_sinks_loss_into_a_loss_record(plant_topology: Topology) -> None:
    ex = IpfixExporter("udp://127.0.0.1:9", domain=1, max_queue=1)
    rec = FlowRecorder(plant_topology, "site-a", [ex])
    sub = rec.live.subscribe()
    for port in range(3):
        rec._emit(_flow(port))
    rec._poll_drops()  # what the ticker does every second
    loss = [r.data for r in iter(sub.get_nowait, None) if r.kind == "loss"]
    assert loss == [loss[0]] and loss[0]["source"] == ex.name and loss[0]["lost"] == 2
    assert rec.status()["sink_lost"] == {ex.name: 2}
    ex.close()


def test_a_bad_option_after_a_good_one_leaves_no_sender_running() -> None:
    opts = ExportOptions(syslog="tcp://127.0.0.1:9", ipfix="tls://h:1")
    with pytest.raises(ExportError, match="--ipfix"):
        build_sinks(opts, "site-a")
    assert not [t for t in threading.enumerate() if t.name == "stream-127.0.0.1:9"]


_names = st.sampled_from(["", "eng-1", "site-a/control", "plc-1", "ünï"])


@given(
    st.lists(
        st.fixed_dictionaries(
            {"identity": _names, "src_zone": _names, "conduit": _names, "reason": _names},
            optional={"roles": st.lists(_names, max_size=3), "dst_asset": _names},
        ),
        min_size=1,
        max_size=20,
    )
)
def test_cached_blocks_encode_exactly_like_field_by_field(parts: list[dict[str, object]]) -> None:
    """The per-template cache of repeating values never changes a byte of any record."""
    template = TEMPLATES["flow"][0]
    for i, part in enumerate(parts):
        data = _flow(1000 + i).data | part | {"community_id": f"1:{i}", "uid": f"C{i}"}
        assert template.encode(data) == b"".join(f.encode(data) for f in template.fields)
