"""Addresses, MTU, link state and routes of the tunnel interface, through pyroute2.

Reconciled like the WireGuard config: read what the interface has, add what is
missing, remove only what we added before (routes carry our own protocol number), so
routes made by others are never touched.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from ipaddress import IPv4Interface, IPv4Network
from typing import Any

from pyroute2 import IPRoute, NetNS

log = logging.getLogger("tunneld.links")
RTPROT_TUNNELD = 77  # our routes, so a reconcile can tell them from others'
TUNNEL_MTU = 1420  # 1500-byte underlay minus WireGuard's 80 bytes of IPv6 worst case


@dataclass(frozen=True)
class LinkSpec:
    ifname: str
    addresses: tuple[IPv4Interface, ...]
    routes: tuple[IPv4Network, ...]
    mtu: int = TUNNEL_MTU


@contextmanager
def _ipr(netns: str | None) -> Iterator[Any]:
    ipr = NetNS(netns) if netns else IPRoute()
    try:
        yield ipr
    finally:
        ipr.close()


def reconcile_link(spec: LinkSpec, netns: str | None = None) -> list[str]:
    """Bring the link up with exactly `spec`'s addresses and our routes; return changes."""
    changes: list[str] = []
    with _ipr(netns) as ipr:
        found = ipr.link_lookup(ifname=spec.ifname)
        if not found:
            raise LookupError(f"interface {spec.ifname} does not exist")
        idx = found[0]
        link = ipr.get_links(idx)[0]
        if link.get("mtu") != spec.mtu or not (link["flags"] & 1):
            ipr.link("set", index=idx, mtu=spec.mtu, state="up")
            changes.append(f"link {spec.ifname} up mtu {spec.mtu}")
        have_addrs = {
            IPv4Interface(f"{a.get('IFA_ADDRESS')}/{a['prefixlen']}")
            for a in ipr.get_addr(index=idx, family=2)
        }
        for addr in sorted(set(spec.addresses) - have_addrs):
            ipr.addr("add", index=idx, address=str(addr.ip), prefixlen=addr.network.prefixlen)
            changes.append(f"address add {addr}")
        for addr in sorted(have_addrs - set(spec.addresses)):
            ipr.addr("del", index=idx, address=str(addr.ip), prefixlen=addr.network.prefixlen)
            changes.append(f"address del {addr}")
        have_routes = set()
        for r in ipr.get_routes(family=2, table=254):
            if r.get("RTA_OIF") == idx and r["proto"] == RTPROT_TUNNELD:
                have_routes.add(IPv4Network(f"{r.get('RTA_DST') or '0.0.0.0'}/{r['dst_len']}"))
        for net in sorted(set(spec.routes) - have_routes):
            ipr.route("replace", dst=str(net), oif=idx, proto=RTPROT_TUNNELD)
            changes.append(f"route add {net} dev {spec.ifname}")
        for net in sorted(have_routes - set(spec.routes)):
            ipr.route("del", dst=str(net), oif=idx, proto=RTPROT_TUNNELD)
            changes.append(f"route del {net} dev {spec.ifname}")
    for c in changes:
        log.info("%s", c)
    return changes
