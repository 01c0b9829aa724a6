"""Warnings about a valid topology that probably does not say what its authors mean.

Each is a warning (ZG-W...), an error under `check --strict`: a name nothing uses, an
identity that can reach nothing, a topology without tests, a file that is not read,
a gateway nobody may manage.
They run only when every file could be parsed (otherwise "unused" would be a guess).
"""

from __future__ import annotations

from topology.diagnostics import Diagnostics, Location
from topology.model import TargetKind, Topology


def lint(topo: Topology, shown: str, skipped: list[str], diags: Diagnostics) -> None:
    """`shown` is the topology path as the user gave it; `skipped` the files not read."""
    for name in skipped:
        diags.warning(
            Location(name, 1, 1),
            f"file {name} is not read",
            "only files ending in .yaml or .yml are part of the topology; rename it, "
            "or move it out of the directory",
        )
    _unused(topo, diags)
    for site in topo.sites.values():
        if not site.gateway.management:
            diags.warning(
                site.location,
                f"site {site.name}: its gateway declares no management access",
                "policyd's input chain then drops new SSH/API sessions to the gateway; add "
                "gateway: {management: [{from: [ZONE or CIDR], allow: [ssh, api]}]}",
            )
    if not topo.tests:
        first = topo.files[0] if topo.files else shown
        diags.warning(
            Location(first, 1, 1),
            f"{shown} has no policy tests",
            "declare what must and must not be allowed under 'tests:'; "
            "check runs them on every change",
        )


def _unused(topo: Topology, diags: Diagnostics) -> None:
    conduits = list(topo.conduits.values())
    named_ids = {i for c in conduits for i in c.sources.identities}
    named_ids |= {i for c in conduits if c.approval for i in c.approval.by_identities}
    used_roles = {r for c in conduits for r in c.sources.roles}
    used_roles |= {r for c in conduits if c.approval for r in c.approval.by_roles}
    used_services = {a.service for c in conduits for a in c.allow}
    used_services |= {
        s for site in topo.sites.values() for a in site.assets.values() for s in a.services
    }
    used_zones = {z for c in conduits for z in c.sources.zones}
    used_zones |= {a.zone_ref for site in topo.sites.values() for a in site.assets.values()}
    for c in conduits:
        if c.target.kind is TargetKind.ZONE:
            used_zones.add(c.target.ref)
        else:
            asset = topo.asset(c.target.ref)
            if asset is not None:
                used_zones.add(asset.zone_ref)
    for ident in topo.identities.values():
        if ident.kind != "site" and not ident.roles and ident.name not in named_ids:
            diags.warning(
                ident.location,
                f"identity '{ident.name}' has no role and no conduit names it",
                "it can reach nothing: give it a role, or remove it",
            )
    for role in topo.roles.values():
        if role.name not in used_roles:
            diags.warning(
                role.location,
                f"role '{role.name}' is not used by any conduit or approval",
                "its members get nothing from it: use it in a conduit, or remove it",
            )
    for svc in topo.services.values():
        if not svc.builtin and svc.name not in used_services:
            diags.warning(
                svc.location,
                f"service '{svc.name}' is not used by any conduit or asset",
                "remove it, or allow it in a conduit",
            )
    for site in topo.sites.values():
        for zone in site.zones.values():
            if zone.ref not in used_zones:
                diags.warning(
                    zone.location,
                    f"zone '{zone.ref}' is not used: no asset in it, no conduit to or from it",
                    "remove it, or add its assets and conduits",
                )
