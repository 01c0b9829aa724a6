"""The evidence report as one self-contained, printable HTML file with a zone diagram.

No scripts, fonts or images from elsewhere: the diagram is inline SVG drawn here
(sites as columns, zones coloured by security level, conduits as arrows, dashed when
they open only on a grant), so the file can be archived with the assessment as is.
"""

from __future__ import annotations

from html import escape

from topology.diagram import LEVEL_COLOURS
from topology.iec62443.assess import EvidenceReport, Table
from topology.iec62443.findings import Assessment
from topology.iec62443.render import (
    LIMITS,
    SUMMARY_HEADERS,
    WORD,
    summary_rows,
    totals_line,
)
from topology.model import Topology
from topology.report import conduit_sources, conduit_terms

CSS = """
body { font: 11pt/1.4 sans-serif; margin: 2em; color: #111; }
h1 { font-size: 18pt; } h2 { font-size: 14pt; border-bottom: 1px solid #999; }
h3 { font-size: 12pt; margin-top: 1.5em; } h4 { font-size: 11pt; margin: 1em 0 .3em; }
table { border-collapse: collapse; margin: .5em 0; }
td, th { border: 1px solid #bbb; padding: 2px 6px; text-align: left; vertical-align: top; }
ul { margin: .2em 0; } li { margin: .1em 0; }
.met { color: #176117; } .gap, .failed { color: #a30000; font-weight: bold; }
.outside { color: #8a5a00; } .where { color: #555; font-family: monospace; font-size: 9pt; }
.req { page-break-inside: avoid; }
@media print { body { margin: 0; } h2 { page-break-before: always; } }
"""


def _where(where: str) -> str:
    return f' <span class="where">{escape(where)}</span>' if where else ""


def _table(headers: list[str] | tuple[str, ...], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _assessment(a: Assessment) -> str:
    r = a.requirement
    items = [f"<li>evidence: {escape(e.text)}{_where(e.where)}</li>" for e in a.evidence]
    for g in a.gaps:
        fix = f" <em>Fix: {escape(g.fix)}</em>" if g.fix else ""
        items.append(f'<li class="gap">gap ({g.kind}): {escape(g.text)}{_where(g.where)}{fix}</li>')
    for t in a.tests:
        cls = "met" if t.passed else ("outside" if t.outcome == "skipped" else "failed")
        items.append(f'<li>test <span class="{cls}">{t.outcome}</span>: {escape(t.name)}</li>')
    return (
        f'<div class="req"><h4>{escape(r.id)}: {escape(r.title)} - '
        f'<span class="{a.status}">{WORD[a.status]}</span></h4><ul>{"".join(items)}</ul></div>'
    )


def _gateway_table(t: Table) -> str:
    reqs = f" (evidence for {escape(', '.join(t.requirements))})" if t.requirements else ""
    note = f"<p>{escape(t.note)}</p>" if t.note else ""
    body = _table(t.headers, [list(r) for r in t.rows]) if t.rows else "<p>None in the period.</p>"
    return f"<h3>{escape(t.title)}{reqs}</h3>{note}{body}"


def zone_svg(topo: Topology) -> str:
    """Sites side by side, zones stacked in each, people on the left, conduits as arrows."""
    sites = sorted(topo.sites.values(), key=lambda s: s.name)
    roles = sorted({r for c in topo.conduits.values() for r in c.sources.roles})
    people = [f"role {r}" for r in roles] + sorted(
        {f"{i}" for c in topo.conduits.values() for i in c.sources.identities}
    )
    boxes: dict[str, tuple[float, float, float, float]] = {}  # node -> x, y, w, h
    parts: list[str] = []
    for i, label in enumerate(people):
        x, y, w, h = 10.0, 40.0 + i * 44, 150.0, 28.0
        key = label.removeprefix("role ")
        boxes[("role:" if label.startswith("role ") else "id:") + key] = (x, y, w, h)
        parts.append(
            f'<rect x="{x}" y="{y}" width="{w}" height="{h}" rx="14" fill="#fff" stroke="#333"/>'
            f'<text x="{x + w / 2}" y="{y + 18}" text-anchor="middle">{escape(label)}</text>'
        )
    height = 60 + 44 * len(people)
    for si, site in enumerate(sites):
        sx = 260.0 + si * 330
        y = 40.0
        top = y
        for zone in sorted(site.zones.values(), key=lambda z: z.name):
            assets = [a for a in site.assets.values() if a.zone == zone.name]
            h = 34.0 + 15 * len(assets)
            colour = LEVEL_COLOURS.get(zone.security_level, "#eee")
            boxes["zone:" + zone.ref] = (sx + 10, y, 280.0, h)
            parts.append(
                f'<rect x="{sx + 10}" y="{y}" width="280" height="{h}" fill="{colour}" '
                f'stroke="#333"/><text x="{sx + 18}" y="{y + 16}" font-weight="bold">'
                f"{escape(zone.name)} (SL {zone.security_level}) {zone.cidr}</text>"
            )
            for ai, asset in enumerate(sorted(assets, key=lambda a: a.name)):
                parts.append(
                    f'<text x="{sx + 26}" y="{y + 32 + ai * 15}" font-size="10">'
                    f"{escape(asset.name)} {asset.address}</text>"
                )
            y += h + 14
        parts.append(
            f'<rect x="{sx}" y="{top - 24}" width="300" height="{y - top + 24}" fill="none" '
            f'stroke="#666" stroke-dasharray="2,2"/><text x="{sx + 6}" y="{top - 8}">site '
            f"{escape(site.name)}</text>"
        )
        height = max(height, int(y) + 20)
    legend: list[str] = []
    for n, c in enumerate(sorted(topo.conduits.values(), key=lambda c: c.name), 1):
        target = topo.asset(c.target.ref)
        dest = boxes.get("zone:" + (target.zone_ref if target else c.target.ref))
        if dest is None:
            continue
        legend.append(f"{n}: {c.name}, {conduit_sources(c)} -> {c.target} ({conduit_terms(c)})")
        sources = [f"role:{r}" for r in c.sources.roles]
        sources += [f"id:{i}" for i in c.sources.identities]
        sources += [f"zone:{z}" for z in c.sources.zones]
        dash = ' stroke-dasharray="6,4"' if c.needs_grant else ""
        for s in sources:
            src = boxes.get(s)
            if src is None:
                continue
            x1, y1 = src[0] + src[2], src[1] + src[3] / 2
            x2, y2 = dest[0], dest[1] + dest[3] / 2
            if s.startswith("zone:") and src[0] >= dest[0]:
                x1, x2 = src[0], dest[0] + dest[2]
            lx, ly = x1 + (x2 - x1) * 0.15, y1 + (y2 - y1) * 0.15
            parts.append(
                f'<line x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}" stroke="#333"{dash} '
                f'marker-end="url(#arrow)"><title>{escape(c.name)}</title></line>'
                f'<circle cx="{lx}" cy="{ly}" r="7" fill="#fff" stroke="#333"/>'
                f'<text x="{lx}" y="{ly + 3.5}" font-size="9" text-anchor="middle">{n}</text>'
            )
    for i, line in enumerate(legend):
        parts.append(f'<text x="10" y="{height + 14 * i}" font-size="10">{escape(line)}</text>')
    parts.append(
        f'<text x="10" y="{height + 14 * len(legend)}" font-size="10">dashed: opens only '
        "on an approved grant or an emergency; zone colour: security level</text>"
    )
    height += 14 * len(legend) + 10
    width = 260 + 330 * len(sites) + 10
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">'
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto"><path d="M0,0 L10,5 L0,10 z"/></marker></defs>'
        + "".join(parts)
        + "</svg>"
    )


def html(report: EvidenceReport, generated: str) -> str:
    inputs = _table(["input", "read from"], [[k, v] for k, v in report.inputs.items()])
    zones = []
    for z in report.zones:
        zone = z.zone
        desc = f" - {escape(zone.description)}" if zone.description else ""
        where = _where(str(zone.location)) if zone.location else ""
        zones.append(
            f"<h3>{escape(zone.ref)}, target SL {zone.security_level}{desc}{where}</h3>"
            + "".join(_assessment(a) for a in z.assessments)
        )
    gateway = "".join(_gateway_table(t) for t in report.tables)
    diagram = zone_svg(report.topology) if report.topology is not None else ""
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>IEC 62443-3-3 evidence report</title><style>{CSS}</style></head><body>"
        f"<h1>IEC 62443-3-3 evidence report</h1><p>Generated {escape(generated)}.</p>"
        f"<h3>Inputs</h3>{inputs}"
        f"<p>Security levels per requirement: <code>{escape(report.catalogue.file)}</code>, "
        f"source: {escape(report.catalogue.source)}. Titles are the project's paraphrases, "
        "not the standard's text.</p>"
        f"<h3>Zones and conduits</h3>{diagram}"
        f"<h3>Summary</h3>{_table(SUMMARY_HEADERS, summary_rows(report))}"
        f"<p>{escape(totals_line(report))}</p><p>{escape(LIMITS)}</p>"
        f"<h2>Requirements by zone</h2>{''.join(zones)}"
        + (f"<h2>Gateway evidence</h2>{gateway}" if gateway else "")
        + "</body></html>\n"
    )
