"""What one node's tunnels should look like: a pure function of the topology and time.

`plan(topology, node, at)` lists the node's peers with their pinned keys, endpoints,
allowed IPs, routes, handshake role and KEM. A site gateway's peers are the gateways
of every other site, plus every user or service identity whose conduits reach this
site and that is valid at `at` (no endpoint: WireGuard learns it; allowed IPs: the
overlay /32; we respond). Known identities we must not admit are listed as `refused`
so the handshake can tell them why, and `replan_at` says when a validity window next
opens or closes. A user node (`tunneld join`, see `tunneld/profile.py`) is just a plan
with one initiator peer per gateway, so the daemon below does not care which it runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from ipaddress import IPv4Interface, IPv4Network

from topology.model import Identity, Site, Sources, Topology
from tunneld import messages as m
from tunneld.handshake_types import Role
from tunneld.kem import CODE_KEMS, PARAMS, suite_name
from tunneld.keys import KeyFileError, PublicBundle, load_public


class PlanError(Exception):
    """The topology does not describe a runnable node (message says what to fix)."""


@dataclass(frozen=True)
class PeerPlan:
    name: str
    bundle: PublicBundle
    # underlay host:port, for WireGuard (udp) and the handshake (tcp); None for a user
    # or service peer: it connects to us, WireGuard learns its address
    endpoint: str | None
    allowed_ips: tuple[str, ...]
    routes: tuple[IPv4Network, ...]
    role: Role
    kem: str  # ephemeral KEM suite of the pair (pair_suite): both sides compute the same
    kind: str = "site"  # the peer identity's kind: site, user or service


@dataclass(frozen=True)
class RefusedPlan:
    """A user or service identity we know (its keys are pinned) but do not admit now."""

    name: str
    bundle: PublicBundle
    code: int  # messages.REFUSED_NOT_YET_VALID / _EXPIRED / _NO_CONDUIT
    reason: str


@dataclass(frozen=True)
class NodePlan:
    name: str
    bundle: PublicBundle  # what the topology (or profile) pins for this node
    listen_port: int | None  # None: a user node, any UDP port and no handshake listener
    address: IPv4Interface
    peers: tuple[PeerPlan, ...]
    refused: tuple[RefusedPlan, ...] = ()
    skipped: tuple[str, ...] = ()  # identities we can not serve, with the fix
    replan_at: datetime | None = None  # next validity change of a served identity
    expires: datetime | None = None  # a profile's expiry: the node stops then


def role_towards(local: str, peer: str) -> Role:
    """Between sites the name that sorts first initiates: never two crossing handshakes."""
    return "initiator" if local < peer else "responder"


def stronger(a: str, b: str) -> str:
    return a if PARAMS[a].public_key_size >= PARAMS[b].public_key_size else b


def stronger_code(*asked: str | None) -> str | None:
    """The strongest of optional code-based components (None: none asked for)."""
    return max((c for c in asked if c is not None), key=CODE_KEMS.index, default=None)


def _zone_sites(sources: Sources) -> set[str]:
    return {ref.split("/", 1)[0] for ref in sources.zones}


def pair_suite(topo: Topology, a: Site, b: Site) -> str:
    """The ephemeral suite of a site pair: the stronger ML-KEM of the two sites, plus the
    strongest code-based third component that either site, or any conduit between zones
    of the two, pins. Both gateways compute it from the same topology and it is bound
    into the transcript: neither side can be talked down."""
    between = [
        c.code_kem
        for c in topo.conduits.values()
        if {c.target.site} | _zone_sites(c.sources) >= {a.name, b.name}
    ]
    code = stronger_code(a.code_kem, b.code_kem, *between)
    return suite_name(stronger(a.kem, b.kem), code)


def user_suite(topo: Topology, site: Site, ident: Identity, user_kem: str) -> str:
    """The suite between a site and a user or service identity (its bundle's KEM): the
    site's code_kem and that of any conduit admitting the identity into the site."""
    into = [
        c.code_kem
        for c in topo.conduits.values()
        if c.target.site == site.name and c.sources.admits(ident)
    ]
    return suite_name(stronger(site.kem, user_kem), stronger_code(site.code_kem, *into))


def site_bundle(topo: Topology, site: Site) -> PublicBundle:
    ident = topo.site_identity(site.name)
    if ident is None:
        raise PlanError(f"site {site.name} has no identity of kind site; add one to identities")
    if not ident.keys:
        raise PlanError(
            f"identity {ident.name} has no keys: run 'tunneld keygen DIR' on its gateway "
            f"and set keys: DIR/identity.pub"
        )
    try:
        bundle = load_public(ident.keys)
    except KeyFileError as exc:
        raise PlanError(f"identity {ident.name}: {exc}") from None
    if bundle.kem != site.kem:
        raise PlanError(
            f"identity {ident.name}: key bundle uses {bundle.kem} but site {site.name} "
            f"declares kem {site.kem}; regenerate with 'tunneld keygen DIR --kem {site.kem}'"
        )
    return bundle


def admits(topo: Topology, ident: Identity, site: str) -> bool:
    """Does any conduit into `site` admit this identity?"""
    return any(c.target.site == site and c.sources.admits(ident) for c in topo.conduits.values())


def _validity_code(ident: Identity, at: datetime) -> int | None:
    if ident.valid_from is not None and at < ident.valid_from:
        return m.REFUSED_NOT_YET_VALID
    if ident.valid_until is not None and at >= ident.valid_until:
        return m.REFUSED_EXPIRED
    return None


def remote_peers(
    topo: Topology, site: Site, at: datetime
) -> tuple[list[PeerPlan], list[RefusedPlan], list[str], datetime | None]:
    """User and service identities at `site`: (admitted, refused, skipped, next change)."""
    peers: list[PeerPlan] = []
    refused: list[RefusedPlan] = []
    skipped: list[str] = []
    changes: list[datetime] = []
    for name in sorted(topo.identities):
        ident = topo.identities[name]
        if ident.kind not in ("user", "service"):
            continue
        reaches = admits(topo, ident, site.name)
        if not ident.keys:
            if reaches:
                skipped.append(
                    f"identity {name} has no keys: it can not join until its topology entry "
                    f"has keys: PATH/identity.pub (from 'tunneld keygen' on its machine)"
                )
            continue
        if ident.overlay is None:
            continue
        try:
            bundle = load_public(ident.keys)
        except KeyFileError as exc:
            skipped.append(f"identity {name}: {exc}")
            continue
        if not reaches:
            refused.append(
                RefusedPlan(name, bundle, m.REFUSED_NO_CONDUIT, "no conduit into this site")
            )
            continue
        changes += [t for t in (ident.valid_from, ident.valid_until) if t is not None and t > at]
        code = _validity_code(ident, at)
        if code is not None:
            why = "not valid yet" if code == m.REFUSED_NOT_YET_VALID else "validity ended"
            refused.append(RefusedPlan(name, bundle, code, why))
            continue
        overlay = IPv4Network(f"{ident.overlay}/32")
        peers.append(
            PeerPlan(
                name=name,
                bundle=bundle,
                endpoint=None,
                allowed_ips=(str(overlay),),
                routes=(overlay,),
                role="responder",
                kem=user_suite(topo, site, ident, bundle.kem),
                kind=ident.kind,
            )
        )
    return peers, refused, skipped, min(changes, default=None)


def plan(topo: Topology, node: str, at: datetime | None = None) -> NodePlan:
    """The plan for site `node` at time `at` (validity windows; default: now)."""
    at = at or datetime.now(UTC)
    site = topo.sites.get(node)
    if site is None:
        known = ", ".join(sorted(topo.sites)) or "none"
        raise PlanError(f"no site {node!r} in the topology (sites: {known})")
    peers = []
    for name in sorted(topo.sites):
        if name == node:
            continue
        other = topo.sites[name]
        overlay = IPv4Network(f"{other.gateway.overlay}/32")
        zones = tuple(z.cidr for z in other.zones.values())
        peers.append(
            PeerPlan(
                name=name,
                bundle=site_bundle(topo, other),
                endpoint=f"{other.gateway.underlay}:{other.gateway.port}",
                allowed_ips=tuple(str(n) for n in (overlay, *zones)),
                routes=(overlay, *zones),
                role=role_towards(node, name),
                kem=pair_suite(topo, site, other),
            )
        )
    users, refused, skipped, replan_at = remote_peers(topo, site, at)
    return NodePlan(
        name=node,
        bundle=site_bundle(topo, site),
        listen_port=site.gateway.port,
        address=IPv4Interface(f"{site.gateway.overlay}/32"),
        peers=(*peers, *users),
        refused=tuple(refused),
        skipped=tuple(skipped),
        replan_at=replan_at,
    )
