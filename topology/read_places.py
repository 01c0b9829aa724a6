"""Reading sites, zones, assets, custom services, roles and identities."""

from __future__ import annotations

import re
from ipaddress import IPv4Network
from typing import cast

from topology.diagnostics import Location
from topology.fields import suggest
from topology.keybundle import BundleError, read_bundle
from topology.model import (
    CODE_KEMS,
    Asset,
    FunctionClass,
    Gateway,
    Identity,
    IdentityKind,
    ManagementAccess,
    Role,
    Service,
    Site,
    Zone,
    frozen_map,
)
from topology.read_context import Entry, ReadContext
from topology.services import BUILTIN_SERVICES
from topology.yamlnodes import YNode, YSeq

KEMS = ("ml-kem-768", "ml-kem-1024")
_IFNAME = re.compile(r"[^\s/:*]{1,15}")  # a Linux interface name (IFNAMSIZ - 1)


class PlacesReader(ReadContext):
    """Builds the physical and identity parts of the model from their YAML entries."""

    def _build_custom_service(self, e: Entry) -> None:
        allowed = ("transport", "ports", "description", "classes", "payload_offset")
        node = self._named_map(e, "service", allowed)
        if node is None:
            return
        if e.name in BUILTIN_SERVICES:
            self.diags.error(
                e.location,
                f"service '{e.name}' is built in and cannot be redefined",
                "give your service another name",
            )
            return
        what = f"service '{e.name}'"
        transport = self.r.string(self.r.required(node, "transport", what), "transport")
        if transport is not None and transport not in ("tcp", "udp"):
            self.diags.error(node.key_location("transport"), "transport must be tcp or udp")
            transport = None
        ports: list[int] = []
        ports_node = self.r.required(node, "ports", what)
        items = ports_node.items if isinstance(ports_node, YSeq) else [ports_node]
        for item in items:
            port = self.r.integer(item, "a port", 1, 65535) if item is not None else None
            if port is not None:
                ports.append(port)
        classes: dict[str, FunctionClass] = {}
        classes_node = self.r.mapping(node.get("classes"), "classes")
        offset = self.r.integer(node.get("payload_offset"), "payload_offset", 0, 8 * 1400)
        if classes_node is not None:
            if offset is None:
                self.diags.error(
                    node.location,
                    f"{what} has classes but no payload_offset",
                    "set payload_offset to the bit offset of the function code in the payload",
                )
            for cname, (_cloc, cnode) in classes_node.entries.items():
                codes_node = cnode.items if isinstance(cnode, YSeq) else [cnode]
                codes = [self.r.integer(c, "a function code", 0, 255) for c in codes_node]
                if all(c is not None for c in codes):
                    classes[cname] = FunctionClass(cname, tuple(cast(list[int], codes)))
        if transport is None or not ports:
            return
        self.services[e.name] = Service(
            name=e.name,
            transport="tcp" if transport == "tcp" else "udp",
            ports=tuple(ports),
            description=self.r.string(node.get("description"), "description") or "",
            classes=frozen_map(classes),
            payload_offset=offset,
            builtin=False,
            location=e.location,
        )

    def _build_site(self, e: Entry) -> None:
        allowed = ("gateway", "zones", "assets", "kem", "code_kem", "description", "tz")
        node = self._named_map(e, "site", allowed)
        if node is None:
            return
        what = f"site '{e.name}'"
        gw_node = self.r.mapping(self.r.required(node, "gateway", what), f"{what} gateway")
        gateway = None
        if gw_node is not None:
            gw_keys = ("underlay", "port", "overlay", "management")
            self.r.keys(gw_node, gw_keys, f"{what} gateway")
            underlay = self.r.string(self.r.required(gw_node, "underlay", "gateway"), "underlay")
            port_node = gw_node.get("port")
            port = 51820 if port_node is None else self.r.integer(port_node, "port", 1, 65535)
            overlay = self.r.address(self.r.required(gw_node, "overlay", "gateway"), "overlay")
            management = self._management(gw_node.get("management"), f"{what} gateway management")
            if underlay and port and overlay:
                gateway = Gateway(underlay, port, overlay, management)
        kem = self.r.string(node.get("kem"), "kem") or "ml-kem-768"
        if kem not in KEMS:
            self.diags.error(node.key_location("kem"), f"unknown kem '{kem}'", suggest(kem, KEMS))
        code_kem = self.r.string(node.get("code_kem"), "code_kem")
        if code_kem is not None and code_kem not in CODE_KEMS:
            self.diags.error(
                node.key_location("code_kem"),
                f"unknown code_kem '{code_kem}'",
                suggest(code_kem, CODE_KEMS),
            )
        zones = {}
        for zname, (zloc, znode) in self._children(node, "zones", what).items():
            zone = self._build_zone(e.name, zname, zloc, znode)
            if zone is not None:
                zones[zname] = zone
        assets = {}
        for aname, (aloc, anode) in self._children(node, "assets", what).items():
            asset = self._build_asset(e.name, aname, aloc, anode, zones)
            if asset is not None:
                assets[aname] = asset
        if gateway is None:
            return
        tz = self._time_zone(node)
        if tz is None:
            return
        self.sites[e.name] = Site(
            e.name,
            gateway,
            frozen_map(zones),
            frozen_map(assets),
            kem,
            e.location,
            code_kem=code_kem if code_kem in CODE_KEMS else None,
            tz=tz,
        )

    def _management(self, node: YNode | None, what: str) -> tuple[ManagementAccess, ...]:
        """`management: [{from: [zone | identity | CIDR], allow: [ssh, api, ...]}]`."""
        if node is None:
            return ()
        items = node.items if isinstance(node, YSeq) else [node]
        out = []
        for item in items:
            m = self.r.mapping(item, what)
            if m is None:
                continue
            self.r.keys(m, ("from", "allow"), what)
            sources = []
            for ref, loc in self.r.string_list(self.r.required(m, "from", what), "from"):
                if "/" in ref and ref[0].isalpha():
                    sources.append(ref)  # a zone, checked when compiled
                elif ref in self.entries["identities"]:
                    sources.append(ref)
                else:
                    try:
                        IPv4Network(ref, strict=False)
                    except ValueError:
                        self.diags.error(loc, f"{what}: '{ref}' is no zone, identity or CIDR")
                        continue
                    sources.append(ref)
            services = []
            for name, loc in self.r.string_list(self.r.required(m, "allow", what), "allow"):
                if (
                    name != "api"
                    and name not in self.services
                    and name not in self.entries["services"]
                ):
                    hint = suggest(name, [*self.services, *self.entries["services"], "api"])
                    self.diags.error(loc, f"{what}: unknown service '{name}'", hint)
                    continue
                services.append(name)
            out.append(ManagementAccess(tuple(sources), tuple(services)))
        return tuple(out)

    def _build_zone(self, site: str, name: str, loc: Location, node: YNode) -> Zone | None:
        what = f"zone '{site}/{name}'"
        if not self.r.name(name, loc, "zone"):
            return None
        m = self.r.mapping(node, what)
        if m is None:
            return None
        self.r.keys(m, ("cidr", "security_level", "description", "interface"), what)
        cidr = self.r.network(self.r.required(m, "cidr", what), "cidr")
        level = self.r.integer(self.r.required(m, "security_level", what), "security_level", 1, 4)
        if cidr is None or level is None:
            return None
        desc = self.r.string(m.get("description"), "description") or ""
        iface = self.r.string(m.get("interface"), "interface")
        if iface is not None and not _IFNAME.fullmatch(iface):
            self.diags.error(
                m.key_location("interface"),
                f"{what}: interface '{iface}' is not an interface name",
                "1-15 characters, no spaces or '/', e.g. eth1 or eth1.20",
            )
            return None
        return Zone(site, name, cidr, level, desc, loc, iface)

    def _build_asset(
        self, site: str, name: str, loc: Location, node: YNode, zones: dict[str, Zone]
    ) -> Asset | None:
        what = f"asset '{site}/{name}'"
        if not self.r.name(name, loc, "asset"):
            return None
        m = self.r.mapping(node, what)
        if m is None:
            return None
        self.r.keys(m, ("zone", "address", "services", "description"), what)
        zone = self.r.string(self.r.required(m, "zone", what), "zone")
        address = self.r.address(self.r.required(m, "address", what), "address")
        services = []
        for svc, sloc in self.r.string_list(m.get("services"), "services"):
            if svc in self.services:
                services.append(svc)
            else:
                self.diags.error(sloc, f"unknown service '{svc}'", suggest(svc, self.services))
        if zone in (self._declared(site, "zones") or {}) and zone not in zones:
            return None  # the zone has an error of its own
        if zone is not None and zone not in zones:
            self.diags.error(
                m.key_location("zone"),
                f"{what} is in zone '{zone}', which site '{site}' does not define",
                suggest(zone, zones),
            )
            return None
        if zone is None or address is None:
            return None
        if address not in zones[zone].cidr:
            self.diags.error(
                m.key_location("address"),
                f"{what} address {address} is outside its zone {zone} ({zones[zone].cidr})",
            )
            return None
        desc = self.r.string(m.get("description"), "description") or ""
        return Asset(site, name, zone, address, tuple(services), desc, loc)

    def _build_role(self, e: Entry) -> None:
        node = self._named_map(e, "role", ("description",))
        if node is None:
            return
        desc = self.r.string(node.get("description"), "description") or ""
        self.roles[e.name] = Role(e.name, desc, e.location)

    def _build_identity(self, e: Entry) -> None:
        allowed = (
            "kind",
            "roles",
            "overlay",
            "keys",
            "valid_from",
            "valid_until",
            "site",
            "description",
        )
        node = self._named_map(e, "identity", allowed)
        if node is None:
            return
        what = f"identity '{e.name}'"
        kind = self.r.string(self.r.required(node, "kind", what), "kind")
        if kind is not None and kind not in ("user", "site", "service"):
            self.diags.error(
                node.key_location("kind"),
                f"{what} has unknown kind '{kind}'",
                suggest(kind, ("user", "site", "service")),
            )
            return
        roles = []
        for role, rloc in self.r.string_list(node.get("roles"), "roles"):
            if role not in self.entries["roles"]:
                self.diags.error(rloc, f"{what} has unknown role '{role}'", self._hint_role(role))
            else:
                roles.append(role)
        site = None
        overlay = self.r.address(node.get("overlay"), "overlay")
        if kind == "site":
            site = self.r.string(node.get("site"), "site") or e.name
            if site not in self.entries["sites"]:
                self.diags.error(
                    node.key_location("site") if node.get("site") else e.location,
                    f"{what} is a site identity for unknown site '{site}'",
                    suggest(site, self.entries["sites"]),
                )
                return
            gw = self.sites[site].gateway.overlay if site in self.sites else None
            if overlay is not None and gw is not None and overlay != gw:
                self.diags.error(
                    node.key_location("overlay"),
                    f"{what} overlay {overlay} differs from site '{site}' gateway overlay {gw}",
                    "leave overlay out: a site identity uses its gateway's overlay address",
                )
            overlay = overlay or gw
        elif node.get("site") is not None:
            self.diags.error(node.key_location("site"), "only identities of kind site name a site")
        elif node.get("overlay") is None and kind is not None:
            self.diags.error(
                node.location,
                f"{what} needs 'overlay', its fixed tunnel address",
                "pick a free address in the overlay range, e.g. 100.64.1.10",
            )
        keys = None
        keys_text = self.r.string(node.get("keys"), "keys")
        if keys_text is not None:
            key_path = (e.base / keys_text).resolve()
            if not key_path.is_file():
                self.diags.error(
                    node.key_location("keys"),
                    f"{what} key file '{keys_text}' does not exist",
                    "run 'tunneld keygen DIR' where the identity lives and commit DIR/*.pub",
                )
            else:
                try:
                    read_bundle(key_path)
                except BundleError as exc:
                    self.diags.error(
                        node.key_location("keys"),
                        f"{what} key file '{keys_text}': {exc}",
                        "make new keys with 'tunneld keygen DIR' and pin DIR/identity.pub",
                    )
            keys = str(key_path)
        day_tz = self._day_tz(site)
        valid_from = self.r.moment(node.get("valid_from"), "valid_from", day_tz)
        if valid_from is None and node.get("valid_from") is not None:
            day_tz = day_tz or "UTC"  # an ambiguous day is reported once per identity
        valid_until = self.r.moment(node.get("valid_until"), "valid_until", day_tz, True)
        if valid_from and valid_until and valid_from >= valid_until:
            self.diags.error(
                node.key_location("valid_until"),
                f"{what} is never valid: valid_until is not after valid_from",
            )
        if kind is None:
            return
        self.identities[e.name] = Identity(
            name=e.name,
            kind=cast(IdentityKind, kind),
            roles=tuple(roles),
            overlay=overlay,
            keys=keys,
            valid_from=valid_from,
            valid_until=valid_until,
            site=site,
            description=self.r.string(node.get("description"), "description") or "",
            location=e.location,
        )
