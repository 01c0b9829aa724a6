"""Command line: `tunneld --topology PATH --node NAME` (a gateway), `tunneld join PROFILE`
(a user's machine), `tunneld keygen DIR`, `status`, `backends`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from topology.version import package_version
from tunneld import kem
from tunneld.keys import KeyFileError, keygen, load_public

SUBCOMMANDS = ("keygen", "status", "backends", "join", "scrub")


def _daemon_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tunneld",
        description="WireGuard tunnels keyed by a hybrid post-quantum handshake. "
        "Other commands: tunneld join PROFILE --keys DIR | tunneld keygen DIR | "
        "tunneld status | tunneld backends | tunneld scrub",
    )
    p.add_argument("--version", action="version", version=f"tunneld {package_version()}")
    p.add_argument("--topology", required=True, type=Path, help="topology file or directory")
    p.add_argument("--node", required=True, help="the site whose gateway this is")
    p.add_argument("--listen", default="0.0.0.0", help="handshake listen address (tcp)")
    _common(p)
    return p


def _join_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tunneld join",
        description="Bring up a remote user's tunnel from a profile (zonegate profile issue): "
        "one WireGuard peer per gateway, keyed by the post-quantum handshake. Runs until "
        "stopped or until the profile expires.",
    )
    p.add_argument("profile", type=Path, help="the tunnel profile (JSON)")
    p.add_argument(
        "--signer",
        required=True,
        help="fingerprint of the network team's profile-signing key, as they told you "
        "out of band (phone, paper); a profile signed by any other key is refused",
    )
    _common(p)
    return p


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--keys", type=Path, help="this node's key directory (tunneld keygen)")
    p.add_argument("--ifname", default="zg0", help="WireGuard interface name (default zg0)")
    p.add_argument("--status-socket", type=Path, help="default /run/zonegate/tunneld-NODE.sock")
    p.add_argument("--wg-backend", choices=("auto", "kernel", "wireguard-go"), default="auto")
    p.add_argument(
        "--kem-backend",
        choices=kem.BACKEND_NAMES,
        default="cryptography",
        help="who computes ML-KEM (HQC comes from pqcrypto or liboqs); see: tunneld backends",
    )
    p.add_argument(
        "--rekey-interval",
        type=float,
        default=120.0,
        help="seconds between PSK rotations; other timers scale with it (default 120)",
    )
    p.add_argument("-v", "--verbose", action="store_true")


def _run_daemon(argv: Sequence[str], join: bool = False) -> int:
    args = (_join_parser() if join else _daemon_parser()).parse_args(argv)
    try:
        from tunneld.daemon import Daemon, Options
    except ModuleNotFoundError as exc:  # a laptop install without the gateway extra
        print(
            f"tunneld: the daemon needs {exc.name}: pip install 'zonegate[gateway]' "
            "(docs/deploy.md)",
            file=sys.stderr,
        )
        return 2
    from tunneld.timers import Timers

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    timers = Timers() if args.rekey_interval == 120.0 else Timers.fast(args.rekey_interval)
    opts = Options(
        topology=None if join else args.topology,
        node="" if join else args.node,
        profile=args.profile if join else None,
        signer=args.signer if join else None,
        keys=args.keys,
        ifname=args.ifname,
        status_socket=args.status_socket,
        listen="0.0.0.0" if join else args.listen,
        timers=timers,
        wg_backend=args.wg_backend,
        kem_backend=args.kem_backend,
    )
    try:
        daemon = Daemon(opts)
    except Exception as exc:  # configuration errors: one clear line, no traceback
        print(f"tunneld: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(daemon.run())
    except SystemExit as exc:  # the daemon stopped for a reason the user must read
        print(str(exc.code), file=sys.stderr)
        return 1
    return 0


def _keygen(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="tunneld keygen", description="create an identity's keys")
    p.add_argument("dir", type=Path)
    p.add_argument("--kem", default="ml-kem-768", choices=kem.IDENTITY_KEMS)
    args = p.parse_args(argv)
    try:
        pub = keygen(args.dir, args.kem)
    except KeyFileError as exc:
        print(f"tunneld keygen: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.dir}/ (private, 0700); pin {pub} in the topology as keys:")
    print(f"identity fingerprint {load_public(pub).fingerprint}")
    return 0


def _status(argv: Sequence[str]) -> int:
    from tunneld.daemon import default_socket
    from tunneld.status import dumps, fetch_status, render

    p = argparse.ArgumentParser(prog="tunneld status", description="show the daemon's peers")
    p.add_argument("--socket", type=Path, help="status socket of the daemon")
    p.add_argument("--node", help="node name, for the default socket path")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    path = args.socket or (default_socket(args.node) if args.node else None)
    if path is None:
        found = sorted(Path("/run/zonegate").glob("tunneld-*.sock"))
        if len(found) != 1:
            print("tunneld status: give --socket or --node", file=sys.stderr)
            return 2
        path = found[0]
    try:
        status = asyncio.run(fetch_status(path))
    except OSError as exc:
        print(f"tunneld status: cannot reach {path}: {exc}", file=sys.stderr)
        return 1
    print(dumps(status) if args.json else render(status))
    return 0


def _scrub(argv: Sequence[str]) -> int:
    from tunneld.wg import WgError, WireGuard

    p = argparse.ArgumentParser(
        prog="tunneld scrub",
        description="Remove what a stopped or killed tunneld left under an interface name: "
        "its peers (so no PSK stays usable), the interface and a stale UAPI socket. The "
        "shipped systemd unit runs this after every stop (ExecStopPost).",
    )
    p.add_argument("--ifname", default="zg0", help="WireGuard interface name (default zg0)")
    args = p.parse_args(argv)
    try:
        found = WireGuard(args.ifname).scrub()
    except WgError as exc:
        print(f"tunneld scrub: {exc}", file=sys.stderr)
        return 1
    print(f"{args.ifname}: " + (", ".join(found) + " removed" if found else "nothing left over"))
    return 0


def _backends(argv: Sequence[str]) -> int:
    """Each backend: present or why not, and for each of its algorithms what was proved
    just now (C2SP known answer, round trip). Exit 1 if a present backend fails a check."""
    argparse.ArgumentParser(
        prog="tunneld backends",
        description="list the KEM backends present here and prove what each computes",
    ).parse_args(argv)
    failed = False
    for a in kem.availability():
        print(f"{a.name:<14}{'available' if a.available else 'unavailable':<13}{a.reason}")
        if not a.available:
            continue
        for alg, verdict in kem.prove(kem.get_backend(a.name)).items():
            failed |= verdict.startswith("FAILED")
            print(f"  {alg:<14}{verdict}")
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in SUBCOMMANDS:
        if args[0] == "join":
            return _run_daemon(args[1:], join=True)
        cmds = {"keygen": _keygen, "status": _status, "backends": _backends, "scrub": _scrub}
        cmd = cmds[args[0]]
        return cmd(args[1:])
    return _run_daemon(args)


if __name__ == "__main__":
    sys.exit(main())
