"""Which files make up a topology: one rule for the loader and for policyd's reload watcher.

A topology is one YAML file, or every `*.yaml` / `*.yml` file under a directory,
subdirectories included (so `sites/`, `conduits/` splits work). Hidden files and
directories (`.git`, editor swap files) are not part of it. Files whose names look like
topology but do not end in .yaml/.yml (`sites.yaml.bak`, `plant.yaml~`) are listed as
`skipped`, so the loader can warn that they are not read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class TopologyFiles:
    files: tuple[Path, ...]  # read, in a stable (sorted) order
    skipped: tuple[Path, ...]  # look like topology files, but are not read


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def topology_files(path: Path) -> TopologyFiles:
    """The files a load of `path` reads; empty when `path` does not exist."""
    if path.is_file():
        return TopologyFiles((path,), ())
    if not path.is_dir():
        return TopologyFiles((), ())
    files, skipped = [], []
    for p in sorted(path.rglob("*")):
        if not p.is_file() or _hidden(p, path):
            continue
        name = p.name.lower()
        if name.endswith(SUFFIXES):
            files.append(p)
        elif ".yaml" in name or ".yml" in name:
            skipped.append(p)
    return TopologyFiles(tuple(files), tuple(skipped))
