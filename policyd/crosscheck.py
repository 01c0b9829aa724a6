"""A model-level flow, decided by the compiled rulesets of the gateways on its path.

`topology.evaluate` decides a flow from the model; this module decides the same flow
by compiling each gateway on the path and running packets through the JSON with
`policyd.ruleset_eval`. Tests assert that the two agree for every declared test and
for generated flows; `zonegate explain` can use it to show the kernel's view.

Path: an identity's packets arrive through a tunnel at the target site's gateway; a
zone or asset source at site S reaching site T crosses S's gateway (LAN -> tunnel) and
T's (tunnel -> LAN), or only T's when S == T. A service with function classes is
checked with every code of the class (all must pass for "allow"); a service named
without a class with every known code plus one no class lists.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from ipaddress import IPv4Address

from policyd.compiler import CompileOptions, Ruleset, compile_ruleset
from policyd.ruleset_eval import Packet, Result, RulesetEvaluator, payload_with_code
from topology.evaluate import ALL_GRANTS, Flow, FlowError, resolve_source, resolve_target
from topology.modbus import ModbusRequest, conduit_scopes, decide
from topology.model import Topology
from topology.refs import parse_service_spec

UNLISTED_CODE = 90  # a function code in no class of the built-in catalog


@dataclass
class CompiledVerdict:
    allowed: bool
    hops: list[tuple[str, Packet, Result]] = field(default_factory=list)


def grant_everything(ev: RulesetEvaluator, rs: Ruleset, conduits: list[str], at: datetime) -> None:
    """Add every eligible source of these conduits to their grant sets (as a grant API would)."""
    for name in conduits:
        plan = rs.conduits.get(name)
        if plan is None or not plan.needs_grant:
            continue
        if plan.identity_set:
            for addr in plan.identities.values():
                ev.add_element(plan.identity_set, str(addr), at)
        if plan.zone_set:
            for net in plan.zones.values():
                prefix = {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}
                ev.add_element(plan.zone_set, prefix, at)


@dataclass(frozen=True)
class _Plan:
    path: list[tuple[str, str, str]]  # (gateway, iif, oif)
    packets: list[Packet]  # one per function code to try


def _plan(topo: Topology, flow: Flow) -> _Plan:
    src = resolve_source(topo, flow.source)
    dst = resolve_target(topo, flow.target)
    spec = parse_service_spec(flow.service, topo.services)
    if isinstance(spec, tuple):
        raise FlowError(spec[0])
    if src.address is None or dst.zone is None:
        raise FlowError(f"{flow.source} -> {flow.target}: no concrete addresses")
    daddr = dst.address or dst.zone.cidr.network_address + 100
    target_site = dst.zone.site
    if src.identity is not None:
        path = [(target_site, "zg0", "lan1")]
    elif src.zone is None:
        raise FlowError(f"{flow.source} is in no zone")
    elif src.zone.site == target_site:
        path = [(target_site, "lan0", "lan1")]
    else:
        path = [(src.zone.site, "lan0", "zg1"), (target_site, "zg0", "lan1")]

    offset = None
    codes: list[int | None] = [None]
    svc = topo.services.get(spec.service) if spec.service else None
    if svc is not None and svc.classes and svc.payload_offset is not None:
        offset = svc.payload_offset
        if spec.function_class:
            codes = [*svc.classes[spec.function_class].codes]
        else:
            every = {c for fc in svc.classes.values() for c in fc.codes} | {UNLISTED_CODE}
            codes = [*sorted(every)]
    packets = [
        Packet(
            iif="",
            saddr=IPv4Address(src.address),
            daddr=IPv4Address(daddr),
            proto=spec.transport,
            dport=spec.port,
            payload=payload_with_code(offset, code) if offset is not None and code else b"",
        )
        for code in codes
    ]
    return _Plan(path, packets)


def compiled_verdict(
    topo: Topology, flow: Flow, at: datetime, options: CompileOptions | None = None
) -> CompiledVerdict:
    """Decide `flow` at instant `at` with rulesets compiled at `at`."""
    plan = _plan(topo, flow)
    granted = list(topo.conduits) if flow.grants == ALL_GRANTS else list(flow.grants)
    verdict = CompiledVerdict(True)
    for gateway, iif, oif in plan.path:
        rs = compile_ruleset(topo, gateway, now=at, options=options)
        ev = RulesetEvaluator(rs.objects, at)
        grant_everything(ev, rs, granted, at)
        for base in plan.packets:
            pkt = replace(base, iif=iif, oif=oif)
            res = ev.connection(pkt, at)
            verdict.hops.append((gateway, pkt, res))
            verdict.allowed = verdict.allowed and res.accepted
    spec = parse_service_spec(flow.service, topo.services)  # valid: _plan checked it
    is_modbus = not isinstance(spec, tuple) and spec.service == "modbus"
    if flow.modbus is not None and is_modbus and verdict.allowed:
        verdict.allowed = _tier_allows(topo, verdict, flow.modbus)
    return verdict


def _tier_allows(topo: Topology, verdict: CompiledVerdict, request: ModbusRequest) -> bool:
    """The OT tier's check of one request against the conduit the kernel admitted it by
    (the last hop's ct mark), as policyd/ot/tier.py makes it."""
    marks = [res.ct_mark for _, _, res in verdict.hops if res.ct_mark]
    by_mark = {c.mark: c for c in topo.conduits.values()}
    conduit = by_mark.get(marks[-1]) if marks else None
    if conduit is None:
        return False
    return decide(conduit_scopes(conduit.allow), request).allowed


@dataclass(frozen=True)
class Event:
    """What happens to the policy between a flow's start and a later packet of it: the
    topology after (a reload, or the same one), and which conduits' grants remain."""

    after: Topology
    grants_before: tuple[str, ...]
    grants_after: tuple[str, ...]


def session_verdict(
    before: Topology, flow: Flow, t0: datetime, event: Event, t1: datetime
) -> tuple[bool, list[str]] | None:
    """Is an open flow F, admitted at t0, still allowed at t1 after `event`?

    None when the flow was never admitted at t0. Otherwise (accepted, marks): whether
    every packet of F at t1 passes the rules the kernel then holds (the ruleset of t0
    with time moved on and grants removed, or the ruleset compiled from the event's
    topology at t1, grants carried over as the kernel adapter does), and the conduit
    names the flow was attributed to at t0.
    """
    plan = _plan(before, flow)
    accepted, names = True, []
    reloaded = event.after is not before
    for gateway, iif, oif in plan.path:
        rs0 = compile_ruleset(before, gateway, now=t0)
        ev0 = RulesetEvaluator(rs0.objects, t0)
        grant_everything(ev0, rs0, list(event.grants_before), t0)
        by_mark = {p.mark: p.name for p in rs0.conduits.values()}
        opened = []
        for base in plan.packets:
            pkt = replace(base, iif=iif, oif=oif)
            first = ev0.evaluate("forward", replace(pkt, payload=b""), t0)
            if not first.accepted:
                return None
            names.append(by_mark.get(first.ct_mark, ""))
            opened.append(replace(pkt, ct_state="established", ct_mark=first.ct_mark))
        if reloaded:
            rs1 = compile_ruleset(event.after, gateway, now=t1)
            ev1 = RulesetEvaluator(rs1.objects, t1)
            kept = [c for c in event.grants_after if c in event.grants_before]
            grant_everything(ev1, rs1, kept, t1)
        else:
            ev1 = ev0
            for name in set(event.grants_before) - set(event.grants_after):
                _revoke(ev0, rs0, name)
        for later in opened:
            accepted = accepted and ev1.evaluate("forward", later, t1).accepted
    return accepted, names


def _revoke(ev: RulesetEvaluator, rs: Ruleset, conduit: str) -> None:
    plan = rs.conduits.get(conduit)
    if plan is None or not plan.needs_grant:
        return
    if plan.identity_set:
        for addr in plan.identities.values():
            ev.delete_element(plan.identity_set, str(addr))
    if plan.zone_set:
        for net in plan.zones.values():
            prefix = {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}
            ev.delete_element(plan.zone_set, prefix)
