"""Draw a topology: sites as boxes, zones inside them, conduits as labelled arrows.

Two text formats, both reviewable in a pull request: Mermaid (rendered by GitHub and
GitLab in Markdown) and Graphviz DOT (`dot -Tsvg`). Zone colour follows the security
level so high-risk zones stand out.
"""

from __future__ import annotations

from topology.model import Conduit, TargetKind, Topology
from topology.report import conduit_terms

LEVEL_COLOURS = {1: "#d9f2d9", 2: "#fff2cc", 3: "#fcd5b5", 4: "#f4b6b6"}


def _id(text: str) -> str:
    return "n_" + "".join(c if c.isalnum() else "_" for c in text)


def _label(c: Conduit) -> str:
    allow = ", ".join(str(a) for a in c.allow)
    terms = conduit_terms(c)
    return f"{c.name}: {allow}" + ("" if terms == "always" else f" ({terms})")


def _sources(topo: Topology, c: Conduit) -> list[tuple[str, str]]:
    """(node id, label) for each source: roles and identities as people, zones as zones."""
    out = [(_id(f"role/{r}"), f"role {r}") for r in c.sources.roles]
    out += [(_id(f"id/{i}"), i) for i in c.sources.identities]
    out += [(_id(z), z) for z in c.sources.zones]
    return out


def _target(c: Conduit) -> str:
    return _id(c.target.ref)


def mermaid(topo: Topology) -> str:
    lines = ["flowchart LR"]
    for site in sorted(topo.sites.values(), key=lambda s: s.name):
        lines.append(f'  subgraph {_id("site/" + site.name)}["site {site.name}"]')
        for zone in sorted(site.zones.values(), key=lambda z: z.name):
            lines.append(f'    subgraph {_id(zone.ref)}["{zone.name} (SL {zone.security_level})"]')
            for asset in sorted(site.assets.values(), key=lambda a: a.name):
                if asset.zone == zone.name:
                    lines.append(f'      {_id(asset.ref)}["{asset.name} {asset.address}"]')
            lines.append("    end")
            lines.append(f"    style {_id(zone.ref)} fill:{LEVEL_COLOURS[zone.security_level]}")
        lines.append("  end")
    people = sorted({s for c in topo.conduits.values() for s in _sources(topo, c)})
    for node, label in people:
        if not label.count("/"):
            lines.append(f'  {node}(["{label}"])')
    for c in sorted(topo.conduits.values(), key=lambda c: c.name):
        arrow = "-.->" if c.needs_grant else "-->"
        for node, _ in _sources(topo, c):
            lines.append(f'  {node} {arrow}|"{_label(c)}"| {_target(c)}')
    return "\n".join(lines) + "\n"


def dot(topo: Topology) -> str:
    lines = [
        "digraph zonegate {",
        "  rankdir=LR; compound=true;",
        '  node [shape=box, style="rounded,filled", fillcolor=white, fontname="sans-serif"];',
        '  edge [fontname="sans-serif", fontsize=10];',
    ]
    for site in sorted(topo.sites.values(), key=lambda s: s.name):
        lines.append(f'  subgraph cluster_{_id(site.name)} {{ label="site {site.name}";')
        for zone in sorted(site.zones.values(), key=lambda z: z.name):
            colour = LEVEL_COLOURS[zone.security_level]
            lines.append(
                f'    subgraph cluster_{_id(zone.ref)} {{ label="{zone.name} (SL '
                f'{zone.security_level}) {zone.cidr}"; style=filled; fillcolor="{colour}";'
            )
            lines.append(f'      {_id(zone.ref)} [label="{zone.name}", shape=point];')
            for asset in sorted(site.assets.values(), key=lambda a: a.name):
                if asset.zone == zone.name:
                    lines.append(
                        f'      {_id(asset.ref)} [label="{asset.name}\\n{asset.address}"];'
                    )
            lines.append("    }")
        lines.append("  }")
    people = sorted({s for c in topo.conduits.values() for s in _sources(topo, c)})
    for node, label in people:
        if "/" not in label:
            lines.append(f'  {node} [label="{label}", shape=ellipse];')
    for c in sorted(topo.conduits.values(), key=lambda c: c.name):
        style = "dashed" if c.needs_grant else "solid"
        head = ""
        if c.target.kind is TargetKind.ZONE:
            head = f', lhead="cluster_{_id(c.target.ref)}"'
        for node, _ in _sources(topo, c):
            lines.append(f'  {node} -> {_target(c)} [label="{_label(c)}", style={style}{head}];')
    lines.append("}")
    return "\n".join(lines) + "\n"
