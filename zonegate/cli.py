"""`zonegate`: the umbrella command for network teams, approvers and operators.

Exit codes: 0 all well, 1 errors or failing policy tests, 2 usage errors.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import itertools
import os
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, NoReturn

from policyd import audit_cli, commands, flows_cli, grant_client
from policyd.crosscheck import compiled_verdict
from topology import Loaded, TopologyError, diagram, load
from topology.evaluate import ALL_GRANTS, Flow, FlowError, evaluate
from topology.instants import parse_instant, rfc3339
from topology.modbus import ModbusRequest, describe_request, request_for
from topology.model import MODBUS_TABLES, Topology
from topology.policy_tests import TestResult, run_tests
from topology.reach import FIELDS, reach_from, reach_to
from topology.report import conduit_dict, gateway_rows, topology_counts
from topology.schema import schema_text
from topology.table import format_table
from topology.version import package_version
from tunneld import profile
from zonegate import graphviz, iec62443, output

Command = Callable[[argparse.Namespace], int]
EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
ANY_TIME = "any time (schedules and validity windows are stated as terms; pin with --at)"


def _machine(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "json", False)) or getattr(args, "format", "text") == "json"


def _usage_error(args: argparse.Namespace, message: str) -> int:
    if _machine(args):
        output.json_error(f"zonegate {args.command}: {message}", EXIT_USAGE)
    else:
        print(f"zonegate {args.command}: {message}", file=sys.stderr)
    return EXIT_USAGE


def _load_or_report(args: argparse.Namespace, strict: bool = False) -> Loaded | None:
    try:
        return load(args.path, strict=strict)
    except TopologyError as exc:
        fmt = getattr(args, "format", "text")
        if fmt == "sarif":
            output.emit(output.sarif(exc.diagnostics, []))
        elif fmt == "junit":
            print(output.junit(args.path, exc.diagnostics, []), end="")
        elif _machine(args):
            output.emit(
                output.envelope(
                    args.command,
                    False,
                    path=args.path,
                    diagnostics=[d.as_dict() for d in exc.diagnostics],
                )
            )
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
    if args.json:
        args.format = "json"
    loaded = _load_or_report(args, strict=args.strict)
    if loaded is None:
        return EXIT_FAIL
    topo = loaded.topology
    results = run_tests(topo)
    failed = [r for r in results if not r.passed]
    code = EXIT_FAIL if failed else EXIT_OK
    if args.format == "json":
        output.emit(
            output.envelope(
                "check",
                not failed,
                path=args.path,
                files=list(topo.files),
                counts=topology_counts(topo),
                diagnostics=[d.as_dict() for d in loaded.diagnostics],
                tests=[r.as_dict() for r in results],
            )
        )
        return code
    if args.format == "sarif":
        output.emit(output.sarif(loaded.diagnostics, results))
        return code
    if args.format == "junit":
        print(output.junit(args.path, loaded.diagnostics, results), end="")
        return code
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
    return code


def tests_table(results: Sequence[TestResult]) -> str:
    rows = [
        [
            "ok" if r.passed else "FAIL",
            r.test.source,
            r.test.target,
            r.test.service + (" +grant" if r.test.granted else ""),
            rfc3339(r.test.at) if r.test.at else "any time",
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
        return parse_instant(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"'{text}' is not a time; write now, or e.g. 2026-11-25T10:00+01:00 "
            "(without an offset: UTC)"
        ) from None


def cmd_explain(args: argparse.Namespace) -> int:
    loaded = _load_or_report(args)
    if loaded is None:
        return EXIT_FAIL
    topo = loaded.topology
    grants = ALL_GRANTS if args.granted else ()
    flow = Flow(args.source, args.target, args.service, args.at, grants, _modbus_request(args))
    try:
        verdict = evaluate(topo, flow)
    except FlowError as exc:
        return _usage_error(args, str(exc))
    conduit = topo.conduits.get(verdict.conduit or "")
    if args.json:
        extra: dict[str, Any] = {}
        code = EXIT_OK
        if args.compiled:  # the compiled verdict beside the model's; 1 when they disagree
            compiled = extra["compiled"] = _compiled(topo, flow, args.at)
            code = EXIT_OK if compiled.get("agrees", True) else EXIT_FAIL
        output.emit(
            output.envelope(
                "explain",
                True,
                at=rfc3339(args.at) if args.at else None,
                flow={
                    "from": args.source,
                    "to": args.target,
                    "service": args.service,
                    "granted": args.granted,
                    "modbus": dataclasses.asdict(flow.modbus) if flow.modbus else None,
                },
                **verdict.as_dict(),
                conduit_location=str(conduit.location) if conduit and conduit.location else None,
                **extra,
            )
        )
        return code
    where = f" ({conduit.location})" if conduit and conduit.location else ""
    print(f"flow:       {args.source} -> {args.target} {args.service}")
    if flow.modbus is not None:
        print(f"request:    {describe_request(flow.modbus)}")
    print(f"at:         {rfc3339(args.at) if args.at else ANY_TIME}")
    print(f"verdict:    {verdict.word}")
    print(f"conduit:    {verdict.conduit or 'default deny'}{where}")
    print(f"reason:     {verdict.reason}")
    for i, cond in enumerate(verdict.conditions):
        print(f"{'conditions:' if i == 0 else '':<12}{cond}")
    if args.compiled:
        return _explain_compiled(topo, flow, args.at)
    return EXIT_OK


def _ranged(lo: int, hi: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text, 0)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{value} is outside {lo}-{hi}")
        return value

    return parse


def _modbus_request(args: argparse.Namespace) -> ModbusRequest | None:
    """The Modbus request of `explain --unit/--table/--address/--count/--value`, if given."""
    given = (args.unit, args.table, args.address, args.count, args.value)
    if all(v is None for v in given):
        return None
    function_class = args.service.partition("/")[2] or "read"
    return request_for(
        function_class,
        args.table or "holding_registers",
        1 if args.unit is None else args.unit,
        args.address or 0,
        args.count,
        args.value or (),
    )


def _compiled(topo: Topology, flow: Flow, at: datetime | None) -> dict[str, Any]:
    """The flow through the compiled nftables rules (an interpreter, no kernel), beside
    the model's verdict at the same instant."""
    when = at or parse_instant("now")
    model = evaluate(topo, dataclasses.replace(flow, at=when))
    try:
        kernel = compiled_verdict(topo, dataclasses.replace(flow, at=when), when)
    except FlowError as exc:
        return {"at": rfc3339(when), "error": str(exc)}
    marks = sorted({f"{res.ct_mark:#010x}" for _, _, res in kernel.hops if res.ct_mark})
    return {
        "at": rfc3339(when),
        "verdict": "allow" if kernel.allowed else "deny",
        "gateways": list(dict.fromkeys(gw for gw, _, _ in kernel.hops)),
        "ct_marks": marks if kernel.allowed else [],
        "model_verdict": model.word,
        "agrees": kernel.allowed == model.allowed,
    }


def _explain_compiled(topo: Topology, flow: Flow, at: datetime | None) -> int:
    """Run the same flow through the compiled nftables rules (an interpreter, no kernel)."""
    c = _compiled(topo, flow, at)
    if "error" in c:
        print(f"compiled:   cannot be run through the rules ({c['error']})")
        return EXIT_OK
    agree = "agrees with" if c["agrees"] else "DISAGREES with"
    marks = c["ct_marks"]
    print(
        f"compiled:   {c['verdict']} by the nftables rules of {' then '.join(c['gateways'])}"
        f" at {c['at']}"
        + (f" (ct mark {', '.join(marks)})" if marks else "")
        + f"; {agree} the model at that time ({c['model_verdict']})"
    )
    return EXIT_OK if c["agrees"] else EXIT_FAIL


def cmd_report(args: argparse.Namespace) -> int:
    loaded = _load_or_report(args)
    if loaded is None:
        return EXIT_FAIL
    topo = loaded.topology
    if args.iec62443:
        return iec62443.report_command(args, topo)
    extra = [f"--{k}" for k in ("tests", "logs", "kernel", "levels", "format") if getattr(args, k)]
    if extra:
        return _usage_error(args, f"{', '.join(extra)} only with --iec62443")
    if args.gateway and args.gateway not in topo.sites:
        return _usage_error(args, f"no site '{args.gateway}'")
    sites = [args.gateway] if args.gateway else sorted(topo.sites)
    if args.json:
        output.emit(
            output.envelope(
                "report",
                True,
                gateways=[
                    {
                        "site": s,
                        "underlay": topo.sites[s].gateway.underlay,
                        "port": topo.sites[s].gateway.port,
                        "overlay": str(topo.sites[s].gateway.overlay),
                        "conduits": [
                            conduit_dict(c)
                            for c in sorted(topo.conduits.values(), key=lambda c: c.name)
                            if c.target.site == s
                        ],
                    }
                    for s in sites
                ],
            )
        )
        return EXIT_OK
    for site in sites:
        gw = topo.sites[site].gateway
        print(f"\ngateway {site} ({gw.underlay}:{gw.port}, overlay {gw.overlay}) enforces:")
        rows = [
            [r[k] for k in ("conduit", "from", "to", "allow", "terms")]
            for r in gateway_rows(topo, site)
        ]
        if rows:
            print(format_table(["conduit", "from", "to", "allow", "terms"], rows))
        else:
            print("  nothing: every flow into this site is denied")
    return EXIT_OK


def cmd_reach(args: argparse.Namespace) -> int:
    loaded = _load_or_report(args)
    if loaded is None:
        return EXIT_FAIL
    topo = loaded.topology
    try:
        if args.to:
            rows = reach_to(topo, args.to, args.at)
        else:
            rows = reach_from(topo, args.source, args.at)
    except FlowError as exc:
        return _usage_error(args, str(exc))
    at = rfc3339(args.at) if args.at else None
    if args.format == "json":
        output.emit(
            output.envelope(
                "reach",
                True,
                at=at,
                query={"to": args.to, "from": args.source},
                reach=[r.as_dict() for r in rows],
            )
        )
        return EXIT_OK
    if args.format == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(["at", *FIELDS])
        for r in rows:
            d = r.as_dict()
            writer.writerow(
                [at or "any", *("; ".join(v) if isinstance(v, list) else v for v in d.values())]
            )
        return EXIT_OK
    what = f"who can reach {args.to}" if args.to else f"what {args.source} can reach"
    print(f"{what}, at {at or ANY_TIME}:")
    if not rows:
        print("  nothing (default deny)")
        return EXIT_OK
    table = [
        [
            r.source if args.to else r.target,
            r.via if args.to else r.target_kind,
            r.conduit,
            ", ".join(r.services),
            "; ".join(r.terms) or "always",
        ]
        for r in rows
    ]
    head = ["who", "as"] if args.to else ["reaches", "kind"]
    print(format_table([*head, "conduit", "services", "terms"], table))
    return EXIT_OK


def cmd_diagram(args: argparse.Namespace) -> int:
    loaded = _load_or_report(args)
    if loaded is None:
        return EXIT_FAIL
    topo = loaded.topology
    if args.site and args.site not in topo.sites:
        return _usage_error(args, f"no site '{args.site}'")
    if args.conduit and args.conduit not in topo.conduits:
        return _usage_error(args, f"no conduit '{args.conduit}'")
    view = diagram.View(site=args.site, conduit=args.conduit)
    if args.format == "mermaid":
        print(diagram.mermaid(topo, view), end="")
        return EXIT_OK
    text = diagram.dot(topo, view)
    if args.format == "dot":
        print(text, end="")
        return EXIT_OK
    try:
        image = graphviz.render(text, args.format)
    except graphviz.RenderError as exc:
        return _usage_error(args, str(exc))
    sys.stdout.buffer.write(image)
    return EXIT_OK


def cmd_schema(args: argparse.Namespace) -> int:
    print(schema_text(), end="")
    return EXIT_OK


AT_HELP = (
    "now, or an ISO 8601 time (UTC without an offset); default: any time, with "
    "schedules and validity stated as terms"
)


class Parser(argparse.ArgumentParser):
    """Usage errors as JSON when the command line asks for JSON output."""

    def error(self, message: str) -> NoReturn:
        argv = sys.argv[1:] if self._json_argv is None else self._json_argv
        if "--json" in argv or "--format=json" in argv or _pair(argv, "--format", "json"):
            output.json_error(f"{self.prog}: {message}", EXIT_USAGE)
            sys.exit(EXIT_USAGE)
        super().error(message)

    _json_argv: list[str] | None = None


def _pair(argv: list[str], flag: str, value: str) -> bool:
    return any(a == flag and b == value for a, b in itertools.pairwise(argv))


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="zonegate",
        description="Zones and conduits (IEC 62443) as code: check, explain, report on "
        "and draw topology files.",
        epilog="examples:\n"
        "  zonegate check examples/plant -v\n"
        "  zonegate explain examples/plant --from vendor-tech --to plant-a/plc-1 "
        "--service modbus/write\n"
        "  zonegate reach examples/plant --to plant-a/plc-1\n"
        "  zonegate diagram examples/plant --format svg > plant.svg\n"
        "  zonegate report --iec62443 examples/plant --tests build/test-results.xml\n"
        "exit codes: 0 all well, 1 errors or failing policy tests, 2 usage errors\n"
        "file format: docs/topology.md",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"zonegate {package_version()}")
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=Parser
    )

    p = sub.add_parser("check", help="validate a topology and run its policy tests")
    p.add_argument("path", help="a topology file or a directory of them")
    p.add_argument("--strict", action="store_true", help="treat warnings as errors")
    p.add_argument("-v", "--verbose", action="store_true", help="print every test's verdict")
    p.add_argument(
        "--format",
        choices=["text", "json", "sarif", "junit"],
        default="text",
        help="json (zonegate.check/1), sarif (GitHub code scanning) or junit (CI test reports)",
    )
    p.add_argument("--json", action="store_true", help="the same as --format json")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("explain", help="say whether a flow is allowed, and why")
    p.add_argument("path", help="a topology file or a directory of them")
    p.add_argument("--from", dest="source", required=True, help="identity, SITE/ZONE, SITE/ASSET")
    p.add_argument("--to", dest="target", required=True, help="SITE/ASSET, SITE/ZONE or address")
    p.add_argument(
        "--service", required=True, help="service, service/class or tcp/PORT (modbus/write)"
    )
    p.add_argument("--at", type=_parse_time, help=AT_HELP)
    p.add_argument("--granted", action="store_true", help="as if a grant were active")
    mb = p.add_argument_group("a Modbus request (checked against units, ranges and values)")
    mb.add_argument("--unit", type=_ranged(0, 255), help="unit id (default 1)")
    mb.add_argument("--table", choices=MODBUS_TABLES, help="default holding_registers")
    mb.add_argument("--address", type=_ranged(0, 65535), help="first address (default 0)")
    mb.add_argument("--count", type=_ranged(1, 2000), help="addresses read (default 1)")
    mb.add_argument(
        "--value", type=_ranged(0, 65535), action="append", help="a written value (repeatable)"
    )
    p.add_argument(
        "--compiled",
        action="store_true",
        help="also run the flow through the compiled nftables rules (at --at or now)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser(
        "report", help="what each gateway enforces; with --iec62443 the evidence report"
    )
    p.add_argument("path", help="a topology file or a directory of them")
    p.add_argument("--gateway", help="only this site's gateway")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    iec62443.add_arguments(p)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("reach", help="who can reach an asset or zone, or what an identity can")
    p.add_argument("path", help="a topology file or a directory of them")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--to", help="SITE/ASSET or SITE/ZONE: everything that can reach it")
    which.add_argument("--from", dest="source", help="identity or SITE/ZONE: all it can reach")
    p.add_argument("--at", type=_parse_time, help=AT_HELP)
    p.add_argument("--format", choices=["text", "json", "csv"], default="text")
    p.set_defaults(func=cmd_reach)

    p = sub.add_parser("diagram", help="draw sites, zones, gateways, identities and conduits")
    p.add_argument("path", help="a topology file or a directory of them")
    p.add_argument(
        "--format",
        choices=["mermaid", "dot", "svg", "png"],
        default="mermaid",
        help="svg and png need Graphviz (dot) installed",
    )
    p.add_argument("--site", help="only this site and what reaches it")
    p.add_argument("--conduit", help="only this conduit, its sources and its target")
    p.set_defaults(func=cmd_diagram)

    p = sub.add_parser("schema", help="print the JSON Schema of topology files (for editors)")
    p.set_defaults(func=cmd_schema)

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

    p = sub.add_parser("audit", help="check the audit log: verify its hash chain")
    audit_cli.add_audit_arguments(p)
    p.set_defaults(func=audit_cli.audit_command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    Parser._json_argv = None if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    func: Command = args.func
    try:
        return func(args)
    except BrokenPipeError:  # `zonegate ... | head`: the reader has seen enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
