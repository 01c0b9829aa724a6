"""The OT transaction tier on the real kernel: every Modbus request checked.

policyd runs in the gateway namespace (TPROXY steering + the tier); the zone runs the
witness device (zonegate.lab.modbus_device), which executes and journals every ADU it
receives, so "the write did not land" is read from the device, not assumed.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.policyd.nsnet import IDENTITIES, PLC1, PLC2, PY, Net, require_tools
from tests.policyd.test_daemon_ns import Policyd
from zonegate.cli import main as cli_main
from zonegate.lab.modbus_device import (
    diagnostics,
    read,
    read_journal,
    request,
    write_coil,
    write_register,
    write_registers,
    writes,
)

pytestmark = pytest.mark.root

TOPOLOGY = f"""version: 1
sites:
  plant-a:
    gateway: {{underlay: 192.0.2.10, port: 51820, overlay: 100.64.0.1}}
    zones:
      control: {{cidr: 10.10.1.0/24, security_level: 2}}
    assets:
      plc-1: {{zone: control, address: {PLC1}}}
      plc-2: {{zone: control, address: {PLC2}}}
roles:
  plc-engineer: {{}}
  shift-lead: {{}}
  vendor: {{}}
identities:
  engineer-1: {{kind: user, roles: [plc-engineer], overlay: 100.64.1.10}}
  lead-1: {{kind: user, roles: [shift-lead], overlay: 100.64.1.20}}
  vendor-1: {{kind: user, roles: [vendor], overlay: 100.64.2.10}}
  guest: {{kind: user, overlay: 100.64.3.1}}
conduits:
  engineers-read:
    from: {{roles: [plc-engineer]}}
    to: {{asset: plant-a/plc-1}}
    allow: [{{modbus: read}}, ssh]
  lead-tuning:
    from: {{roles: [shift-lead]}}
    to: {{asset: plant-a/plc-2}}
    allow:
      - modbus:
          units: [1, 5-6]
          read: {{holding_registers: [0-99], input_registers: all}}
          write:
            holding_registers: [10-19, {{addresses: 20-29, values: 0-1000}}]
            coils: [0-7]
  vendor-setpoints:
    from: {{roles: [vendor]}}
    to: {{asset: plant-a/plc-2}}
    allow:
      - modbus:
          write: {{holding_registers: [100-109]}}
          on_deny: reset
"""


class Plant:
    def __init__(self, net: Net, tmp: Path) -> None:
        self.net = net
        self.journal = tmp / "device.jsonl"
        self.device = net.spawn(
            net.zone,
            PY,
            "-m",
            "zonegate.lab.modbus_device",
            "--journal",
            str(self.journal),
            "--port",
            "502",
        )
        assert self.device.stdout is not None
        line = self.device.stdout.readline()
        assert line.strip() == "ready", f"witness device did not start: {line!r}"
        self.topo = tmp / "topo.yaml"
        self.topo.write_text(TOPOLOGY)
        self.policyd = Policyd(net, self.topo)
        self.policyd.wait_for("applied ruleset for plant-a")

    def send(
        self,
        who: str,
        dst: str,
        *chunks: bytes,
        expect: int = 1,
        gap: float = 0.0,
        timeout: float = 3.0,
        sport: int = 0,
    ) -> dict[str, Any]:
        argv = [PY, "-m", "tests.policyd.ot_client", "--source", IDENTITIES[who], "--dst", dst]
        argv += ["--sport", str(sport)]
        argv += ["--expect", str(expect), "--gap", str(gap), "--timeout", str(timeout)]
        out = self.net.ns(self.net.ident, *argv, *(c.hex() for c in chunks), timeout=60)
        result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
        return result

    def mark(self) -> int:
        """Journal position: what the device executes from now on is read after it."""
        return len(read_journal(self.journal))

    def since(self, pos: int) -> list[dict[str, Any]]:
        return read_journal(self.journal)[pos:]

    def records(self, event: str = "modbus") -> list[dict[str, Any]]:
        self.policyd.proc.send_signal(signal.SIGHUP)  # reload flushes sinks soon after
        time.sleep(0.3)
        path = self.policyd.flow_log
        if not path.exists():
            return []
        out = [json.loads(line) for line in path.read_text().splitlines() if line]
        return [r for r in out if r.get("event") == event]


@pytest.fixture(scope="module")
def plant(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plant]:
    require_tools()
    net = Net("zo")
    try:
        net.up()
        yield Plant(net, tmp_path_factory.mktemp("ot"))
    finally:
        net.down()


def replies(result: dict[str, Any]) -> dict[int, str]:
    return {tid: pdu for tid, _unit, pdu in result["replies"]}


def test_plc_sees_the_client_address_and_reads_pass(plant: Plant) -> None:
    pos = plant.mark()
    got = plant.send("engineer-1", PLC1, read(1, address=7, count=2))
    assert replies(got) == {1: "030400000000"}, got
    done = plant.since(pos)
    assert [(e["function"], e["address"], e["peer"]) for e in done] == [
        (3, 7, IDENTITIES["engineer-1"])
    ]


@pytest.mark.sr("SR 5.2")
def test_write_smuggled_behind_a_read_in_one_segment(plant: Plant) -> None:
    pos = plant.mark()
    got = plant.send("engineer-1", PLC1, read(11) + write_register(12, 5, 999), expect=2)
    assert replies(got) == {11: "030200" + "00", 12: "8601"}, got  # 01 illegal function
    assert [e["function"] for e in plant.since(pos)] == [3]
    assert writes(plant.journal) == []


@pytest.mark.sr("SR 5.2")
def test_write_sent_byte_by_byte(plant: Plant) -> None:
    pos = plant.mark()
    adu = write_register(21, 5, 777) + read(22)
    got = plant.send(
        "engineer-1", PLC1, *(adu[i : i + 1] for i in range(len(adu))), gap=0.01, expect=2
    )
    assert replies(got) == {21: "8601", 22: "03020000"}, got
    assert [e["function"] for e in plant.since(pos)] == [3]
    assert writes(plant.journal) == []


@pytest.mark.sr("SR 2.1")
@pytest.mark.parametrize(
    ("adu", "answer"),
    [
        (read(31, address=0, count=100), None),  # first and last inside 0-99
        (read(31, address=99, count=1), None),  # the last address alone
        (read(31, address=0, count=101), "8302"),  # one past the end
        (read(31, address=100, count=1), "8302"),
        (read(31, fc=4, address=65000, count=5), None),  # input registers: all
        (read(31, fc=1, address=0, count=1), "8102"),  # coils: writable, not readable
        (write_register(31, 10, 65535), None),  # first of 10-19, no bounds
        (write_register(31, 19, 1), None),  # last of 10-19
        (write_register(31, 9, 1), "8602"),  # one before
        (write_register(31, 20, 1000), None),  # 20-29 bounded 0-1000: the top bound
        (write_register(31, 29, 1001), "8603"),  # one over the bound
        (write_register(31, 30, 1), "8602"),  # one past 20-29
        (write_registers(31, 18, [1, 2, 3]), None),  # 18-20: inside the union, 20 bounded
        (write_registers(31, 19, [1, 2000]), "9003"),  # 20 gets 2000: over its bound
        (write_registers(31, 28, [1, 2, 3]), "9002"),  # 30 is outside
        (write_coil(31, 7, True), None),
        (write_coil(31, 8, True), "8502"),
        (diagnostics(31), "8801"),  # not allowed on this conduit
        (request(31, 1, bytes([43, 13, 0, 0])), "ab01"),  # MEI other than 14
        (request(31, 1, bytes([7])), "8701"),  # read exception status: not forwarded
        (read(31, address=0, count=0), "8303"),  # quantity 0
        (read(31, address=0, count=126), "8303"),  # quantity over 125
        (read(31, unit=2), "830a"),  # unit 2 not behind this conduit
        (read(31, unit=6), None),  # units 5-6
    ],
)
def test_ranges_units_values_and_exception_codes(
    plant: Plant, adu: bytes, answer: str | None
) -> None:
    pos = plant.mark()
    got = plant.send("lead-1", PLC2, adu)
    assert len(got["replies"]) == 1, got
    pdu = got["replies"][0][2]
    executed = plant.since(pos)
    if answer is None:
        assert int(pdu[:2], 16) < 0x80, got  # a normal reply, from the device
        assert len(executed) == 1 and executed[0]["peer"] == IDENTITIES["lead-1"], executed
    else:
        assert pdu == answer, got
        assert executed == [], "a refused request reached the device"


def test_reset_instead_of_exception(plant: Plant) -> None:
    pos = plant.mark()
    ok = plant.send("vendor-1", PLC2, write_register(41, 105, 3))
    assert replies(ok) == {41: "0600690003"}, ok
    got = plant.send(
        "vendor-1", PLC2, write_register(42, 110, 3) + write_register(43, 100, 1), expect=2
    )
    assert got["reset"] or got["eof"], got
    assert got["replies"] == [], got
    assert [e["address"] for e in plant.since(pos)] == [105]


@pytest.mark.parametrize(
    "bad",
    [
        bytes.fromhex("0001 0001 0006 01 03 0000 0001"),  # protocol id 1
        bytes.fromhex("0001 0000 0001 01"),  # MBAP length 1: no PDU
        bytes.fromhex("0001 0000 0200 01") + bytes(600),  # length 512 > 254
        # function 16: quantity 1 but byte count 4 and two registers: the PDU lies
        bytes.fromhex("0001 0000 000b 01 10 000a 0001 04 0001 0002"),
        bytes.fromhex("0001 0000 0007 01 03 0000 0001 00"),  # a read with a trailing byte
    ],
)
def test_malformed_framing_resets_and_reaches_nothing(plant: Plant, bad: bytes) -> None:
    pos = plant.mark()
    got = plant.send("lead-1", PLC2, read(51) + bad + write_register(52, 11, 5), expect=3)
    assert got["reset"] or got["eof"], got
    assert [tid for tid, _, _ in got["replies"]] in ([], [51]), got
    assert [e["function"] for e in plant.since(pos)] in ([], [3]), "bytes after bad framing ran"


def test_outstanding_requests_are_bounded(plant: Plant) -> None:
    """200 pipelined reads against a stalled device: the tier forwards 16, holds the rest."""
    net = plant.net
    pos = plant.mark()
    flood = b"".join(read(1000 + i) for i in range(200))
    argv = [PY, "-m", "tests.policyd.ot_client", "--source", IDENTITIES["lead-1"]]
    argv += ["--dst", PLC2, "--expect", "200", "--timeout", "15", flood.hex()]
    plant.device.send_signal(signal.SIGSTOP)
    try:
        client = net.spawn(net.ident, *argv)
        time.sleep(1.5)
        ss = net.ns(net.zone, "ss", "-tnH", "state", "established", "( sport = :502 )").stdout
        queued = [int(line.split()[0]) for line in ss.splitlines() if line.strip()]
    finally:
        plant.device.send_signal(signal.SIGCONT)
    out, _ = client.communicate(timeout=30)
    assert max(queued) == 16 * len(read(0)), ss  # exactly the bound, in bytes, at the device
    got = json.loads(out.strip().splitlines()[-1])
    assert sorted(replies(got)) == list(range(1000, 1200)), got
    assert len(plant.since(pos)) == 200


def test_transaction_records_and_one_flow(plant: Plant, capsys: pytest.CaptureFixture[str]) -> None:
    got = plant.send("engineer-1", PLC1, read(61, address=3) + write_register(62, 4, 8), expect=2)
    assert len(got["replies"]) == 2
    records = plant.records()
    mine = [
        r for r in records if r["tid"] in (61, 62) and r["id.orig_h"] == IDENTITIES["engineer-1"]
    ]
    by_tid = {r["tid"]: r for r in mine}
    assert by_tid[61]["verdict"] == "allow" and by_tid[61]["func"] == "READ_HOLDING_REGISTERS"
    assert by_tid[61]["address"] == 3 and by_tid[61]["table"] == "holding_registers"
    assert by_tid[61]["identity"] == "engineer-1" and by_tid[61]["conduit"] == "engineers-read"
    assert "latency_ms" in by_tid[61]
    w = by_tid[62]
    assert (w["verdict"], w["exception"], w["exception_code"]) == ("deny", "ILLEGAL_FUNCTION", 1)
    assert w["values"] == [8] and w["exception_by"] == "gateway"
    flows = [
        r
        for r in plant.records("flow")
        if r.get("community_id") == w["community_id"] and r.get("flow_state") == "start"
    ]
    assert len(flows) == 1, flows  # the client's flow, not the tier's device-side one
    assert flows[0]["identity"] == "engineer-1" and flows[0]["conduit"] == "engineers-read"
    log = str(plant.policyd.flow_log)
    args = ["flows", "--log", log, "--service", "modbus", "--verdict", "deny"]
    assert cli_main([*args, "--identity", "engineer-1"]) == 0
    out = capsys.readouterr().out
    assert "write_single_register" in out and "ILLEGAL_FUNCTION (gateway)" in out, out
    assert "read_holding_registers" not in out


def test_device_side_may_reuse_the_client_port(plant: Plant) -> None:
    """The tier's connection to the device can get a client's own 4-tuple (same
    addresses, same port): the client side lives in its own conntrack zone, so the two
    do not collide. Forced here: the gateway has two ephemeral ports, a long-lived client
    A makes the tier use it, then client B connects from exactly that port."""
    net = plant.net
    old = net.ns(net.gw, "sysctl", "-n", "net.ipv4.ip_local_port_range").stdout.split()
    net.ns(net.gw, "sysctl", "-qw", "net.ipv4.ip_local_port_range=40005 40006")
    try:
        argv = [PY, "-m", "tests.policyd.ot_client", "--source", IDENTITIES["engineer-1"]]
        argv += ["--dst", PLC1, "--sport", "50005", "--again", "2", read(93).hex()]
        pos = plant.mark()
        a = net.spawn(net.ident, *argv)
        time.sleep(1.0)
        (seen,) = [e for e in plant.since(pos) if e["tid"] == 93]
        b = plant.send("engineer-1", PLC1, read(94), sport=seen["port"])
        out, _ = a.communicate(timeout=30)
    finally:
        net.ns(net.gw, "sysctl", "-qw", f"net.ipv4.ip_local_port_range={old[0]} {old[1]}")
    assert replies(b) == {94: "03020000"}, b
    first = json.loads(out.strip().splitlines()[-1])
    assert [tid for tid, _, _ in first["replies"]] == [93, 93], first


def test_a_reload_applies_to_open_connections_at_their_next_request(plant: Plant) -> None:
    """Each request is checked against the policy in force when it arrives."""
    argv = [PY, "-m", "tests.policyd.ot_client", "--source", IDENTITIES["lead-1"]]
    argv += ["--dst", PLC2, "--again", "3", "--timeout", "3", write_register(95, 15, 1).hex()]
    client = plant.net.spawn(plant.net.ident, *argv)
    time.sleep(1.0)
    done = "applied ruleset|membership synced"  # ranges only: the kernel rules are the same
    count = sum(1 for line in plant.policyd.lines if re.search(done, line))
    plant.topo.write_text(TOPOLOGY.replace("[10-19, {addresses", "[{addresses"))
    try:
        plant.policyd.wait_for(done, count=count + 1)
        out, _ = client.communicate(timeout=30)
    finally:
        plant.topo.write_text(TOPOLOGY)
        plant.policyd.wait_for(done, count=count + 2)
    got = json.loads(out.strip().splitlines()[-1])
    assert [pdu for _, _, pdu in got["replies"]] == ["06000f0001", "8602"], got


def test_no_conduit_means_no_connection(plant: Plant) -> None:
    pos = plant.mark()
    got = plant.send("guest", PLC1, read(71), timeout=1.5)
    assert got["replies"] == [] and plant.since(pos) == []
    got = plant.send("engineer-1", PLC2, read(72), timeout=1.5)  # no conduit to plc-2
    assert got["replies"] == [] and plant.since(pos) == []


@pytest.mark.sr("SR 5.2")
def test_tier_killed_closes_modbus_conduits(plant: Plant) -> None:
    """Last in this module: kills policyd (and with it the tier)."""
    assert replies(plant.send("engineer-1", PLC1, read(81))) == {81: "03020000"}
    plant.policyd.proc.kill()
    plant.policyd.proc.wait(timeout=5)
    pos = plant.mark()
    got = plant.send("engineer-1", PLC1, read(82), timeout=1.5)
    assert got["replies"] == [], got
    assert plant.since(pos) == []
    out = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            plant.net.gw,
            "nft",
            "list",
            "chain",
            "inet",
            "zonegate",
            "ot_prerouting",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert "tproxy" in out.stdout  # the steering stays: it is what keeps the conduit shut


@pytest.mark.sr("SR 5.2")
def test_a_tier_that_cannot_start_leaves_modbus_conduits_shut(tmp_path: Path) -> None:
    """The tier's port is taken when policyd starts: policyd still enforces the rest of
    the policy, audits `ot_tier_down`, and the steered Modbus conduit carries nothing
    (no request reaches the device), instead of exiting or letting flows around the tier."""
    require_tools()
    net = Net("zq")
    try:
        net.up()
        blocker = net.spawn(
            net.gw,
            PY,
            "-c",
            "import socket, sys, time\n"
            "s = socket.socket(); s.bind(('127.0.0.1', 15020)); s.listen(8)\n"
            "print('ready', flush=True); time.sleep(600)",
        )
        assert blocker.stdout is not None and blocker.stdout.readline().strip() == "ready"
        plant = Plant(net, tmp_path)
        plant.policyd.wait_for("OT tier cannot start")
        pos = plant.mark()
        got = plant.send("engineer-1", PLC1, read(91), timeout=1.5)
        assert got["replies"] == [] and plant.since(pos) == [], got
        audit = plant.records("audit")
        assert any(r.get("action") == "ot_tier_down" for r in audit), audit
        assert plant.policyd.proc.poll() is None  # still running, still enforcing
    finally:
        net.down()
