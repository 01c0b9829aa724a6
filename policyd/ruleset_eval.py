"""A small interpreter of the compiled libnftables JSON: "would this packet pass?".

The way FAUCET tests flow tables without a switch, unit tests run packets through the
exact JSON the kernel gets, so a compiler bug shows up as a verdict that differs from
the topology's reference evaluator. It implements the subset of nftables the compiler
emits (matches on payload/meta/ct fields, named and anonymous sets with intervals,
wildcard interface names and element timeouts, concatenations, verdict maps, ct mark,
limit (never exceeded here), log (deny log and session-recording copies kept apart),
jump/goto/return) and fails loudly on anything else.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from policyd.conventions import NFLOG_RECORD_GROUP
from policyd.nftjson import Json
from topology.model import DAY_NAMES

_PROTOS = {"icmp": 1, "tcp": 6, "udp": 17}
_ICMP_TYPES = {"echo-reply": 0, "destination-unreachable": 3, "echo-request": 8}
_SET_KINDS = {
    "ipv4_addr": "addr",
    "ifname": "ifname",
    "inet_service": "port",
    "inet_proto": "proto",
    "mark": "int",
}


class UnsupportedExpression(Exception):
    """The ruleset uses something this interpreter does not know: extend it, do not guess."""


@dataclass(frozen=True)
class Packet:
    iif: str
    saddr: IPv4Address
    daddr: IPv4Address
    proto: str  # "tcp", "udp", "icmp"
    dport: int = 0
    sport: int = 40000
    oif: str = "lan0"
    payload: bytes = b""  # the transport payload (what @ih addresses)
    icmp_type: int | None = None
    ct_state: str = "new"
    ct_mark: int = 0
    ct_direction: str = "original"
    ipv6: bool = False
    # the flow's original source (None: this packet's saddr, i.e. an original-direction packet)
    ct_saddr: IPv4Address | None = None
    # whether the routing table leads back to saddr through iif (`fib saddr . iif oif`)
    route_back: bool = True


@dataclass
class Result:
    verdict: str  # "accept" or "drop"
    ct_mark: int
    logs: list[str] = field(default_factory=list)  # NFLOG prefixes, in order
    # prefixes of session-recording copies (NFLOG_RECORD_GROUP): kept apart from `logs`
    # (the deny log) so a test can check that a packet is copied exactly once
    recorded: list[str] = field(default_factory=list)
    path: list[str] = field(default_factory=list)  # chain names visited

    @property
    def accepted(self) -> bool:
        return self.verdict == "accept"


@dataclass
class _Set:
    kind: str | list[str]
    elements: list[tuple[Any, Any, datetime | None]]  # key, map data, expiry


class _Return(Exception):
    pass


def _hour(text: str) -> int:
    parts = [int(p) for p in text.split(":")]
    parts += [0] * (3 - len(parts))
    return parts[0] * 3600 + parts[1] * 60 + parts[2]


def _normalize(kind: str, v: Any) -> Any:
    """A JSON value (scalar, range or prefix) as an inclusive (lo, hi) or exact value."""
    if isinstance(v, dict) and "range" in v:
        lo, hi = (_normalize(kind, x) for x in v["range"])
        return ("range", lo, hi)
    if isinstance(v, dict) and "prefix" in v:
        net = IPv4Network(f"{v['prefix']['addr']}/{v['prefix']['len']}")
        return ("range", int(net.network_address), int(net.broadcast_address))
    if kind == "addr":
        return int(IPv4Address(v))
    if kind == "proto":
        return _PROTOS[v] if isinstance(v, str) else int(v)
    if kind == "day":
        return DAY_NAMES.index(v) if isinstance(v, str) else (int(v) - 1) % 7
    if kind == "hour":
        return _hour(v) if isinstance(v, str) else int(v)
    if kind == "icmptype":
        return _ICMP_TYPES[v] if isinstance(v, str) else int(v)
    return v


def _match_one(kind: str, value: Any, elem: Any) -> bool:
    if isinstance(elem, tuple) and elem[0] == "range":
        return bool(elem[1] <= value <= elem[2])
    if kind == "ifname" and isinstance(elem, str) and elem.endswith("*"):
        return bool(str(value).startswith(elem[:-1]))
    return bool(value == elem)


class RulesetEvaluator:
    """Holds the loaded table and its set contents; `evaluate` runs one packet."""

    def __init__(self, objects: Iterable[Json], loaded_at: datetime) -> None:
        self.chains: dict[str, Json] = {}
        self.rules: dict[str, list[list[Json]]] = {}
        self.sets: dict[str, _Set] = {}
        for o in objects:
            if "chain" in o:
                self.chains[o["chain"]["name"]] = o["chain"]
                self.rules.setdefault(o["chain"]["name"], [])
            elif "rule" in o:
                self.rules.setdefault(o["rule"]["chain"], []).append(o["rule"]["expr"])
            elif "set" in o or "map" in o:
                body = o.get("set") or o["map"]
                t = body["type"]
                kind: str | list[str] = (
                    [_SET_KINDS[x] for x in t] if isinstance(t, list) else _SET_KINDS[t]
                )
                self.sets[body["name"]] = _Set(kind, [])
                for el in body.get("elem", []):
                    self._add(body["name"], el, loaded_at)

    # -- set contents (what the kernel adapter changes at run time) ------------------
    def _add(self, name: str, el: Any, at: datetime) -> None:
        s = self.sets[name]
        data = None
        if isinstance(el, list):
            el, data = el
        expires = None
        if isinstance(el, dict) and "elem" in el:
            if "timeout" in el["elem"]:
                expires = at + timedelta(seconds=el["elem"]["timeout"])
            el = el["elem"]["val"]
        s.elements.append((self._key(s.kind, el), data, expires))

    def _key(self, kind: str | list[str], el: Any) -> Any:
        if isinstance(kind, list):
            return tuple(_normalize(k, x) for k, x in zip(kind, el["concat"], strict=True))
        return _normalize(kind, el)

    def add_element(self, name: str, value: Any, at: datetime, timeout: int | None = None) -> None:
        el = {"elem": {"val": value, "timeout": timeout}} if timeout else value
        self._add(name, el, at)

    def delete_element(self, name: str, value: Any) -> None:
        s = self.sets[name]
        key = self._key(s.kind, value)
        s.elements = [e for e in s.elements if e[0] != key]

    def _lookup(self, name: str, kinds: list[str], values: list[Any], at: datetime) -> Any:
        for key, data, expires in self.sets[name].elements:
            if expires is not None and at >= expires:
                continue
            parts = (key,) if len(kinds) == 1 else key
            if all(_match_one(k, v, p) for k, v, p in zip(kinds, values, parts, strict=True)):
                return data if data is not None else True
        return None

    # -- expressions -----------------------------------------------------------------
    def _value(self, e: Json, p: Packet, at: datetime) -> tuple[str, Any]:
        """(kind, value) of a left-hand expression; value None when it cannot load."""
        if "payload" in e:
            pl = e["payload"]
            if "base" in pl:
                if pl["base"] != "ih" or pl["offset"] % 8 or pl["len"] != 8:
                    raise UnsupportedExpression(str(e))
                i = pl["offset"] // 8
                return "int", (
                    p.payload[i] if p.proto in ("tcp", "udp") and i < len(p.payload) else None
                )
            proto, fld = pl["protocol"], pl["field"]
            if proto == "ip":
                if p.ipv6:
                    return "addr", None
                return "addr", int(p.saddr if fld == "saddr" else p.daddr)
            if proto == "icmp" and fld == "type":
                return "icmptype", (p.icmp_type if p.proto == "icmp" and not p.ipv6 else None)
            if proto in ("th", "tcp", "udp") and fld in ("sport", "dport"):
                if p.proto not in ("tcp", "udp") or proto not in ("th", p.proto):
                    return "port", None
                return "port", p.dport if fld == "dport" else p.sport
            raise UnsupportedExpression(str(e))
        if "meta" in e:
            key = e["meta"]["key"]
            if key in ("iifname", "oifname"):
                return "ifname", p.iif if key == "iifname" else p.oif
            if key == "l4proto":
                return "proto", _PROTOS[p.proto]
            if key == "day":
                return "day", at.weekday()
            if key == "hour":
                return "hour", at.hour * 3600 + at.minute * 60 + at.second
            raise UnsupportedExpression(str(e))
        if "ct" in e:
            key = e["ct"]["key"]
            if key == "state":
                return "str", p.ct_state
            if key == "mark":
                return "int", p.ct_mark
            if key == "direction":
                return "str", p.ct_direction
            if key == "ip saddr" and e["ct"].get("dir") == "original":
                return "addr", int(p.ct_saddr or p.saddr)
            raise UnsupportedExpression(str(e))
        if "fib" in e:
            if e["fib"] != {"result": "oif", "flags": ["saddr", "iif"]}:
                raise UnsupportedExpression(str(e))
            return "bool", p.route_back
        if "concat" in e:
            parts = [self._value(x, p, at) for x in e["concat"]]
            return "concat", parts
        raise UnsupportedExpression(str(e))

    def _test(self, left: Json, right: Any, p: Packet, at: datetime) -> Any:
        """Lookup of `left` in `right`: the map data / True when found, None if not."""
        kind, value = self._value(left, p, at)
        pairs = value if kind == "concat" else [(kind, value)]
        kinds = [k for k, _ in pairs]
        values = [v for _, v in pairs]
        if any(v is None for v in values):
            return "break"
        if isinstance(right, str) and right.startswith("@"):
            return self._lookup(right[1:], kinds, values, at)
        items = right["set"] if isinstance(right, dict) and "set" in right else [right]
        for item in items:
            key, data = (item[0], item[1]) if isinstance(item, list) else (item, True)
            comps = key["concat"] if isinstance(key, dict) and "concat" in key else [key]
            normal = [_normalize(k, c) for k, c in zip(kinds, comps, strict=True)]
            if all(_match_one(k, v, c) for k, v, c in zip(kinds, values, normal, strict=True)):
                return data
        return None

    # -- rules and chains --------------------------------------------------------------
    def _run(self, chain: str, p: Packet, at: datetime, r: Result, depth: int = 0) -> str | None:
        if depth > 16:
            raise UnsupportedExpression("jump depth")
        r.path.append(chain)
        for expr in self.rules[chain]:
            outcome = self._rule(expr, p, at, r, depth)
            if outcome == "return":
                return None
            if outcome is not None:
                return outcome
            p = replace(p, ct_mark=r.ct_mark)
        return None

    def _verdict(self, v: Json, p: Packet, at: datetime, r: Result, depth: int) -> str | None:
        if "accept" in v or "drop" in v:
            return "accept" if "accept" in v else "drop"
        if "return" in v:
            return "return"
        if "jump" in v or "goto" in v:
            target = (v.get("jump") or v["goto"])["target"]
            out = self._run(target, p, at, r, depth + 1)
            if out is None and "goto" in v:
                return "return"
            return out
        raise UnsupportedExpression(str(v))

    def _rule(self, expr: list[Json], p: Packet, at: datetime, r: Result, depth: int) -> str | None:
        for s in expr:
            if "match" in s:
                m = s["match"]
                found = self._test(m["left"], m["right"], p, at)
                if found == "break":
                    return None
                hit = found is not None
                if (m["op"] in ("==", "in")) != hit:
                    return None
            elif "vmap" in s:
                data = self._test(s["vmap"]["key"], s["vmap"]["data"], p, at)
                if data is None or data == "break":
                    return None
                return self._verdict(data, p, at, r, depth)
            elif "mangle" in s:
                key = s["mangle"]["key"]
                if key.get("ct", {}).get("key") != "mark":
                    raise UnsupportedExpression(str(s))
                r.ct_mark = int(s["mangle"]["value"])
                p = replace(p, ct_mark=r.ct_mark)
            elif "log" in s:
                target = r.recorded if s["log"].get("group") == NFLOG_RECORD_GROUP else r.logs
                target.append(s["log"].get("prefix", ""))
            elif "limit" in s or "counter" in s:
                continue
            else:
                return self._verdict(s, p, at, r, depth)
        return None

    def evaluate(self, hook: str, packet: Packet, at: datetime) -> Result:
        """Run `packet` through the base chain attached to `hook` at instant `at`.

        The kernel compares `meta hour`/`meta day` in UTC, so `at` is taken in UTC
        whatever its offset (an instant, never the local clock)."""
        at = at.astimezone(UTC)
        base = [c for c in self.chains.values() if c.get("hook") == hook]
        if not base:
            return Result("accept", packet.ct_mark)
        r = Result("drop", packet.ct_mark)
        out = self._run(base[0]["name"], packet, at, r)
        r.verdict = out if out in ("accept", "drop") else base[0].get("policy", "accept")
        return r

    def connection(self, packet: Packet, at: datetime, hook: str = "forward") -> Result:
        """A whole connection: the first packet (new), then, if it passed and `packet`
        carries a payload, a data packet of the established flow with its ct mark."""
        first = self.evaluate(hook, replace(packet, payload=b"", ct_state="new"), at)
        if not first.accepted or not packet.payload:
            return first
        data = replace(packet, ct_state="established", ct_mark=first.ct_mark)
        second = self.evaluate(hook, data, at)
        second.path = first.path + second.path
        second.logs = first.logs + second.logs
        second.recorded = first.recorded + second.recorded
        return second


def payload_with_code(offset_bits: int, code: int) -> bytes:
    """A transport payload whose function-code byte (at `offset_bits`) is `code`."""
    i = offset_bits // 8
    return bytes(i) + bytes([code]) + bytes(4)
