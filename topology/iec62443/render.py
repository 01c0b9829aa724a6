"""The evidence report as Markdown (for review and print), JSON (for tools) and a summary.

Every evidence line and gap names its place (FILE:LINE:COL, a document or a command),
so an assessor can check each one at its source.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from topology.iec62443.assess import STATUSES, EvidenceReport, Table, ZoneReport
from topology.iec62443.findings import Assessment
from topology.table import format_table

WORD = {"met": "met", "gap": "GAP", "outside": "outside Zonegate", "failed": "TEST FAILED"}
SHOWN_TESTS = 5
LIMITS = (
    "This report shows what the topology, the tests and the given logs say. It does not "
    "prove that the gateway is the only path into a zone, that the plant's drawings match "
    "the topology, or anything the standard asks of people and procedures; "
    "docs/iec62443.md lists what it does not prove."
)


def _where(where: str) -> str:
    return f" ({where})" if where else ""


def summary_rows(report: EvidenceReport) -> list[list[str]]:
    rows = []
    for z in report.zones:
        c = z.counts()
        rows.append([z.zone.ref, str(z.zone.security_level), *(str(c[s]) for s in STATUSES)])
    return rows


SUMMARY_HEADERS = ["zone", "SL", "met", "gap", "outside", "failed"]


def gap_kinds(report: EvidenceReport) -> Counter[str]:
    return Counter(g.kind for z in report.zones for a in z.assessments for g in a.gaps)


def totals_line(report: EvidenceReport) -> str:
    t = report.counts()
    line = (
        f"{sum(t.values())} requirement checks over {len(report.zones)} zones: {t['met']} met, "
        f"{t['gap']} with gaps, {t['outside']} need evidence from outside Zonegate, "
        f"{t['failed']} with failing tests"
    )
    kinds = gap_kinds(report)
    if kinds:
        line += "; gaps by kind: " + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items()))
    return line


def summary_text(report: EvidenceReport) -> str:
    """A few lines for a terminal: per zone counts, the totals, gateway evidence counts."""
    lines = [format_table(SUMMARY_HEADERS, summary_rows(report)), totals_line(report)]
    if report.tables:
        counts = "; ".join(f"{t.title}: {t.count}" for t in report.tables)
        lines.append(f"gateway log: {counts}")
    return "\n".join(lines)


def _md_table(headers: list[str] | tuple[str, ...], rows: list[list[str]]) -> list[str]:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return out


def _tests_line(a: Assessment) -> str:
    if not a.tests:
        return ""
    passed = [t for t in a.tests if t.passed]
    red = [t for t in a.tests if not t.passed]
    parts = [f"{len(passed)} passed"]
    if red:
        parts.append(", ".join(f"{t.outcome}: {t.name}" for t in red))
    names = ", ".join(t.name.split("::")[-1] for t in passed[:SHOWN_TESTS])
    more = f" and {len(passed) - SHOWN_TESTS} more" if len(passed) > SHOWN_TESTS else ""
    return f"{'; '.join(parts)} ({names}{more})" if names else "; ".join(parts)


def _assessment_md(a: Assessment) -> list[str]:
    r = a.requirement
    lines = [f"#### {r.id}: {r.title} - **{WORD[a.status]}**", ""]
    for e in a.evidence:
        lines.append(f"- evidence: {e.text}{_where(e.where)}")
    for g in a.gaps:
        fix = f" Fix: {g.fix}" if g.fix else ""
        lines.append(f"- gap ({g.kind}): {g.text}{_where(g.where)}.{fix}")
    tests = _tests_line(a)
    if tests:
        lines.append(f"- tests: {tests}")
    lines.append("")
    return lines


def _zone_md(z: ZoneReport) -> list[str]:
    zone = z.zone
    desc = f" - {zone.description}" if zone.description else ""
    where = f" ({zone.location})" if zone.location else ""
    lines = [f"### {zone.ref}, target SL {zone.security_level}{desc}{where}", ""]
    for a in z.assessments:
        lines += _assessment_md(a)
    return lines


def _table_md(t: Table) -> list[str]:
    reqs = f" (evidence for {', '.join(t.requirements)})" if t.requirements else ""
    lines = [f"### {t.title}{reqs}", ""]
    if t.note:
        lines += [t.note, ""]
    if t.rows:
        lines += _md_table(t.headers, [list(r) for r in t.rows])
    else:
        lines.append("None in the period.")
    return [*lines, ""]


def markdown(report: EvidenceReport, generated: str) -> str:
    lines = [
        "# IEC 62443-3-3 evidence report",
        "",
        f"Generated {generated}.",
        "",
        "## Inputs",
        "",
        *_md_table(["input", "read from"], [[k, v] for k, v in report.inputs.items()]),
        "",
        f"Security levels per requirement: `{report.catalogue.file}`, source: "
        f"{report.catalogue.source}. Titles are the project's paraphrases, not the "
        "standard's text.",
        "",
        "## Summary",
        "",
        *_md_table(SUMMARY_HEADERS, summary_rows(report)),
        "",
        totals_line(report),
        "",
        LIMITS,
        "",
        "## Requirements by zone",
        "",
    ]
    for z in report.zones:
        lines += _zone_md(z)
    if report.tables:
        lines += ["## Gateway evidence", ""]
        for t in report.tables:
            lines += _table_md(t)
    return "\n".join(lines).rstrip() + "\n"


def as_json(report: EvidenceReport) -> dict[str, Any]:
    """The body of the `zonegate.iec62443/1` document (docs/cli-json.md)."""
    return {
        "inputs": dict(report.inputs),
        "levels": {"file": report.catalogue.file, "source": report.catalogue.source},
        "counts": report.counts(),
        "gap_kinds": dict(gap_kinds(report)),
        "zones": [
            {
                "zone": z.zone.ref,
                "security_level": z.zone.security_level,
                "location": str(z.zone.location) if z.zone.location else None,
                "counts": z.counts(),
                "requirements": [a.as_dict() for a in z.assessments],
            }
            for z in report.zones
        ],
        "gateway_evidence": [
            {
                "title": t.title,
                "requirements": list(t.requirements),
                "note": t.note or None,
                "rows": [dict(zip(t.headers, r, strict=True)) for r in t.rows],
            }
            for t in report.tables
        ],
    }
