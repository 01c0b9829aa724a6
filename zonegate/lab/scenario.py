"""A topology file as a running plant whose declared tests are replayed as real traffic.

`Scenario` copies the topology into a work directory with fresh keys pinned in it
(`tunneld.keyring.materialize_keys`), builds the plant in Mininet (`PlantNet`),
starts policyd and tunneld on every gateway host and `tunneld join` on every user
host, waits until every tunnel holds a post-quantum PSK and carries traffic, and then
sends each declared test as real traffic from the source's host to the target's
host. Each outcome is compared with the reference verdict *now* (see
`scenario_cases`); the table says which tests could not be replayed and why. On any
failure the daemons' logs, `nft list ruleset` and `wg show` of every gateway are
dumped, and everything is torn down however the run ends (error, SIGINT, SIGTERM).

    python -m zonegate.lab.scenario examples/plant [--workdir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import topology
from topology.model import PolicyTest
from topology.table import format_table
from tunneld.keyring import materialize_keys
from zonegate.lab.emulation import PlantNet
from zonegate.lab.explore import hold, instructions
from zonegate.lab.leftovers import Footprint, capture, leftovers
from zonegate.lab.plant_daemons import GatewayDaemons, in_host, source_env
from zonegate.lab.scenario_cases import Case, Outcome, outcome_table, plan_cases, summary
from zonegate.lab.scenario_grants import GrantStep, close_grants, open_grants
from zonegate.lab.user_tunnels import UserTunnels


def random_prefix() -> str:
    """Node names unique per run: other Mininet runs may share this machine."""
    return "zm" + secrets.token_hex(1)


class Scenario:
    """One emulated plant with its daemons; a context manager that always tears down."""

    def __init__(
        self,
        source: Path,
        workdir: Path,
        prefix: str | None = None,
        rekey_interval: float = 120.0,
        probe_timeout: float = 2.0,
        parallel: int = 4,
        log: Any = print,
    ) -> None:
        self.source = source
        self.workdir = workdir
        self.prefix = prefix or random_prefix()
        self.rekey_interval = rekey_interval
        self.probe_timeout = probe_timeout
        self.parallel = parallel
        self.log = log
        self.plant: PlantNet | None = None
        self.daemons: GatewayDaemons | None = None
        self.users: UserTunnels | None = None
        self.topology_dir = workdir / "topology"
        self.timings: dict[str, float] = {}
        self.tunnels: dict[str, dict[str, Any]] = {}
        self.before: Footprint | None = None
        self.footprint: Footprint | None = None

    # -- bring-up ---------------------------------------------------------------------
    def start(self) -> None:
        t0 = time.monotonic()
        self.before = capture(self.prefix, self._watch_names())
        topo = topology.load(self.source).topology
        sites = {s: topo.site_identity(s) for s in topo.sites}
        missing = [s for s, ident in sites.items() if ident is None]
        if missing:
            raise RuntimeError(f"sites without an identity of kind site: {', '.join(missing)}")
        users = [i.name for i in topo.identities.values() if i.kind in ("user", "service")]
        names = [ident.name for ident in sites.values() if ident is not None] + users
        keys = materialize_keys(self.source, self.workdir, names).keys
        self.topology = topology.load(self.topology_dir).topology
        site_keys = {s: keys[ident.name] for s, ident in sites.items() if ident is not None}
        self.timings["keys"] = time.monotonic() - t0

        t = time.monotonic()
        self.plant = PlantNet(self.topology, self.prefix)
        self.plant.start()
        self.footprint = capture(self.prefix, self._watch_names(), before=self.before)
        self.timings["plant"] = time.monotonic() - t
        self.log(
            f"plant up: {len(self.plant.plan.hosts)} hosts, {len(self.plant.plan.switches)} "
            f"switches (prefix {self.prefix}) in {self.timings['plant']:.1f}s"
        )

        t = time.monotonic()
        self.daemons = GatewayDaemons(
            self.plant, self.topology_dir, site_keys, self.workdir, self.rekey_interval
        )
        self.daemons.start()
        self.users = UserTunnels(
            self.plant, self.topology_dir, keys, self.workdir, self.rekey_interval
        )
        self.users.start()
        joined = set(self.users.gateways)
        self.tunnels = self.daemons.wait_for_psks(set(self.topology.sites) | joined)
        self.daemons.wait_for_data_path()
        self.users.wait()
        self.timings["tunnels"] = time.monotonic() - t
        self.log(
            f"tunnels up with post-quantum PSKs in {self.timings['tunnels']:.1f}s "
            f"({len(self.topology.sites)} gateways, {len(joined)} users joined)"
        )

    def _watch_names(self) -> frozenset[str]:
        try:
            sites = topology.load(self.source).topology.sites
        except Exception:
            sites = {}
        return frozenset({"zg0.sock", *(f"tunneld-{s}.sock" for s in sites)})

    def stop(self) -> None:
        if self.users is not None:
            self.users.stop()
            self.users = None
        if self.daemons is not None:
            self.daemons.stop()
            self.daemons = None
        if self.plant is not None:
            self.plant.stop()
            self.plant = None

    def leftovers(self) -> list[str]:
        return leftovers(self.footprint or self.before or capture(self.prefix))

    def __enter__(self) -> Scenario:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- traffic ------------------------------------------------------------------------
    def host(self, label: str) -> Any:
        assert self.plant is not None
        return self.plant.host(label)

    def probe_argv(self, address: str, service: str) -> list[str]:
        return [sys.executable, "-m", "zonegate.lab.probe", address, service]

    def probe(
        self, source: str, address: str, service: str, extra: tuple[str, ...] = ()
    ) -> tuple[bool, str]:
        """Real traffic from a host; (passed, detail). `extra`: probe options
        (e.g. --register 50 --value 7)."""
        argv = [*self.probe_argv(address, service), "--timeout", str(self.probe_timeout), *extra]
        rc, out = in_host(self.host(source), argv, timeout=self.probe_timeout * 4 + 10)
        return rc == 0, _detail(out)

    def in_gateway(self, site: str, argv: list[str]) -> tuple[int, str]:
        return in_host(self.host(site), argv, timeout=30)

    def open_grants(self, identity: str, duration: str = "5m") -> list[tuple[GrantStep, str]]:
        """Every grant the identity could hold, requested and approved through the API."""
        reason = "scenario: declared test with granted: true"
        now = datetime.now(UTC)
        return open_grants(self.in_gateway, self.topology, identity, now, duration, reason)

    def close_grants(self, identity: str, opened: list[tuple[GrantStep, str]]) -> None:
        close_grants(self.in_gateway, identity, opened)

    def cases(self, now: datetime | None = None) -> list[Case]:
        assert self.plant is not None
        no_tunnel = self.users.without if self.users is not None else {}
        notes = self.users.notes() if self.users is not None else {}
        when = now or datetime.now(UTC)
        return plan_cases(self.topology, self.plant.plan, when, no_tunnel, notes)

    def run_tests(
        self, now: datetime | None = None, only: Callable[[Case], bool] | None = None
    ) -> list[Outcome]:
        """Every declared test (or those `only` selects) as real traffic; ungranted ones
        in parallel, then the granted ones one by one (a grant opens a source's access
        for all its flows)."""
        t = time.monotonic()
        cases = [c for c in self.cases(now) if only is None or only(c)]
        results: dict[int, Outcome] = {c.index: Outcome(c, None) for c in cases}
        plain = [c for c in cases if c.runnable and not c.test.granted]
        for start in range(0, len(plain), self.parallel):
            batch = plain[start : start + self.parallel]
            procs = [(c, self._spawn_probe(c), time.monotonic()) for c in batch]
            for c, proc, began in procs:
                out, _ = proc.communicate(timeout=self.probe_timeout * 4 + 10)
                passed = proc.returncode == 0
                seconds = time.monotonic() - began
                results[c.index] = Outcome(c, passed, _detail(out.decode()), seconds)
        for c in cases:
            if not (c.runnable and c.test.granted):
                continue
            assert c.source_host is not None and c.target_address is not None
            began = time.monotonic()
            opened = self.open_grants(c.test.source)
            try:
                passed, detail = self.probe(
                    c.source_host, c.target_address, c.test.service, probe_options(c.test)
                )
            finally:
                self.close_grants(c.test.source, opened)
            note = ", ".join(f"{step.conduit} {gid}" for step, gid in opened) or "none possible"
            results[c.index] = Outcome(
                c, passed, f"{detail} [grants: {note}]", time.monotonic() - began
            )
        self.timings["tests"] = time.monotonic() - t
        return [results[c.index] for c in cases]

    def _spawn_probe(self, c: Case) -> subprocess.Popen[bytes]:
        assert c.source_host is not None and c.target_address is not None
        argv = self.probe_argv(c.target_address, c.test.service)
        return self.host(c.source_host).popen(  # type: ignore[no-any-return]
            [*argv, "--timeout", str(self.probe_timeout), *probe_options(c.test)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=source_env(),
        )

    # -- reporting --------------------------------------------------------------------
    def tunnel_table(self, users_in_full: int = 6) -> str:
        """One row per tunnel; beyond `users_in_full` user peers, one summary row each."""
        rows = []
        for site, st in sorted(self.tunnels.items()):
            peers = sorted(st["peers"].items())
            users = [(n, p) for n, p in peers if n not in self.topology.sites]
            shown = [(n, p) for n, p in peers if n in self.topology.sites]
            if len(users) <= users_in_full:
                shown, users = peers, []
            for peer, p in shown:
                age = p["psk_age"]
                psk = f"{age:.1f}s" if age is not None else "none"
                rows.append([site, peer, p["role"], psk, str(p["rotations"]), st["kem_backend"]])
            if users:
                ages = [p["psk_age"] for _, p in users if p["psk_age"] is not None]
                psk = f"{min(ages):.1f}-{max(ages):.1f}s" if ages else "none"
                keyed = f"{len(ages)}/{len(users)} keyed"
                rows.append([site, f"{len(users)} users", "responder", psk, keyed, ""])
        return format_table(["GATEWAY", "PEER", "ROLE", "PQ PSK AGE", "ROTATIONS", "KEM"], rows)

    def flow_logs(self) -> list[str]:
        if self.daemons is None:
            return []
        return [str(self.daemons.flow_log(site)) for site in self.daemons.sites]

    def dump(self, into: Path) -> None:
        if self.daemons is not None:
            self.daemons.dump(into)


def _detail(out: str) -> str:
    for line in reversed(out.strip().splitlines()):
        try:
            return str(json.loads(line)["detail"])
        except (ValueError, KeyError, TypeError):
            continue
    return out.strip()[-200:]


@contextmanager
def interrupts_as_exceptions() -> Iterator[None]:
    """SIGTERM behaves like Ctrl-C, so `finally` blocks tear the plant down."""

    def on_term(_sig: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def run(
    source: Path, workdir: Path, prefix: str | None = None, keep: bool = False
) -> tuple[int, list[Outcome]]:
    """Bring up, replay, print, (hold,) tear down; exit code 1 on any mismatch."""
    scenario = Scenario(source, workdir, prefix)
    t0 = time.monotonic()
    outcomes: list[Outcome] = []
    failed = True
    try:
        scenario.start()
        print(scenario.tunnel_table(), flush=True)
        outcomes = scenario.run_tests()
        print(outcome_table(outcomes))
        print(summary(outcomes), flush=True)
        failed = not all(o.ok for o in outcomes)
        if keep and scenario.plant is not None:
            print(instructions(scenario.plant, scenario.flow_logs()), flush=True)
            hold(scenario.plant)
    finally:
        if failed:
            scenario.dump(workdir / "dump")
            print(f"state dumped into {workdir / 'dump'}", file=sys.stderr)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not stop teardown
        scenario.stop()
        signal.signal(signal.SIGINT, signal.default_int_handler)
    timings = " ".join(f"{k} {v:.1f}s" for k, v in scenario.timings.items())
    print(f"timing: {timings}; total {time.monotonic() - t0:.1f}s")
    return (1 if failed else 0), outcomes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m zonegate.lab.scenario", description=__doc__)
    p.add_argument("topology", type=Path)
    p.add_argument("--workdir", type=Path, help="default: a new directory under /tmp")
    p.add_argument("--prefix", help="Mininet node name prefix (default: zm + random hex)")
    p.add_argument("--keep", action="store_true", help="stay up until Ctrl-C to explore")
    args = p.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="zonegate-scenario-"))
    workdir.mkdir(parents=True, exist_ok=True)
    with interrupts_as_exceptions():
        try:
            code, _ = run(args.topology, workdir, args.prefix, args.keep)
        except KeyboardInterrupt:
            print("interrupted; torn down", file=sys.stderr)
            return 130
    if code == 0 and not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())


def probe_options(test: PolicyTest) -> tuple[str, ...]:
    """The probe's options for a test's Modbus request (register, value, unit, table)."""
    m = test.modbus
    if m is None:
        return ()
    value = m.values[0] if m.values else 42
    return (
        "--register", str(m.address), "--value", str(value),
        "--unit", str(m.unit), "--table", m.table,
    )  # fmt: skip
