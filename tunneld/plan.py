"""What one node's tunnels should look like: a pure function of the topology.

`plan(topology, node)` lists the node's gateway peers with their pinned keys,
endpoints, allowed IPs, routes, handshake role and KEM. A site gateway's peers are the
gateways of every other site; a user node (later: `tunneld join`) is just a node with
one gateway peer, so the daemon below this plan does not care which kind it runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Interface, IPv4Network

from topology.model import Site, Topology
from tunneld.handshake import Role
from tunneld.kem import PARAMS
from tunneld.keys import KeyFileError, PublicBundle, load_public


class PlanError(Exception):
    """The topology does not describe a runnable node (message says what to fix)."""


@dataclass(frozen=True)
class PeerPlan:
    name: str
    bundle: PublicBundle
    endpoint: str  # underlay host:port, for WireGuard (udp) and the handshake (tcp)
    allowed_ips: tuple[str, ...]
    routes: tuple[IPv4Network, ...]
    role: Role
    kem: str  # ephemeral KEM of the pair: the stronger of the two sites'


@dataclass(frozen=True)
class NodePlan:
    name: str
    bundle: PublicBundle  # what the topology pins for this node
    listen_port: int
    address: IPv4Interface
    peers: tuple[PeerPlan, ...]


def role_towards(local: str, peer: str) -> Role:
    """Between sites the name that sorts first initiates: never two crossing handshakes."""
    return "initiator" if local < peer else "responder"


def stronger(a: str, b: str) -> str:
    return a if PARAMS[a].public_key_size >= PARAMS[b].public_key_size else b


def _bundle(topo: Topology, site: Site) -> PublicBundle:
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


def plan(topo: Topology, node: str) -> NodePlan:
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
                bundle=_bundle(topo, other),
                endpoint=f"{other.gateway.underlay}:{other.gateway.port}",
                allowed_ips=tuple(str(n) for n in (overlay, *zones)),
                routes=(overlay, *zones),
                role=role_towards(node, name),
                kem=stronger(site.kem, other.kem),
            )
        )
    return NodePlan(
        name=node,
        bundle=_bundle(topo, site),
        listen_port=site.gateway.port,
        address=IPv4Interface(f"{site.gateway.overlay}/32"),
        peers=tuple(peers),
    )
