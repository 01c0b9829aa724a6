"""Packets through the compiled JSON: table-driven cases and a Hypothesis cross-check."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policyd.compiler import Ruleset, compile_ruleset
from policyd.ruleset_eval import Packet, RulesetEvaluator, payload_with_code
from tests.policyd.conftest import NOW, build_plant
from tests.policyd.flows import Flow, code_offset, model_allows
from topology.model import Topology

PLANT = build_plant()
RS = compile_ruleset(PLANT, "plant-a", now=NOW)
WED_NOON_UTC = NOW + timedelta(hours=2)
SAT = datetime(2025, 1, 18, 10, 0, tzinfo=UTC)
MB = 56

IP = IPv4Address


def ev(rs: Ruleset = RS) -> RulesetEvaluator:
    return RulesetEvaluator(rs.objects, NOW)


def modbus(src: str, dst: str, code: int | None, iif: str = "zg0") -> Packet:
    payload = payload_with_code(MB, code) if code is not None else b""
    return Packet(iif=iif, saddr=IP(src), daddr=IP(dst), proto="tcp", dport=502, payload=payload)


def tcp(src: str, dst: str, port: int, iif: str = "zg0", oif: str = "lan0") -> Packet:
    return Packet(iif=iif, oif=oif, saddr=IP(src), daddr=IP(dst), proto="tcp", dport=port)


ENG, LEAD, VENDOR, GUEST = "100.64.1.10", "100.64.1.20", "100.64.2.10", "100.64.3.1"
PLC, HMI, HIST = "10.10.1.5", "10.10.1.20", "10.10.9.5"

CASES = [
    ("engineer reads plc", modbus(ENG, PLC, 3), NOW, True, []),
    ("engineer write blocked", modbus(ENG, PLC, 6), NOW, False, ["zg deny function"]),
    ("engineer diagnostics blocked", modbus(ENG, PLC, 8), NOW, False, ["zg deny function"]),
    ("engineer reads other plc in zone", modbus(ENG, "10.10.1.77", 4), NOW, True, []),
    ("engineer ssh", tcp(ENG, PLC, 22), NOW, True, []),
    ("engineer https not listed", tcp(ENG, PLC, 443), NOW, False, ["zg deny default"]),
    ("engineer on saturday", modbus(ENG, PLC, 3), SAT, False, ["zg deny default"]),
    ("engineer 17:59 berlin", modbus(ENG, PLC, 3), NOW + timedelta(hours=6, minutes=59), True, []),
    ("engineer 18:00 berlin", modbus(ENG, PLC, 3), NOW + timedelta(hours=7), False, None),
    ("engineer not through tunnel", modbus(ENG, PLC, 3, iif="lan0"), NOW, False, None),
    ("expired identity", modbus("100.64.1.99", PLC, 3), NOW, False, None),
    ("not yet valid identity", modbus("100.64.1.98", PLC, 3), NOW, False, None),
    (
        "eng-2 expires in the kernel",
        modbus("100.64.1.11", PLC, 3),
        NOW + timedelta(days=35),
        False,
        None,
    ),
    ("guest", modbus(GUEST, PLC, 3), NOW, False, None),
    ("lead writes plc-1", modbus(LEAD, PLC, 16), NOW, True, []),
    ("lead writes other plc", modbus(LEAD, "10.10.1.6", 16), NOW, False, None),
    (
        "lead vnc hmi at night",
        tcp(LEAD, HMI, 5900),
        datetime(2025, 1, 15, 23, tzinfo=UTC),
        True,
        [],
    ),
    ("lead vnc hmi at noon", tcp(LEAD, HMI, 5900), WED_NOON_UTC, False, None),
    ("vendor without grant", modbus(VENDOR, PLC, 3), NOW, False, None),
    ("plant-b to historian", tcp("10.20.1.5", HIST, 443), NOW, True, []),
    ("plant-b not via tunnel", tcp("10.20.1.5", HIST, 443, iif="lan0"), NOW, False, None),
    ("enterprise to hmi vnc", tcp("10.10.9.7", HMI, 5900, iif="lan0"), NOW, True, []),
    ("spoofed enterprise via tunnel", tcp("10.10.9.7", HMI, 5900), NOW, False, ["zg deny spoof"]),
    (
        "egress to plant-b",
        tcp("10.10.9.7", "10.20.1.5", 4840, iif="lan0", oif="zg1"),
        NOW,
        True,
        [],
    ),
    (
        "egress not to tunnel",
        tcp("10.10.9.7", "10.20.1.5", 4840, iif="lan0", oif="lan1"),
        NOW,
        False,
        None,
    ),
]


@pytest.mark.parametrize(("name", "pkt", "at", "passes", "logs"), CASES, ids=[c[0] for c in CASES])
def test_cases(name: str, pkt: Packet, at: datetime, passes: bool, logs: list[str] | None) -> None:
    res = ev().connection(pkt, at)
    assert res.accepted is passes, (name, res.path)
    if logs is not None:
        assert res.logs == logs
    if passes:
        assert res.ct_mark >> 24 == 0x5A


def test_mark_attributes_conduit() -> None:
    res = ev().connection(modbus(ENG, PLC, 3), NOW)
    assert res.ct_mark == PLANT.conduits["engineers-read-plcs"].mark


def test_grant_opens_and_expires() -> None:
    e = ev()
    plan = RS.conduits["vendor-maintenance"]
    assert plan.identity_set is not None
    e.add_element(plan.identity_set, VENDOR, NOW, timeout=3600)
    assert e.connection(modbus(VENDOR, PLC, 6), NOW).accepted
    assert e.connection(modbus(VENDOR, PLC, 6), NOW).ct_mark == plan.mark
    assert not e.connection(modbus(VENDOR, "10.10.1.6", 6), NOW).accepted
    assert not e.connection(modbus(VENDOR, PLC, 6), NOW + timedelta(hours=1)).accepted
    e.add_element(plan.identity_set, VENDOR, NOW)
    e.delete_element(plan.identity_set, VENDOR)
    assert not e.connection(modbus(VENDOR, PLC, 6), NOW).accepted


def test_emergency_grant_most_permissive_first() -> None:
    e = ev()
    plan = RS.conduits["break-glass"]
    assert plan.identity_set is not None
    e.add_element(plan.identity_set, LEAD, NOW, timeout=600)
    res = e.connection(modbus(LEAD, PLC, 8), NOW)  # diagnostics: only break-glass allows it
    assert res.accepted and res.ct_mark == plan.mark


def test_input_chain() -> None:
    e = ev()
    wg = Packet(
        iif="eth0", saddr=IP("198.51.100.1"), daddr=IP("192.0.2.10"), proto="udp", dport=51820
    )
    assert e.evaluate("input", wg, NOW).accepted
    ssh = Packet(
        iif="eth0", saddr=IP("198.51.100.1"), daddr=IP("192.0.2.10"), proto="tcp", dport=22
    )
    res = e.evaluate("input", ssh, NOW)
    assert not res.accepted and res.logs == ["zg deny input"]
    ping = Packet(iif="zg0", saddr=IP(ENG), daddr=IP("100.64.0.1"), proto="icmp", icmp_type=8)
    assert e.evaluate("input", ping, NOW).accepted


def test_ipv6_and_invalid_dropped() -> None:
    e = ev()
    v6 = Packet(iif="zg0", saddr=IP(ENG), daddr=IP(PLC), proto="tcp", dport=22, ipv6=True)
    assert not e.evaluate("forward", v6, NOW).accepted
    bad = Packet(iif="zg0", saddr=IP(ENG), daddr=IP(PLC), proto="tcp", dport=22, ct_state="invalid")
    res = e.evaluate("forward", bad, NOW)
    assert not res.accepted and res.logs == ["zg deny invalid"]


# -- Hypothesis: compiled verdict == model verdict ----------------------------------------

ADDRS = sorted(
    {str(i.overlay) for i in PLANT.identities.values() if i.overlay}
    | {str(a.address) for s in PLANT.sites.values() for a in s.assets.values()}
    | {"10.10.1.9", "10.10.9.200", "10.20.1.77", "192.0.2.99", "100.64.9.9"}
)
PORTS = sorted(
    {(s.transport, p) for s in PLANT.services.values() for p in s.ports} | {("tcp", 8080)}
)


def _near(topo: Topology, name: str) -> tuple[list[str], list[str], list[tuple[str, int]]]:
    """Sources, destinations and ports a conduit names, plus near misses."""
    c = topo.conduits[name]
    srcs = [str(topo.identities[i].overlay) for i in c.sources.identities]
    srcs += [str(m.overlay) for r in c.sources.roles for m in topo.members(r)]
    for ref in c.sources.zones:
        z = topo.zone(ref)
        assert z is not None
        srcs += [str(z.cidr.network_address + 7), str(z.cidr.broadcast_address)]
    if c.target.kind.value == "asset":
        a = topo.asset(c.target.ref)
        assert a is not None
        dsts = [str(a.address), str(a.address + 1)]
    else:
        z = topo.zone(c.target.ref)
        assert z is not None
        dsts = [str(z.cidr.network_address), str(z.cidr.network_address + 5)]
        dsts += [str(z.cidr.broadcast_address), str(z.cidr.broadcast_address + 1)]
    ports: list[tuple[str, int]] = [
        (topo.services[r.service].transport, p)
        for r in c.allow
        for p in topo.services[r.service].ports
    ]
    return srcs, dsts, ports


NEAR = {n: _near(PLANT, n) for n in sorted(PLANT.conduits)}


# Seconds after midnight UTC on both sides of every schedule edge in the plant.
EDGES = [h * 3600 + d for h in (0, 5, 6, 16, 17, 21, 22, 23) for d in (-1, 0, 1)]


@st.composite
def instants(draw: st.DrawFn) -> datetime:
    """A time in the week after NOW, often right at a schedule boundary."""
    day = datetime(2025, 1, 13, tzinfo=UTC) + timedelta(days=draw(st.integers(0, 6)))
    secs = draw(st.one_of(st.sampled_from(EDGES), st.integers(0, 86399)))
    at = day + timedelta(seconds=secs % 86400)
    return at if at >= NOW else at + timedelta(days=7)


@st.composite
def flows(draw: st.DrawFn) -> Flow:
    """Mostly flows aimed at some conduit (its sources, target and services), some random."""
    if draw(st.integers(0, 3)):
        srcs, dsts, ports = NEAR[draw(st.sampled_from(sorted(NEAR)))]
        saddr, daddr = draw(st.sampled_from(srcs)), draw(st.sampled_from(dsts))
        proto, port = draw(st.sampled_from(ports))
    else:
        saddr, daddr = draw(st.sampled_from(ADDRS)), draw(st.sampled_from(ADDRS))
        proto, port = draw(st.sampled_from(PORTS))
    code = None
    if code_offset(PLANT, proto, port) is not None:
        code = draw(st.sampled_from([1, 3, 4, 5, 6, 8, 15, 16, 43, 90]))
    return Flow(
        saddr=IP(saddr),
        daddr=IP(daddr),
        proto=proto,
        dport=port,
        code=code,
        via_tunnel=draw(st.booleans()),
        out_tunnel=draw(st.booleans()),
        at=draw(instants()),
    )


def _grant_all(e: RulesetEvaluator, rs: Ruleset, topo: Topology, names: list[str]) -> None:
    for name in names:
        plan = rs.conduits.get(name)
        if plan is None:
            continue
        c = topo.conduits[name]
        idents = set(c.sources.identities) | {
            i.name for r in c.sources.roles for i in topo.members(r)
        }
        for ident in sorted(idents):
            overlay = topo.identities[ident].overlay
            if plan.identity_set and overlay is not None:
                e.add_element(plan.identity_set, str(overlay), NOW)
        for cidr in plan.zones.values():
            if plan.zone_set:
                e.add_element(
                    plan.zone_set,
                    {"prefix": {"addr": str(cidr.network_address), "len": cidr.prefixlen}},
                    NOW,
                )


@pytest.mark.parametrize("gateway", ["plant-a", "plant-b"])
@pytest.mark.parametrize("granted", [(), ("vendor-maintenance", "break-glass")])
@settings(max_examples=400, deadline=None)
@given(flow=flows())
def test_compiled_matches_model(gateway: str, granted: tuple[str, ...], flow: Flow) -> None:
    rs = compile_ruleset(PLANT, gateway, now=NOW) if gateway != "plant-a" else RS
    e = RulesetEvaluator(rs.objects, NOW)
    _grant_all(e, rs, PLANT, list(granted))
    pkt = flow.packet(code_offset(PLANT, flow.proto, flow.dport))
    got = e.connection(pkt, flow.at).accepted
    assert got is model_allows(PLANT, gateway, flow, NOW, granted), flow
