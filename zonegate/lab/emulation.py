"""The topology file as an emulated plant in Mininet.

`plan_network()` is pure: which hosts, switches and addresses the file implies (one
WAN switch for the underlay; one gateway host per site; one LAN switch per zone;
asset hosts running real services; one host per remote user). `PlantNet` builds that
plan in Mininet with Linux bridges and no controller (Open vSwitch's datapath is
missing on this machine kind), each host with a private /var/run/wireguard so every
host can run its own wireguard-go.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any, Literal

from topology.model import Topology

HostKind = Literal["gateway", "asset", "probe", "user"]
USER_UNDERLAY = IPv4Network("198.51.100.0/24")  # TEST-NET-2, only inside the emulation
PRIVATE_DIRS = ["/var/run/wireguard", "/var/run/zonegate"]


@dataclass(frozen=True)
class Interface:
    switch: str
    address: IPv4Interface


@dataclass(frozen=True)
class HostPlan:
    node: str  # Mininet node name (short: interface names are at most 15 characters)
    label: str  # the topology's name: site, SITE/ASSET, SITE/ZONE (probe) or identity
    kind: HostKind
    interfaces: tuple[Interface, ...]
    gateway: IPv4Address | None = None  # next hop of the default route; None: on-link
    tcp_ports: tuple[int, ...] = ()
    udp_ports: tuple[int, ...] = ()
    modbus: bool = False


@dataclass(frozen=True)
class SwitchPlan:
    node: str
    label: str  # "wan" or SITE/ZONE


@dataclass(frozen=True)
class Plan:
    switches: tuple[SwitchPlan, ...]
    hosts: tuple[HostPlan, ...]

    def host(self, label: str) -> HostPlan:
        for h in self.hosts:
            if h.label == label:
                return h
        raise KeyError(f"no emulated host for '{label}'")

    def zone_host(self, zone_ref: str) -> HostPlan:
        """A host inside the zone: its first asset, or the zone's probe host."""
        site, _, zone = zone_ref.partition("/")
        for h in self.hosts:
            if h.kind in ("asset", "probe") and h.interfaces[0].switch == self._switch(zone_ref):
                return h
        raise KeyError(f"no host in zone {site}/{zone}")

    def _switch(self, label: str) -> str:
        return next(s.node for s in self.switches if s.label == label)


def plan_network(topo: Topology, prefix: str = "zm") -> Plan:
    switches = [SwitchPlan(f"{prefix}s0", "wan")]
    hosts: list[HostPlan] = []
    zone_switch: dict[str, str] = {}
    for site in sorted(topo.sites.values(), key=lambda s: s.name):
        for zone in sorted(site.zones.values(), key=lambda z: z.name):
            node = f"{prefix}s{len(switches)}"
            switches.append(SwitchPlan(node, zone.ref))
            zone_switch[zone.ref] = node

    for i, site in enumerate(sorted(topo.sites.values(), key=lambda s: s.name), start=1):
        ifaces = [Interface(f"{prefix}s0", IPv4Interface(f"{site.gateway.underlay}/32"))]
        used_by_assets = {a.address for a in site.assets.values()}
        lan_gateway: dict[str, IPv4Address] = {}
        for zone in sorted(site.zones.values(), key=lambda z: z.name):
            address = next(a for a in zone.cidr.hosts() if a not in used_by_assets)
            lan_gateway[zone.name] = address
            ifaces.append(
                Interface(zone_switch[zone.ref], IPv4Interface(f"{address}/{zone.cidr.prefixlen}"))
            )
        hosts.append(HostPlan(f"{prefix}g{i}", site.name, "gateway", tuple(ifaces)))
        for asset in sorted(site.assets.values(), key=lambda a: a.name):
            zone = site.zones[asset.zone]
            services = [topo.services[s] for s in asset.services if s in topo.services]
            hosts.append(
                HostPlan(
                    f"{prefix}a{sum(1 for h in hosts if h.kind == 'asset') + 1}",
                    asset.ref,
                    "asset",
                    (
                        Interface(
                            zone_switch[zone.ref],
                            IPv4Interface(f"{asset.address}/{zone.cidr.prefixlen}"),
                        ),
                    ),
                    gateway=lan_gateway[zone.name],
                    tcp_ports=tuple(
                        p
                        for s in services
                        if s.transport == "tcp" and s.name != "modbus"
                        for p in s.ports
                    ),
                    udp_ports=tuple(p for s in services if s.transport == "udp" for p in s.ports),
                    modbus=any(s.name == "modbus" for s in services),
                )
            )
        for zone in sorted(site.zones.values(), key=lambda z: z.name):
            if any(a.zone == zone.name for a in site.assets.values()):
                continue
            last = list(zone.cidr.hosts())[-1]
            hosts.append(
                HostPlan(
                    f"{prefix}p{sum(1 for h in hosts if h.kind == 'probe') + 1}",
                    zone.ref,
                    "probe",
                    (
                        Interface(
                            zone_switch[zone.ref], IPv4Interface(f"{last}/{zone.cidr.prefixlen}")
                        ),
                    ),
                    gateway=lan_gateway[zone.name],
                    tcp_ports=(22, 443),
                )
            )

    underlays = {str(s.gateway.underlay) for s in topo.sites.values()}
    free = (a for a in USER_UNDERLAY.hosts() if int(a) & 0xFF >= 10 and str(a) not in underlays)
    users = [i for i in topo.identities.values() if i.kind in ("user", "service")]
    for n, ident in enumerate(sorted(users, key=lambda i: i.name), start=1):
        address = next(free)
        hosts.append(
            HostPlan(
                f"{prefix}u{n}",
                ident.name,
                "user",
                (Interface(f"{prefix}s0", IPv4Interface(f"{address}/32")),),
            )
        )
    return Plan(tuple(switches), tuple(hosts))


class PlantNet:
    """A running emulated plant. Use as a context manager: it always tears down."""

    def __init__(self, topo: Topology, prefix: str = "zm") -> None:
        self.topology = topo
        self.plan = plan_network(topo, prefix)
        self.net: Any = None
        self.nodes: dict[str, Any] = {}  # label -> Mininet host
        self._procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        from mininet.log import setLogLevel
        from mininet.net import Mininet
        from mininet.nodelib import LinuxBridge

        setLogLevel("error")
        self.net = Mininet(
            switch=LinuxBridge,
            controller=None,
            build=False,
            autoSetMacs=False,
            ipBase="172.31.254.0/24",
        )
        switches = {s.node: self.net.addSwitch(s.node) for s in self.plan.switches}
        for h in self.plan.hosts:
            node = self.net.addHost(h.node, ip=None, privateDirs=PRIVATE_DIRS)
            self.nodes[h.label] = node
            for iface in h.interfaces:
                self.net.addLink(node, switches[iface.switch])
        self.net.build()
        self.net.start()
        for h in self.plan.hosts:
            self._configure(h)

    def _configure(self, h: HostPlan) -> None:
        node = self.nodes[h.label]
        for n, iface in enumerate(h.interfaces):
            dev = f"{h.node}-eth{n}"
            node.cmd(f"ip addr flush dev {dev}")
            node.cmd(f"ip addr add {iface.address} dev {dev}")
            node.cmd(f"ip link set {dev} up")
        if h.kind in ("gateway", "user"):
            node.cmd(f"ip route add default dev {h.node}-eth0")
        if h.kind == "gateway":
            node.cmd("sysctl -qw net.ipv4.ip_forward=1")
        if h.gateway is not None:
            node.cmd(f"ip route add default via {h.gateway}")
        if h.modbus or h.tcp_ports or h.udp_ports:
            args = [sys.executable, "-m", "zonegate.lab.assetsim"]
            if h.modbus:
                args += ["--modbus", "502"]
            for p in h.tcp_ports:
                args += ["--tcp", str(p)]
            for p in h.udp_ports:
                args += ["--udp", str(p)]
            proc = node.popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            self._procs.append(proc)
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != b"ready":
                raise RuntimeError(f"asset simulator on {h.label} did not start")

    def host(self, label: str) -> Any:
        return self.nodes[label]

    def stop(self) -> None:
        for proc in self._procs:
            proc.terminate()
        for proc in self._procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._procs.clear()
        if self.net is not None:
            self.net.stop()
            self.net = None


@contextmanager
def running_plant(topo: Topology, prefix: str = "zm") -> Iterator[PlantNet]:
    plant = PlantNet(topo, prefix)
    try:
        plant.start()
        yield plant
    finally:
        plant.stop()
