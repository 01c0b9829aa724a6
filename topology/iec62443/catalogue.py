"""The requirements the report covers and the security levels that call for each.

The table lives in a data file (`levels.yaml` next to this module) so an assessor can
read its stated source and correct a cell without touching code; a corrected copy can
be passed instead. Errors in that file are positioned like topology errors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from topology.diagnostics import Diagnostics, Location, TopologyError
from topology.yamlnodes import YMap, YNode, YScalar, YSeq, describe, parse_yaml

DEFAULT_LEVELS = Path(__file__).with_name("levels.yaml")
_ID = re.compile(r"^SR (\d+)\.(\d+)( RE(\d+))?$")


@dataclass(frozen=True)
class Requirement:
    """A system requirement (`SR 2.1`) or one of its enhancements (`SR 2.1 RE3`)."""

    id: str
    title: str  # the project's own words
    levels: frozenset[int]  # target security levels that call for it
    location: Location | None = None

    @property
    def sr(self) -> str:
        """The system requirement this belongs to (`SR 2.1` for `SR 2.1 RE3`)."""
        return self.id.split(" RE")[0]

    @property
    def is_enhancement(self) -> bool:
        return " RE" in self.id

    def applies_at(self, level: int) -> bool:
        return level in self.levels


@dataclass(frozen=True)
class Catalogue:
    source: str
    file: str
    requirements: tuple[Requirement, ...]  # in the standard's order

    def at_level(self, level: int) -> tuple[Requirement, ...]:
        return tuple(r for r in self.requirements if r.applies_at(level))

    def get(self, req_id: str) -> Requirement | None:
        return next((r for r in self.requirements if r.id == req_id), None)


def sort_key(req_id: str) -> tuple[int, int, int]:
    m = _ID.match(req_id)
    if not m:
        return (999, 999, 999)
    return (int(m[1]), int(m[2]), int(m[4] or 0))


def load_catalogue(path: Path = DEFAULT_LEVELS) -> Catalogue:
    """Read the table; raise TopologyError naming every bad cell with FILE:LINE:COL."""
    diags = Diagnostics()
    name = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        diags.error(Location(name, 1, 1), f"cannot read the levels table: {exc.strerror}")
        raise TopologyError(diags.sorted()) from None
    root = parse_yaml(text, name, diags)
    reqs: list[Requirement] = []
    source = ""
    if isinstance(root, YMap):
        source = _text(root, "source", diags)
        table = root.get("requirements")
        if isinstance(table, YMap):
            for req_id, (loc, node) in table.entries.items():
                req = _requirement(req_id, loc, node, diags)
                if req is not None:
                    reqs.append(req)
        else:
            diags.error(root.key_location("requirements"), "'requirements' must be a mapping")
    elif root is not None or not diags.errors:
        diags.error(Location(name, 1, 1), "the levels table must be a mapping")
    if diags.errors:
        raise TopologyError(diags.sorted())
    reqs.sort(key=lambda r: sort_key(r.id))
    return Catalogue(source, name, tuple(reqs))


def _text(m: YMap, key: str, diags: Diagnostics) -> str:
    node = m.get(key)
    if isinstance(node, YScalar) and isinstance(node.value, str) and node.value.strip():
        return node.value
    diags.error(
        m.key_location(key), f"'{key}' must be a non-empty string", "say where the cells come from"
    )
    return ""


def _requirement(req_id: str, loc: Location, node: YNode, diags: Diagnostics) -> Requirement | None:
    if not _ID.match(req_id):
        hint = "write e.g. 'SR 2.1' or 'SR 2.1 RE3'"
        diags.error(loc, f"'{req_id}' is not a requirement id", hint)
        return None
    if not isinstance(node, YMap):
        diags.error(node.location, f"{req_id}: expected a mapping, got {describe(node)}")
        return None
    title = _text(node, "title", diags)
    levels = node.get("levels")
    found: set[int] = set()
    if isinstance(levels, YSeq):
        for item in levels.items:
            ok = isinstance(item, YScalar) and type(item.value) is int and 1 <= item.value <= 4
            if ok and isinstance(item, YScalar) and isinstance(item.value, int):
                found.add(item.value)
            else:
                diags.error(item.location, f"{req_id}: a security level is 1, 2, 3 or 4")
    else:
        where = node.key_location("levels")
        diags.error(where, f"{req_id}: 'levels' must be a list like [2, 3, 4]")
    for extra in set(node.entries) - {"title", "levels"}:
        diags.error(node.key_location(extra), f"{req_id}: unknown field '{extra}'")
    return Requirement(req_id, title, frozenset(found), loc)
