"""A zone and what reaches it: the input of every requirement check, and its output."""

from __future__ import annotations

from dataclasses import dataclass, field

from topology.iec62443.findings import Evidence, Gap, GapKind
from topology.model import Conduit, Identity, TargetKind, Topology, Zone
from topology.policy_tests import TestResult
from topology.report import conduit_sources, conduit_terms

FLOWLOG_DOC = "docs/flowlog.md"
POLICYD_DOC = "docs/policyd.md"
REMOTE_DOC = "docs/remote-access.md"
TUNNELD_DOC = "docs/tunneld.md"


@dataclass
class Found:
    """What the checks of one requirement found."""

    evidence: list[Evidence] = field(default_factory=list)
    gaps: list[Gap] = field(default_factory=list)

    def ev(self, text: str, where: str = "", tested: bool = False) -> None:
        self.evidence.append(Evidence(text, where, tested=tested))

    def gap(self, kind: GapKind, text: str, where: str = "", fix: str = "") -> None:
        self.gaps.append(Gap(kind, text, where, fix))

    def conduit_gap(self, c: Conduit, text: str, fix: str) -> None:
        """A configuration gap in one conduit; a risk the file accepts for it is quoted."""
        if c.accept_risk:
            text += f" (the file accepts the risk: {c.accept_risk})"
        self.gaps.append(Gap("configuration", text, where(c), fix))


@dataclass(frozen=True)
class ZoneView:
    """A zone and what reaches it: the input of every check."""

    topo: Topology
    zone: Zone
    conduits: tuple[Conduit, ...]  # conduits whose target is the zone or an asset in it
    tests: tuple[TestResult, ...]  # declared policy tests into the zone, with results

    def people(self, c: Conduit) -> list[Identity]:
        """User identities the conduit admits (by name or role)."""
        users = (i for i in self.topo.identities.values() if i.kind == "user")
        return [i for i in users if c.sources.admits(i)]

    def remote(self) -> list[Conduit]:
        """Conduits that bring people or services in through tunnels."""
        return [c for c in self.conduits if c.sources.roles or c.sources.identities]

    def approvers(self, c: Conduit) -> list[Identity]:
        approval = c.approval
        if approval is None:
            return []
        return [i for i in self.topo.identities.values() if approval.names(i)]


def zone_view(topo: Topology, zone: Zone, results: tuple[TestResult, ...]) -> ZoneView:
    def into(c: Conduit) -> bool:
        if c.target.kind is TargetKind.ZONE:
            return c.target.ref == zone.ref
        asset = topo.asset(c.target.ref)
        return asset is not None and asset.zone_ref == zone.ref

    def test_into(r: TestResult) -> bool:
        asset = topo.asset(r.test.target)
        if asset is not None:
            return asset.zone_ref == zone.ref
        return r.test.target == zone.ref

    conduits = tuple(sorted((c for c in topo.conduits.values() if into(c)), key=lambda c: c.name))
    return ZoneView(topo, zone, conduits, tuple(r for r in results if test_into(r)))


def where(x: object) -> str:
    loc = getattr(x, "location", None)
    return str(loc) if loc else ""


def describe(c: Conduit) -> str:
    allow = ", ".join(str(a) for a in c.allow)
    return f"conduit {c.name}: {conduit_sources(c)} -> {c.target} ({allow}; {conduit_terms(c)})"
