"""`policyd totp enroll|remove|list`: the network team enrols approvers' second factor.

Run on the gateway, as root, by the network team: the secret is made and kept there
(`STATE_DIR/totp/`), shown once as an otpauth:// URI and a QR code for the approver's
authenticator app, and never written anywhere else.
"""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Sequence
from pathlib import Path

import topology
from policyd.conventions import STATE_DIR
from policyd.totp import TotpError, TotpStore


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="policyd totp", description=__doc__)
    p.add_argument("--state-dir", type=Path, default=STATE_DIR, help=f"default {STATE_DIR}")
    sub = p.add_subparsers(dest="action", required=True)
    e = sub.add_parser("enroll", help="make an identity's TOTP secret; print URI and QR code")
    e.add_argument("identity")
    e.add_argument("--topology", help="check that the identity is declared there")
    e.add_argument("--issuer", default="Zonegate", help="the name authenticator apps show")
    e.add_argument("--replace", action="store_true", help="replace an existing secret")
    e.add_argument("--no-qr", action="store_true", help="print the URI only")
    r = sub.add_parser("remove", help="remove an identity's second factor")
    r.add_argument("identity")
    sub.add_parser("list", help="enrolled identities")
    return p


def main(argv: Sequence[str]) -> int:
    args = parser().parse_args(argv)
    store = TotpStore(args.state_dir / "totp")
    try:
        if args.action == "list":
            for path in sorted(store.directory.glob("*.totp")):
                print(path.stem)
            return 0
        if args.action == "remove":
            removed = store.remove(args.identity)
            print(f"{args.identity}: {'removed' if removed else 'was not enrolled'}")
            return 0
        if args.topology:
            topo = topology.load(args.topology).topology
            if args.identity not in topo.identities:
                print(
                    f"policyd totp: no identity '{args.identity}' in {args.topology}",
                    file=sys.stderr,
                )
                return 1
        enrolment = store.enrol(args.identity, args.issuer, replace=args.replace)
    except (TotpError, topology.TopologyError, OSError) as exc:
        print(f"policyd totp: {exc}", file=sys.stderr)
        return 1
    print(f"{args.identity}: enrolled. Scan this with the approver's authenticator app")
    print("(shown once; the secret stays on this gateway):\n")
    if not args.no_qr:
        print(qr_text(enrolment.uri))
    print(enrolment.uri)
    return 0


def qr_text(data: str) -> str:
    """The QR code as terminal blocks (segno, from the gateway extra)."""
    import segno

    buf = io.StringIO()
    segno.make(data, error="m").terminal(out=buf, compact=True)
    return buf.getvalue()
