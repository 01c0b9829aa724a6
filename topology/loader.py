"""Files to model: find the files, parse them, merge sections, build typed objects.

Names are collected from every file first, so a reference may point into another file
of the same directory; every reference is checked where it is written, so its error
carries the exact place. The readers are read_places.py (sites, identities) and
read_conduits.py (conduits, tests); global checks (overlaps, risk rules) live in
validate.py.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from topology.diagnostics import Diagnostic, Diagnostics, Location
from topology.files import TopologyFiles
from topology.model import (
    Topology,
    frozen_map,
)
from topology.read_conduits import ConduitReader
from topology.read_context import FORMAT_VERSION, NAMED_SECTIONS, SECTIONS, Entry
from topology.read_places import PlacesReader
from topology.schema import entry_keys
from topology.yamlnodes import YNode, YScalar, YSeq, describe, parse_yaml


def display_path(path: Path) -> str:
    rel = os.path.relpath(path)
    return path.as_posix() if rel.startswith("..") else Path(rel).as_posix()


class Builder(PlacesReader, ConduitReader):
    """Builds a Topology from parsed files, reporting every problem into `diags`."""

    def __init__(self, diags: Diagnostics) -> None:
        super().__init__(diags)
        self.unparsed: list[Diagnostic] = []  # the parse error of each unreadable file

    def add_file(self, path: Path) -> None:
        shown = display_path(path)
        self.files.append(shown)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            self.diags.error(Location(shown, 1, 1), f"cannot read file: {exc}")
            self.unparsed.append(self.diags.items[-1])
            return
        before = len(self.diags.items)
        root = parse_yaml(text, shown, self.diags)
        if root is None:
            if len(self.diags.items) > before:
                self.unparsed.append(self.diags.items[before])
            else:
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
            previous: tuple[str, YNode] | None = None
            for name, (loc, node) in block.entries.items():
                if previous is not None and name in entry_keys(section):
                    self._misindented(section, name, loc, *previous)
                    continue
                previous = (name, node)
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

    def _misindented(
        self, section: str, key: str, loc: Location, owner: str, owner_node: YNode
    ) -> None:
        """`allow:` written at the level of conduit names: one indentation error, and the
        entry above it is not also reported for missing that key."""
        kind = section[:-1].replace("identitie", "identity")
        self.diags.error(
            loc,
            f"indentation error: '{key}' is at the level of {kind} names, so it reads as a "
            f"{kind} named '{key}'",
            f"indent it under the {kind} above ('{owner}'), like its other keys",
            root=True,
        )
        self.diags.silence(owner_node.location)

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
        webhooks = {
            w.name: w
            for w in (self._build_webhook(e) for e in self.entries["webhooks"].values())
            if w is not None
        }
        return Topology(
            sites=frozen_map(self.sites),
            roles=frozen_map(self.roles),
            identities=frozen_map(self.identities),
            services=frozen_map(self.services),
            conduits=frozen_map(conduits),
            tests=tests,
            files=tuple(self.files),
            webhooks=frozen_map(webhooks),
        )


def load_files(path: Path, found: TopologyFiles, diags: Diagnostics) -> tuple[Topology, bool]:
    """Build the model from `found`; also say whether every file could be parsed.

    When a file cannot be parsed, the names it defines are unknown, so every reference
    to them elsewhere would be a false error: those follow-on errors are dropped, and
    the parse error says so. One mistake, one error.
    """
    if not found.files:
        where = Location(display_path(path), 1, 1)
        if path.is_dir():
            diags.error(where, "no .yaml or .yml files in directory")
        else:
            diags.error(where, "no such file or directory")
    builder = Builder(diags)
    for file in found.files:
        builder.add_file(file)
    topo = builder.build()
    if builder.unparsed:
        _drop_follow_ons(diags, builder.unparsed)
    return topo, not builder.unparsed


FOLLOW_ON_CODES = frozenset({"ZG-E031", "ZG-E063"})  # references into a file not read


def _drop_follow_ons(diags: Diagnostics, unparsed: list[Diagnostic]) -> None:
    dropped = [d for d in diags.items if d.code in FOLLOW_ON_CODES]
    if not dropped:
        return
    first = unparsed[0]
    note = (
        f"{len(dropped)} reference error(s) elsewhere are not shown: the names they "
        "refer to may be defined in this file"
    )
    diags.items = [
        dataclasses.replace(d, hint=f"{d.hint}; {note}" if d.hint else note) if d is first else d
        for d in diags.items
        if d not in dropped
    ]
