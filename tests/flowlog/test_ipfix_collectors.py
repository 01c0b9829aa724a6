"""IPFIX export read back by collectors nobody here wrote: nfcapd/nfdump and tshark."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from policyd.flowlog.ipfix import DOCUMENTATION_PEN, TEMPLATES, IpfixExporter, epoch_ms
from policyd.flowlog.recorder import FlowRecorder, RecorderConfig
from policyd.flowlog.records import Record
from policyd.flowlog.sinks import JsonLinesFile
from policyd.nfnetlink import in_netns
from tests.flowlog.collectors import (
    Capture,
    CollectorNet,
    enterprise_strings,
    enterprise_values,
    nfdump_flows,
    require,
    start_nfcapd,
)
from tests.flowlog.conftest import until
from tests.flowlog.plant import CLIENT_IDENTITY, CLIENT_UNKNOWN, PLC, Plant, run, wait_for
from topology.model import Topology

pytestmark = pytest.mark.root

PORT = 4739


@pytest.fixture
def net() -> Iterator[CollectorNet]:
    require("nfcapd", "nfdump", "tshark", "tcpdump")
    n = CollectorNet("zf" + secrets.token_hex(2))
    try:
        yield n
    finally:
        n.close()


def exporter(net: CollectorNet, address: str, **kw: Any) -> IpfixExporter:
    """An exporter whose socket lives in the collector's namespace."""
    with in_netns(net.ns):
        return IpfixExporter(address, domain=kw.pop("domain", 7), **kw)


def synthetic(n: int, base: int = 0) -> Record:
    """A flow end record like the recorder writes, numbered by its source port/address."""
    return Record(
        {
            "ts": "2026-11-25T09:00:01.204518Z",
            "event": "flow",
            "flow_state": "end",
            "gateway": "site-a",
            "uid": f"C{n:017d}",
            "community_id": f"1:{n}",
            "verdict": "allow",
            "reason": "conduit eng-plc",
            "identity": "eng-1",
            "roles": ["engineer", "ops"],
            "id.orig_h": f"100.64.{(base + n) // 60000 % 250}.{1 + (base + n) // 240 % 250}",
            "id.orig_p": 1024 + n % 60000,
            "id.resp_h": "10.1.1.5",
            "id.resp_p": 502,
            "proto": "udp",
            "service": "modbus",
            "dst_zone": "site-a/control",
            "dst_asset": "site-a/plc-1",
            "conduit": "eng-plc",
            "ts_end": "2026-11-25T09:00:02.500000Z",
            "orig_pkts": 1 + n % 7,
            "orig_ip_bytes": 60 + n % 1000,
            "resp_pkts": n % 5,
            "resp_ip_bytes": n % 900,
            "end_reason": "unanswered",
        }
    )


@pytest.mark.sr("SR 2.8 RE1", "SR 6.1 RE1")
def test_nfdump_and_tshark_read_back_every_flow_the_recorder_exports(
    plant: Plant, plant_topology: Topology, net: CollectorNet, tmp_path: Path
) -> None:
    """Real flows through a gateway namespace -> recorder -> IPFIX -> nfcapd: every flow
    end and deny is in nfdump with the log's 5-tuple, times and counters of both
    directions, and tshark shows the enterprise fields (identity, conduit, Community ID)."""
    flowdir = tmp_path / "nf"
    nfcapd = start_nfcapd(net, PORT, flowdir)
    cap = Capture(net, f"udp port {PORT}", tmp_path / "ipfix.pcap")
    log = tmp_path / "flows.jsonl"
    ipfix = exporter(net, f"udp://127.0.0.1:{PORT}")
    spec: list[dict[str, object]] = [
        {"kind": "tcp", "src": CLIENT_IDENTITY, "dst": PLC, "port": 502, "hex": "00" * 12},
        {"kind": "tcp", "src": CLIENT_IDENTITY, "dst": PLC, "port": 22},
        {"kind": "udp", "src": CLIENT_IDENTITY, "dst": PLC, "port": 34964, "count": 3},
        {"kind": "tcp", "src": CLIENT_UNKNOWN, "dst": PLC, "port": 502, "timeout": 0.5},
    ]

    async def scenario() -> dict[str, Any]:
        rec = FlowRecorder(
            plant_topology,
            "site-a",
            [JsonLinesFile(log), ipfix],
            RecorderConfig(netns=plant.gateway),
        )
        await rec.start()
        try:
            await asyncio.to_thread(plant.connect, spec)
            await until(lambda: rec.counts["deny"] >= 1, "a deny record")
            await asyncio.to_thread(plant.conntrack_flush)
            await until(lambda: rec.counts["flow_end"] >= 3, "3 flow ends")
        finally:
            await rec.stop()
        return rec.status()

    status = asyncio.run(scenario())
    time.sleep(0.5)
    cap.stop()
    net.stop(nfcapd)
    records = [json.loads(line) for line in log.read_text().splitlines()]
    exported = [
        r for r in records if (r["event"] == "flow" and "ts_end" in r) or r["event"] == "deny"
    ]
    assert len(exported) >= 4
    sink = status["sinks"][ipfix.name]
    assert sink["exported"] == len(exported) and sink["lost"] == 0, sink

    flows = nfdump_flows(flowdir)
    assert len(flows) == len(exported), (flows, exported)
    got = {(f["src4_addr"], f["src_port"]): f for f in flows}
    for r in exported:
        f = got[(r["id.orig_h"], r["id.orig_p"])]
        assert (f["dst4_addr"], f["dst_port"]) == (r["id.resp_h"], r["id.resp_p"])
        assert f["proto"] == {"tcp": 6, "udp": 17}[r["proto"]]
        assert f["in_packets"] == r["orig_pkts"] and f["in_bytes"] == r["orig_ip_bytes"]
        if r["event"] == "flow":
            assert f["out_packets"] == r["resp_pkts"] and f["out_bytes"] == r["resp_ip_bytes"]
            assert r["resp_pkts"] > 0 or r["end_reason"] == "unanswered"
        first = epoch_ms(r["ts"])
        assert f["first"].replace("T", " ") == _ms_text(first)
        assert f["last"].replace("T", " ") == _ms_text(epoch_ms(r.get("ts_end", r["ts"])))

    decoded = cap.ipfix(f"udp.port=={PORT},cflow")
    assert len(decoded) == len(exported)
    by_port = {int(d["cflow.srcport"]): d for d in decoded}
    for r in exported:
        template = {4: TEMPLATES["flow"][0], 6: TEMPLATES["deny"][0]}[len(r["event"])]
        expected = [_text(r.get(f.name)) for f in template.fields if f.enterprise]
        # tshark leaves out empty strings (e.g. no identity for an unknown source)
        assert enterprise_strings(by_port[r["id.orig_p"]]) == [e for e in expected if e]
        assert r["community_id"] in expected and r["gateway"] in expected


def _text(value: object) -> str:
    if isinstance(value, list):
        return ",".join(value)
    return "" if value is None else str(value)


def _ms_text(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}"


def test_20000_flows_reach_nfcapd_without_loss_and_overflow_is_counted_exactly(
    net: CollectorNet, tmp_path: Path
) -> None:
    flowdir = tmp_path / "nf"
    nfcapd = start_nfcapd(net, PORT, flowdir)
    ipfix = exporter(net, f"127.0.0.1:{PORT}")
    for n in range(20_000):
        ipfix.write(synthetic(n))
        if n % 256 == 255:  # the recorder flushes after every netlink batch
            ipfix.flush()
            time.sleep(0.002)  # ~20,000 records/s, nfcapd's pace on two shared cores
    ipfix.flush()
    assert ipfix.exported == 20_000 and ipfix.total_lost() == 0

    small = exporter(net, f"127.0.0.1:{PORT}", max_queue=1000, domain=8)
    for n in range(1500):  # a collector path so slow that nothing is flushed
        small.write(synthetic(n, base=1_000_000))
    assert small.take_lost() == 500 and small.take_lost() == 0
    small.close()
    ipfix.close()
    time.sleep(0.5)
    net.stop(nfcapd)
    flows = nfdump_flows(flowdir)
    assert len(flows) == 20_000 + 1000
    log = (flowdir / "nfcapd.log").read_text()
    assert "Sequence Errors: 0" in log or "Sequence errors: 0" in log, log


def test_templates_are_refreshed_for_a_collector_that_restarts(
    net: CollectorNet, tmp_path: Path
) -> None:
    """A collector started after the templates went out learns them from the refresh;
    without it every data record sent to the new nfcapd would be dropped."""
    first = start_nfcapd(net, PORT, tmp_path / "nf1")
    ipfix = exporter(net, f"127.0.0.1:{PORT}", template_refresh=0.5)
    for n in range(10):
        ipfix.write(synthetic(n))
    ipfix.flush()
    time.sleep(0.3)
    net.stop(first)
    second = start_nfcapd(net, PORT, tmp_path / "nf2")
    time.sleep(0.6)  # past the refresh interval
    for n in range(10, 30):
        ipfix.write(synthetic(n))
    ipfix.flush()
    ipfix.close()
    time.sleep(0.5)
    net.stop(second)
    assert len(nfdump_flows(tmp_path / "nf1")) == 10
    assert sorted(f["src_port"] for f in nfdump_flows(tmp_path / "nf2")) == list(range(1034, 1054))


def test_ipfix_over_tcp_resends_templates_and_unacknowledged_messages_after_a_reconnect(
    net: CollectorNet, tmp_path: Path
) -> None:
    """TCP transport, decoded by tshark. The collector's kernel stops acknowledging (an
    nft drop rule) while 10 records are sent, then the collector resets the connection:
    the exporter reconnects, sends the templates first again, then exactly those 10
    unacknowledged records; every record arrives, nothing is counted lost."""
    cap = Capture(net, f"tcp port {PORT}", tmp_path / "tcp.pcap")
    with in_netns(net.ns):
        listener = socket.create_server(("127.0.0.1", PORT))
    listener.settimeout(20)
    conns: list[socket.socket] = []

    def collector() -> None:
        for _ in range(2):
            conn, _ = listener.accept()
            conns.append(conn)
            with contextlib.suppress(OSError):
                while conn.recv(65536):
                    pass

    thread = threading.Thread(target=collector)
    thread.start()
    ipfix = exporter(net, f"tcp://127.0.0.1:{PORT}")

    def send(numbers: range) -> None:
        for n in numbers:
            ipfix.write(synthetic(n))
            ipfix.flush()
            time.sleep(0.01)

    send(range(20))
    wait_for(lambda: ipfix.stats()["sent"] == 20, what="20 records acknowledged")
    drop = "table inet zfdrop {\n chain in {\n type filter hook input priority 0\n tcp dport %d drop\n }\n}\n"
    run("nft", "-f", "-", ns=net.ns, input=drop % PORT)
    send(range(20, 30))
    time.sleep(0.3)
    assert ipfix.stats()["sent"] == 20
    conns[0].setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conns[0].close()  # RST
    run("nft", "delete", "table", "inet", "zfdrop", ns=net.ns)
    wait_for(lambda: ipfix.stats()["connects"] == 2, what="a second connection")
    send(range(30, 50))
    ipfix.close()
    conns[1].close()
    thread.join(20)
    listener.close()
    cap.stop()
    stats = ipfix.stats()
    assert stats["lost"] == 0 and stats["resent"] == 10 and stats["sent"] == 50, stats
    decoded = cap.ipfix(f"tcp.port=={PORT},cflow")
    ports = [int(d["cflow.srcport"]) for d in decoded]
    assert sorted(set(ports)) == list(range(1024, 1074))
    # the first connection's last 10 went unacknowledged: seen twice on the wire (sent,
    # then resent after the new connection's templates, which tshark needed to decode them)
    assert sorted(p for p in set(ports) if ports.count(p) == 2) == list(range(1044, 1054))


def test_enterprise_number_is_configurable(net: CollectorNet, tmp_path: Path) -> None:
    cap = Capture(net, f"udp port {PORT}", tmp_path / "pen.pcap")
    with in_netns(net.ns):
        sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sink.bind(("127.0.0.1", PORT))
    ipfix = exporter(net, f"127.0.0.1:{PORT}", pen=4242)
    ipfix.write(synthetic(1))
    ipfix.close()
    cap.stop()
    sink.close()
    decoded = cap.ipfix(f"udp.port=={PORT},cflow")
    assert len(decoded) == 1
    raw = cap.path.read_bytes()
    assert (4242).to_bytes(4, "big") in raw and DOCUMENTATION_PEN.to_bytes(4, "big") not in raw


MODBUS = {  # a `modbus` record as issue 12's OT transaction tier writes it
    "ts": "2026-11-25T09:10:00.250000Z",
    "event": "modbus",
    "gateway": "site-a",
    "community_id": "1:9l3v4E0qf2m5Yw5Qv9p8m8h7B3M=",
    "id.orig_h": "100.64.1.1",
    "id.orig_p": 40312,
    "id.resp_h": "10.1.1.5",
    "id.resp_p": 502,
    "proto": "tcp",
    "identity": "eng-1",
    "conduit": "eng-plc",
    "dst_asset": "site-a/plc-1",
    "service": "modbus",
    "tid": 12,
    "unit": 1,
    "func": "WRITE_SINGLE_REGISTER",
    "fc": 6,
    "table": "holding_registers",
    "address": 110,
    "quantity": 1,
    "values": [3],
    "verdict": "deny",
    "exception": "ILLEGAL_DATA_ADDRESS",
    "exception_code": 2,
    "exception_by": "gateway",
    "reason": "holding_registers address 110 is outside 100-109",
}


def test_modbus_transactions_have_their_own_template(net: CollectorNet, tmp_path: Path) -> None:
    flowdir = tmp_path / "nf"
    nfcapd = start_nfcapd(net, PORT, flowdir)
    cap = Capture(net, f"udp port {PORT}", tmp_path / "modbus.pcap")
    ipfix = exporter(net, f"127.0.0.1:{PORT}")
    ipfix.write(Record(MODBUS))
    ipfix.write(synthetic(1))
    ipfix.close()
    time.sleep(0.3)
    cap.stop()
    net.stop(nfcapd)
    assert ipfix.exported == 2
    (flow,) = [f for f in nfdump_flows(flowdir) if f["src_port"] == 40312]
    assert (flow["src4_addr"], flow["dst4_addr"], flow["dst_port"]) == (
        "100.64.1.1",
        "10.1.1.5",
        502,
    )
    decoded = {d["_template"]: d for d in cap.ipfix(f"udp.port=={PORT},cflow")}
    assert set(decoded) == {256, 260}
    values = enterprise_values(decoded[260])
    expected = []
    for f in TEMPLATES["modbus"][0].fields:
        if f.enterprise:
            raw = f.encode(MODBUS)
            if f.length == 0xFFFF:
                raw = raw[1:]  # a string under 255 bytes: one length byte
                if not raw:
                    continue  # tshark leaves out empty strings
            expected.append(raw)
    assert values == expected
    assert b"WRITE_SINGLE_REGISTER" in values and (12).to_bytes(2, "big") in values
