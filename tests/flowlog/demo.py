"""The flow-log demo: real connections through a gateway namespace, then `zonegate flows`.

Builds the test plant (client -- gateway -- PLC, tests/flowlog/plant.py), records while
an engineer reads the PLC, opens SSH and PROFINET, tries RDP and a Modbus write
(denied), then prints the log as a table and the denies as JSON. Needs root.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

import topology
from policyd.flowlog.recorder import FlowRecorder, RecorderConfig
from policyd.flowlog.records import AuditEvent
from policyd.flowlog.sinks import JsonLinesFile
from tests.flowlog.plant import CLIENT_IDENTITY, CLIENT_UNKNOWN, PLC, TOPOLOGY, Plant
from zonegate.cli import main as zonegate

SPEC: list[dict[str, object]] = [
    {
        "kind": "tcp",
        "src": CLIENT_IDENTITY,
        "dst": PLC,
        "port": 502,
        "hex": "000100000006010300000001",
    },
    {"kind": "tcp", "src": CLIENT_IDENTITY, "dst": PLC, "port": 22},
    {"kind": "udp", "src": CLIENT_IDENTITY, "dst": PLC, "port": 34964, "count": 3},
    {"kind": "tcp", "src": CLIENT_IDENTITY, "dst": PLC, "port": 3389, "timeout": 0.5},
    {"kind": "tcp", "src": CLIENT_UNKNOWN, "dst": PLC, "port": 502, "timeout": 0.5},
    {
        "kind": "tcp",
        "src": CLIENT_IDENTITY,
        "dst": PLC,
        "port": 502,
        "hex": "000100000006010600010003",
        "timeout": 0.5,
    },
]


async def record(plant: Plant, topo: topology.Topology, log: Path) -> None:
    rec = FlowRecorder(topo, "site-a", [JsonLinesFile(log)], RecorderConfig(netns=plant.gateway))
    await rec.start()
    rec.emit_audit(AuditEvent("policy_applied", message=f"stand-in ruleset for {TOPOLOGY.name}"))
    try:
        await asyncio.to_thread(plant.connect, SPEC)
        await asyncio.sleep(0.5)
        await asyncio.to_thread(plant.conntrack_flush)  # end the flows now, not in 2 minutes
        await asyncio.sleep(1.0)
    finally:
        await rec.stop()
    status = rec.status()
    print(f"recorder: {status['counts']}, lost {status['lost']}")


def main() -> int:
    topo = topology.load(TOPOLOGY).topology
    with tempfile.TemporaryDirectory(prefix="zf-demo-") as tmp:
        log = Path(tmp) / "flows.jsonl"
        plant = Plant(topo)
        try:
            asyncio.run(record(plant, topo, log))
        finally:
            plant.close()
        print(f"\n$ zonegate flows --log {log.name}")
        zonegate(["flows", "--log", str(log)])
        print(f"\n$ zonegate flows --log {log.name} --verdict deny --json")
        zonegate(["flows", "--log", str(log), "--verdict", "deny", "--json"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
