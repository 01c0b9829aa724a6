"""`zonegate grant ...`: ask policyd's control API for just-in-time access.

On the gateway it talks to the local unix socket (say who acts with --as); from a
remote user's machine it talks to the gateway's overlay address through the tunnel
(--api http://100.64.0.1:9780), where the tunnel itself says who you are.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import sys
from typing import Any

from policyd.conventions import RUN_DIR
from topology.table import format_table

ENV_API = "ZONEGATE_API"


def add_grant_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--api",
        default=os.environ.get(ENV_API),
        help=f"policyd URL through the tunnel, e.g. http://100.64.0.1:9780 (or ${ENV_API})",
    )
    parser.add_argument(
        "--profile",
        help="take the API address from this tunnel profile (zonegate profile issue)",
    )
    parser.add_argument("--gateway", help="with --profile: the site whose gateway to ask")
    parser.add_argument(
        "--socket",
        help=f"policyd's local socket on the gateway (default: the one {RUN_DIR}/policyd-*.sock)",
    )
    parser.add_argument("--as", dest="acting_as", help="local socket only: the acting identity")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, text in (
        ("request", "ask for access on an approval conduit"),
        ("emergency", "open an emergency conduit now (audited loudly)"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("--conduit", required=True)
        p.add_argument("--duration", required=True, help="e.g. 30m, 2h")
        p.add_argument("--reason", required=True, help="why; goes to the audit trail")
        if name == "request":
            p.add_argument("--wait", action="store_true", help="wait for the decision")
            p.add_argument("--wait-timeout", type=float, default=3600.0, help="seconds")
        else:
            p.add_argument("--code", help="your TOTP code, where the conduit asks for one")
    for name, text in (
        ("approve", "approve a request"),
        ("deny", "deny a request"),
        ("revoke", "revoke a grant; live sessions end"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("grant_id")
        p.add_argument("--note", help="a note for the audit trail")
        if name != "deny":
            p.add_argument("--code", help="your TOTP code, where the conduit asks for one")
    sub.add_parser("list", help="grants you can see")


def _request_for(args: argparse.Namespace) -> tuple[str, str, dict[str, Any] | None]:
    extra = {"as": args.acting_as} if args.acting_as else {}
    if args.action in ("request", "emergency"):
        path = "/v1/grants" if args.action == "request" else "/v1/emergency"
        body = {"conduit": args.conduit, "duration": args.duration, "reason": args.reason}
        return "POST", path, body | extra | _code(args)
    if args.action in ("approve", "deny", "revoke"):
        note = {"note": args.note} if args.note else {}
        return "POST", f"/v1/grants/{args.grant_id}/{args.action}", extra | note | _code(args)
    return "GET", "/v1/grants", None


def _code(args: argparse.Namespace) -> dict[str, str]:
    code = getattr(args, "code", None)
    return {"second_factor": code} if code else {}


def api_from_profile(path: str, gateway: str | None) -> str:
    """The control API URL of one gateway in a tunnel profile (reached through it)."""
    with open(path, encoding="utf-8") as fh:
        doc = json.load(fh)
    body = doc.get("profile", doc) if isinstance(doc, dict) else {}
    gateways = [g for g in body.get("gateways", []) if isinstance(g, dict) and g.get("api")]
    if gateway is not None:
        gateways = [g for g in gateways if g.get("site") == gateway]
    if len(gateways) != 1:
        sites = ", ".join(str(g.get("site")) for g in body.get("gateways", []))
        raise OSError(f"{path}: say which gateway with --gateway (the profile has: {sites})")
    return str(gateways[0]["api"])


def local_socket() -> str:
    """The one policyd socket on this machine; more than one needs --socket."""
    found = sorted(RUN_DIR.glob("policyd-*.sock"))
    if len(found) == 1:
        return str(found[0])
    if not found:
        raise OSError(f"no policyd socket in {RUN_DIR} (is policyd running? or use --api URL)")
    names = ", ".join(p.name for p in found)
    raise OSError(f"several policyd sockets ({names}): pick one with --socket")


async def call(args: argparse.Namespace) -> tuple[int, dict[str, Any]]:
    import aiohttp  # here, not at the top: every zonegate command builds this parser

    method, path, body = _request_for(args)
    if args.profile and not args.api:
        args.api = api_from_profile(args.profile, args.gateway)
    if args.api:
        connector: aiohttp.BaseConnector = aiohttp.TCPConnector()
        base = args.api.rstrip("/")
    else:
        connector = aiohttp.UnixConnector(path=args.socket or local_socket())
        base = "http://policyd"
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        async with session.request(method, base + path, json=body) as response:
            data: dict[str, Any] = await response.json(content_type=None)
            status = response.status
        if getattr(args, "wait", False) and status < 400 and data.get("state") == "requested":
            return await _wait(session, base, data["id"], args.wait_timeout)
        return status, data


async def _wait(session: Any, base: str, grant_id: str, limit: float) -> tuple[int, dict[str, Any]]:
    """Poll the grant until it is decided (twice a second: a decision shows within 1 s)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    print(f"grant {grant_id}: requested; waiting for the decision...", file=sys.stderr)
    while True:
        async with session.get(base + "/v1/grants") as response:
            data = await response.json(content_type=None)
            if response.status >= 400:
                return response.status, data
        grant = next((g for g in data.get("grants", []) if g.get("id") == grant_id), None)
        if grant is None:
            return 404, {"error": f"grant {grant_id} is no longer listed"}
        if grant.get("state") != "requested":
            return 200, grant
        if loop.time() >= deadline:
            return 408, {"error": f"no decision on {grant_id} within {limit:.0f} s"}
        await asyncio.sleep(0.5)


def grant_command(args: argparse.Namespace) -> int:
    import aiohttp

    try:
        status, data = asyncio.run(call(args))
        if status == 401 and hasattr(args, "code") and not args.code and sys.stdin.isatty():
            args.code = getpass.getpass("second-factor code: ")  # never echoed, never argv
            status, data = asyncio.run(call(args))
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        where = args.api or args.socket or RUN_DIR
        if args.json:  # zonegate.error/1 (docs/cli-json.md)
            message = f"zonegate grant: cannot reach policyd at {where}: {exc}"
            print(
                json.dumps(
                    {"schema": "zonegate.error/1", "ok": False, "error": message, "exit_code": 1},
                    indent=2,
                )
            )
            return 1
        print(f"zonegate grant: cannot reach policyd at {where}: {exc}", file=sys.stderr)
        print(
            "  is policyd running there (policyd --topology PATH --gateway NAME)?", file=sys.stderr
        )
        return 1
    if args.json:
        print(json.dumps(data, indent=2))
        return 0 if status < 400 else 1
    if status >= 400:
        print(
            f"zonegate grant {args.action}: refused ({status}): {data.get('error')}",
            file=sys.stderr,
        )
        return 1
    if args.action == "list":
        rows = [
            [
                g["id"],
                g["state"],
                g["identity"],
                g["conduit"],
                g["duration"],
                g["expires_at"] or "-",
                g["decided_by"] or ", ".join(g.get("approvals") or []) or "-",
                g["reason"],
            ]
            for g in data["grants"]
        ]
        headers = ["id", "state", "identity", "conduit", "duration", "expires", "by", "reason"]
        print(format_table(headers, rows) if rows else "no grants")
        return 0
    active = data.get("state") == "active" and data.get("expires_at")
    expires = f", expires {data['expires_at']}" if active else ""
    print(f"grant {data['id']}: {data['state']} ({data['identity']} on {data['conduit']}{expires})")
    return 0
