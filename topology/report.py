"""Summaries of a topology for people: counts, and what each gateway enforces."""

from __future__ import annotations

from datetime import time

from topology.model import DAY_NAMES, Conduit, Topology, format_duration


def topology_counts(topo: Topology) -> dict[str, int]:
    return {
        "sites": len(topo.sites),
        "zones": sum(len(s.zones) for s in topo.sites.values()),
        "assets": sum(len(s.assets) for s in topo.sites.values()),
        "identities": len(topo.identities),
        "conduits": len(topo.conduits),
        "tests": len(topo.tests),
    }


def conduit_terms_list(c: Conduit) -> list[str]:
    """The terms a conduit opens on, for people: schedule, approval, emergency, recording."""
    terms = []
    if c.schedule:
        terms.append(f"schedule {c.schedule.describe()}")
    if c.approval:
        terms.append(c.approval.describe())
    if c.emergency:
        terms.append(f"emergency, at most {format_duration(c.emergency.max_duration)}")
    if c.record:
        terms.append("recorded")
    if c.accept_risk:
        terms.append(f"IEC 62443 risk accepted: {c.accept_risk}")
    return terms


def conduit_terms(c: Conduit) -> str:
    return "; ".join(conduit_terms_list(c)) or "always"


def conduit_dict(c: Conduit) -> dict[str, object]:
    """A conduit as data (for --json): no display strings to parse."""
    s = c.schedule
    return {
        "name": c.name,
        "from": {
            "identities": list(c.sources.identities),
            "roles": list(c.sources.roles),
            "zones": list(c.sources.zones),
        },
        "to": {"kind": c.target.kind.value, "ref": c.target.ref},
        "allow": [{"service": a.service, "classes": list(a.classes)} for a in c.allow],
        "schedule": None
        if s is None
        else {
            "days": [DAY_NAMES[d][:3].lower() for d in sorted(s.days)],
            "start": f"{s.start:%H:%M}",
            "end": "24:00" if s.end == time.max else f"{s.end:%H:%M}",
            "tz": s.tz,
        },
        "approval": None
        if c.approval is None
        else {
            "by_roles": list(c.approval.by_roles),
            "by_identities": list(c.approval.by_identities),
            "max_seconds": int(c.approval.max_duration.total_seconds()),
        },
        "emergency": None
        if c.emergency is None
        else {"max_seconds": int(c.emergency.max_duration.total_seconds())},
        "record": c.record,
        "accept_risk": c.accept_risk or None,
        "mark": c.mark,
        "location": str(c.location) if c.location else None,
    }


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
