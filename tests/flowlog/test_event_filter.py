"""Conntrack event sockets: the kernel filters by mark; the recorder reads all at stop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from policyd.conventions import MARK_TAG, MARK_TAG_MASK
from policyd.flowlog import conntrack
from policyd.flowlog.recorder import FlowRecorder, RecorderConfig
from policyd.nfnetlink import in_netns
from tests.flowlog.plant import require_tools, run
from tests.netns import Namespaces
from topology.model import Topology

pytestmark = pytest.mark.root


@pytest.fixture
def ns() -> Iterator[str]:
    """An empty namespace for conntrack entries, deleted whatever happens."""
    require_tools()
    with Namespaces("zf") as nets:
        yield nets.add(nets.tag + "-ct")


def test_only_events_of_zonegate_marked_entries_reach_a_filtered_socket(ns: str) -> None:
    with in_netns(ns):
        plain = conntrack.open_event_socket(True, 1 << 20)
        filtered = conntrack.open_event_socket(True, 1 << 20, (MARK_TAG, MARK_TAG_MASK))
    marks = [0x5A000001, 0x00000007, 0, 0x5A00BEEF, 0x5B000001]
    for i, mark in enumerate(marks):
        run("conntrack", "-I", "-p", "udp", "-s", "100.64.1.1", "-d", "10.1.1.5",
            "--sport", str(1000 + i), "--dport", "9", "--timeout", "60",
            "-m", str(mark), ns=ns)  # fmt: skip
    run("conntrack", "-F", ns=ns)
    time.sleep(0.2)

    def received(sock: conntrack.NfnlSocket) -> list[int]:
        buf = bytearray(65536)
        out = []
        while n := sock.recv_into(buf):
            out += [ev.mark for ev in conntrack.decode_datagram(buf, n)]
        return sorted(out)

    assert received(plain) == sorted(marks)
    assert received(filtered) == [0x5A000001, 0x5A00BEEF]
    assert filtered.new_drops() == 0  # filtered out is not "dropped"
    plain.close()
    filtered.close()


def test_the_filter_program_is_loop_free_and_ends_in_returns() -> None:
    prog = conntrack.mark_filter_program(MARK_TAG, MARK_TAG_MASK)
    for i, (code, jt, jf, _) in enumerate(prog):
        if code == conntrack.BPF_JEQ_K:
            assert i + 1 + max(jt, jf) < len(prog)
    assert [c for c, *_ in prog[-2:]] == [conntrack.BPF_RET_K] * 2


def test_stop_reads_every_queued_event_not_just_one_batch(
    plant_topology: Topology, ns: str
) -> None:
    """Events queued when the recorder stops are read to the end: with a read batch of 4
    and 10 flows ended at once, all 10 end records are written (one batch: 4)."""

    async def scenario() -> dict[str, int]:
        rec = FlowRecorder(
            plant_topology,
            "site-a",
            [],
            RecorderConfig(netns=ns, read_batch=4, flow_starts=False),
        )
        await rec.start()
        await asyncio.sleep(0.3)  # the start-up resync has run
        for i in range(10):  # blocking calls: the loop reads nothing meanwhile
            run("conntrack", "-I", "-p", "udp", "-s", "100.64.1.1", "-d", "10.1.1.5",
                "--sport", str(2000 + i), "--dport", "9", "--timeout", "60",
                "-m", str(0x5A000001), ns=ns)  # fmt: skip
        run("conntrack", "-F", ns=ns)
        await rec.stop()
        return rec.counts

    counts = asyncio.run(scenario())
    assert counts["flow_end"] == 10
