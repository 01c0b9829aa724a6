"""`zonegate`: the umbrella command for network teams, approvers and operators.

Exit codes: 0 all well, 1 errors or failing policy tests, 2 usage errors.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from policyd import commands, flows_cli, grant_client
from policyd.crosscheck import compiled_verdict
from topology import Loaded, TopologyError, diagram, load
from topology.evaluate import ALL_GRANTS, Flow, FlowError, evaluate
from topology.model import Topology
from topology.policy_tests import TestResult, run_tests
from topology.report import gateway_rows, topology_counts
from topology.table import format_table
from topology.version import package_version
from tunneld import profile

Command = Callable[[argparse.Namespace], int]
EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def _load_or_report(args: argparse.Namespace, strict: bool = False) -> Loaded | None:
    try:
        return load(args.path, strict=strict)
    except TopologyError as exc:
        if getattr(args, "json", False):
            print(json.dumps({"ok": False, "diagnostics": [d.as_dict() for d in exc.diagnostics]}))
        else:
            for d in exc.diagnostics:
                print(d, file=sys.stderr)
            errors = sum(1 for d in exc.diagnostics if d.severity == "error")
            warnings = len(exc.diagnostics) - errors
            print(
                f"{args.path}: {errors} error(s), {warnings} warning(s)"
                + (" (warnings count as errors with --strict)" if strict and warnings else ""),
                file=sys.stderr,
            )
        return None


def cmd_check(args: argparse.Namespace) -> int:
    loaded = _load_or_report(args, strict=args.strict)
    if loaded is None:
        return EXIT_FAIL
    topo = loaded.topology
    results = run_tests(topo)
    failed = [r for r in results if not r.passed]
    if args.json:
        print(
            json.dumps(
                {
                    "ok": not failed,
                    "counts": topology_counts(topo),
                    "diagnostics": [d.as_dict() for d in loaded.diagnostics],
                    "tests": [r.as_dict() for r in results],
                },
                indent=2,
            )
        )
        return EXIT_FAIL if failed else EXIT_OK
    for d in loaded.diagnostics:
        print(d, file=sys.stderr)
    counts = ", ".join(f"{n} {k}" for k, n in topology_counts(topo).items())
    print(f"{args.path}: {counts}")
    if args.verbose:
        print(tests_table(results))
    for r in failed:
        where = f"{r.test.location}: " if r.test.location else ""
        print(
            f"{where}test failed: {r.test.describe()}: expected {r.test.expect}, "
            f"got {r.verdict.word} ({r.verdict.reason})",
            file=sys.stderr,
        )
    print(f"{len(results) - len(failed)}/{len(results)} policy tests pass")
    return EXIT_FAIL if failed else EXIT_OK


def tests_table(results: Sequence[TestResult]) -> str:
    rows = [
        [
            "ok" if r.passed else "FAIL",
            r.test.source,
            r.test.target,
            r.test.service + (" +grant" if r.test.granted else ""),
            r.test.at.strftime("%a %Y-%m-%d %H:%M %z") if r.test.at else "-",
            r.test.expect,
            r.verdict.word,
            r.verdict.conduit or "default deny",
        ]
        for r in results
    ]
    headers = ["", "from", "to", "service", "at", "expect", "got", "conduit"]
    return format_table(headers, rows)


def _parse_time(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"'{text}' is not a time; write e.g. 2026-11-25T10:00+01:00"
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def cmd_explain(args: argparse.Namespace) -> int:
    loaded = _load_or_report(args)
    if loaded is None:
        return EXIT_FAIL
    topo = loaded.topology
    flow = Flow(args.source, args.target, args.service, args.at, ALL_GRANTS if args.granted else ())
    try:
        verdict = evaluate(topo, flow)
    except FlowError as exc:
        print(f"zonegate explain: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        out: dict[str, Any] = {"flow": vars(flow) | {"at": _iso(args.at)}, **verdict.as_dict()}
        code = EXIT_OK
        if args.compiled:
            compiled = out["compiled"] = _compiled(topo, flow, args.at)
            code = EXIT_OK if compiled.get("agrees", True) else EXIT_FAIL
        print(json.dumps(out))
        return code
    conduit = topo.conduits.get(verdict.conduit or "")
    where = f" ({conduit.location})" if conduit and conduit.location else ""
    print(f"flow:       {args.source} -> {args.target} {args.service}" + _when(args.at))
    print(f"verdict:    {verdict.word}")
    print(f"conduit:    {verdict.conduit or 'default deny'}{where}")
    print(f"reason:     {verdict.reason}")
    for i, cond in enumerate(verdict.conditions):
        print(f"{'conditions:' if i == 0 else '':<12}{cond}")
    if args.compiled:
        return _explain_compiled(topo, flow, args.at)
    return EXIT_OK


def _compiled(topo: Topology, flow: Flow, at: datetime | None) -> dict[str, Any]:
    """The flow through the compiled nftables rules (an interpreter, no kernel), beside
    the model's verdict at the same instant."""
    when = at or datetime.now(UTC)
    model = evaluate(topo, dataclasses.replace(flow, at=when))
    try:
        kernel = compiled_verdict(topo, dataclasses.replace(flow, at=when), when)
    except FlowError as exc:
        return {"at": when.isoformat(), "error": str(exc)}
    marks = sorted({f"{res.ct_mark:#010x}" for _, _, res in kernel.hops if res.ct_mark})
    return {
        "at": when.isoformat(),
        "verdict": "allow" if kernel.allowed else "deny",
        "gateways": list(dict.fromkeys(gw for gw, _, _ in kernel.hops)),
        "ct_marks": marks if kernel.allowed else [],
        "model_verdict": model.word,
        "agrees": kernel.allowed == model.allowed,
    }


def _explain_compiled(topo: Topology, flow: Flow, at: datetime | None) -> int:
    c = _compiled(topo, flow, at)
    if "error" in c:
        print(f"compiled:   cannot be run through the rules ({c['error']})")
        return EXIT_OK
    when = datetime.fromisoformat(c["at"])
    agree = "agrees with" if c["agrees"] else "DISAGREES with"
    marks = c["ct_marks"]
    print(
        f"compiled:   {c['verdict']} by the nftables rules of {' then '.join(c['gateways'])}"
        f" at {when:%Y-%m-%d %H:%M %Z}"
        + (f" (ct mark {', '.join(marks)})" if marks else "")
        + f"; {agree} the model at that time ({c['model_verdict']})"
    )
    return EXIT_OK if c["agrees"] else EXIT_FAIL


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at else None


def _when(at: datetime | None) -> str:
    return f" at {at.isoformat()}" if at else ""


def cmd_report(args: argparse.Namespace) -> int:
    loaded = _load_or_report(args)
    if loaded is None:
        return EXIT_FAIL
    topo = loaded.topology
    sites = [args.gateway] if args.gateway else sorted(topo.sites)
    if args.gateway and args.gateway not in topo.sites:
        print(f"zonegate report: no site '{args.gateway}'", file=sys.stderr)
        return EXIT_USAGE
    out = {s: gateway_rows(topo, s) for s in sites}
    if args.json:
        print(json.dumps(out, indent=2))
        return EXIT_OK
    for site in sites:
        gw = topo.sites[site].gateway
        print(f"\ngateway {site} ({gw.underlay}:{gw.port}, overlay {gw.overlay}) enforces:")
        rows = [[r[k] for k in ("conduit", "from", "to", "allow", "terms")] for r in out[site]]
        if rows:
            print(format_table(["conduit", "from", "to", "allow", "terms"], rows))
        else:
            print("  nothing: every flow into this site is denied")
    return EXIT_OK


def cmd_diagram(args: argparse.Namespace) -> int:
    loaded = _load_or_report(args)
    if loaded is None:
        return EXIT_FAIL
    draw = diagram.dot if args.format == "dot" else diagram.mermaid
    print(draw(loaded.topology), end="")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zonegate",
        description="Zones and conduits (IEC 62443) as code: check, explain, report on "
        "and draw topology files.",
        epilog="examples:\n"
        "  zonegate check examples/plant -v\n"
        "  zonegate explain examples/plant --from vendor-tech --to plant-a/plc-1 "
        "--service modbus/write\n"
        "  zonegate diagram examples/plant --format dot | dot -Tsvg > plant.svg\n"
        "exit codes: 0 all well, 1 errors or failing policy tests, 2 usage errors\n"
        "file format: docs/topology.md",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"zonegate {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("check", help="validate a topology and run its policy tests")
    p.add_argument("path", help="a topology file or a directory of them")
    p.add_argument("--strict", action="store_true", help="treat warnings as errors")
    p.add_argument("-v", "--verbose", action="store_true", help="print every test's verdict")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("explain", help="say whether a flow is allowed, and why")
    p.add_argument("path", help="a topology file or a directory of them")
    p.add_argument("--from", dest="source", required=True, help="identity, SITE/ZONE, SITE/ASSET")
    p.add_argument("--to", dest="target", required=True, help="SITE/ASSET, SITE/ZONE or address")
    p.add_argument(
        "--service", required=True, help="service, service/class or tcp/PORT (modbus/write)"
    )
    p.add_argument("--at", type=_parse_time, help="evaluate at this time (ISO 8601)")
    p.add_argument("--granted", action="store_true", help="as if a grant were active")
    p.add_argument(
        "--compiled",
        action="store_true",
        help="also run the flow through the compiled nftables rules (at --at or now)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("report", help="what each gateway enforces")
    p.add_argument("path", help="a topology file or a directory of them")
    p.add_argument("--gateway", help="only this site's gateway")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("diagram", help="draw zones and conduits (Mermaid or Graphviz)")
    p.add_argument("path", help="a topology file or a directory of them")
    p.add_argument("--format", choices=["mermaid", "dot"], default="mermaid")
    p.set_defaults(func=cmd_diagram)

    p = sub.add_parser("render", help="the nftables ruleset a gateway enforces")
    commands.add_render_arguments(p)
    p.set_defaults(func=commands.render_command)

    p = sub.add_parser("diff", help="what applying would change in the running ruleset")
    commands.add_render_arguments(p)
    p.set_defaults(func=commands.diff_command)

    p = sub.add_parser("grant", help="just-in-time access: request, approve, deny, revoke, list")
    grant_client.add_grant_arguments(p)
    p.set_defaults(func=grant_client.grant_command)

    p = sub.add_parser("profile", help="tunnel profiles for remote users: issue, show")
    profile.add_profile_arguments(p)
    p.set_defaults(func=profile.profile_command)

    p = sub.add_parser("flows", help="read, filter and follow the flow and audit log")
    flows_cli.add_flows_arguments(p)
    p.set_defaults(func=flows_cli.flows_command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Command = args.func
    try:
        return func(args)
    except BrokenPipeError:  # `zonegate ... | head`: the reader has seen enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
