"""`scripts/demo`: the example plant in Mininet, and a short story told with real traffic.

An engineer reads a PLC through her tunnel; the vendor's Modbus write is dropped by
the gateway; the vendor asks for access through his tunnel, the shift lead approves
through hers, the write works, and when the grant runs out the kernel closes it
again. Every step is real: pymodbus requests across wireguard-go tunnels keyed with
post-quantum PSKs, policyd's nftables rules, its control API. At the end: a table of
what happened, the flow log, and a clean teardown (also on Ctrl-C), or with --keep
the network stays up with a list of commands to explore it.

The engineers' conduit only opens Mon-Fri 06:00-20:00 Berlin time. Outside those
hours the demo says so, shows the real verdict, and runs on a copy of the topology
whose schedules are widened to every day (the copy is in the work directory).
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

import topology
from topology.evaluate import Flow, evaluate
from topology.model import Topology
from topology.table import format_table
from zonegate.iec62443 import DEFAULT_RESULTS
from zonegate.lab.explore import hold, instructions
from zonegate.lab.plant_daemons import in_host
from zonegate.lab.scenario import Scenario, interrupts_as_exceptions

ENGINEER, VENDOR, LEAD = "engineer-1", "vendor-tech", "shift-lead-1"
PLC, GATEWAY, CONDUIT = "plant-a/plc-1", "plant-a", "vendor-maintenance"


def say(text: str = "") -> None:
    print(text, flush=True)


def heading(n: int, text: str) -> None:
    say(f"\n== {n}. {text}")


@dataclass(frozen=True)
class Step:
    who: str
    what: str
    expected: str
    got: str

    @property
    def ok(self) -> bool:
        return self.expected == self.got


def widen_schedules(src: Path, dst: Path) -> list[str]:
    """Copy the topology with every conduit schedule opened to all days and hours."""
    dst.mkdir(parents=True, exist_ok=True)
    widened = []
    for f in sorted(src.glob("*.y*ml")):
        doc = yaml.safe_load(f.read_text())
        for name, body in (doc.get("conduits") or {}).items() if isinstance(doc, dict) else ():
            if isinstance(body, dict) and "schedule" in body:
                tz = body["schedule"].get("tz", "UTC")
                body["schedule"] = {"days": "mon-sun", "tz": tz}
                widened.append(name)
        (dst / f.name).write_text(yaml.safe_dump(doc, sort_keys=False))
    return widened


def choose_topology(example: Path, workdir: Path, now: datetime) -> tuple[Path, Topology]:
    """The example itself, or (outside the engineers' hours) a widened copy; says which."""
    topo = topology.load(example).topology
    verdict = evaluate(topo, Flow(ENGINEER, PLC, "modbus/read", at=now))
    say(f"now {now:%a %Y-%m-%d %H:%M} UTC; {ENGINEER} -> {PLC} modbus/read: {verdict.word}")
    say(f"  ({verdict.reason})")
    if verdict.allowed:
        return example, topo
    copy = workdir / "demo-topology"
    names = widen_schedules(example, copy)
    say(
        f"  Outside the engineers' hours: this demo runs on a copy with the schedules of "
        f"{', '.join(names)} widened to every day, all day ({copy})."
    )
    return copy, topology.load(copy).topology


class Demo:
    def __init__(self, example: Path, workdir: Path, grant_seconds: int, keep: bool) -> None:
        self.example, self.workdir = example, workdir
        self.grant_seconds, self.keep = grant_seconds, keep
        self.steps: list[Step] = []
        self.scenario: Scenario | None = None

    def sh(self, host: str, argv: list[str], timeout: float = 30) -> tuple[int, str]:
        assert self.scenario is not None
        return in_host(self.scenario.host(host), argv, timeout=timeout)

    def modbus(self, who: str, fc: str, expected: str) -> str:
        assert self.scenario is not None
        asset = self.scenario.topology.asset(PLC)
        assert asset is not None
        passed, detail = self.scenario.probe(who, str(asset.address), f"modbus/{fc}")
        got = "passed" if passed else "blocked"
        self.steps.append(Step(who, f"Modbus {fc} on {PLC}", expected, got))
        mark = "as expected" if got == expected else f"UNEXPECTED (expected {expected})"
        say(f"  {who}: modbus/{fc} -> {PLC}: {got.upper()} ({detail}) {mark}")
        return got

    def grant_call(self, who: str, *action: str) -> dict[str, Any]:
        """`zonegate grant` on the user's host, to the gateway's API through the tunnel."""
        assert self.scenario is not None
        site = self.scenario.topology.sites[GATEWAY]
        api = f"http://{site.gateway.overlay}:9780"
        argv = [sys.executable, "-m", "zonegate.cli", "grant", "--api", api, "--json", *action]
        say(f"  {who}$ zonegate grant --api {api} {' '.join(action)}")
        rc, out = self.sh(who, argv)
        try:
            data: dict[str, Any] = json.loads(out)
        except json.JSONDecodeError:
            data = {"error": out.strip()}
        state = data.get("state", f"refused: {data.get('error')}")
        self.steps.append(Step(who, f"grant {action[0]}", "ok", "ok" if rc == 0 else "failed"))
        say(
            f"    -> {state}"
            + (f", expires {data['expires_at']}" if data.get("expires_at") else "")
        )
        return data

    def run(self) -> int:
        heading(1, f"Is {ENGINEER} allowed to read {PLC} right now?")
        source, _ = choose_topology(self.example, self.workdir, datetime.now(UTC))

        heading(2, f"Bring up {self.example} in Mininet (LinuxBridge switches, real daemons)")
        self.scenario = Scenario(source, self.workdir / "run", log=lambda m: say(f"  {m}"))
        self.scenario.start()
        if self.scenario.users is not None and VENDOR in self.scenario.users.without:
            say(f"  cannot tell the story: {self.scenario.users.without[VENDOR]}")
            return 1

        heading(3, f"Tunnels on {GATEWAY}: WireGuard with a post-quantum PSK (hybrid ML-KEM)")
        _, out = self.sh(GATEWAY, [sys.executable, "-m", "tunneld.cli", "status"])
        say(out.rstrip())

        heading(4, f"{ENGINEER} reads {PLC} through her tunnel (Modbus FC 3)")
        self.modbus(ENGINEER, "read", "passed")

        heading(5, f"{VENDOR} tries to write a register on {PLC} (Modbus FC 6)")
        self.modbus(VENDOR, "write", "blocked")
        say("  Why, and what would open it (zonegate explain):")
        explain = [sys.executable, "-m", "zonegate.cli", "explain", str(source)]
        explain += ["--from", VENDOR, "--to", PLC, "--service", "modbus/write"]
        say("    " + in_root(explain).strip().replace("\n", "\n    "))

        heading(6, f"{VENDOR} asks for {self.grant_seconds}s on {CONDUIT}; {LEAD} approves")
        req = self.grant_call(
            VENDOR,
            "request",
            "--conduit",
            CONDUIT,
            "--duration",
            f"{self.grant_seconds}s",
            "--reason",
            "replace the pump setpoint (demo)",
        )
        approved = self.grant_call(LEAD, "approve", str(req.get("id", "?")))

        heading(7, f"{VENDOR} writes again, inside the grant")
        self.modbus(VENDOR, "write", "passed")

        heading(8, "The grant expires in the kernel (an nftables set element with a timeout)")
        self.wait_for_expiry(approved)
        self.modbus(VENDOR, "write", "blocked")

        heading(9, "What happened")
        rows = [
            [str(i), s.who, s.what, s.expected, s.got, "ok" if s.ok else "MISMATCH"]
            for i, s in enumerate(self.steps, 1)
        ]
        say(format_table(["#", "WHO", "WHAT", "EXPECTED", "GOT", "RESULT"], rows))
        self.show_flows()
        heading(10, "IEC 62443 evidence from the file, the tests and this run's logs")
        self.show_evidence(source)
        failed = not all(s.ok for s in self.steps)
        if self.keep and self.scenario.plant is not None:
            heading(11, "Explore")
            say(instructions(self.scenario.plant, self.scenario.flow_logs()))
            hold(self.scenario.plant)
        return 1 if failed else 0

    def wait_for_expiry(self, approved: dict[str, Any]) -> None:
        expires = approved.get("expires_at")
        until = datetime.fromisoformat(expires) if expires else None
        left = (until - datetime.now(UTC)).total_seconds() if until else self.grant_seconds
        say(f"  waiting {max(left, 0):.0f}s for the grant to run out ...")
        time.sleep(max(left, 0) + 1.5)

    def show_flows(self) -> None:
        assert self.scenario is not None
        logs = self.scenario.flow_logs()
        log = next((p for p in logs if GATEWAY in Path(p).name), logs[0] if logs else None)
        if log is None:
            return
        say(f"\nFlow log of {GATEWAY}: {log}  (all gateways: {', '.join(logs)})")
        argv = [sys.executable, "-m", "zonegate.cli", "flows", "--log", log, "--starts"]
        out = in_root(argv)
        lines = out.rstrip().splitlines()
        shown = lines if len(lines) <= 17 else lines[:1] + lines[-16:]
        say("\n".join(shown) if shown else "  (empty)")
        say(f"Read it yourself: .venv/bin/zonegate flows --log {log}")

    def show_evidence(self, source: Path) -> None:
        """The report's summary; its gaps are findings about the example, not demo failures."""
        assert self.scenario is not None
        argv = [sys.executable, "-m", "zonegate.cli", "report", "--iec62443", str(source)]
        argv.append("--summary")
        for log in self.scenario.flow_logs():
            argv += ["--logs", log]
        results = DEFAULT_RESULTS  # written by scripts/test
        argv += ["--tests", str(results)] if results.exists() else []
        say(f"  $ zonegate report --iec62443 {' '.join(argv[5:])}")
        say("  " + in_root(argv).rstrip().replace("\n", "\n  "))
        say("  Full report: add --format html -o report.html (docs/iec62443.md)")


def in_root(argv: list[str]) -> str:
    """A command in the root namespace (the flow log is a plain file)."""
    import subprocess

    from zonegate.lab.plant_daemons import source_env

    res = subprocess.run(argv, capture_output=True, text=True, env=source_env(), check=False)
    return res.stdout + res.stderr


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/demo", description=__doc__)
    p.add_argument("--example", type=Path, default=Path("examples/plant"))
    p.add_argument("--keep", action="store_true", help="leave the network up to explore it")
    p.add_argument("--grant-seconds", type=int, default=20)
    p.add_argument("--workdir", type=Path, help="default: a new directory under /tmp")
    args = p.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="zonegate-demo-"))
    demo = Demo(args.example, workdir, args.grant_seconds, args.keep)
    code = 1
    with interrupts_as_exceptions():
        try:
            code = demo.run()
        except KeyboardInterrupt:
            say("\ninterrupted")
            code = 130
        finally:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            if demo.scenario is not None:
                if code != 0:
                    demo.scenario.dump(workdir / "dump")
                    say(f"state dumped into {workdir / 'dump'}")
                demo.scenario.stop()
                left = demo.scenario.leftovers()
                say("torn down: " + ("nothing left behind" if not left else "; ".join(left)))
            signal.signal(signal.SIGINT, signal.default_int_handler)
    say(f"work directory (topology copy, keys, logs, flow logs): {workdir}")
    if code == 0 and not args.workdir and not args.keep:
        shutil.rmtree(workdir / "run" / "keys", ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
