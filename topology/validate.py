"""Checks that need the whole model: overlaps, collisions and the 62443 risk rule.

Reference checks happen in the loader, where each reference's own place is known;
here each problem is reported at the definition that causes it.
"""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv4Address

from topology.diagnostics import Diagnostics, Location
from topology.model import Conduit, Site, TargetKind, Topology, Zone

RISKY_LEVEL = 3  # IEC 62443 SL 3-4: conduits in need a compensating control


def validate(topo: Topology, diags: Diagnostics) -> None:
    zones = [z for s in topo.sites.values() for z in s.zones.values()]
    _zone_overlaps(zones, diags)
    _overlay_addresses(topo, zones, diags)
    _asset_addresses(topo, diags)
    for conduit in topo.conduits.values():
        _approvers(topo, conduit, diags)
        _schedule_open(conduit, diags)
        _risk(topo, conduit, diags)
    _marks(topo.conduits.values(), diags)
    if not diags.errors:  # a zone that failed to build is not "unknown" again
        for site in topo.sites.values():
            _management_refs(topo, site, diags)


def _zone_overlaps(zones: list[Zone], diags: Diagnostics) -> None:
    for i, a in enumerate(zones):
        for b in zones[i + 1 :]:
            if a.cidr.overlaps(b.cidr):
                diags.error(
                    b.location,
                    f"zone {b.ref} ({b.cidr}) overlaps zone {a.ref} ({a.cidr}) at {a.location}",
                    "each zone needs its own address range so a packet has one zone",
                )


def _overlay_addresses(topo: Topology, zones: list[Zone], diags: Diagnostics) -> None:
    owners: dict[IPv4Address, tuple[str, Location | None]] = {}
    for site in topo.sites.values():
        owners.setdefault(site.gateway.overlay, (f"site {site.name} gateway", site.location))
    for ident in topo.identities.values():
        if ident.overlay is None:
            continue
        owner = owners.get(ident.overlay)
        if owner is not None and not (
            ident.kind == "site" and owner[0] == f"site {ident.site} gateway"
        ):
            diags.error(
                ident.location,
                f"identity {ident.name} overlay {ident.overlay} is already used by {owner[0]}"
                + (f" at {owner[1]}" if owner[1] else ""),
                "every identity needs its own overlay address",
            )
        owners.setdefault(ident.overlay, (f"identity {ident.name}", ident.location))
    for address, (who, loc) in owners.items():
        for zone in zones:
            if address in zone.cidr:
                diags.error(
                    loc,
                    f"{who} overlay {address} falls inside zone {zone.ref} ({zone.cidr})",
                    "overlay addresses must be outside every zone (e.g. in 100.64.0.0/10)",
                )


def _asset_addresses(topo: Topology, diags: Diagnostics) -> None:
    seen: dict[IPv4Address, str] = {}
    for site in topo.sites.values():
        for asset in site.assets.values():
            other = seen.get(asset.address)
            if other is not None:
                diags.error(asset.location, f"asset {asset.ref} has the same address as {other}")
            seen.setdefault(asset.address, asset.ref)


def _approvers(topo: Topology, conduit: Conduit, diags: Diagnostics) -> None:
    approval = conduit.approval
    if approval is None:
        return
    for role in approval.by_roles:
        if not topo.members(role):
            diags.error(
                conduit.location,
                f"conduit {conduit.name} is approved by role '{role}', which has no members",
                f"give an identity the role '{role}', or nobody can ever approve",
            )
    # Dual approval: N distinct approvers, none of them the requester, must be possible
    # for every identity the conduit admits.
    approvers = {i.name for i in topo.identities.values() if approval.names(i)}
    requesters = [i for i in topo.identities.values() if conduit.sources.admits(i)]
    short = sorted(r.name for r in requesters if len(approvers - {r.name}) < approval.count)
    if approval.by_roles and not all(topo.members(r) for r in approval.by_roles):
        return  # already reported above
    if len(approvers) < approval.count:
        diags.error(
            conduit.location,
            f"conduit {conduit.name} needs {approval.count} distinct approvers but only "
            f"{len(approvers)} identities can approve",
            "add approvers to 'by', or lower 'count'",
        )
    elif short and approval.count > 1:
        diags.error(
            conduit.location,
            f"conduit {conduit.name} needs {approval.count} distinct approvers besides the "
            f"requester, but {', '.join(short)} would have only {approval.count - 1} "
            "(a requester never approves its own grant)",
            "add approvers to 'by', or lower 'count'",
        )


def _schedule_open(conduit: Conduit, diags: Diagnostics) -> None:
    s = conduit.schedule
    if s is not None and (not s.days or s.start == s.end):
        diags.error(
            conduit.location,
            f"conduit {conduit.name} has a schedule that is never open ({s.describe()})",
            "start and end must differ",
        )


def _target_zone(topo: Topology, conduit: Conduit) -> Zone | None:
    t = conduit.target
    if t.kind is TargetKind.ZONE:
        return topo.zone(t.ref)
    asset = topo.asset(t.ref)
    return topo.zone(asset.zone_ref) if asset else None


def risky_zone(topo: Topology, conduit: Conduit) -> Zone | None:
    """The SL 3-4 zone a conduit reaches without a compensating control, if any."""
    zone = _target_zone(topo, conduit)
    if zone is None or zone.security_level < RISKY_LEVEL:
        return None
    if conduit.approval or conduit.schedule or conduit.record or conduit.emergency:
        return None
    return zone


def _risk(topo: Topology, conduit: Conduit, diags: Diagnostics) -> None:
    zone = risky_zone(topo, conduit)
    if conduit.accept_risk:
        if zone is None:
            diags.warning(
                conduit.location,
                f"conduit {conduit.name} accepts a risk it does not have",
                "remove accept_risk: the conduit has a compensating control or reaches SL 1-2",
            )
        return
    if zone is None:
        return
    diags.warning(
        conduit.location,
        f"conduit {conduit.name} reaches zone {zone.ref} (security level "
        f"{zone.security_level}) without approval, schedule or recording",
        "IEC 62443 asks for a compensating control on conduits into SL 3-4 zones; "
        "add one, or accept the risk for this conduit: accept_risk: REASON",
    )


def _marks(conduits: Iterable[Conduit], diags: Diagnostics) -> None:
    seen: dict[int, str] = {}
    for c in conduits:
        if c.mark in seen:
            diags.error(
                c.location,
                f"conduits {seen[c.mark]} and {c.name} hash to the same flow mark",
                "rename one of them",
            )
        seen.setdefault(c.mark, c.name)


def _management_refs(topo: Topology, site: Site, diags: Diagnostics) -> None:
    for access in site.gateway.management:
        for ref in access.sources:
            if "/" in ref and ref[0].isalpha() and topo.zone(ref) is None:
                diags.error(site.location, f"site {site.name} management: unknown zone '{ref}'")
