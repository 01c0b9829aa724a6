"""Topology files: parse, validate and evaluate a plant's zones and conduits.

`load(path)` is the only way in: it reads a file or a directory tree of YAML files
(topology_files() says which),
reports every problem at once (FILE:LINE:COL) and returns an immutable model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from topology.diagnostics import Diagnostic, Diagnostics, Location, TopologyError
from topology.files import topology_files
from topology.lint import lint
from topology.loader import display_path, load_files
from topology.model import Topology
from topology.validate import validate


@dataclass(frozen=True)
class Loaded:
    topology: Topology
    diagnostics: tuple[Diagnostic, ...]  # warnings only, when loading succeeded


def load(path: str | Path, strict: bool = False) -> Loaded:
    """Load and validate; raise TopologyError with every diagnostic if anything is wrong.

    With `strict`, warnings count as errors (for CI on the topology repository).
    """
    diags = Diagnostics()
    path = Path(path)
    found = topology_files(path)
    topo, parsed = load_files(path, found, diags)
    validate(topo, diags)
    if parsed and not diags.errors:
        lint(topo, display_path(path), [display_path(p) for p in found.skipped], diags)
    ordered = diags.sorted()
    failed = bool(diags.errors) or (strict and bool(diags.warnings))
    if failed:
        raise TopologyError(ordered)
    return Loaded(topo, tuple(ordered))


__all__ = ["Diagnostic", "Loaded", "Location", "Topology", "TopologyError", "load"]
