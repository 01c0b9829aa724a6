"""Compile a topology into the nftables ruleset one gateway enforces.

Pure and deterministic: `compile_ruleset(topology, gateway, now=...)` returns data (a
`Ruleset` holding libnftables JSON objects plus what the adapter needs to manage
grants); it never touches the kernel. The same inputs give byte-identical JSON.

Layout, all in table `inet zonegate` (see docs/policyd.md for the full picture):

- hook chains `forward` and `input`, policy drop, a constant handful of rules;
- `forward` first binds sources to interfaces (strict reverse path with `fib saddr .
  iif` for everything not arriving on a tunnel, a zone's explicit `interface:`, no local
  zone through a tunnel), then the `ct state` verdict map: established/related flows go
  to `established`, which looks the flow's conduit mark up in `verify` and jumps to the
  conduit's `v_*` chain: the flow's original source must still be in the conduit's
  sources (sets, zones) and its schedule window open, then `goto fc_*` (or accept);
  anything else is dropped (`deny_ended`): no session outlives what admitted it;
- new flows: one lookup `ip daddr . meta l4proto . th dport` in the interval verdict map
  `dispatch`, whose elements are disjoint address ranges x service ports, each jumping
  to a chain `to_N` holding the candidate conduits for that destination and service;
- each candidate conduit is one rule per UTC schedule window matching its sources:
  identities through the set `ids_*` (or `grant_*`) of overlay addresses arriving on a
  tunnel interface, zones through their CIDRs; it sets `ct mark` and goes to the
  conduit's function check `fc_*` (whose last rule is the only accept of a conduit with
  function classes), so the first packet is checked like every other;
- a code the flow's conduit refuses but another conduit admitting the same source
  allows (same destination and service) passes through `fc_more`/`more_functions`;
- whatever falls through is logged to NFLOG (rate-limited) and dropped;
- conduits with `record: true` copy every packet of their flows to NFLOG group 8: the
  accept rule copies the packets of a new flow, and `established` starts with
  `ct mark vmap @recorded`, jumping to a one-rule chain `rec_*` per recorded conduit
  whose log prefix names the conduit's mark (see `record_log`);
- `input` adds the topology's management access (`_management_rules`).

Identity membership and grants are set elements with timeouts, so the rule count
depends on conduits and services, never on identities or assets.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from ipaddress import IPv4Address, IPv4Network
from itertools import pairwise
from typing import Any

from policyd import nftjson as nj
from policyd.compile_ot import weave
from policyd.conventions import (
    API_PORT,
    NFLOG_DENY_PREFIX,
    NFLOG_GROUP,
    NFLOG_RECORD_GROUP,
    NFLOG_RECORD_PREFIX,
    RECORD_QTHRESH,
    RECORD_SNAPLEN,
    TABLE_FAMILY,
    TABLE_NAME,
)
from policyd.timewindows import UtcWindow, next_offset_change, utc_windows
from topology.model import Conduit, Service, Site, TargetKind, Topology, frozen_map
from topology.services import BUILTIN_SERVICES

Json = nj.Json
DEFAULT_TUNNELS = ("zg*",)
_PROTO_NUM = {"tcp": 6, "udp": 17}


class CompileError(Exception):
    """The topology cannot be compiled for this gateway (e.g. unknown site)."""


@dataclass(frozen=True)
class CompileOptions:
    """Facts about the gateway host that the topology does not hold."""

    tunnels: tuple[str, ...] = DEFAULT_TUNNELS  # WireGuard interface names; "zg*" wildcard
    api_port: int | None = None  # control API on the overlay address, if any
    log_rate: int = 20  # NFLOG copies of denied packets per second (per deny rule)
    log_burst: int = 50
    ot_port: int | None = None  # the OT transaction tier's port; None: no tier, no steering


@dataclass(frozen=True)
class ConduitPlan:
    """How one conduit was compiled: the sets a grant or a membership change touches."""

    name: str
    mark: int
    needs_grant: bool
    identity_set: str | None  # overlay addresses (the grant set when needs_grant)
    zone_set: str | None  # CIDRs granted (needs_grant conduits with zone sources only)
    identities: Mapping[str, IPv4Address]  # identities it admits, valid at compile time
    expiry: Mapping[str, datetime]  # identity -> valid_until, where set
    zones: Mapping[str, IPv4Network]  # source zones
    max_grant: timedelta | None


@dataclass(frozen=True)
class Ruleset:
    gateway: str
    objects: tuple[Json, ...]  # libnftables JSON objects; each an implicit "add"
    conduits: Mapping[str, ConduitPlan]
    compiled_at: datetime
    next_change: datetime | None  # recompile then (DST switch, an identity becoming valid)
    notes: tuple[str, ...] = ()
    options: CompileOptions = field(default_factory=CompileOptions)

    def to_json(self) -> Json:
        """The document `nft -j -f` accepts (adds the table's content; see kernel adapter)."""
        return {"nftables": [{"metainfo": {"json_schema_version": 1}}, *self.objects]}

    def hook_rule_count(self) -> int:
        hooks = {o["chain"]["name"] for o in self.objects if "chain" in o and "hook" in o["chain"]}
        return sum(1 for o in self.objects if "rule" in o and o["rule"]["chain"] in hooks)


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


def service_of(topology: Topology, name: str) -> Service:
    svc = topology.services.get(name) or BUILTIN_SERVICES.get(name)
    if svc is None:
        raise CompileError(f"unknown service {name!r}")
    return svc


def allowed_ports(topology: Topology, conduit: Conduit) -> dict[tuple[str, int], Any]:
    """(transport, port) -> (payload offset, allowed codes) or None when unrestricted."""
    per_service: dict[str, set[int] | None] = {}
    for ref in conduit.allow:
        svc = service_of(topology, ref.service)
        if not ref.classes or not svc.classes or svc.payload_offset is None:
            per_service[svc.name] = None
            continue
        codes = {c for cls in ref.classes for c in svc.classes[cls].codes}
        if svc.name in per_service:
            prev = per_service[svc.name]
            per_service[svc.name] = None if prev is None else prev | codes
        else:
            per_service[svc.name] = codes
    out: dict[tuple[str, int], Any] = {}
    for name, allowed in sorted(per_service.items()):
        svc = service_of(topology, name)
        for port in svc.ports:
            key = (svc.transport, port)
            if allowed is None or out.get(key, 0) is None:
                out[key] = None
            else:
                out[key] = (svc.payload_offset, tuple(sorted(allowed)))
    return out


class _Compiler:
    def __init__(self, topo: Topology, site: Site, now: datetime, opts: CompileOptions) -> None:
        self.topo, self.site, self.now, self.opts = topo, site, now, opts
        self.notes: list[str] = []
        self.changes: list[datetime] = []
        self.local = [z.cidr for z in sorted(site.zones.values(), key=lambda z: z.cidr)]
        self.sets: list[Json] = []
        self.plans: dict[str, ConduitPlan] = {}
        self.source_rules: dict[str, list[list[Json]]] = {}  # conduit -> expr prefixes
        self.verify_sources: dict[str, list[Any]] = {}  # conduit -> original-source matchers
        self.fc: dict[str, str] = {}  # conduit -> its function-check chain
        self._windows: dict[str, list[UtcWindow | None]] = {}
        self.names: set[str] = set()
        self.members: dict[str, list[str]] = {}  # role -> identities, indexed once
        for ident in topo.identities.values():
            for role in ident.roles:
                self.members.setdefault(role, []).append(ident.name)

    def unique(self, prefix: str, conduit: Conduit) -> str:
        name = f"{prefix}_{slug(conduit.name)}"
        if name in self.names:
            name = f"{name}_{conduit.mark & 0xFFFFFF:06x}"
        self.names.add(name)
        return name

    def target_range(self, c: Conduit) -> tuple[int, int]:
        if c.target.kind is TargetKind.ASSET:
            asset = self.topo.asset(c.target.ref)
            if asset is None:
                raise CompileError(f"conduit {c.name}: unknown asset {c.target.ref}")
            return int(asset.address), int(asset.address)
        zone = self.topo.zone(c.target.ref)
        if zone is None:
            raise CompileError(f"conduit {c.name}: unknown zone {c.target.ref}")
        return int(zone.cidr.network_address), int(zone.cidr.broadcast_address)

    def identities(self, c: Conduit) -> tuple[dict[str, IPv4Address], dict[str, datetime]]:
        names = set(c.sources.identities)
        for role in c.sources.roles:
            names.update(self.members.get(role, ()))
        admitted: dict[str, IPv4Address] = {}
        expiry: dict[str, datetime] = {}
        for name in sorted(names):
            ident = self.topo.identities.get(name)
            if ident is None or ident.overlay is None:
                self.notes.append(f"conduit {c.name}: identity {name} has no overlay address")
                continue
            if ident.valid_from is not None and ident.valid_from > self.now:
                self.changes.append(ident.valid_from)
            if not ident.valid_at(self.now):
                continue
            admitted[name] = ident.overlay
            if ident.valid_until is not None:
                expiry[name] = ident.valid_until
        return admitted, expiry

    def plan(self, c: Conduit) -> bool:
        """Build the sets and source matchers of one conduit; False if not enforced here."""
        gw = self.site.name
        ingress = c.target.site == gw
        zones = {z: self.topo.zone(z) for z in c.sources.zones}
        src_zones = {ref: z.cidr for ref, z in sorted(zones.items()) if z is not None}
        local_src = {r: n for r, n in src_zones.items() if r.partition("/")[0] == gw}
        remote_src = {r: n for r, n in src_zones.items() if r not in local_src}
        if not ingress and not local_src:
            return False
        grant = c.needs_grant
        admitted, expiry = self.identities(c) if ingress else ({}, {})
        has_id_sources = ingress and bool(c.sources.identities or c.sources.roles)
        id_set = zone_set = None
        tunnels = nj.match(nj.meta("iifname"), "@tunnels")
        not_tunnels = nj.match(nj.meta("iifname"), "@tunnels", "!=")
        saddr = nj.payload("ip", "saddr")
        rules: list[list[Json]] = []
        verify: list[Any] = []
        if has_id_sources:
            id_set = self.unique("grant" if grant else "ids", c)
            elems = [] if grant else self.identity_elements(admitted, expiry)
            self.sets.append(nj.named_set(id_set, "ipv4_addr", ["timeout"], elems))
            rules.append([tunnels, nj.match(saddr, f"@{id_set}")])
            verify.append(f"@{id_set}")
        zone_src = (local_src | remote_src) if ingress else local_src
        if zone_src and grant:
            zone_set = self.unique("zgrant", c)
            self.sets.append(nj.named_set(zone_set, "ipv4_addr", ["interval", "timeout"], []))
        for group, inbound in ((remote_src if ingress else {}, True), (local_src, False)):
            if not group:
                continue
            src: Any = (
                f"@{zone_set}"
                if zone_set
                else nj.anon_set([nj.network(n) for n in sorted(set(group.values()))])
            )
            expr = [tunnels if inbound else not_tunnels, nj.match(saddr, src)]
            if not ingress:
                expr.insert(1, nj.match(nj.meta("oifname"), "@tunnels"))
            rules.append(expr)
            if src not in verify:
                verify.append(src)
        max_grant = None
        if c.approval is not None:
            max_grant = c.approval.max_duration
        if c.emergency is not None:
            max_grant = c.emergency.max_duration
        self.plans[c.name] = ConduitPlan(
            name=c.name,
            mark=c.mark,
            needs_grant=grant,
            identity_set=id_set,
            zone_set=zone_set,
            identities=frozen_map(admitted),
            expiry=frozen_map(expiry),
            zones=frozen_map(src_zones),
            max_grant=max_grant,
        )
        self.source_rules[c.name] = rules
        self.verify_sources[c.name] = verify
        return True

    def identity_elements(
        self, admitted: Mapping[str, IPv4Address], expiry: Mapping[str, datetime]
    ) -> list[Any]:
        out = []
        for name, addr in sorted(admitted.items(), key=lambda kv: kv[1]):
            timeout = None
            if name in expiry:
                timeout = max(1, int((expiry[name] - self.now).total_seconds()))
            out.append(nj.timed(str(addr), timeout))
        return out

    def windows(self, c: Conduit) -> list[UtcWindow | None]:
        if c.name not in self._windows:
            self._windows[c.name] = self._compute_windows(c)
        return self._windows[c.name]

    def _compute_windows(self, c: Conduit) -> list[UtcWindow | None]:
        if c.schedule is None:
            return [None]
        change = next_offset_change(c.schedule.tz, self.now)
        if change is not None:
            self.changes.append(change)
        wins = utc_windows(c.schedule, self.now)
        if not wins:
            self.notes.append(f"conduit {c.name}: schedule is never open")
        return list(wins)

    def when(self, c: Conduit) -> list[list[Json]]:
        """The schedule matchers of each UTC window the conduit is open in ([] = always)."""
        out = []
        for win in self.windows(c):
            when: list[Json] = []
            if win is not None and len(win.days) < 7:
                when.append(nj.match(nj.meta("day"), nj.one_or_set(win.day_names())))
            if win is not None and not win.whole_day:
                when.append(nj.match(nj.meta("hour"), {"range": list(win.hour_range())}))
            out.append(when)
        return out

    def admit(self, c: Conduit) -> Json:
        """The verdict that admits a packet of `c`: its function check, which ends in
        accept, or accept when the conduit has no function classes."""
        fc = self.fc.get(c.name)
        return {"goto": {"target": fc}} if fc else nj.accept()

    def conduit_rules(self, chain: str, c: Conduit) -> list[Json]:
        """New flows: match the sources and window, mark the flow, then admit (so the
        first packet passes the function check like every later one)."""
        out = []
        for when in self.when(c):
            record = [record_log(c.mark)] if c.record else []
            for src in self.source_rules[c.name]:
                expr = [*src, *when, nj.set_ct_mark(c.mark), *record, self.admit(c)]
                out.append(nj.rule(chain, expr, f"conduit {c.name}"))
        return out

    def code_rules(self, chain: str, c: Conduit, codes: tuple[int, tuple[int, ...]]) -> list[Json]:
        """Accept a packet (original direction, checked by the caller's fc chain) whose
        function code `c` allows, when `c` admits the flow's source now."""
        offset, allowed = codes
        code = nj.match(nj.raw_payload("ih", offset, 8), nj.one_or_set(list(allowed)))
        orig = {"ct": {"key": "ip saddr", "dir": "original"}}
        out = []
        for when in self.when(c):
            for src in self.verify_sources[c.name]:
                expr = [nj.match(orig, src), *when, code, nj.accept()]
                out.append(nj.rule(chain, expr, f"conduit {c.name}"))
        return out

    def verify_rules(self, chain: str, c: Conduit) -> list[Json]:
        """Established flows of `c`: admitted only while the flow's original source is
        still in the conduit's sources (identity, grant, zone) and the window is open."""
        out = []
        orig = {"ct": {"key": "ip saddr", "dir": "original"}}
        for when in self.when(c):
            for src in self.verify_sources[c.name]:
                expr = [nj.match(orig, src), *when, self.admit(c)]
                out.append(nj.rule(chain, expr, f"conduit {c.name}"))
        return out


def record_log(mark: int) -> Json:
    """The copy of a recorded conduit's packet: whole packets (up to RECORD_SNAPLEN),
    batched by the kernel, prefixed with the mark so the recorder knows the conduit."""
    return nj.nflog(
        f"{NFLOG_RECORD_PREFIX}0x{mark:08x}", NFLOG_RECORD_GROUP, RECORD_SNAPLEN, RECORD_QTHRESH
    )


def _record_chains(comp: _Compiler, conduits: Iterable[Conduit]) -> tuple[list[Json], list[Any]]:
    """One chain per recorded conduit holding its copy rule, and the `recorded` map's
    elements (mark -> jump). A chain per conduit because an NFLOG prefix is constant."""
    chains: list[Json] = []
    elems: list[Any] = []
    for c in conduits:
        if not c.record:
            continue
        name = comp.unique("rec", c)
        chains.extend([nj.chain(name), nj.rule(name, [record_log(c.mark)], f"conduit {c.name}")])
        elems.append([c.mark, nj.jump(name)])
    return chains, elems


def _deny_chain(name: str, reason: str, opts: CompileOptions) -> list[Json]:
    log = [
        nj.limit(opts.log_rate, opts.log_burst),
        nj.nflog(NFLOG_DENY_PREFIX + reason, NFLOG_GROUP),
    ]
    return [nj.chain(name), nj.rule(name, log), nj.rule(name, [nj.drop()])]


def _dispatch(
    entries: Iterable[tuple[int, int, str, int, str, Any]],
) -> list[tuple[int, int, str, int, tuple[tuple[str, Any], ...]]]:
    """Disjoint (lo, hi, proto, port, candidates) from possibly overlapping targets.

    Candidates are ordered most permissive first, so a flow two conduits admit is
    attributed to the one that lets the most function codes through.
    """
    by_port: dict[tuple[str, int], list[tuple[int, int, str, Any]]] = {}
    for lo, hi, proto, port, conduit, codes in entries:
        by_port.setdefault((proto, port), []).append((lo, hi, conduit, codes))
    out = []
    for (proto, port), items in sorted(by_port.items()):
        cuts = sorted({lo for lo, _, _, _ in items} | {hi + 1 for _, hi, _, _ in items})
        prev: tuple[int, int, tuple[tuple[str, Any], ...]] | None = None
        for a, b in pairwise(cuts):
            cands = [(c, codes) for lo, hi, c, codes in items if lo <= a and b - 1 <= hi]
            if not cands:
                continue
            cands.sort(key=lambda x: (x[1] is not None, -len(x[1][1]) if x[1] else 0, x[0]))
            key = tuple(cands)
            if prev is not None and prev[1] + 1 == a and prev[2] == key:
                prev = (prev[0], b - 1, key)
                continue
            if prev is not None:
                out.append((prev[0], prev[1], proto, port, prev[2]))
            prev = (a, b - 1, key)
        if prev is not None:
            out.append((prev[0], prev[1], proto, port, prev[2]))
    return sorted(out, key=lambda e: (e[0], e[2], e[3]))


def compile_ruleset(
    topology: Topology, gateway: str, *, now: datetime, options: CompileOptions | None = None
) -> Ruleset:
    """The complete ruleset for `gateway` (a site name) at instant `now` (timezone-aware)."""
    if now.tzinfo is None:
        raise CompileError("now must be timezone-aware")
    opts = options or CompileOptions()
    site = topology.sites.get(gateway)
    if site is None:
        known = ", ".join(sorted(topology.sites)) or "none"
        raise CompileError(f"unknown gateway {gateway!r} (sites: {known})")
    comp = _Compiler(topology, site, now, opts)
    enforced = [c for _, c in sorted(topology.conduits.items()) if comp.plan(c)]

    entries = []
    restricted_of: dict[str, dict[tuple[int, tuple[int, ...]], list[tuple[str, int]]]] = {}
    for c in enforced:
        lo, hi = comp.target_range(c)
        restricted = restricted_of[c.name] = {}
        for (proto, port), codes in allowed_ports(topology, c).items():
            entries.append((lo, hi, proto, port, c.name, codes))
            if codes is not None:
                restricted.setdefault(codes, []).append((proto, port))
    groups = _dispatch(entries)
    # A destination and service that more than one conduit admits: a code the flow's own
    # conduit refuses may still be allowed by another conduit admitting the same source
    # now (the model's "any conduit allows"); `fc_more` looks those up before denying.
    shared = [g for g in groups if len(g[4]) > 1 and any(codes for _, codes in g[4])]
    refuse = "fc_more" if shared else "deny_function"

    fc_chains: list[Json] = []
    fc_elems: list[Any] = []  # the `functions` map: mark -> fc chain (for other hooks)
    for c in enforced:
        restricted = restricted_of[c.name]
        if not restricted:
            continue
        name = comp.fc[c.name] = comp.unique("fc", c)
        fc_chains.append(nj.chain(name))
        fc_elems.append([c.mark, nj.jump(name)])
        for (offset, codes), pp in sorted(restricted.items()):
            for proto in sorted({p for p, _ in pp}):
                nums = sorted(port for p, port in pp if p == proto)
                dport = nj.one_or_set(list(nums))
                expr = [
                    nj.match(nj.ct("direction"), "original"),
                    nj.match(nj.payload(proto, "dport"), dport),
                    nj.match(nj.raw_payload("ih", offset, 8), nj.one_or_set(list(codes)), "!="),
                    nj.jump(refuse),
                ]
                fc_chains.append(nj.rule(name, expr, f"conduit {c.name}"))
        fc_chains.append(nj.rule(name, [nj.accept()], f"conduit {c.name}"))

    conduits = {c.name: c for c in enforced}
    group_chains: dict[tuple[tuple[str, Any], ...], str] = {}
    group_rules: list[Json] = []
    dispatch_elems: list[Any] = []
    for lo, hi, proto, port, cands in groups:
        chain = group_chains.get(cands)
        if chain is None:
            chain = group_chains[cands] = f"to_{len(group_chains) + 1}"
            group_rules.append(nj.chain(chain))
            for name, _ in cands:
                group_rules.extend(comp.conduit_rules(chain, conduits[name]))
        key = {"concat": [nj.address_range(lo, hi), proto, port]}
        dispatch_elems.append([key, nj.jump(chain)])

    more_chains: dict[tuple[tuple[str, Any], ...], str] = {}
    more_rules: list[Json] = []
    more_elems: list[Any] = []
    for lo, hi, proto, port, cands in shared:
        chain = more_chains.get(cands)
        if chain is None:
            chain = more_chains[cands] = f"more_{len(more_chains) + 1}"
            more_rules.append(nj.chain(chain))
            for name, codes in cands:
                if codes is not None:
                    more_rules.extend(comp.code_rules(chain, conduits[name], codes))
        key = {"concat": [nj.address_range(lo, hi), proto, port]}
        more_elems.append([key, nj.jump(chain)])
    if shared:  # after the more_N chains the map jumps to, before the fc chains
        key = {"concat": [nj.payload("ip", "daddr"), nj.meta("l4proto"), nj.payload("th", "dport")]}
        more_rules += [
            nj.named_set(
                "more_functions",
                ["ipv4_addr", "inet_proto", "inet_service"],
                ["interval"],
                more_elems,
                map_type="verdict",
            ),
            nj.chain("fc_more"),
            nj.rule("fc_more", [{"vmap": {"key": key, "data": "@more_functions"}}]),
            nj.rule("fc_more", [nj.jump("deny_function")]),
        ]

    verify_chains: list[Json] = []
    verify_elems: list[Any] = []
    for c in enforced:
        name = comp.unique("v", c)
        verify_chains.append(nj.chain(name))
        verify_chains.extend(comp.verify_rules(name, c))
        verify_elems.append([c.mark, nj.jump(name)])

    objects: list[Json] = [{"table": nj.table()}]
    objects.append(nj.named_set("tunnels", "ifname", ["interval"], sorted(opts.tunnels)))
    objects.extend(comp.sets)
    objects.extend(_deny_chain("deny_invalid", "invalid", opts))
    objects.extend(_deny_chain("deny_function", "function", opts))
    objects.extend(_deny_chain("deny_spoof", "spoof", opts))
    objects.extend(_deny_chain("deny_ended", "ended", opts))
    objects.extend(more_rules)
    objects.extend(fc_chains)
    objects.extend(verify_chains)
    objects.extend(group_rules)
    rec_chains, rec_elems = _record_chains(comp, enforced)
    objects.extend(rec_chains)
    objects.append(nj.named_set("functions", "mark", [], fc_elems, map_type="verdict"))
    objects.append(nj.named_set("verify", "mark", [], verify_elems, map_type="verdict"))
    if rec_elems:
        objects.append(nj.named_set("recorded", "mark", [], rec_elems, map_type="verdict"))
    objects.append(
        nj.named_set(
            "dispatch",
            ["ipv4_addr", "inet_proto", "inet_service"],
            ["interval"],
            dispatch_elems,
            map_type="verdict",
        )
    )
    objects.extend(_hook_chains(comp, opts, recording=bool(rec_elems)))
    targets = [(c, comp.target_range(c)) for c in enforced]
    objects = weave(objects, topology, gateway, targets, opts.ot_port, opts.log_rate)
    return Ruleset(
        gateway=gateway,
        objects=tuple(objects),
        conduits=frozen_map(comp.plans),
        compiled_at=now,
        next_change=min((t for t in comp.changes if t > now), default=None),
        notes=tuple(comp.notes),
        options=opts,
    )


def _disjoint(nets: list[IPv4Network]) -> list[IPv4Network]:
    """Networks with the ones inside another dropped (an interval set refuses overlaps)."""
    out: list[IPv4Network] = []
    for n in nets:  # sorted by address, shortest prefix first
        if out and n.subnet_of(out[-1]):
            continue
        out.append(n)
    return out


def _zone_binding(comp: _Compiler) -> list[Json]:
    """Zones live behind interfaces: rules run on every packet, before conntrack state.

    A packet that does not arrive on a tunnel must come in on an interface its source's
    route goes back through (`fib saddr . iif`: strict reverse path from the routing
    table, whatever the host's rp_filter): a LAN host cannot use another LAN's zone
    address, nor an identity's overlay address (routed to a tunnel). A local zone with
    an explicit `interface:` only from there; no local zone address through a tunnel.
    """
    tunnels = nj.match(nj.meta("iifname"), "@tunnels")
    not_tunnels = nj.match(nj.meta("iifname"), "@tunnels", "!=")
    saddr = nj.payload("ip", "saddr")
    fib = {"fib": {"result": "oif", "flags": ["saddr", "iif"]}}
    out = [
        nj.rule(
            "forward",
            [not_tunnels, nj.match(fib, False), nj.jump("deny_spoof")],
            "source from an interface its route does not use",
        )
    ]
    for zone in sorted(comp.site.zones.values(), key=lambda z: z.name):
        if zone.interface:
            iif = nj.match(nj.meta("iifname"), zone.interface, "!=")
            out.append(
                nj.rule(
                    "forward",
                    [nj.match(saddr, nj.network(zone.cidr)), iif, nj.jump("deny_spoof")],
                    f"zone {zone.ref} lives behind {zone.interface}",
                )
            )
    if comp.local:
        local = nj.one_or_set([nj.network(n) for n in comp.local])
        spoof = [tunnels, nj.match(saddr, local), nj.jump("deny_spoof")]
        out.append(nj.rule("forward", spoof, "local zone source arriving on a tunnel"))
    return out


def _management_rules(comp: _Compiler, opts: CompileOptions) -> list[Json]:
    """Who may reach the gateway's own services (`gateway: management:` in the topology).

    Sources are CIDRs or zones (from any interface but the tunnels; zone binding still
    applies to forwarded traffic only, so this is a plain source match) or identities
    (their overlay address, through a tunnel). Service `api` is the control API port.
    """
    out: list[Json] = []
    saddr = nj.payload("ip", "saddr")
    for i, access in enumerate(comp.site.gateway.management):
        nets: list[IPv4Network] = []
        overlays: list[IPv4Address] = []
        for ref in access.sources:
            zone = comp.topo.zone(ref) if "/" in ref and ref[0].isalpha() else None
            ident = comp.topo.identities.get(ref)
            if zone is not None:
                nets.append(zone.cidr)
            elif ident is not None and ident.overlay is not None:
                if ident.valid_at(comp.now):
                    overlays.append(ident.overlay)
            else:
                try:
                    nets.append(IPv4Network(ref, strict=False))
                except ValueError as e:
                    raise CompileError(
                        f"site {comp.site.name} gateway management[{i}]: {ref!r} is no "
                        "zone, identity or CIDR"
                    ) from e
        ports: dict[str, set[int]] = {}
        for name in access.services:
            if name == "api":
                ports.setdefault("tcp", set()).add(opts.api_port or API_PORT)
                continue
            svc = service_of(comp.topo, name)
            ports.setdefault(svc.transport, set()).update(svc.ports)
        comment = f"management access {i}"
        for proto, nums in sorted(ports.items()):
            dport = nj.match(nj.payload(proto, "dport"), nj.one_or_set(sorted(nums)))
            if nets:
                src = nj.one_or_set([nj.network(n) for n in _disjoint(sorted(set(nets)))])
                not_tunnels = nj.match(nj.meta("iifname"), "@tunnels", "!=")
                expr = [not_tunnels, nj.match(saddr, src), dport, nj.accept()]
                out.append(nj.rule("input", expr, comment))
            if overlays:
                src = nj.one_or_set([str(a) for a in sorted(set(overlays))])
                tunnels = nj.match(nj.meta("iifname"), "@tunnels")
                out.append(
                    nj.rule("input", [tunnels, nj.match(saddr, src), dport, nj.accept()], comment)
                )
    return out


def _hook_chains(comp: _Compiler, opts: CompileOptions, recording: bool) -> list[Json]:
    log = [nj.limit(opts.log_rate, opts.log_burst)]
    est = [nj.chain("established")]
    if recording:
        # Before the function check, so a denied write inside a recorded session is in
        # the recording too; not in `forward`, where a retransmitted SYN (state new,
        # mark already set) would be copied twice: once here, once by the accept rule.
        rec = {"vmap": {"key": nj.ct("mark"), "data": "@recorded"}}
        est.append(nj.rule("established", [rec], "session recording"))
    est += [
        nj.rule(
            "established",
            [{"vmap": {"key": nj.ct("mark"), "data": "@verify"}}],
            "is what admitted the flow still true",
        ),
        nj.rule("established", [nj.jump("deny_ended")], "no longer admitted"),
    ]
    states = {
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
    fwd = [nj.chain("forward", hook="forward"), *_zone_binding(comp)]
    fwd.append(nj.rule("forward", [states]))
    key = {"concat": [nj.payload("ip", "daddr"), nj.meta("l4proto"), nj.payload("th", "dport")]}
    fwd.append(nj.rule("forward", [{"vmap": {"key": key, "data": "@dispatch"}}]))
    fwd.append(nj.rule("forward", [*log, nj.nflog(NFLOG_DENY_PREFIX + "default", NFLOG_GROUP)]))

    in_states = {
        "vmap": {
            "key": nj.ct("state"),
            "data": nj.anon_set(
                [
                    ["invalid", nj.jump("deny_invalid")],
                    ["established", nj.accept()],
                    ["related", nj.accept()],
                ]
            ),
        }
    }
    tunnels = nj.match(nj.meta("iifname"), "@tunnels")
    gw = comp.site.gateway
    inp = [
        nj.chain("input", hook="input"),
        nj.rule("input", [in_states]),
        nj.rule("input", [nj.match(nj.meta("iifname"), "lo"), nj.accept()]),
        nj.rule(
            "input",
            [nj.match(nj.payload("udp", "dport"), gw.port), nj.accept()],
            "WireGuard underlay",
        ),
        nj.rule(
            "input",
            [nj.match(nj.payload("tcp", "dport"), gw.port), nj.accept()],
            "tunneld handshake",
        ),
        nj.rule(
            "input",
            [tunnels, nj.match(nj.payload("icmp", "type"), "echo-request"), nj.accept()],
        ),
    ]
    if opts.api_port is not None:
        api = [
            tunnels,
            nj.match(nj.payload("ip", "daddr"), str(gw.overlay)),
            nj.match(nj.payload("tcp", "dport"), opts.api_port),
            nj.accept(),
        ]
        inp.append(nj.rule("input", api, "control API"))
    inp.extend(_management_rules(comp, opts))
    inp.append(nj.rule("input", [*log, nj.nflog(NFLOG_DENY_PREFIX + "input", NFLOG_GROUP)]))
    return est + fwd + inp


FAIL_CLOSED_MANAGEMENT = ("tcp", 22)  # what the fail-closed table keeps reachable


def deny_all_ruleset(
    gateway: str, *, now: datetime, options: CompileOptions | None = None
) -> Ruleset:
    """The table policyd installs when it has no good policy at its first start: forward
    nothing (logged), and into the gateway only established sessions, loopback and SSH,
    so an administrator can still reach it to fix the file (see docs/policyd.md)."""
    opts = options or CompileOptions()
    log = [nj.limit(opts.log_rate, opts.log_burst)]
    proto, port = FAIL_CLOSED_MANAGEMENT
    states = {
        "vmap": {
            "key": nj.ct("state"),
            "data": nj.anon_set([["established", nj.accept()], ["related", nj.accept()]]),
        }
    }
    objects: list[Json] = [
        {"table": nj.table()},
        nj.chain("forward", hook="forward"),
        nj.rule("forward", [*log, nj.nflog(NFLOG_DENY_PREFIX + "fail-closed", NFLOG_GROUP)]),
        nj.chain("input", hook="input"),
        nj.rule("input", [states]),
        nj.rule("input", [nj.match(nj.meta("iifname"), "lo"), nj.accept()]),
        nj.rule(
            "input",
            [nj.match(nj.payload(proto, "dport"), port), nj.accept()],
            "management access while failed closed",
        ),
        nj.rule("input", [*log, nj.nflog(NFLOG_DENY_PREFIX + "input", NFLOG_GROUP)]),
    ]
    return Ruleset(
        gateway=gateway,
        objects=tuple(objects),
        conduits=frozen_map({}),
        compiled_at=now,
        next_change=None,
        notes=("fail closed: no good policy",),
        options=opts,
    )


__all__ = [
    "TABLE_FAMILY",
    "TABLE_NAME",
    "CompileError",
    "CompileOptions",
    "ConduitPlan",
    "Ruleset",
    "allowed_ports",
    "compile_ruleset",
    "deny_all_ruleset",
]
