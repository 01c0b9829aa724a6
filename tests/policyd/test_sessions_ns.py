"""`record: true` end to end on the real kernel: a Modbus read through a recorded
conduit becomes exactly one pcap file holding request and reply, announced in the
flow log; traffic through an unrecorded conduit leaves no file."""

from __future__ import annotations

import json
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from policyd.flowlog.pcap import LINKTYPE_RAW, PcapRecord, read_pcap
from tests.policyd.nsnet import IDENTITIES, PLC1, PLC2, PY, Net, require_tools, topology_yaml
from tests.policyd.test_daemon_ns import Policyd

pytestmark = pytest.mark.root

LEAD = IDENTITIES["lead-1"]
DIFF = (
    "import argparse, sys\n"
    "from policyd.commands import add_render_arguments, diff_command\n"
    "p = argparse.ArgumentParser(); add_render_arguments(p)\n"
    "sys.exit(diff_command(p.parse_args(sys.argv[1:])))\n"
)


@pytest.fixture
def rnet() -> Iterator[Net]:
    """The policyd test network under its own `zs` prefix; removed also on failure."""
    require_tools()
    if shutil.which("conntrack") is None:
        raise AssertionError("conntrack missing: apt-get install conntrack")
    n = Net(prefix="zs")
    try:
        n.up()
        n.start_servers()
        yield n
    finally:
        n.down()


def recorded_topology() -> str:
    """lead-writes (lead-1 -> plc-2) is recorded; engineers-read (-> plc-1) is not."""
    text = topology_yaml()
    head = "  lead-writes:\n    from: {roles: [shift-lead]}\n"
    assert head in text
    return text.replace(head, head + "    record: true\n")


def modbus_function(pkt: PcapRecord) -> tuple[str, str, int | None]:
    """(source, destination, Modbus function code or None) of a raw IPv4 TCP packet."""
    ip = pkt.data
    ihl = (ip[0] & 0x0F) * 4
    tcp = ip[ihl:]
    payload = tcp[(tcp[12] >> 4) * 4 :]
    src, dst = socket.inet_ntoa(ip[12:16]), socket.inet_ntoa(ip[16:20])
    return src, dst, payload[7] if len(payload) > 7 else None  # MBAP header is 7 bytes


def audits(flow_log: Path, action: str) -> list[dict[str, Any]]:
    if not flow_log.exists():
        return []
    recs = [json.loads(line) for line in flow_log.read_text().splitlines() if line.strip()]
    return [r for r in recs if r.get("event") == "audit" and r.get("action") == action]


@pytest.mark.sr("SR 2.8")
def test_recorded_conduit_writes_one_pcap_per_flow(rnet: Net, tmp_path: Path) -> None:
    topo = tmp_path / "topo.yaml"
    topo.write_text(recorded_topology())
    sessions = tmp_path / "sessions"
    d = Policyd(rnet, topo, "--sessions", str(sessions))
    d.wait_for("applied ruleset for plant-a")
    d.wait_for("recording sessions")
    # the kernel's readback of the copy statements equals the compiled ruleset
    base = [str(topo), "--gateway", "plant-a", "--tunnel", rnet.tunnel]
    diff = rnet.ns(rnet.gw, PY, "-c", DIFF, *base, check=False)
    assert diff.returncode == 0, diff.stdout + diff.stderr

    assert rnet.modbus("engineer-1", PLC1, "read"), d.log()  # unrecorded conduit
    assert rnet.modbus("lead-1", PLC2, "read"), d.log()  # recorded conduit
    # end the recorded flow now rather than after TIME_WAIT: conntrack's DESTROY closes it
    rnet.ns(rnet.gw, "conntrack", "-D", "-s", LEAD, check=False)

    deadline = time.monotonic() + 20
    while not audits(d.flow_log, "session_recorded") and time.monotonic() < deadline:
        time.sleep(0.1)
    announced = audits(d.flow_log, "session_recorded")
    assert len(announced) == 1, (announced, d.log())

    files = sorted(sessions.rglob("*.pcap"))
    assert len(files) == 1, files  # nothing for engineers-read
    pcap = files[0]
    assert pcap.parent == sessions / "lead-writes"
    assert pcap.name.split("-", 1)[1].startswith("lead-1-"), pcap.name

    link, packets = read_pcap(pcap)
    assert link == LINKTYPE_RAW
    seen = [modbus_function(p) for p in packets]
    assert (LEAD, PLC2, 3) in seen, seen  # the read request, function code 3
    assert (PLC2, LEAD, 3) in seen, seen  # and the PLC's reply
    assert seen[0][:2] == (LEAD, PLC2)  # from the SYN, copied by the accept rule

    details = announced[0]["details"]
    assert details["file"] == str(pcap)
    assert details["conduit"] == "lead-writes" and details["identity"] == "lead-1"
    assert details["packets"] == len(packets)
    assert details["bytes"] == sum(p.orig_len for p in packets)
    assert details["end_reason"] == "flow_end" and announced[0]["outcome"] == "success"
