"""Ending the sessions that the current policy no longer admits, with the reason.

The kernel is the control: the `established` chain drops the next packet of a flow
whose conduit mark and original source no longer pass the conduit's verification chain
(docs/policyd.md), whether policyd runs or not. This module is the cleanup after a
policy event: it finds those flows in the conntrack table, gives each the reason it
ended (`revoked`, `grant_expired`, `validity_ended`, `role_removed`,
`conduit_removed`, `conduit_changed`, `schedule_closed`) and deletes their entries, so
each gets its flow `end` record now instead of at its conntrack timeout.

The decision uses the compiled ruleset and, for conduits that need a grant, the grant
set's elements as the kernel holds them (the kernel's truth for grants).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from ipaddress import IPv4Address, IPv4Network, ip_address

from policyd.compiler import ConduitPlan, Ruleset
from policyd.conventions import MARK_TAG, MARK_TAG_MASK
from policyd.flowlog import conntrack
from policyd.flowlog.conntrack import CtEvent
from topology.model import Identity, Topology

log = logging.getLogger("policyd")

REASONS = (
    "revoked",
    "grant_expired",
    "validity_ended",
    "role_removed",
    "conduit_removed",
    "conduit_changed",
    "schedule_closed",
)

# set name -> what the kernel's grant set holds (addresses and networks)
GrantLookup = Callable[[str], set[IPv4Address | IPv4Network]]


@dataclass(frozen=True)
class Ended:
    flow: CtEvent
    reason: str


def _within(addr: IPv4Address, held: Iterable[IPv4Address | IPv4Network]) -> bool:
    return any(addr in h if isinstance(h, IPv4Network) else addr == h for h in held)


def why_not_admitted(
    flow: CtEvent,
    by_mark: Mapping[int, ConduitPlan],
    topology: Topology,
    now: datetime,
    grants: GrantLookup,
    by_overlay: Mapping[IPv4Address, Identity] | None = None,
) -> str | None:
    """None when `flow` is still admitted by the current policy, else the reason.
    `by_overlay` (identities by overlay address) saves a scan per flow in a sweep."""
    plan = by_mark.get(flow.mark)
    if plan is None:
        return "conduit_removed"
    try:
        src = ip_address(flow.src)
    except ValueError:
        return "conduit_changed"
    if not isinstance(src, IPv4Address):
        return "conduit_changed"
    conduit = topology.conduits.get(plan.name)
    if by_overlay is None:
        by_overlay = _by_overlay(topology)
    ident = by_overlay.get(src)
    if ident is not None and not ident.valid_at(now):
        return "validity_ended"
    if plan.needs_grant:
        held: set[IPv4Address | IPv4Network] = set()
        for name in (plan.identity_set, plan.zone_set):
            if name:
                held |= grants(name)
        if not _within(src, held):
            return "grant_expired"
    else:
        member = ident is not None and plan.identities.get(ident.name) == src
        if not member and not any(src in net for net in plan.zones.values()):
            return "role_removed" if ident is not None else "conduit_changed"
    if conduit is not None and conduit.schedule and not conduit.schedule.is_open(now):
        return "schedule_closed"
    return None


def _by_overlay(topology: Topology) -> dict[IPv4Address, Identity]:
    return {i.overlay: i for i in topology.identities.values() if i.overlay is not None}


def not_admitted(
    flows: Iterable[CtEvent],
    rs: Ruleset,
    topology: Topology,
    now: datetime,
    grants: GrantLookup,
) -> list[Ended]:
    """The zonegate-marked flows the current policy no longer admits, with reasons."""
    by_mark = {p.mark: p for p in rs.conduits.values()}
    by_overlay = _by_overlay(topology)
    cache: dict[str, set[IPv4Address | IPv4Network]] = {}

    def cached(name: str) -> set[IPv4Address | IPv4Network]:
        if name not in cache:
            cache[name] = grants(name)
        return cache[name]

    out = []
    for flow in flows:
        if flow.mark & MARK_TAG_MASK != MARK_TAG:
            continue
        reason = why_not_admitted(flow, by_mark, topology, now, cached, by_overlay)
        if reason is not None:
            out.append(Ended(flow, reason))
    return out


def of_source(
    flows: Iterable[CtEvent], mark: int, source: IPv4Address | IPv4Network, reason: str
) -> list[Ended]:
    """The flows of one conduit from one source (a revoked or expired grant): no policy
    evaluation needed, the event says which flows lost their admission."""
    out = []
    for flow in flows:
        if flow.mark != mark:
            continue
        try:
            src = ip_address(flow.src)
        except ValueError:
            continue
        if isinstance(src, IPv4Address) and _within(src, [source]):
            out.append(Ended(flow, reason))
    return out


def delete(ended: list[Ended], why: str, tell: Callable[[list[Ended]], None] | None = None) -> int:
    """Delete the conntrack entries of `ended` (after `tell`, which lets the flow
    recorder know the reasons before the DESTROY events come); returns how many."""
    if not ended:
        return 0
    if tell is not None:
        tell(ended)
    try:
        n = conntrack.delete([e.flow for e in ended])
    except OSError as exc:
        log.error("conntrack delete failed: %s", exc)
        return 0
    reasons: dict[str, int] = {}
    for item in ended:
        reasons[item.reason] = reasons.get(item.reason, 0) + 1
    log.info("ended %d session(s) no longer admitted (%s): %s", n, why, reasons)
    return n


def end_of_source(
    mark: int,
    source: IPv4Address | IPv4Network,
    reason: str,
    why: str,
    tell: Callable[[list[Ended]], None] | None = None,
) -> int:
    """End the flows of one conduit (by mark) from one address or network."""
    try:
        flows = conntrack.dump()
    except OSError as exc:
        log.error("conntrack dump failed: %s", exc)
        return 0
    return delete(of_source(flows, mark, source, reason), why, tell)
