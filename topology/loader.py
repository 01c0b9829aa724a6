"""Files to model: find the files, parse them, merge sections, build typed objects.

Names are collected from every file first, so a reference may point into another file
of the same directory; every reference is checked where it is written, so its error
carries the exact place. Global checks (overlaps, risk rules) live in validate.py.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import time
from ipaddress import IPv4Address
from pathlib import Path
from typing import cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from topology.diagnostics import Diagnostics, Location
from topology.fields import Reader, suggest
from topology.model import (
    Approval,
    Asset,
    Conduit,
    Emergency,
    Expect,
    FunctionClass,
    Gateway,
    Identity,
    IdentityKind,
    PolicyTest,
    Role,
    Schedule,
    Service,
    ServiceRef,
    Site,
    Sources,
    Target,
    TargetKind,
    Topology,
    Zone,
    frozen_map,
)
from topology.refs import parse_service_spec
from topology.services import BUILTIN_SERVICES
from topology.yamlnodes import YMap, YNode, YScalar, YSeq, describe, parse_yaml

SECTIONS = ("version", "sites", "roles", "identities", "services", "conduits", "tests")
NAMED_SECTIONS = ("sites", "roles", "identities", "services", "conduits")
FORMAT_VERSION = 1
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
KEMS = ("ml-kem-768", "ml-kem-1024")


@dataclass
class Entry:
    """One named definition as written: its name, where, and its YAML node."""

    name: str
    location: Location
    node: YNode
    base: Path  # directory of the file it came from, for relative paths


def display_path(path: Path) -> str:
    rel = os.path.relpath(path)
    return path.as_posix() if rel.startswith("..") else Path(rel).as_posix()


def discover(path: Path, diags: Diagnostics) -> list[Path]:
    """The topology files under `path`: the file itself, or *.yaml/*.yml in a directory."""
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
        if not files:
            diags.error(Location(display_path(path), 1, 1), "no .yaml or .yml files in directory")
        return files
    diags.error(Location(display_path(path), 1, 1), "no such file or directory")
    return []


class Builder:
    """Builds a Topology from parsed files, reporting every problem into `diags`."""

    def __init__(self, diags: Diagnostics) -> None:
        self.diags = diags
        self.r = Reader(diags)
        self.entries: dict[str, dict[str, Entry]] = {s: {} for s in NAMED_SECTIONS}
        self.tests: list[tuple[YNode, Path]] = []
        self.files: list[str] = []
        # Filled while building, used to check references.
        self.services: dict[str, Service] = dict(BUILTIN_SERVICES)
        self.sites: dict[str, Site] = {}
        self.roles: dict[str, Role] = {}
        self.identities: dict[str, Identity] = {}

    # -- collecting -------------------------------------------------------------------

    def add_file(self, path: Path) -> None:
        shown = display_path(path)
        self.files.append(shown)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            self.diags.error(Location(shown, 1, 1), f"cannot read file: {exc}")
            return
        before = len(self.diags.items)
        root = parse_yaml(text, shown, self.diags)
        if root is None:
            if len(self.diags.items) == before:
                self.diags.error(
                    Location(shown, 1, 1), "file is empty", "start it with 'version: 1'"
                )
            return
        top = self.r.mapping(root, "a topology file")
        if top is None:
            return
        self.r.keys(top, SECTIONS, "a topology file")
        version = top.get("version")
        if version is None:
            self.diags.error(top.location, "missing 'version'", f"add 'version: {FORMAT_VERSION}'")
        elif not (isinstance(version, YScalar) and version.value == FORMAT_VERSION):
            self.diags.error(
                version.location,
                f"unsupported format version {getattr(version, 'value', '?')!r}",
                f"this Zonegate reads version {FORMAT_VERSION}",
            )
        for section in NAMED_SECTIONS:
            block = self.r.mapping(top.get(section), f"'{section}'")
            if block is None:
                continue
            for name, (loc, node) in block.entries.items():
                seen = self.entries[section].get(name)
                if seen is not None:
                    self.diags.error(
                        loc,
                        f"{section[:-1].replace('identitie', 'identity')} '{name}' is defined "
                        f"twice (also at {seen.location})",
                    )
                    continue
                self.entries[section][name] = Entry(name, loc, node, path.parent)
        tests = top.get("tests")
        if tests is not None:
            if isinstance(tests, YSeq):
                self.tests.extend((t, path.parent) for t in tests.items)
            else:
                self.diags.error(tests.location, f"'tests' must be a list, found {describe(tests)}")

    # -- building ---------------------------------------------------------------------

    def build(self) -> Topology:
        for e in self.entries["services"].values():
            self._build_custom_service(e)
        for e in self.entries["sites"].values():
            self._build_site(e)
        for e in self.entries["roles"].values():
            self._build_role(e)
        for e in self.entries["identities"].values():
            self._build_identity(e)
        conduits = {
            c.name: c
            for c in (self._build_conduit(e) for e in self.entries["conduits"].values())
            if c is not None
        }
        tests = tuple(t for t in (self._build_test(n) for n, _ in self.tests) if t is not None)
        return Topology(
            sites=frozen_map(self.sites),
            roles=frozen_map(self.roles),
            identities=frozen_map(self.identities),
            services=frozen_map(self.services),
            conduits=frozen_map(conduits),
            tests=tests,
            files=tuple(self.files),
        )

    def _named_map(self, e: Entry, what: str, allowed: tuple[str, ...]) -> YMap | None:
        if not self.r.name(e.name, e.location, what):
            return None
        node = self.r.mapping(e.node, f"{what} '{e.name}'")
        if node is not None:
            self.r.keys(node, allowed, f"{what} '{e.name}'")
        return node

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
        node = self._named_map(e, "site", ("gateway", "zones", "assets", "kem", "description"))
        if node is None:
            return
        what = f"site '{e.name}'"
        gw_node = self.r.mapping(self.r.required(node, "gateway", what), f"{what} gateway")
        gateway = None
        if gw_node is not None:
            self.r.keys(gw_node, ("underlay", "port", "overlay"), f"{what} gateway")
            underlay = self.r.string(self.r.required(gw_node, "underlay", "gateway"), "underlay")
            port_node = gw_node.get("port")
            port = 51820 if port_node is None else self.r.integer(port_node, "port", 1, 65535)
            overlay = self.r.address(self.r.required(gw_node, "overlay", "gateway"), "overlay")
            if underlay and port and overlay:
                gateway = Gateway(underlay, port, overlay)
        kem = self.r.string(node.get("kem"), "kem") or "ml-kem-768"
        if kem not in KEMS:
            self.diags.error(node.key_location("kem"), f"unknown kem '{kem}'", suggest(kem, KEMS))
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
        self.sites[e.name] = Site(
            e.name, gateway, frozen_map(zones), frozen_map(assets), kem, e.location
        )

    def _children(self, node: YMap, key: str, what: str) -> dict[str, tuple[Location, YNode]]:
        block = self.r.mapping(node.get(key), f"{what} {key}")
        return block.entries if block else {}

    def _build_zone(self, site: str, name: str, loc: Location, node: YNode) -> Zone | None:
        what = f"zone '{site}/{name}'"
        if not self.r.name(name, loc, "zone"):
            return None
        m = self.r.mapping(node, what)
        if m is None:
            return None
        self.r.keys(m, ("cidr", "security_level", "description"), what)
        cidr = self.r.network(self.r.required(m, "cidr", what), "cidr")
        level = self.r.integer(self.r.required(m, "security_level", what), "security_level", 1, 4)
        if cidr is None or level is None:
            return None
        desc = self.r.string(m.get("description"), "description") or ""
        return Zone(site, name, cidr, level, desc, loc)

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
            keys = str(key_path)
        valid_from = self.r.moment(node.get("valid_from"), "valid_from")
        valid_until = self.r.moment(node.get("valid_until"), "valid_until")
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

    def _hint_role(self, role: str) -> str:
        hint = suggest(role, self.entries["roles"])
        return hint or "declare it under 'roles:'"

    # -- conduits ---------------------------------------------------------------------

    def _build_conduit(self, e: Entry) -> Conduit | None:
        allowed = (
            "from",
            "to",
            "allow",
            "schedule",
            "approval",
            "emergency",
            "record",
            "description",
        )
        node = self._named_map(e, "conduit", allowed)
        if node is None:
            return None
        what = f"conduit '{e.name}'"
        ok = True
        sources = self._sources(self.r.required(node, "from", what), what)
        target = self._target(self.r.required(node, "to", what), what)
        allow = self._allow(self.r.required(node, "allow", what), what)
        schedule = self._schedule(node.get("schedule"))
        approval = self._approval(node.get("approval"), what)
        emergency = None
        em_node = self.r.mapping(node.get("emergency"), "emergency")
        if em_node is not None:
            self.r.keys(em_node, ("max",), "emergency")
            em_max = self.r.duration(self.r.required(em_node, "max", "emergency"), "max")
            emergency = Emergency(em_max) if em_max else None
            ok = ok and emergency is not None
            if node.get("approval") is not None:
                self.diags.error(
                    node.key_location("emergency"),
                    f"{what} has both approval and emergency",
                    "emergency access opens without approval; make two conduits",
                )
                ok = False
        record = self.r.boolean(node.get("record"), "record") or False
        if node.get("schedule") is not None and schedule is None:
            ok = False
        if node.get("approval") is not None and approval is None:
            ok = False
        if sources is None or target is None or allow is None or not ok:
            return None
        return Conduit(
            name=e.name,
            sources=sources,
            target=target,
            allow=allow,
            schedule=schedule,
            approval=approval,
            emergency=emergency,
            record=record,
            description=self.r.string(node.get("description"), "description") or "",
            location=e.location,
        )

    def _sources(self, node: YNode | None, what: str) -> Sources | None:
        m = self.r.mapping(node, f"{what} from")
        if m is None:
            return None
        self.r.keys(m, ("identities", "roles", "zones"), f"{what} from")
        idents = self._refs(m, "identities", self.entries["identities"], "identity")
        roles = self._refs(m, "roles", self.entries["roles"], "role")
        zones = [
            z for z, zloc in self.r.string_list(m.get("zones"), "zones") if self._zone_ref(z, zloc)
        ]
        if not (m.get("identities") or m.get("roles") or m.get("zones")):
            self.diags.error(
                m.location, f"{what} 'from' names nobody", "list identities, roles or zones"
            )
            return None
        return Sources(tuple(idents), tuple(roles), tuple(zones))

    def _refs(self, m: YMap, key: str, names: dict[str, Entry], what: str) -> list[str]:
        out = []
        for ref, loc in self.r.string_list(m.get(key), key):
            if ref in names:
                out.append(ref)
            else:
                hint = self._hint_role(ref) if what == "role" else suggest(ref, names)
                self.diags.error(loc, f"unknown {what} '{ref}'", hint)
        return out

    def _zone_ref(self, ref: str, loc: Location) -> bool:
        site, sep, zone = ref.partition("/")
        if not sep:
            self.diags.error(loc, f"zone reference '{ref}' must be SITE/ZONE")
            return False
        if site not in self.sites:
            self.diags.error(loc, f"unknown site '{site}' in '{ref}'", suggest(site, self.sites))
            return False
        if zone not in self.sites[site].zones:
            zones = self.sites[site].zones
            self.diags.error(loc, f"site '{site}' has no zone '{zone}'", suggest(zone, zones))
            return False
        return True

    def _asset_ref(self, ref: str, loc: Location) -> bool:
        site, sep, asset = ref.partition("/")
        if not sep:
            self.diags.error(loc, f"asset reference '{ref}' must be SITE/ASSET")
            return False
        if site not in self.sites:
            self.diags.error(loc, f"unknown site '{site}' in '{ref}'", suggest(site, self.sites))
            return False
        if asset not in self.sites[site].assets:
            assets = self.sites[site].assets
            self.diags.error(loc, f"site '{site}' has no asset '{asset}'", suggest(asset, assets))
            return False
        return True

    def _target(self, node: YNode | None, what: str) -> Target | None:
        m = self.r.mapping(node, f"{what} to")
        if m is None:
            return None
        self.r.keys(m, ("zone", "asset"), f"{what} to")
        if (m.get("zone") is None) == (m.get("asset") is None):
            self.diags.error(m.location, f"{what} 'to' needs exactly one of 'zone' or 'asset'")
            return None
        kind = TargetKind.ZONE if m.get("zone") is not None else TargetKind.ASSET
        ref = self.r.string(m.get(kind.value), kind.value)
        if ref is None:
            return None
        check: Callable[[str, Location], bool] = (
            self._zone_ref if kind is TargetKind.ZONE else self._asset_ref
        )
        if not check(ref, m.key_location(kind.value)):
            return None
        site, _, name = ref.partition("/")
        return Target(kind, site, name)

    def _allow(self, node: YNode | None, what: str) -> tuple[ServiceRef, ...] | None:
        if node is None:
            return None
        items = node.items if isinstance(node, YSeq) else [node]
        if not items:
            self.diags.error(node.location, f"{what} allows nothing", "list at least one service")
            return None
        refs: list[ServiceRef] = []
        ok = True
        for item in items:
            ref = self._service_ref(item)
            if ref is None:
                ok = False
            else:
                refs.append(ref)
        return tuple(refs) if ok else None

    def _service_ref(self, item: YNode) -> ServiceRef | None:
        if isinstance(item, YScalar) and isinstance(item.value, str):
            name, wanted = item.value, []
            if "/" in name:
                base, _, cls = name.partition("/")
                self.diags.error(
                    item.location,
                    f"write '{{{base}: {cls}}}' in allow, not '{name}'",
                )
                return None
        elif isinstance(item, YMap) and len(item.entries) == 1:
            name, (_, cnode) = next(iter(item.entries.items()))
            wanted = self.r.string_list(cnode, f"{name} classes")
        else:
            self.diags.error(
                item.location,
                f"each allow entry is a service name or {{service: classes}}, "
                f"found {describe(item)}",
            )
            return None
        service = self.services.get(name)
        if service is None:
            self.diags.error(
                item.location,
                f"unknown service '{name}'",
                suggest(name, self.services) or "define it under 'services:'",
            )
            return None
        classes = []
        for cls, cloc in wanted:
            if cls not in service.classes:
                hint = suggest(cls, service.classes) if service.classes else ""
                msg = (
                    f"service '{name}' has no function class '{cls}'"
                    if service.classes
                    else f"service '{name}' has no function classes"
                )
                self.diags.error(cloc, msg, hint)
                return None
            classes.append(cls)
        return ServiceRef(name, tuple(dict.fromkeys(classes)))

    def _schedule(self, node: YNode | None) -> Schedule | None:
        m = self.r.mapping(node, "schedule")
        if m is None:
            return None
        self.r.keys(m, ("days", "hours", "tz"), "schedule")
        days = self._days(m.get("days"))
        hours_node = m.get("hours")
        start, end = time(0, 0), time.max
        if hours_node is not None:
            text = self.r.string(hours_node, "hours")
            if text is None:
                return None
            a, sep, b = text.partition("-")
            if not sep:
                self.diags.error(hours_node.location, f"hours '{text}' must be HH:MM-HH:MM")
                return None
            s = self.r.clock(a.strip(), hours_node.location, "start")
            t = self.r.clock(b.strip(), hours_node.location, "end")
            if s is None or t is None:
                return None
            start, end = s, t
        tz = self.r.string(m.get("tz"), "tz") or "UTC"
        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            self.diags.error(
                m.key_location("tz"),
                f"unknown time zone '{tz}'",
                "use an IANA name such as Europe/Berlin or UTC",
            )
            return None
        if days is None:
            return None
        return Schedule(frozenset(days), start, end, tz)

    def _days(self, node: YNode | None) -> set[int] | None:
        if node is None:
            return set(range(7))
        parts: list[tuple[str, Location]]
        if isinstance(node, YScalar) and isinstance(node.value, str):
            parts = [(p.strip(), node.location) for p in node.value.split(",")]
        else:
            parts = self.r.string_list(node, "days")
        days: set[int] = set()
        for part, loc in parts:
            lo, sep, hi = part.lower().partition("-")
            names = [lo, hi] if sep else [lo]
            bad = [n for n in names if n[:3] not in DAYS or len(n) < 3]
            if bad:
                self.diags.error(loc, f"unknown day '{bad[0]}'", "use mon, tue, ... sun or mon-fri")
                return None
            a, b = DAYS.index(names[0][:3]), DAYS.index(names[-1][:3])
            span = range(a, b + 1) if a <= b else [*range(a, 7), *range(0, b + 1)]
            days.update(span)
        return days

    def _approval(self, node: YNode | None, what: str) -> Approval | None:
        m = self.r.mapping(node, "approval")
        if m is None:
            return None
        self.r.keys(m, ("by", "max"), "approval")
        roles, idents = [], []
        for ref, loc in self.r.string_list(self.r.required(m, "by", "approval"), "by"):
            if ref in self.entries["roles"]:
                roles.append(ref)
            elif ref in self.entries["identities"]:
                idents.append(ref)
            else:
                names = [*self.entries["roles"], *self.entries["identities"]]
                self.diags.error(
                    loc,
                    f"{what} approver '{ref}' is neither a role nor an identity",
                    suggest(ref, names),
                )
                return None
        max_duration = self.r.duration(self.r.required(m, "max", "approval"), "max")
        if max_duration is None or not (roles or idents):
            return None
        return Approval(tuple(roles), tuple(idents), max_duration)

    # -- tests ------------------------------------------------------------------------

    def _build_test(self, node: YNode) -> PolicyTest | None:
        m = self.r.mapping(node, "a test")
        if m is None:
            return None
        self.r.keys(m, ("from", "to", "service", "expect", "at", "granted"), "a test")
        source = self.r.string(self.r.required(m, "from", "a test"), "from")
        target = self.r.string(self.r.required(m, "to", "a test"), "to")
        service = self.r.string(self.r.required(m, "service", "a test"), "service")
        expect = self.r.string(self.r.required(m, "expect", "a test"), "expect")
        at = self.r.moment(m.get("at"), "at")
        granted = self.r.boolean(m.get("granted"), "granted") or False
        ok = True
        if source is not None and not self._endpoint(source, m.key_location("from"), True):
            ok = False
        if target is not None and not self._endpoint(target, m.key_location("to"), False):
            ok = False
        if service is not None:
            problem = parse_service_spec(service, self.services)
            if isinstance(problem, tuple):
                self.diags.error(m.key_location("service"), problem[0], problem[1])
                ok = False
        if expect is not None and expect not in ("allow", "deny"):
            self.diags.error(
                m.key_location("expect"), f"expect must be allow or deny, not '{expect}'"
            )
            ok = False
        if not (ok and source and target and service and expect):
            return None
        return PolicyTest(source, target, service, cast(Expect, expect), at, granted, m.location)

    def _endpoint(self, ref: str, loc: Location, is_source: bool) -> bool:
        if is_source and ref in self.identities:
            return True
        if "/" in ref:
            site, _, name = ref.partition("/")
            s = self.sites.get(site)
            if s is not None and (name in s.zones or name in s.assets):
                return True
            if s is None:
                self.diags.error(
                    loc, f"unknown site '{site}' in '{ref}'", suggest(site, self.sites)
                )
            else:
                names = [*s.zones, *s.assets]
                self.diags.error(
                    loc, f"site '{site}' has no zone or asset '{name}'", suggest(name, names)
                )
            return False
        try:
            IPv4Address(ref)
            return True
        except ValueError:
            pass
        what = (
            "identity, SITE/ZONE, SITE/ASSET or address"
            if is_source
            else "SITE/ASSET, SITE/ZONE or address"
        )
        hint = suggest(ref, self.identities) if is_source else ""
        self.diags.error(
            loc, f"unknown {what.split(',')[0]} '{ref}'", hint or f"expected an {what}"
        )
        return False


def load_files(path: Path, diags: Diagnostics) -> Topology:
    builder = Builder(diags)
    for file in discover(path, diags):
        builder.add_file(file)
    return builder.build()
