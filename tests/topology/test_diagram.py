"""Diagrams show every site, gateway, zone, asset, identity (by role) and conduit, with a
legend; Graphviz renders them, and each conduit's label sits on its own path."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest

from topology import load
from topology.diagram import View, dot, mermaid, scene
from topology.model import TargetKind, Topology
from zonegate.graphviz import render

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = [ROOT / "examples" / "plant", ROOT / "examples" / "fleet"]
SVG = "{http://www.w3.org/2000/svg}"


def svg_of(topo: Topology, view: View | None = None) -> ET.Element:
    if shutil.which("dot") is None:
        pytest.fail("Graphviz is missing: apt install graphviz")
    return ET.fromstring(render(dot(topo, view or View()), "svg"))


def groups(svg: ET.Element, kind: str) -> dict[str, ET.Element]:
    """class=node / edge / cluster groups by their <title> (the DOT id or 'a->b')."""
    out = {}
    for g in svg.iter(f"{SVG}g"):
        if g.get("class") == kind:
            title = g.find(f"{SVG}title")
            assert title is not None and title.text
            out[title.text.replace("&#45;", "-")] = g
    return out


def texts(g: ET.Element) -> str:
    return " ".join(t.text or "" for t in g.iter(f"{SVG}text"))


def numbers(path_d: str) -> list[tuple[float, float]]:
    values = [float(v) for v in re.findall(r"-?\d+(?:\.\d+)?", path_d)]
    return list(zip(values[::2], values[1::2], strict=False))


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_svg_has_every_part_and_labels_sit_on_their_edges(example: Path) -> None:
    topo = load(example).topology
    svg = svg_of(topo)
    clusters = {texts(g) for g in groups(svg, "cluster").values()}
    nodes = groups(svg, "node")
    node_text = {name: texts(g) for name, g in nodes.items()}
    assert "legend" in clusters
    for site in topo.sites.values():
        assert f"site {site.name}" in clusters
        gateway = node_text[f"n_gw_{site.name.replace('-', '_')}"]
        assert f"gateway {site.name}" in gateway and str(site.gateway.overlay) in gateway
        for zone in site.zones.values():
            assert any(
                t.startswith(f"zone {zone.name} (SL {zone.security_level})") for t in clusters
            )
        for asset in site.assets.values():
            assert any(asset.name in t and str(asset.address) in t for t in node_text.values())
    for role in topo.roles:
        assert f"role {role}" in clusters
    for ident in topo.identities.values():
        if ident.kind != "site":
            assert any(t.startswith(ident.name + " ") for t in node_text.values()), ident.name
    # No stray point nodes: every node carries text.
    assert all(t.strip() for t in node_text.values())
    edges = groups(svg, "edge")
    for c in topo.conduits.values():
        conduit = node_text[f"n_conduit_{c.name.replace('-', '_')}"]
        assert conduit.startswith(f"conduit {c.name}")
        into = [
            g for t, g in edges.items() if t.startswith(f"n_conduit_{c.name.replace('-', '_')}->")
        ]
        assert len(into) == 1, c.name
        # The edge to the target carries the services, placed on the edge's own path.
        edge = into[0]
        path = edge.find(f"{SVG}path")
        label = edge.find(f"{SVG}text")
        assert path is not None and label is not None and label.text
        points = numbers(path.get("d", ""))
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        x, y = float(label.get("x", 0)), float(label.get("y", 0))
        assert min(xs) - 120 <= x <= max(xs) + 120 and min(ys) - 30 <= y <= max(ys) + 30, c.name
        if c.needs_grant:
            assert "stroke-dasharray" in ET.tostring(path, encoding="unicode")


def test_site_view_keeps_what_reaches_the_site_and_drops_the_rest() -> None:
    topo = load(EXAMPLES[0]).topology
    sc = scene(topo, View(site="plant-b"))
    assert {c.name for c in sc.conduits} == {"engineers-plant-b", "plant-b-scada-reads-a"}
    assert {s.name for s in sc.sites} == {"plant-a", "plant-b"}  # plant-b/ops reaches plant-a
    assert {i.name for i in sc.identities} == {"engineer-1", "engineer-2"}
    clusters = {texts(g) for g in groups(svg_of(topo, View(site="plant-b")), "cluster").values()}
    assert "role vendor-acme" not in clusters and "role plc-engineer" in clusters


def test_conduit_view_draws_one_conduit() -> None:
    topo = load(EXAMPLES[0]).topology
    svg = svg_of(topo, View(conduit="vendor-maintenance"))
    conduits = [n for n in groups(svg, "node") if n.startswith("n_conduit_")]
    assert conduits == ["n_conduit_vendor_maintenance"]
    assert {texts(g) for g in groups(svg, "cluster").values()} >= {
        "site plant-a",
        "role vendor-acme",
    }


def test_zone_targets_have_a_labelled_node_in_their_zone() -> None:
    topo = load(EXAMPLES[0]).topology
    text = dot(topo)
    for c in topo.conduits.values():
        if c.target.kind is TargetKind.ZONE:
            _, zone = c.target.ref.split("/")
            assert f'label="all of {zone}\\n' in text
    assert "shape=point" not in text


def test_mermaid_names_everything() -> None:
    topo = load(EXAMPLES[0]).topology
    text = mermaid(topo)
    assert text.startswith("flowchart LR")
    assert 'subgraph legend["legend"]' in text
    for c in topo.conduits.values():
        assert f"conduit {c.name}<br/>" in text
    assert "-.->" in text  # approval/emergency conduits are dashed
    assert "plc-1 10.10.1.5" in text and "zone safety (SL 4)" in text
    assert "gateway plant-a<br/>192.0.2.10:51820" in text
    assert 'subgraph n_role_plc_engineer["role plc-engineer"]' in text
