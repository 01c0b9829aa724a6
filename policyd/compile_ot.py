"""Steer every conduit flow with a Modbus service through the OT transaction tier.

Pure, like the compiler that calls it: returns nftables JSON objects. The layout (see
docs/policyd.md, "The OT transaction tier"):

- set `ot_targets` (address range . port): the destinations of the ingress conduits that
  name a Modbus service, on the service's ports;
- `ot_prerouting` (hook prerouting, mangle priority): packets of the tier's own
  transparent sockets get the steer mark and go up the stack; new packets to
  `ot_targets` get the steer mark and are TPROXY'd to the tier; whatever still matches
  `ot_targets` (no tier socket: the tier is down) is dropped -> fail closed;
- `ot_input` (jumped to first from `input` for steered packets): the conduit admission
  is the kernel's, unchanged: new flows go through `@dispatch` to the same per-target
  chains (identities, grants, schedules) that set the ct mark; established ones through
  `established`; replies on the tier's own device-side connections (ct mark 0) pass;
- `ot_input_mark` (hook input, after the filter): copies the ct mark to the packet mark,
  so the tier's accepted socket carries the admitting conduit (tcp_fwmark_accept);
- `ot_output` (hook output): the tier's device-side packets carry the conduit mark as
  socket mark and go through the conduit's function-code chain (`@functions`): the
  kernel's first-ADU filter still stands in front of the device;
- `ot_forward` (hook forward, before the filter): a steered packet is never forwarded.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from policyd import nftjson as nj
from policyd.conventions import NFLOG_DENY_PREFIX, NFLOG_GROUP
from topology.model import Conduit, Topology
from topology.services import BUILTIN_SERVICES

Json = nj.Json
STEER_MARK = 0x5B000000  # "steered to the OT tier"; conduit marks have 0x5A on top
ROUTE_TABLE = 7502  # policy routing table that delivers steered packets locally
PRIO_MANGLE = -150
PRIO_RAW = -300  # before conntrack (-200): where `ct zone set` must happen
CLIENT_ZONE = 1  # conntrack zone of the client side of steered flows
OT_SERVICES = ("modbus",)


@dataclass(frozen=True)
class OtSteering:
    objects: tuple[Json, ...]
    input_rule: Json | None  # the one rule the `input` chain starts with
    targets: int


def weave(
    objects: list[Json],
    topology: Topology,
    gateway: str,
    conduits: Iterable[tuple[Conduit, tuple[int, int]]],
    port: int | None,
    log_rate: int,
) -> list[Json]:
    """The compiled objects with the steering woven in: its set and chains just before
    the `input` chain (after everything they refer to), its jump as `input`'s first rule.
    `port` None: no tier on this gateway, nothing is steered."""
    if port is None:
        return objects
    recording = any("map" in o and o["map"]["name"] == "recorded" for o in objects)
    ot = ot_objects(steered(topology, conduits, gateway), port, log_rate, recording)
    if ot.input_rule is None:
        return objects
    at = next(
        i
        for i, o in enumerate(objects)
        if "chain" in o and o["chain"]["name"] == "input" and "hook" in o["chain"]
    )
    spoof = [
        nj.rule("ot_input", o["rule"]["expr"], o["rule"].get("comment"))
        for o in objects
        if "rule" in o
        and o["rule"]["chain"] == "forward"
        and o["rule"]["expr"][-1] == nj.jump("deny_spoof")
    ]
    cut = ot.objects.index(nj.chain("ot_input")) + 1  # zone binding first, as in `forward`
    woven = [
        *objects[:at],
        *ot.objects[:cut],
        *spoof,
        *ot.objects[cut:],
        objects[at],
        ot.input_rule,
        *objects[at + 1 :],
    ]
    return [_function_match_on_device_side(o) for o in woven]


def _function_match_on_device_side(o: Json) -> Json:
    """Steered client packets skip the kernel's function-code match (`fc_*` chains):
    the tier answers a forbidden request with an exception, where a silent drop would
    leave the client retransmitting; `ot_output` runs the same chains on what the tier
    sends the device (socket mark = conduit mark), so the match still guards the PLC."""
    rule = o.get("rule")
    if not rule or not rule["chain"].startswith("fc_"):
        return o
    lefts = [m["match"]["left"] for m in rule["expr"] if "match" in m]
    if not any(left.get("payload", {}).get("base") == "ih" for left in lefts):
        return o
    skip = nj.match(nj.meta("mark"), STEER_MARK, "!=")
    return {"rule": rule | {"expr": [skip, *rule["expr"]]}}


def _base(name: str, hook: str, prio: int) -> Json:
    body = {**nj.table_ref(), "name": name, "type": "filter", "hook": hook, "prio": prio}
    return {"chain": body | {"policy": "accept"}}


def _ct_zone() -> Json:
    return {"mangle": {"key": nj.ct("zone"), "value": CLIENT_ZONE}}


def _mark_is(value: int) -> Json:
    return nj.match(nj.meta("mark"), value)


def _set_mark(value: Any) -> Json:
    return {"mangle": {"key": nj.meta("mark"), "value": value}}


def steered(
    topology: Topology,
    conduits: Iterable[tuple[Conduit, tuple[int, int]]],
    gateway: str,
) -> list[tuple[int, int, int]]:
    """Disjoint (lo, hi, port) covering every ingress conduit's Modbus destinations
    (an interval set refuses overlapping elements: a zone and an asset in it merge)."""
    spans: dict[int, list[tuple[int, int]]] = {}
    for c, (lo, hi) in conduits:
        if c.target.site != gateway:
            continue
        for ref in c.allow:
            svc = topology.services.get(ref.service) or BUILTIN_SERVICES.get(ref.service)
            if ref.service in OT_SERVICES and svc is not None and svc.transport == "tcp":
                for port in svc.ports:
                    spans.setdefault(port, []).append((lo, hi))
    out: list[tuple[int, int, int]] = []
    for port, items in spans.items():
        merged: list[list[int]] = []
        for lo, hi in sorted(items):
            if merged and lo <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], hi)
            else:
                merged.append([lo, hi])
        out.extend((lo, hi, port) for lo, hi in merged)
    return sorted(out)


def ot_objects(
    targets: list[tuple[int, int, int]], port: int, log_rate: int, recording: bool = False
) -> OtSteering:
    if not targets:
        return OtSteering((), None, 0)
    key = {"concat": [nj.payload("ip", "daddr"), nj.payload("tcp", "dport")]}
    elems = [{"concat": [nj.address_range(lo, hi), p]} for lo, hi, p in targets]
    tcp = nj.match(nj.meta("l4proto"), "tcp")
    to_tier = nj.match(key, "@ot_targets")
    source = {"concat": [nj.payload("ip", "saddr"), nj.payload("tcp", "sport")]}
    from_tier = nj.match(source, "@ot_targets")
    tproxy = {"tproxy": {"family": "ip", "addr": "127.0.0.1", "port": port}}
    down = [nj.limit(log_rate, log_rate), nj.nflog(NFLOG_DENY_PREFIX + "ot-down", NFLOG_GROUP)]
    pre = "ot_prerouting"
    objects: list[Json] = [
        nj.named_set("ot_targets", ["ipv4_addr", "inet_service"], ["interval"], elems),
        # The client side in a conntrack zone of its own: the tier reaches the device
        # from the client's address, to the same address and port, so the two legs'
        # tuples can be equal (the device side's source port is the kernel's choice);
        # in one zone such a pair collides and the later connection is dropped.
        _base("ot_raw_prerouting", "prerouting", PRIO_RAW),
        nj.rule("ot_raw_prerouting", [to_tier, _ct_zone()], "client side of the OT tier"),
        _base("ot_raw_output", "output", PRIO_RAW),
        nj.rule("ot_raw_output", [from_tier, _ct_zone()], "client side of the OT tier"),
        _base(pre, "prerouting", PRIO_MANGLE),
        nj.rule(
            pre,
            [
                tcp,
                nj.match({"socket": {"key": "transparent"}}, 1),
                _set_mark(STEER_MARK),
                nj.accept(),
            ],
            "packets of the OT tier's sockets",
        ),
        nj.rule(pre, [to_tier, _set_mark(STEER_MARK), tproxy, nj.accept()], "to the OT tier"),
        nj.rule(pre, [to_tier, *down], "OT tier down: fail closed"),
        nj.rule(pre, [to_tier, nj.drop()]),
        nj.chain("ot_input"),
        nj.rule(
            "ot_input",
            [
                nj.match(nj.ct("mark"), 0),
                nj.match(nj.ct("direction"), "reply"),
                nj.match(nj.ct("state"), "established"),
                nj.accept(),
            ],
            "device answers on the tier's own connections",
        ),
        nj.rule(
            "ot_input",
            [
                {
                    "vmap": {
                        "key": nj.ct("state"),
                        "data": nj.anon_set(
                            [
                                ["invalid", nj.jump("deny_invalid")],
                                ["established", nj.jump("established")],
                                ["related", nj.jump("established")],
                            ]
                        ),
                    }
                }
            ],
        ),
        nj.rule(
            "ot_input",
            [
                {
                    "vmap": {
                        "key": {
                            "concat": [
                                nj.payload("ip", "daddr"),
                                nj.meta("l4proto"),
                                nj.payload("th", "dport"),
                            ]
                        },
                        "data": "@dispatch",
                    }
                }
            ],
            "the conduit check, as on the forward path",
        ),
        nj.rule(
            "ot_input",
            [nj.limit(log_rate, log_rate), nj.nflog(NFLOG_DENY_PREFIX + "default", NFLOG_GROUP)],
        ),
        nj.rule("ot_input", [nj.drop()]),
        _base("ot_input_mark", "input", 10),
        nj.rule(
            "ot_input_mark",
            [_mark_is(STEER_MARK), nj.match(nj.ct("mark"), 0, "!="), _set_mark(nj.ct("mark"))],
            "the tier's socket learns the admitting conduit",
        ),
        _base("ot_output", "output", 0),
        *(
            [
                nj.rule(
                    "ot_output",
                    [from_tier, {"vmap": {"key": nj.ct("mark"), "data": "@recorded"}}],
                    "session recording: the tier's answers to the client",
                )
            ]
            if recording
            else []
        ),
        nj.rule(
            "ot_output",
            [{"vmap": {"key": nj.meta("mark"), "data": "@functions"}}],
            "function-code first filter on the tier's device side",
        ),
        _base("ot_forward", "forward", -10),
        nj.rule("ot_forward", [_mark_is(STEER_MARK), nj.drop()], "steered packets stay local"),
    ]
    jump = nj.rule("input", [_mark_is(STEER_MARK), nj.jump("ot_input")], "steered to the OT tier")
    return OtSteering(tuple(objects), jump, len(targets))
