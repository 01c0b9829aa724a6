"""`zonegate audit verify LOG...`: prove the audit hash chain across rotated files.

Exit 0 when every sealed audit record is intact and in order (gaps the log itself
declared as losses are listed, not failed); 1 with each problem at file:line.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_audit_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="audit_action", required=True, metavar="ACTION")
    p = sub.add_parser("verify", help="check seq, prev and hash of every audit record")
    p.add_argument("logs", nargs="+", type=Path, help="flow/audit log files (rotations included)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def audit_command(args: argparse.Namespace) -> int:
    from policyd.flowlog.auditchain import files_of, verify

    files = files_of(args.logs)
    if not files:
        print(f"zonegate audit verify: no such log: {', '.join(map(str, args.logs))}")
        return 1
    v = verify(files)
    if args.json:
        out = {
            "ok": v.ok,
            "files": [str(f) for f in files],
            "records": v.records,
            "first_seq": v.first,
            "last_seq": v.last,
            "problems": v.problems,
            "declared_losses": v.declared_losses,
        }
        print(json.dumps(out, indent=1))
        return 0 if v.ok else 1
    for line in v.declared_losses:
        print(f"loss: {line}")
    for line in v.problems:
        print(f"FAIL: {line}")
    span = f"seq {v.first}..{v.last}" if v.records else "no sealed audit records"
    verdict = "intact" if v.ok else f"{len(v.problems)} problem(s)"
    print(f"{v.records} audit records in {len(files)} file(s), {span}: chain {verdict}")
    return 0 if v.ok else 1
