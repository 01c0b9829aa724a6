"""Draw a topology: sites with their gateway and zones, identities grouped by role, and
each conduit as a node between who may use it and what it reaches.

Two text formats, both reviewable in a pull request: Mermaid (rendered by GitHub and
GitLab in Markdown) and Graphviz DOT (`zonegate diagram --format svg` runs `dot`).
A conduit is drawn as a node carrying its name, services and terms, so its label sits
on its own path and cannot drift away from its edges. Zone colour follows the security
level; dashed conduits need a grant (approval or emergency). A legend says so. A view
narrows the drawing to one site (and what reaches or leaves it) or one conduit.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from topology.model import Conduit, Identity, Site, TargetKind, Topology, Zone
from topology.report import conduit_terms_list

LEVEL_COLOURS = {1: "#d9f2d9", 2: "#fff2cc", 3: "#fcd5b5", 4: "#f4b6b6"}
GRANT_COLOUR = "#e6e0f8"  # conduits that need a grant
OPEN_COLOUR = "#dde9f7"


@dataclass(frozen=True)
class View:
    """What to draw: everything, one site (and what reaches or leaves it), or one conduit."""

    site: str | None = None
    conduit: str | None = None


@dataclass(frozen=True)
class Scene:
    """The parts of the topology a view selects, in a stable order."""

    sites: tuple[Site, ...]
    conduits: tuple[Conduit, ...]
    identities: tuple[Identity, ...]  # users and services that conduits name (or all)
    roles: tuple[str, ...]  # roles that conduits name (or all)


def _touches(c: Conduit, site: str) -> bool:
    return c.target.site == site or any(z.split("/")[0] == site for z in c.sources.zones)


def scene(topo: Topology, view: View = View()) -> Scene:
    conduits = sorted(topo.conduits.values(), key=lambda c: c.name)
    if view.conduit is not None:
        conduits = [c for c in conduits if c.name == view.conduit]
    elif view.site is not None:
        conduits = [c for c in conduits if _touches(c, view.site)]
    whole = view.site is None and view.conduit is None
    site_names = set(topo.sites) if whole else {view.site} if view.site else set()
    for c in conduits:
        site_names.add(c.target.site)
        site_names.update(z.split("/")[0] for z in c.sources.zones)
    roles = {r for c in conduits for r in c.sources.roles}
    named = {i for c in conduits for i in c.sources.identities}
    if whole:
        roles |= set(topo.roles)
    people = [
        i
        for i in sorted(topo.identities.values(), key=lambda i: i.name)
        if i.kind != "site" and (whole or i.name in named or set(i.roles) & roles)
    ]
    return Scene(
        tuple(topo.sites[s] for s in sorted(site_names) if s in topo.sites),
        tuple(conduits),
        tuple(people),
        tuple(sorted(roles)),
    )


def _id(text: str) -> str:
    return "n_" + "".join(c if c.isalnum() else "_" for c in text)


def _conduit_id(c: Conduit) -> str:
    return _id(f"conduit/{c.name}")


def _zone_node(zone: Zone) -> str:
    return _id(f"zone/{zone.ref}")


def _targets(scene_: Scene) -> set[str]:
    """Zones that need a node of their own: conduit targets and sources."""
    out = {c.target.ref for c in scene_.conduits if c.target.kind is TargetKind.ZONE}
    return out | {z for c in scene_.conduits for z in c.sources.zones}


def _services(c: Conduit) -> str:
    return ", ".join(str(a) for a in c.allow)


def _group(scene_: Scene) -> dict[str, list[Identity]]:
    """Identities by role (first role in the drawing); 'no role' for the rest."""
    groups: dict[str, list[Identity]] = {r: [] for r in scene_.roles}
    for ident in scene_.identities:
        role = next((r for r in ident.roles if r in groups), None)
        groups.setdefault(role or "", []).append(ident)
    return groups


def _role_anchor(groups: dict[str, list[Identity]], role: str) -> str:
    members = groups.get(role) or []
    return _id(f"id/{members[0].name}") if members else _id(f"role/{role}")


def _esc(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


# --- Graphviz ------------------------------------------------------------------------


def dot(topo: Topology, view: View = View()) -> str:
    sc = scene(topo, view)
    anchors = _targets(sc)
    lines = [
        "digraph zonegate {",
        '  graph [rankdir=LR, compound=true, newrank=true, fontname="sans-serif", '
        "nodesep=0.3, ranksep=0.6];",
        '  node [shape=box, style="rounded,filled", fillcolor=white, fontname="sans-serif", '
        "fontsize=10];",
        '  edge [fontname="sans-serif", fontsize=9];',
    ]
    lines += _dot_legend()
    for site in sc.sites:
        lines += _dot_site(site, anchors)
    groups = _group(sc)
    for role, members in groups.items():
        name = f"role {role}" if role else "no role"
        lines.append(
            f'  subgraph cluster_{_id("role/" + role)} {{ label="{_esc(name)}"; '
            'style="rounded,dashed"; color="#888888";'
        )
        if not members:
            lines.append(f'    {_id("role/" + role)} [label="(no members)", shape=plaintext];')
        for ident in members:
            lines.append(
                f'    {_id("id/" + ident.name)} [label="{_person(ident)}", shape=ellipse];'
            )
        lines.append("  }")
    for c in sc.conduits:
        colour = GRANT_COLOUR if c.needs_grant else OPEN_COLOUR
        style = "dashed" if c.needs_grant else "solid"
        parts = [f"conduit {c.name}", _services(c), *conduit_terms_list(c)]
        label = "\\n".join(_esc(t) for t in parts)
        lines.append(
            f'  {_conduit_id(c)} [label="{label}", shape=box, '
            f'style="rounded,filled,{style}", fillcolor="{colour}"];'
        )
        for node, tail in _dot_sources(c, groups):
            lines.append(f"  {node} -> {_conduit_id(c)} [style={style}{tail}];")
        target = _target_node(topo, c)
        lines.append(
            f'  {_conduit_id(c)} -> {target} [style={style}, label="{_esc(_services(c))}"];'
        )
    lines.append("}")
    return "\n".join(lines) + "\n"


def _person(ident: Identity) -> str:
    return f"{ident.name}\\n{ident.kind} {ident.overlay}" if ident.overlay else ident.name


def _dot_sources(c: Conduit, groups: dict[str, list[Identity]]) -> Iterable[tuple[str, str]]:
    for role in c.sources.roles:
        yield _role_anchor(groups, role), f', ltail="cluster_{_id("role/" + role)}"'
    for name in c.sources.identities:
        yield _id(f"id/{name}"), ""
    for zone in c.sources.zones:
        yield _id(f"zone/{zone}"), ""


def _target_node(topo: Topology, c: Conduit) -> str:
    if c.target.kind is TargetKind.ZONE:
        return _id(f"zone/{c.target.ref}")
    return _id(c.target.ref)


def _dot_site(site: Site, anchors: set[str]) -> list[str]:
    gw = site.gateway
    lines = [
        f'  subgraph cluster_{_id("site/" + site.name)} {{ label="site {site.name}"; '
        'style=rounded; color="#444444";',
        f'    {_id("gw/" + site.name)} [label="gateway {site.name}\\n{gw.underlay}:{gw.port}'
        f'\\noverlay {gw.overlay}", shape=box3d, fillcolor="#eeeeee"];',
    ]
    for zone in sorted(site.zones.values(), key=lambda z: z.name):
        colour = LEVEL_COLOURS[zone.security_level]
        lines.append(
            f'    subgraph cluster_{_id(zone.ref)} {{ label="zone {zone.name} (SL '
            f'{zone.security_level}) {zone.cidr}"; style="filled,rounded"; fillcolor="{colour}";'
        )
        assets = sorted(
            (a for a in site.assets.values() if a.zone == zone.name), key=lambda a: a.name
        )
        if zone.ref in anchors or not assets:
            lines.append(
                f'      {_zone_node(zone)} [label="all of {zone.name}\\n{zone.cidr}", shape=tab];'
            )
        for asset in assets:
            lines.append(f'      {_id(asset.ref)} [label="{asset.name}\\n{asset.address}"];')
        lines.append("    }")
    lines.append("  }")
    return lines


def _dot_legend() -> list[str]:
    rows = "".join(
        f'<TR><TD BGCOLOR="{colour}">SL {level}</TD><TD ALIGN="LEFT">zone security level '
        f"{level}</TD></TR>"
        for level, colour in LEVEL_COLOURS.items()
    )
    rows += (
        f'<TR><TD BGCOLOR="{OPEN_COLOUR}">conduit</TD><TD ALIGN="LEFT">solid: open '
        "(on its schedule)</TD></TR>"
        f'<TR><TD BGCOLOR="{GRANT_COLOUR}">conduit</TD><TD ALIGN="LEFT">dashed: needs a '
        "grant (approval or emergency)</TD></TR>"
        '<TR><TD>ellipse</TD><TD ALIGN="LEFT">identity, grouped by role</TD></TR>'
        '<TR><TD>box3d</TD><TD ALIGN="LEFT">site gateway</TD></TR>'
    )
    return [
        '  subgraph cluster_legend { label=legend; style=rounded; color="#888888";',
        '    legend [shape=plaintext, style=solid, label=<<TABLE BORDER="0" CELLBORDER="1" '
        f'CELLSPACING="0" CELLPADDING="3">{rows}</TABLE>>];',
        "  }",
    ]


# --- Mermaid -------------------------------------------------------------------------


def mermaid(topo: Topology, view: View = View()) -> str:
    sc = scene(topo, view)
    anchors = _targets(sc)
    lines = ["flowchart LR"]
    styles: list[str] = []
    lines.append('  subgraph legend["legend"]')
    for level, colour in LEVEL_COLOURS.items():
        lines.append(f'    legend_sl{level}["zone SL {level}"]')
        styles.append(f"  style legend_sl{level} fill:{colour}")
    lines.append('    legend_open>"conduit: open"] --> legend_grant>"conduit: needs a grant"]')
    lines.append("  end")
    for site in sc.sites:
        gw = site.gateway
        lines.append(f'  subgraph {_id("site/" + site.name)}["site {site.name}"]')
        lines.append(
            f'    {_id("gw/" + site.name)}[["gateway {site.name}<br/>{gw.underlay}:{gw.port}'
            f'<br/>overlay {gw.overlay}"]]'
        )
        for zone in sorted(site.zones.values(), key=lambda z: z.name):
            lines.append(
                f'    subgraph {_id(zone.ref)}["zone {zone.name} (SL {zone.security_level}) '
                f'{zone.cidr}"]'
            )
            assets = sorted(
                (a for a in site.assets.values() if a.zone == zone.name), key=lambda a: a.name
            )
            if zone.ref in anchors or not assets:
                lines.append(f'      {_zone_node(zone)}["all of {zone.name}"]')
            for asset in assets:
                lines.append(f'      {_id(asset.ref)}["{asset.name} {asset.address}"]')
            lines.append("    end")
            styles.append(f"  style {_id(zone.ref)} fill:{LEVEL_COLOURS[zone.security_level]}")
        lines.append("  end")
    groups = _group(sc)
    for role, members in groups.items():
        gid = _id("role/" + role)
        lines.append(f'  subgraph {gid}["{"role " + role if role else "no role"}"]')
        if not members:
            lines.append(f'    {gid}_empty["(no members)"]')
        for ident in members:
            lines.append(f'    {_id("id/" + ident.name)}(["{ident.name}"])')
        lines.append("  end")
    for c in sc.conduits:
        label = "<br/>".join([f"conduit {c.name}", _services(c), *conduit_terms_list(c)])
        lines.append(f'  {_conduit_id(c)}>"{label}"]')
        styles.append(
            f"  style {_conduit_id(c)} fill:{GRANT_COLOUR if c.needs_grant else OPEN_COLOUR}"
        )
        arrow = "-.->" if c.needs_grant else "-->"
        sources = [_id("role/" + r) for r in c.sources.roles]
        sources += [_id(f"id/{i}") for i in c.sources.identities]
        sources += [_id(f"zone/{z}") for z in c.sources.zones]
        for node in sources:
            lines.append(f"  {node} {arrow} {_conduit_id(c)}")
        lines.append(f'  {_conduit_id(c)} {arrow}|"{_services(c)}"| {_target_node(topo, c)}')
    return "\n".join(lines + styles) + "\n"
