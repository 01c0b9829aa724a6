"""Which declared tests can run as real traffic now, from where, and what they must show.

Pure: given the topology, the emulation plan and the current time, each `tests` entry
becomes a `Case` with the host to send from, the address to reach, and the reference
verdict *at this moment* (the traffic is compared with that, not with the file's
`expect`, because the kernel decides at the real time: a schedule may be closed now).
Tests pinned to a time (`at`) cannot be replayed in real time, so they are skipped
and say so; they must never show up as passed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from ipaddress import IPv4Address

from topology.evaluate import FlowError, Verdict, evaluate
from topology.model import PolicyTest, Topology
from topology.policy_tests import flow_of
from topology.refs import parse_service_spec
from topology.table import format_table
from zonegate.lab.emulation import HostPlan, Plan

SKIP_PINNED = "skipped (pinned time)"


@dataclass(frozen=True)
class Case:
    """One declared test, ready to run (or a reason why it cannot be)."""

    index: int
    test: PolicyTest
    model: Verdict | None  # the reference verdict now; None when skipped
    skip: str | None = None
    source_host: str | None = None  # Mininet host label to send from
    target_address: str | None = None
    note: str = ""  # shown with the test, e.g. how the source reaches the target

    @property
    def runnable(self) -> bool:
        return self.skip is None


@dataclass(frozen=True)
class Outcome:
    """What the traffic did for one case."""

    case: Case
    passed: bool | None  # None: not run
    detail: str = ""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        if self.case.skip is not None or self.case.model is None:
            return True
        return self.passed is self.case.model.allowed


def _target_host(plan: Plan, topo: Topology, ref: str, service: str) -> HostPlan | None:
    """The host that stands for a target: the asset, or a zone host serving the service."""
    if topo.asset(ref) is not None:
        return plan.host(ref)
    zone = topo.zone(ref)
    if zone is None:
        return None
    spec = parse_service_spec(service, topo.services)
    in_zone = [
        h
        for h in plan.hosts
        if h.kind in ("asset", "probe") and h.interfaces[0].address.ip in zone.cidr
    ]
    if isinstance(spec, tuple):
        return in_zone[0] if in_zone else None
    for h in in_zone:
        if spec.service == "modbus" and h.modbus:
            return h
        ports = h.udp_ports if spec.transport == "udp" else h.tcp_ports
        if spec.service != "modbus" and spec.port in ports:
            return h
    return in_zone[0] if in_zone else None


def _source_host(
    topo: Topology, plan: Plan, ref: str, no_tunnel: Mapping[str, str]
) -> str | tuple[str]:
    """Host label for a source; a 1-tuple holds the reason it cannot be emulated."""
    ident = topo.identities.get(ref)
    if ident is not None:
        if ident.kind == "site":
            return ident.site or ref
        if ref in no_tunnel:
            return (no_tunnel[ref],)
        return ref
    if topo.asset(ref) is not None:
        return ref
    if topo.zone(ref) is not None:
        try:
            return plan.zone_host(ref).label
        except KeyError:
            return (f"skipped (no host in zone {ref})",)
    return (f"skipped (source {ref} is not an emulated host)",)


def plan_cases(
    topo: Topology,
    plan: Plan,
    now: datetime,
    no_tunnel: Mapping[str, str] | None = None,
    notes: Mapping[str, str] | None = None,
) -> list[Case]:
    """`no_tunnel`: identities whose host cannot send, with the reason to show;
    `notes`: sources whose traffic runs but deserves a word (e.g. "no tunnel")."""
    cases: list[Case] = []
    for i, test in enumerate(topo.tests, start=1):
        if test.at is not None:
            cases.append(Case(i, test, None, SKIP_PINNED))
            continue
        flow = dataclasses.replace(flow_of(test), at=now)
        try:
            verdict = evaluate(topo, flow)
        except FlowError as exc:
            cases.append(Case(i, test, None, f"skipped ({exc})"))
            continue
        if test.granted and test.source not in topo.identities:
            reason = "skipped (grants are requested by identities; the source is not one)"
            cases.append(Case(i, test, verdict, reason))
            continue
        source = _source_host(topo, plan, test.source, no_tunnel or {})
        if isinstance(source, tuple):
            cases.append(Case(i, test, verdict, source[0]))
            continue
        target = _target_host(plan, topo, test.target, test.service)
        if target is not None:
            address = str(target.interfaces[0].address.ip)
        else:
            try:
                address = str(IPv4Address(test.target))
            except ValueError:
                cases.append(Case(i, test, verdict, f"skipped (no host for {test.target})"))
                continue
        note = (notes or {}).get(test.source, "")
        cases.append(Case(i, test, verdict, None, source, address, note))
    return cases


def _traffic_word(o: Outcome) -> str:
    if o.case.skip is not None:
        return "-"
    if o.passed is None:
        return "not run"
    return "passed" if o.passed else "blocked"


def _result_word(o: Outcome) -> str:
    if o.case.skip is not None:
        return o.case.skip
    return "ok" if o.ok else "MISMATCH"


def outcome_table(outcomes: Sequence[Outcome]) -> str:
    """The scenario's table: test, expected, model verdict now, traffic, ok/MISMATCH."""
    rows = []
    for o in outcomes:
        t = o.case.test
        what = f"{t.source} -> {t.target} {t.service}"
        if t.modbus is not None:
            what += f" [{t.modbus.describe()}]"
        if t.granted:
            what += " (granted)"
        if t.at is not None:
            what += f" at {t.at.isoformat()}"
        if o.case.note:
            what += f" [{o.case.note}]"
        model = o.case.model.word if o.case.model is not None else "-"
        if o.case.model is not None and o.case.model.word != t.expect:
            model += " (now)"
        rows.append([str(o.case.index), what, t.expect, model, _traffic_word(o), _result_word(o)])
    return format_table(["#", "TEST", "EXPECTED", "MODEL NOW", "TRAFFIC", "RESULT"], rows)


def summary(outcomes: Sequence[Outcome]) -> str:
    ran = [o for o in outcomes if o.case.skip is None]
    bad = [o for o in ran if not o.ok]
    skipped = len(outcomes) - len(ran)
    return (
        f"{len(ran)} run as real traffic: {len(ran) - len(bad)} ok, {len(bad)} MISMATCH; "
        f"{skipped} skipped"
    )
