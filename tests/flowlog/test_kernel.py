"""The recorder against the real kernel: conntrack, NFLOG and nftables in namespaces."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import pytest

from policyd.flowlog.community_id import community_id
from policyd.flowlog.recorder import CT_DESTROY, CT_NEW, FlowRecorder, RecorderConfig
from policyd.flowlog.sinks import JsonLinesFile
from tests.flowlog.conftest import until
from tests.flowlog.plant import CLIENT_IDENTITY, CLIENT_UNKNOWN, OTHER_HOST, PLC, Plant
from topology.model import Topology

pytestmark = pytest.mark.root

MODBUS_READ = "000100000006010300000001"  # read holding registers (FC 3)
MODBUS_WRITE = "000100000006010600010003"  # write single register (FC 6)


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def ends(recs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in recs if r["event"] == "flow" and r["flow_state"] == "end"]


def by_sport(recs: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    out = {r["id.orig_p"]: r for r in recs}
    assert len(out) == len(recs), "two records for one source port"
    return out


def ct_counters(listing: str, sport: int) -> tuple[int, int, int, int]:
    """orig/reply packets and bytes of the entry with this source port in `conntrack -L`."""
    for line in listing.splitlines():
        if f"sport={sport} " in line:
            nums = re.findall(r"packets=(\d+) bytes=(\d+)", line)
            (op, ob), (rp, rb) = nums[0], nums[1]
            return int(op), int(ob), int(rp), int(rb)
    raise AssertionError(f"no conntrack entry with sport={sport} in:\n{listing}")


def test_mix_of_allowed_and_denied_gives_exactly_the_matching_records(
    plant: Plant, plant_topology: Topology, log_path: Path
) -> None:
    mark = plant_topology.conduits["eng-plc"].mark
    spec: list[dict[str, object]] = [
        {"kind": "tcp", "src": CLIENT_IDENTITY, "dst": PLC, "port": 502, "hex": MODBUS_READ},
        {"kind": "tcp", "src": CLIENT_IDENTITY, "dst": PLC, "port": 22},
        {"kind": "udp", "src": CLIENT_IDENTITY, "dst": PLC, "port": 34964, "count": 3},
        {"kind": "tcp", "src": CLIENT_IDENTITY, "dst": PLC, "port": 3389, "timeout": 1.5},
        {"kind": "tcp", "src": CLIENT_UNKNOWN, "dst": PLC, "port": 502, "timeout": 0.5},
        {"kind": "tcp", "src": CLIENT_IDENTITY, "dst": OTHER_HOST, "port": 22, "timeout": 0.5},
        {
            "kind": "tcp",
            "src": CLIENT_IDENTITY,
            "dst": PLC,
            "port": 502,
            "hex": MODBUS_WRITE,
            "timeout": 0.5,
        },
    ]

    async def scenario() -> tuple[list[dict[str, object]], str, dict[str, Any]]:
        rec = FlowRecorder(
            plant_topology, "site-a", [JsonLinesFile(log_path)], RecorderConfig(netns=plant.gateway)
        )
        await rec.start()
        try:
            done = await asyncio.to_thread(plant.connect, spec)
            listing = await asyncio.to_thread(plant.conntrack_list)
            await until(lambda: rec.counts["deny"] >= 4, "4 deny records")
            await asyncio.to_thread(plant.conntrack_flush)
            await until(lambda: rec.counts["flow_end"] >= 4, "4 flow end records")
            await asyncio.sleep(0.5)  # anything extra would arrive now and fail the counts
        finally:
            await rec.stop()
        return done, listing, rec.status()

    done, listing, status = asyncio.run(scenario())
    assert [d["ok"] for d in done] == [True, True, True, False, False, False, False]
    sports = [int(str(d["sport"])) for d in done]
    recs = records(log_path)

    flows = by_sport(ends(recs))
    assert sorted(flows) == sorted([sports[0], sports[1], sports[2], sports[6]])
    starts = by_sport([r for r in recs if r["event"] == "flow" and r["flow_state"] == "start"])
    assert sorted(starts) == sorted(flows)
    for sport, r in flows.items():
        assert r["verdict"] == "allow" and r["gateway"] == "site-a"
        assert r["identity"] == "eng-1" and r["roles"] == ["engineer"]
        assert r["dst_asset"] == "site-a/plc-1" and r["dst_zone"] == "site-a/control"
        assert r["conduit"] == "eng-plc" and r["conduit_mark"] == f"0x{mark:08x}"
        assert r["id.orig_h"] == CLIENT_IDENTITY and r["id.resp_h"] == PLC
        proto = 17 if r["proto"] == "udp" else 6
        assert r["community_id"] == community_id(CLIENT_IDENTITY, PLC, proto, sport, r["id.resp_p"])
        assert r["uid"] == starts[sport]["uid"]
        assert r["duration"] >= 0 and r["ts_end"] >= r["ts"]
    assert flows[sports[0]]["service"] == "modbus"
    assert flows[sports[1]]["service"] == "ssh"
    assert flows[sports[2]]["service"] == "profinet"
    assert flows[sports[0]]["end_reason"] == flows[sports[1]]["end_reason"] == "closed"

    udp = flows[sports[2]]  # 3 x (20 IP + 8 UDP + 100) out, 3 x (20 + 8 + 50) back
    assert (udp["orig_pkts"], udp["orig_ip_bytes"], udp["resp_pkts"], udp["resp_ip_bytes"]) == (
        3,
        384,
        3,
        234,
    )
    for sport in sports[:2]:  # TCP: the same counters the conntrack tool read before the end
        r = flows[sport]
        got = (r["orig_pkts"], r["orig_ip_bytes"], r["resp_pkts"], r["resp_ip_bytes"])
        assert got == ct_counters(listing, sport)

    denies = by_sport([r for r in recs if r["event"] == "deny"])
    assert sorted(denies) == sorted(sports[3:7])
    rdp, unknown, other, write = (denies[s] for s in sports[3:7])
    assert (rdp["reason"], rdp["service"], rdp["identity"]) == ("default", "rdp", "eng-1")
    assert rdp["dst_asset"] == "site-a/plc-1" and rdp["verdict"] == "deny"
    assert "identity" not in unknown and unknown["id.orig_h"] == CLIENT_UNKNOWN
    assert unknown["service"] == "modbus"
    assert other["dst_zone"] == "site-a/control" and "dst_asset" not in other
    assert (write["reason"], write["service"]) == ("modbus-write", "modbus/write")
    assert write["community_id"] == flows[sports[6]]["community_id"]
    # The RDP SYN was retransmitted: one deny record, the repeat counted.
    assert status["counts"]["deny_repeats"] >= 1
    assert status["lost_records"] == 0 and status["overruns"] == 0


def test_burst_of_short_connections_is_fully_accounted_for(
    plant: Plant, plant_topology: Topology, log_path: Path
) -> None:
    n = 2000
    spec: list[dict[str, object]] = [
        {
            "kind": "tcp",
            "src": CLIENT_IDENTITY,
            "dst": PLC,
            "port": 22,
            "repeat": n,
            "base_port": 20000,
        }
    ]

    async def scenario() -> tuple[list[dict[str, object]], dict[str, Any]]:
        rec = FlowRecorder(
            plant_topology, "site-a", [JsonLinesFile(log_path)], RecorderConfig(netns=plant.gateway)
        )
        await rec.start()
        try:
            done = await asyncio.to_thread(plant.connect, spec)
            await asyncio.to_thread(plant.conntrack_flush)
            await until(
                lambda: rec.counts["flow_end"] + rec.status()["lost"][CT_DESTROY] >= n,
                f"{n} flow ends (records + counted loss)",
            )
            await asyncio.sleep(0.5)
        finally:
            await rec.stop()
        return done, rec.status()

    done, status = asyncio.run(scenario())
    assert all(d["ok"] for d in done)
    sports = {int(str(d["sport"])) for d in done}
    assert len(sports) == n
    got = by_sport(ends(records(log_path)))
    assert set(got) <= sports
    assert len(got) + status["lost"][CT_DESTROY] == n
    assert all(r["conduit"] == "eng-plc" and r["identity"] == "eng-1" for r in got.values())


def test_overrun_is_counted_exactly_and_open_flows_are_resynced(
    plant: Plant, plant_topology: Topology, log_path: Path
) -> None:
    """A tiny buffer and a stalled reader: loss is counted exactly, open flows recovered."""
    n = 1500
    spec: list[dict[str, object]] = [
        {"kind": "udp", "src": CLIENT_IDENTITY, "dst": PLC, "port": 34964, "sport": 30000 + i}
        for i in range(n)
    ]
    config = RecorderConfig(netns=plant.gateway, rcvbuf=64 * 1024, tick=0.2)

    async def scenario() -> tuple[list[dict[str, object]], dict[str, Any], dict[str, Any]]:
        rec = FlowRecorder(plant_topology, "site-a", [JsonLinesFile(log_path)], config)
        await rec.start()
        try:
            await until(lambda: rec.resyncs >= 1, "the start-up resync")
            done = plant.connect(spec)  # blocks the loop: the reader stalls, NEW events drop
            await until(lambda: rec.lost[CT_NEW] > 0 and rec.resyncs >= 2, "overrun + resync")
            await until(lambda: len(rec._open) >= n, "every open flow known again")
            mid = rec.status()
            plant.conntrack_flush()  # stalled again: DESTROY events drop
            await until(
                lambda: rec.counts["flow_end"] + rec.status()["lost"][CT_DESTROY] >= n,
                "every flow end recorded or counted as lost",
            )
            await asyncio.sleep(0.5)
        finally:
            await rec.stop()
        return done, mid, rec.status()

    done, mid, status = asyncio.run(scenario())
    sports = {int(str(d["sport"])) for d in done}
    assert len(sports) == n and all(d["ok"] for d in done)
    recs = records(log_path)
    started = {r["id.orig_p"] for r in recs if r["event"] == "flow" and r["flow_state"] == "start"}
    assert started == sports, "a start record (live or from the resync) for every flow"
    assert any(r.get("resync") for r in recs)
    assert mid["lost"][CT_NEW] > 0 and mid["counts"]["resync_recovered"] > 0

    got = by_sport(ends(recs))
    assert set(got) <= sports
    lost = status["lost"][CT_DESTROY]
    assert lost > 0, "the stalled reader should have overrun a 64 KiB buffer"
    assert len(got) + lost == n
    loss_recs = [r for r in recs if r["event"] == "loss" and r["source"] == CT_DESTROY]
    assert sum(r["lost"] for r in loss_recs) == lost
    assert status["overruns"] >= 1
