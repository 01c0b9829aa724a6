"""`zonegate render` and `zonegate diff`, as functions the zonegate CLI wires in.

    add_render_arguments(sub.add_parser("render")); set_defaults(func=render_command)
    add_render_arguments(sub.add_parser("diff"));   set_defaults(func=diff_command)

render prints the compiled ruleset (nft text, or libnftables JSON with --json); it is
pure and needs no root. diff compares it with the table running in this network
namespace (`nft -j list table inet zonegate`) and exits 1 when they differ.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from typing import Any

import topology
from policyd.compiler import CompileError, CompileOptions, Ruleset, compile_ruleset
from policyd.conventions import API_PORT
from policyd.render import render_text
from topology.diagnostics import TopologyError
from topology.instants import rfc3339
from topology.version import package_version


def add_render_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", metavar="PATH", help="topology file or directory")
    parser.add_argument("--gateway", required=True, help="site whose gateway to compile for")
    parser.add_argument(
        "--json",
        action="store_true",
        help="render: libnftables JSON instead of text; diff: zonegate.diff/1 (docs/cli-json.md)",
    )
    parser.add_argument(
        "--tunnel", action="append", help="tunnel interface name (repeatable; default zg*)"
    )
    parser.add_argument(
        "--api-port", type=int, default=API_PORT, help=f"control API port (default {API_PORT})"
    )
    parser.add_argument("--no-api", action="store_true", help="as for policyd --no-api")
    parser.add_argument(
        "--summary", action="store_true", help="render: counts and conduits, not the rules"
    )
    parser.add_argument(
        "--at", default=None, help="compile as of this ISO time (default: now; UTC if naive)"
    )


def _compile(args: argparse.Namespace) -> Ruleset | None:
    try:
        topo = topology.load(args.path).topology
    except TopologyError as e:
        print(e, file=sys.stderr)
        return None
    at = datetime.now(UTC)
    if args.at:
        at = datetime.fromisoformat(args.at)
        at = at if at.tzinfo else at.replace(tzinfo=UTC)
    opts = CompileOptions(
        tunnels=tuple(args.tunnel or ("zg*",)), api_port=None if args.no_api else args.api_port
    )
    try:
        return compile_ruleset(topo, args.gateway, now=at, options=opts)
    except CompileError as e:
        print(f"error: {e}", file=sys.stderr)
        return None


def summary(rs: Ruleset) -> str:
    """What a gateway's compiled ruleset holds, in a few lines for people."""
    rules = sum(1 for o in rs.objects if "rule" in o)
    chains = sum(1 for o in rs.objects if "chain" in o)
    bodies: list[dict[str, Any]] = [o.get("set") or o.get("map") or {} for o in rs.objects]
    elements = sum(len(b.get("elem", [])) for b in bodies)
    lines = [
        f"gateway {rs.gateway}: table inet zonegate, {chains} chains, {rules} rules "
        f"({rs.hook_rule_count()} in hook chains), {elements} set/map elements",
    ]
    for plan in sorted(rs.conduits.values(), key=lambda p: p.name):
        if plan.needs_grant:
            who = f"closed until granted (set {plan.identity_set or plan.zone_set})"
        else:
            who = f"{len(plan.identities)} identities" if plan.identities else ""
            if plan.zones:
                who = ", ".join(filter(None, [who, f"{len(plan.zones)} source zone(s)"]))
        lines.append(f"  conduit {plan.name:<24} ct mark {plan.mark:#010x}  {who}")
    if rs.next_change:
        lines.append(f"  recompiles at {rfc3339(rs.next_change)} (schedule or validity)")
    return "\n".join(lines)


def render_command(args: argparse.Namespace) -> int:
    rs = _compile(args)
    if rs is None:
        return 2
    if getattr(args, "summary", False):
        print(summary(rs))
    elif args.json:
        print(json.dumps(rs.to_json(), indent=2))
    else:
        sys.stdout.write(render_text(rs.objects))
    for note in rs.notes:
        print(f"note: {note}", file=sys.stderr)
    return 0


def diff_command(args: argparse.Namespace) -> int:
    rs = _compile(args)
    if rs is None:
        return 2
    from policyd.kernel import NftError, NftHandle

    try:
        text = NftHandle().diff_text(rs)
    except NftError as e:
        if args.json:
            _diff_json(rs.gateway, ok=False, error=str(e), exit_code=2)
        else:
            print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:  # zonegate.diff/1 (docs/cli-json.md)
        _diff_json(rs.gateway, ok=not text, in_sync=not text, diff=text.splitlines())
        return 0 if not text else 1
    if not text:
        print(f"running ruleset matches the compiled policy for {rs.gateway}")
        return 0
    sys.stdout.write(text)
    return 1


def _diff_json(gateway: str, ok: bool, **body: object) -> None:
    doc = {
        "schema": "zonegate.diff/1",
        "ok": ok,
        "generated_at": rfc3339(datetime.now(UTC)),
        "zonegate": package_version(),
        "gateway": gateway,
        **body,
    }
    print(json.dumps(doc, indent=2))
