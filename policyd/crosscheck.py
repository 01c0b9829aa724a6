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

from dataclasses import dataclass, field
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


def compiled_verdict(
    topo: Topology, flow: Flow, at: datetime, options: CompileOptions | None = None
) -> CompiledVerdict:
    """Decide `flow` at instant `at` with rulesets compiled at `at`."""
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

    granted = list(topo.conduits) if flow.grants == ALL_GRANTS else list(flow.grants)
    verdict = CompiledVerdict(True)
    for gateway, iif, oif in path:
        rs = compile_ruleset(topo, gateway, now=at, options=options)
        ev = RulesetEvaluator(rs.objects, at)
        grant_everything(ev, rs, granted, at)
        for code in codes:
            payload = payload_with_code(offset, code) if offset is not None and code else b""
            pkt = Packet(
                iif=iif,
                oif=oif,
                saddr=IPv4Address(src.address),
                daddr=IPv4Address(daddr),
                proto=spec.transport,
                dport=spec.port,
                payload=payload,
            )
            res = ev.connection(pkt, at)
            verdict.hops.append((gateway, pkt, res))
            verdict.allowed = verdict.allowed and res.accepted
    if flow.modbus is not None and spec.service == "modbus" and verdict.allowed:
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
