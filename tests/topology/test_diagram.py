"""Diagrams name every zone, asset and conduit; the DOT output is valid Graphviz."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.conftest import require
from topology import load
from topology.diagram import dot, mermaid

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "plant"


def test_mermaid_names_everything() -> None:
    topo = load(EXAMPLE).topology
    text = mermaid(topo)
    assert text.startswith("flowchart LR")
    for c in topo.conduits.values():
        assert f"{c.name}:" in text
    assert "-.->" in text  # approval/emergency conduits are dashed
    assert "plc-1 10.10.1.5" in text and "safety (SL 4)" in text


def test_dot_renders_with_graphviz() -> None:
    require("dot")
    result = subprocess.run(
        ["dot", "-Tsvg"], input=dot(load(EXAMPLE).topology), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "vendor&#45;maintenance" in result.stdout and "<svg" in result.stdout
