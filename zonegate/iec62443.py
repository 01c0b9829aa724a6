"""`zonegate report --iec62443`: the topology, the tests and the gateways, in one report.

The pure assessment is `topology.iec62443`; this module adds what only the layers above
the model can read: each gateway's compiled ruleset (and, on a gateway, the running
table's digest against it) and the flow/audit logs. Audit-chain verification (issue 13)
slots in at `audit_chain_evidence`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from policyd.compiler import CompileError, CompileOptions, Ruleset, compile_ruleset
from policyd.conventions import API_PORT
from policyd.flowlog.auditchain import files_of, verify
from policyd.flowlog.evidence import LogEvidence, read_evidence
from policyd.flowlog.reader import parse_since
from policyd.ruleset_digest import DigestCheck, compare, digest, grant_sets
from topology.diagnostics import TopologyError
from topology.iec62443 import html as html_render
from topology.iec62443 import render
from topology.iec62443.assess import EvidenceReport, Table, assess
from topology.iec62443.catalogue import DEFAULT_LEVELS, load_catalogue
from topology.iec62443.findings import Evidence, Gap
from topology.iec62443.junit import ResultsError, TestResults, read_results
from topology.instants import rfc3339
from topology.model import Topology
from topology.version import package_version
from zonegate import output

DEFAULT_RESULTS = Path("build/test-results.xml")  # where scripts/test writes them
EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2

Found = dict[str, list[Evidence | Gap]]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--iec62443",
        action="store_true",
        help="IEC 62443-3-3 evidence per zone and requirement (docs/iec62443.md)",
    )
    p.add_argument("--tests", type=Path, help="JUnit XML from scripts/test (test evidence)")
    p.add_argument(
        "--logs",
        type=Path,
        action="append",
        help="a flow/audit log (flows.jsonl; its rotations are read too); repeatable",
    )
    p.add_argument("--since", help="only log records from then (10m, 24h, ISO time)")
    p.add_argument("--until", help="only log records before then (ISO time)")
    p.add_argument(
        "--kernel",
        metavar="SITE",
        help="on SITE's gateway: compare the running nftables table with the compiled one",
    )
    p.add_argument(
        "--tunnel", action="append", help="as for policyd --tunnel (for --kernel; default zg*)"
    )
    p.add_argument("--api-port", type=int, default=API_PORT, help="as for policyd --api-port")
    p.add_argument("--no-api", action="store_true", help="as for policyd --no-api")
    p.add_argument("--levels", type=Path, help="a corrected copy of the levels table")
    p.add_argument("--format", choices=["md", "json", "html"], help="default md (json with --json)")
    p.add_argument("-o", "--output", type=Path, help="write the report here, not to stdout")
    p.add_argument("--summary", action="store_true", help="only the summary table")


def audit_chain_evidence(paths: Sequence[Path]) -> list[Evidence | Gap]:
    """Verification of the audit log's hash chain (SR 3.9) over the given log files."""
    if not paths:
        return []
    v = verify(files_of(paths))
    if v.ok:
        return [
            Evidence(
                f"audit chain intact: {v.records} records, seq {v.first}..{v.last}",
                "zonegate audit verify",
                "gateway",
            )
        ]
    return [Gap("runtime", p, "zonegate audit verify", source="gateway") for p in v.problems]


def _compiled(
    topo: Topology, now: datetime, opts: CompileOptions, found: Found
) -> dict[str, Ruleset]:
    out = {}
    for site in sorted(topo.sites):
        try:
            rs = compile_ruleset(topo, site, now=now, options=opts)
        except CompileError as exc:
            found.setdefault("SR 5.2", []).append(
                Gap("runtime", f"{site} does not compile: {exc}", source="gateway", site=site)
            )
            continue
        out[site] = rs
        hooks = [o["chain"] for o in rs.objects if "chain" in o and "hook" in o["chain"]]
        where = f"zonegate render PATH --gateway {site}"
        if hooks and all(c.get("policy") == "drop" for c in hooks):
            found.setdefault("SR 5.2 RE1", []).append(
                Evidence(
                    f"compiled ruleset for {site}: every hook chain has policy drop "
                    f"({', '.join(c['name'] for c in hooks)})",
                    where,
                    "gateway",
                    site=site,
                )
            )
        else:
            found.setdefault("SR 5.2 RE1", []).append(
                Gap("runtime", f"a {site} hook chain accepts", where, "", "gateway", site)
            )
        rules = sum(1 for o in rs.objects if "rule" in o)
        fingerprint = digest(rs.objects, grant_sets(rs))
        found.setdefault("SR 7.6", []).append(
            Evidence(
                f"{site} compiles to {rules} rules, policy digest {fingerprint}",
                where,
                "gateway",
                site=site,
            )
        )
    return out


def _kernel(site: str, rs: Ruleset | None, found: Found) -> DigestCheck | None:
    """Read this network namespace's table (root, python3-nftables) and compare digests."""
    if rs is None:
        raise ValueError(f"no site '{site}' with a compiled ruleset")
    from policyd.kernel import NftError, NftHandle

    try:
        running = NftHandle().list_table()
    except NftError as exc:
        raise ValueError(f"cannot read the running table: {exc}") from None
    check = compare(rs, running)
    for req in ("SR 7.6", "SR 5.2"):
        if check.matches:
            item: Evidence | Gap = Evidence(
                f"the running table on {site} has the compiled policy's digest {check.compiled}",
                "nft list table inet zonegate",
                "gateway",
                site=site,
            )
        else:
            what = check.running or "no zonegate table"
            item = Gap(
                "runtime",
                f"the running table on {site} ({what}) is not the compiled policy "
                f"({check.compiled})",
                "nft list table inet zonegate",
                f"run `zonegate diff PATH --gateway {site}` and find out why",
                "gateway",
                site,
            )
        found.setdefault(req, []).append(item)
    return check


def _named_approver(topo: Topology, conduit: str, actor: str) -> bool:
    c = topo.conduits.get(conduit)
    who = topo.identities.get(actor)
    if c is None or c.approval is None or who is None:
        return False
    return c.approval.names(who)


def _log_findings(topo: Topology, ev: LogEvidence, found: Found) -> list[Table]:
    def add(req: str, item: Evidence | Gap) -> None:
        found.setdefault(req, []).append(dataclasses.replace(item, source="gateway"))

    where = ", ".join(ev.files)
    period = f"{ev.first_ts or '-'} to {ev.last_ts or '-'}"
    add("SR 2.8", Evidence(f"{ev.records} log records from {period}", where, "gateway"))
    lost = sum(ev.lost.values())
    if lost:
        by = ", ".join(f"{k} {n}" for k, n in sorted(ev.lost.items()))
        add("SR 2.8", Gap("runtime", f"the log says {lost} records were lost ({by})", where))
    if ev.unreadable:
        add(
            "SR 2.8",
            Gap(
                "runtime",
                f"{ev.unreadable} line(s) of the log are not records",
                where,
                "look at them: the recorder writes whole lines",
            ),
        )
    if ev.recording_failures:
        add("SR 2.8", Gap("runtime", f"{ev.recording_failures} session recording(s) failed", where))
    approvals = ev.of("grant_approved")
    text = f"{len(approvals)} approval(s) in the period, each with its approver"
    add("SR 1.13 RE1", Evidence(text, where, "gateway"))
    for d in approvals:
        if not _named_approver(topo, d.conduit, d.actor):
            add(
                "SR 1.13 RE1",
                Gap(
                    "runtime",
                    f"{d.ts}: {d.actor or 'nobody'} approved {d.identity} on {d.conduit}, "
                    "but the topology names no such approver",
                    where,
                ),
            )
    emergencies = ev.of("emergency_opened")
    text = f"{len(emergencies)} emergency use(s) in the period"
    add("SR 2.1 RE3", Evidence(text, where, "gateway"))
    revoked = ev.of("grant_revoked")
    ended = sum(len(d.sessions_ended) for d in revoked)
    text = f"{len(revoked)} revocation(s) ended {ended} open session(s)"
    add("SR 2.6", Evidence(text, where, "gateway"))
    denied = sum(ev.denials.values())
    add("SR 5.2", Evidence(f"{denied} denied attempt(s) logged", where, "gateway"))
    add(
        "SR 7.6",
        Evidence(
            f"policy applied {ev.policy_applied} time(s), rejected {ev.policy_rejected} "
            "time(s) (the last good policy stayed in force)",
            where,
            "gateway",
        ),
    )
    for item in audit_chain_evidence([Path(f) for f in ev.files]):
        add("SR 3.9", item)

    def decisions(action: str) -> tuple[tuple[str, ...], ...]:
        return tuple(
            (d.ts, d.gateway, d.conduit, d.identity, d.actor, d.duration, d.reason)
            for d in ev.of(action)
        )

    heads = ("time", "gateway", "conduit", "identity", "by", "duration", "reason")
    return [
        Table("Approvals", heads, decisions("grant_approved"), ("SR 1.13 RE1", "SR 2.1")),
        Table("Emergency uses", heads, decisions("emergency_opened"), ("SR 2.1 RE3",)),
        Table(
            "Revocations and the sessions they ended",
            ("time", "gateway", "conduit", "identity", "revoked by", "sessions ended"),
            tuple(
                (
                    d.ts,
                    d.gateway,
                    d.conduit,
                    d.identity,
                    d.actor,
                    ", ".join(d.sessions_ended) or "none open",
                )
                for d in revoked
            ),
            ("SR 2.6",),
            "A session counts as ended by a revocation when its flow was open at that moment.",
        ),
        Table(
            "Denials per conduit",
            ("conduit tried", "reason", "to", "attempts"),
            tuple((c, r, t, str(n)) for (c, r, t), n in sorted(ev.denials.items())),
            ("SR 5.2", "SR 5.2 RE1"),
            "'no conduit': no conduit admits that source to that target (default deny).",
            denied,
        ),
        Table(
            "Flows and recordings per conduit",
            ("conduit", "flows ended", "sessions recorded"),
            tuple(
                (c, str(ev.flows[c]), str(ev.recordings[c]))
                for c in sorted(set(ev.flows) | set(ev.recordings))
            ),
            ("SR 2.8",),
            total=sum(ev.flows.values()),
        ),
    ]


def build(args: argparse.Namespace, topo: Topology) -> EvidenceReport:
    """Everything the arguments name, read and assessed; ValueError for unusable inputs."""
    if args.gateway and args.gateway not in topo.sites:
        raise ValueError(f"no site '{args.gateway}'")
    catalogue = load_catalogue(args.levels or DEFAULT_LEVELS)
    now = datetime.now(UTC)
    found: Found = {}
    inputs = {"topology": ", ".join(topo.files), "levels table": catalogue.file}
    results: TestResults | None = None
    if args.tests is not None:
        results = read_results(args.tests)
        tagged = len({t.name for ts in results.by_requirement.values() for t in ts})
        inputs["tests"] = f"{results.file} ({results.total} tests, {tagged} tagged)"
    else:
        inputs["tests"] = "not given (--tests)"
    opts = CompileOptions(
        tunnels=tuple(args.tunnel or ("zg*",)), api_port=None if args.no_api else args.api_port
    )
    rulesets = _compiled(topo, now, opts, found)
    if args.kernel:
        check = _kernel(args.kernel, rulesets.get(args.kernel), found)
        inputs["kernel"] = f"table inet zonegate here, as {args.kernel}: " + (
            "matches" if check and check.matches else "DIFFERS"
        )
    else:
        inputs["kernel"] = "not read (--kernel SITE on a gateway)"
    tables: list[Table] = []
    if args.logs:
        since = parse_since(args.since) if args.since else None
        until = parse_since(args.until) if args.until else None
        try:
            ev = read_evidence(args.logs, topo, since, until)
        except OSError as exc:
            raise ValueError(str(exc)) from None
        tables = _log_findings(topo, ev, found)
        inputs["logs"] = f"{', '.join(ev.files)} ({ev.records} records)"
    else:
        inputs["logs"] = "not given (--logs)"
    sites = [args.gateway] if args.gateway else []
    return assess(topo, catalogue, results, found, inputs, tables, sites)


def failed(report: EvidenceReport) -> bool:
    """Loud: a red test, missing test evidence, or a gateway contradicting the topology."""
    return any(
        a.status == "failed" or any(g.kind in ("tests", "runtime") for g in a.gaps)
        for z in report.zones
        for a in z.assessments
    )


def report_command(args: argparse.Namespace, topo: Topology) -> int:
    try:
        report = build(args, topo)
    except (TopologyError, ResultsError, ValueError) as exc:
        print(f"zonegate report: {exc}", file=sys.stderr)
        return EXIT_USAGE
    generated = f"{rfc3339(datetime.now(UTC))} by zonegate {package_version()}"
    fmt = args.format or ("json" if args.json else "md")
    if args.summary:
        text = render.summary_text(report) + "\n"
    elif fmt == "json":
        doc = output.envelope("iec62443", not failed(report), **render.as_json(report))
        text = json.dumps(doc, indent=2) + "\n"
    elif fmt == "html":
        text = html_render.html(report, generated)
    else:
        text = render.markdown(report, generated)
    if args.output:
        args.output.write_text(text, encoding="utf-8")
        print(f"wrote {args.output}: {render.totals_line(report)}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return EXIT_FAIL if failed(report) else EXIT_OK
