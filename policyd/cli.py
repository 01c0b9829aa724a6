"""`policyd --topology PATH --gateway NAME`: enforce a topology on this gateway.

Runs in the foreground and logs every step; see policyd/daemon.py for what it does.
A broken file at start exits 2 and leaves whatever ruleset runs untouched.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from policyd.compiler import CompileOptions
from policyd.conventions import API_PORT, LOG_DIR, RUN_DIR, STATE_DIR
from policyd.daemon import Daemon, Settings
from policyd.flowlog import exports
from policyd.ot.tier import DEFAULT_OUTSTANDING, DEFAULT_PORT
from topology.version import package_version


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="policyd",
        description="Compile a topology into nftables on this gateway and keep it enforced; "
        "record flows; serve the grant API.",
    )
    p.add_argument("--version", action="version", version=f"policyd {package_version()}")
    p.add_argument("--topology", required=True, help="topology file or directory")
    p.add_argument("--gateway", required=True, help="the site whose gateway this is")
    p.add_argument(
        "--tunnel",
        action="append",
        help="tunnel interface name (repeatable; trailing * is a wildcard; default zg*)",
    )
    p.add_argument("--poll", type=float, default=1.0, help="seconds between file checks")
    p.add_argument(
        "--drift-check",
        type=float,
        default=30.0,
        help="seconds between comparisons of the kernel's table with the compiled one",
    )
    p.add_argument("--flush-on-exit", action="store_true", help="delete our table on exit")
    api = p.add_argument_group("control API")
    api.add_argument(
        "--api-socket", type=Path, help=f"unix socket (default {RUN_DIR}/policyd-GATEWAY.sock)"
    )
    api.add_argument(
        "--api-listen",
        help="address for remote identities, normally the gateway's overlay address; "
        "callers must arrive through a tunnel",
    )
    api.add_argument("--api-port", type=int, default=API_PORT, help=f"default {API_PORT}")
    api.add_argument("--no-api", action="store_true", help="serve no control API")
    api.add_argument(
        "--local-user",
        action="append",
        default=[],
        metavar="USER=IDENTITY",
        help="a unix user on the gateway who may act on the local socket as IDENTITY "
        "(repeatable; root may act as any identity, nobody else unless mapped)",
    )
    api.add_argument(
        "--operator",
        action="append",
        default=[],
        metavar="IDENTITY",
        help="an identity that may read /v1/status and /metrics (repeatable; root locally can)",
    )
    api.add_argument(
        "--reconcile-every",
        type=float,
        default=30.0,
        help="seconds between grant reconciliations of kernel and book (default 30)",
    )
    flows = p.add_argument_group("flow and audit log")
    flows.add_argument(
        "--flow-log", type=Path, help=f"JSON lines file (default {LOG_DIR}/flows-GATEWAY.jsonl)"
    )
    flows.add_argument(
        "--no-flow-starts",
        action="store_true",
        help="write flow end records only: the kernel then builds no NEW events (cheaper "
        "under floods; IPFIX needs only ends)",
    )
    exports.add_arguments(flows)
    flows.add_argument("--no-flow-log", action="store_true", help="record no flows")
    flows.add_argument(
        "--sessions",
        type=Path,
        help=f"pcap files of record: true conduits (default {LOG_DIR}/sessions-GATEWAY)",
    )
    flows.add_argument("--no-sessions", action="store_true", help="record no sessions")
    p.add_argument(
        "--state-dir", type=Path, default=STATE_DIR, help=f"grant state (default {STATE_DIR})"
    )
    ot = p.add_argument_group("OT transaction tier (Modbus/TCP conduits)")
    ot.add_argument(
        "--ot-port",
        type=int,
        default=DEFAULT_PORT,
        help=f"its TPROXY port (default {DEFAULT_PORT})",
    )
    ot.add_argument(
        "--ot-outstanding",
        type=int,
        default=DEFAULT_OUTSTANDING,
        help=f"requests per connection waiting for a device (default {DEFAULT_OUTSTANDING})",
    )
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def local_users(pairs: list[str]) -> dict[int, frozenset[str]]:
    """USER=IDENTITY pairs as uid -> identities; an unknown user is an error."""
    import pwd

    out: dict[int, set[str]] = {}
    for pair in pairs:
        user, sep, identity = pair.partition("=")
        if not sep or not user or not identity:
            raise SystemExit(f"policyd: --local-user {pair!r}: expected USER=IDENTITY")
        try:
            uid = int(user) if user.isdigit() else pwd.getpwnam(user).pw_uid
        except KeyError:
            raise SystemExit(f"policyd: --local-user {pair!r}: no unix user '{user}'") from None
        out.setdefault(uid, set()).add(identity)
    return {uid: frozenset(names) for uid, names in out.items()}


def settings(args: argparse.Namespace) -> Settings:
    tunnels = tuple(args.tunnel or ("zg*",))
    gw = args.gateway
    return Settings(
        topology=Path(args.topology),
        gateway=gw,
        options=CompileOptions(
            tunnels=tunnels,
            api_port=None if args.no_api else args.api_port,
            ot_port=args.ot_port,
        ),
        poll=args.poll,
        drift_check=args.drift_check,
        flush_on_exit=args.flush_on_exit,
        api_socket=None if args.no_api else (args.api_socket or RUN_DIR / f"policyd-{gw}.sock"),
        api_listen=None if args.no_api else args.api_listen,
        api_port=args.api_port,
        flow_log=None if args.no_flow_log else (args.flow_log or LOG_DIR / f"flows-{gw}.jsonl"),
        flow_starts=not args.no_flow_starts,
        exports=exports.from_args(args),
        sessions=None if args.no_sessions else (args.sessions or LOG_DIR / f"sessions-{gw}"),
        state_dir=args.state_dir,
        tunnel_prefixes=tuple(t.rstrip("*") for t in tunnels),
        ot_outstanding=args.ot_outstanding,
        local_users=local_users(args.local_user),
        operators=frozenset(args.operator),
        reconcile_every=args.reconcile_every,
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["totp"]:
        from policyd import totp_cli

        return totp_cli.main(argv[1:])
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stdout,
    )
    try:
        return asyncio.run(Daemon(settings(args)).run())
    except KeyboardInterrupt:
        return 0
    except exports.ExportError as exc:  # raised before any ruleset is touched
        print(f"policyd: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
