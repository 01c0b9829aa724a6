"""Summaries of a topology for people: counts, and what each gateway enforces."""

from __future__ import annotations

from topology.model import Conduit, Topology, format_duration


def topology_counts(topo: Topology) -> dict[str, int]:
    return {
        "sites": len(topo.sites),
        "zones": sum(len(s.zones) for s in topo.sites.values()),
        "assets": sum(len(s.assets) for s in topo.sites.values()),
        "identities": len(topo.identities),
        "conduits": len(topo.conduits),
        "tests": len(topo.tests),
    }


def conduit_terms(c: Conduit) -> str:
    terms = []
    if c.schedule:
        terms.append(c.schedule.describe())
    if c.approval:
        terms.append(c.approval.describe())
    if c.emergency:
        terms.append(f"emergency, at most {format_duration(c.emergency.max_duration)}")
    if c.record:
        terms.append("recorded")
    return "; ".join(terms) or "always"


def conduit_sources(c: Conduit) -> str:
    parts = [*c.sources.identities, *(f"role:{r}" for r in c.sources.roles), *c.sources.zones]
    return ", ".join(parts)


def gateway_rows(topo: Topology, site: str) -> list[dict[str, str]]:
    """The conduits whose target is behind this site's gateway, in name order."""
    return [
        {
            "conduit": c.name,
            "from": conduit_sources(c),
            "to": str(c.target),
            "allow": ", ".join(str(a) for a in c.allow),
            "terms": conduit_terms(c),
        }
        for c in sorted(topo.conduits.values(), key=lambda c: c.name)
        if c.target.site == site
    ]
