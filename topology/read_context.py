"""Shared state of topology reading: the names collected from every file, and
reference checks that report at the place the reference is written."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from topology.diagnostics import Diagnostics, Location
from topology.fields import Reader, suggest
from topology.model import (
    Identity,
    Role,
    Service,
    Site,
)
from topology.services import BUILTIN_SERVICES
from topology.yamlnodes import YMap, YNode

SECTIONS = (
    "version",
    "sites",
    "roles",
    "identities",
    "services",
    "conduits",
    "webhooks",
    "tests",
)
NAMED_SECTIONS = ("sites", "roles", "identities", "services", "conduits", "webhooks")
FORMAT_VERSION = 1


@dataclass
class Entry:
    """One named definition as written: its name, where, and its YAML node."""

    name: str
    location: Location
    node: YNode
    base: Path  # directory of the file it came from, for relative paths


class ReadContext:
    """What the readers share: diagnostics, typed field readers, names and built parts."""

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

    def _named_map(self, e: Entry, what: str, allowed: tuple[str, ...]) -> YMap | None:
        if not self.r.name(e.name, e.location, what):
            return None
        node = self.r.mapping(e.node, f"{what} '{e.name}'")
        if node is not None:
            self.r.keys(node, allowed, f"{what} '{e.name}'")
        return node

    def _children(self, node: YMap, key: str, what: str) -> dict[str, tuple[Location, YNode]]:
        block = self.r.mapping(node.get(key), f"{what} {key}")
        return block.entries if block else {}

    def _hint_role(self, role: str) -> str:
        hint = suggest(role, self.entries["roles"])
        return hint or "declare it under 'roles:'"

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
