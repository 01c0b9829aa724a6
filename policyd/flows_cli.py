"""`zonegate flows`: read, filter and follow the flow and audit log.

`zonegate/cli.py` wires this in with two calls:

    p = sub.add_parser("flows", help="read, filter and follow the flow and audit log")
    add_flows_arguments(p)
    p.set_defaults(func=flows_command)

A table for people (one line per record, fixed columns so `--follow` lines up),
`--json` for tools (the records exactly as logged, one per line).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from policyd.flowlog.reader import RecordFilter, follow_records, parse_since, read_records

LOG_DIR = Path("/var/log/zonegate")  # policyd writes flows-GATEWAY.jsonl here
EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2

COLUMNS = (
    ("time", 19),
    ("kind", 10),
    ("identity", 18),
    ("from", 20),
    ("to", 30),
    ("service", 14),
    ("conduit", 22),
    ("pkts", 9),
    ("bytes", 15),
    ("dur", 7),
    ("reason", 0),
)


def default_log() -> Path:
    """The one gateway log on this machine; with several, --log must pick."""
    found = sorted(LOG_DIR.glob("flows-*.jsonl"))
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise SystemExit(
            f"zonegate flows: several logs in {LOG_DIR} ({names}): pick one with --log"
        )
    return LOG_DIR / "flows.jsonl"  # reported as missing by the reader, with its path


def add_flows_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log",
        help="the recorder's JSON-lines file (rotations are read too; default: the one "
        f"{LOG_DIR}/flows-*.jsonl)",
    )
    parser.add_argument("--identity", help="only records of this identity")
    parser.add_argument("--conduit", help="only records attributed to this conduit")
    parser.add_argument("--asset", help="only flows from or to this asset (SITE/ASSET or ASSET)")
    parser.add_argument("--verdict", choices=["allow", "deny"], help="only allowed or denied")
    parser.add_argument(
        "--service", help="only this service (modbus: its flows and each transaction)"
    )
    parser.add_argument("--since", help="only records since a time (ISO 8601) or age (10m, 2h)")
    parser.add_argument(
        "--event",
        action="append",
        choices=["flow", "deny", "audit", "loss", "modbus"],
        help="only these record kinds (repeatable; default all)",
    )
    parser.add_argument("--starts", action="store_true", help="also show flow start records")
    parser.add_argument("-f", "--follow", action="store_true", help="keep printing new records")
    parser.add_argument("--json", action="store_true", help="JSON lines, as logged")


def flows_command(args: argparse.Namespace) -> int:
    try:
        since = parse_since(args.since) if args.since else None
    except ValueError as exc:
        print(f"zonegate flows: {exc}", file=sys.stderr)
        return EXIT_USAGE
    flt = RecordFilter(
        identity=args.identity,
        conduit=args.conduit,
        asset=args.asset,
        verdict=args.verdict,
        since=since,
        events=frozenset(args.event) if args.event else None,
        service=args.service,
    )
    path = Path(args.log) if args.log else default_log()
    if not args.follow and not path.exists() and not list(path.parent.glob(path.name + ".*")):
        print(f"zonegate flows: no log at {path} (is policyd recording? --log)", file=sys.stderr)
        return EXIT_FAIL
    records = follow_records(path) if args.follow else read_records(path)
    if not args.json:
        print(header())
    try:
        for rec in records:
            if not flt.matches(rec):
                continue
            if rec.get("flow_state") == "start" and not args.starts:
                continue
            print(json.dumps(rec, separators=(",", ":")) if args.json else row(rec), flush=True)
    except (KeyboardInterrupt, BrokenPipeError):
        return EXIT_OK
    return EXIT_OK


def header() -> str:
    return _line([name for name, _ in COLUMNS])


def _line(cells: list[str]) -> str:
    out = []
    for (_, width), cell in zip(COLUMNS, cells, strict=True):
        if width:
            cell = cell if len(cell) <= width else cell[: width - 1] + "~"
            out.append(cell.ljust(width))
        else:
            out.append(cell)
    return "  ".join(out).rstrip()


def _place(rec: dict[str, Any], side: str) -> str:
    if side == "src":
        name = rec.get("src_asset") or rec.get("src_zone") or rec.get("id.orig_h")
        return str(name or "-")
    name = rec.get("dst_asset") or rec.get("dst_identity") or rec.get("dst_zone")
    addr = rec.get("id.resp_h")
    port = rec.get("id.resp_p")
    where = f"{addr}:{port}" if addr is not None else ""
    return f"{name} {where}".strip() if name else where or "-"


def row(rec: dict[str, Any]) -> str:
    """One table line; audit and loss records reuse the columns sensibly."""
    ts = str(rec.get("ts", ""))[:19].replace("T", " ")
    kind = str(rec.get("event", "?"))
    if kind == "audit":
        details = rec.get("details") if isinstance(rec.get("details"), dict) else {}
        text = str(rec.get("message", ""))
        if rec.get("errors"):
            errors = [str(e) for e in rec["errors"]]
            text += f" ({len(errors)} error(s): {'; '.join(errors)})"
        actor = str(rec.get("actor") or "-")
        action, outcome = str(rec.get("action", "")), str(rec.get("outcome", ""))
        conduit = str(details.get("conduit", "") if details else "")
        return _line([ts, "audit", actor, action, outcome, "", conduit, "", "", "", text])
    if kind == "loss":
        reason = f"lost {rec.get('lost')} ({rec.get('lost_total')} in all)"
        return _line([ts, "LOSS", "-", str(rec.get("source", "")), "", "", "", "", "", "", reason])
    if kind == "modbus":
        return _modbus_row(ts, rec)
    if kind == "flow" and rec.get("flow_state") == "start":
        kind = "start"
    elif kind == "flow":
        kind = "allow"
    pkts = bytes_ = dur = ""
    if "orig_pkts" in rec:
        pkts = f"{rec.get('orig_pkts', 0)}/{rec.get('resp_pkts', 0)}" if kind == "allow" else "1"
        bytes_ = (
            f"{rec.get('orig_ip_bytes', 0)}/{rec.get('resp_ip_bytes', 0)}"
            if kind == "allow"
            else str(rec.get("orig_ip_bytes", ""))
        )
    if "duration" in rec:
        dur = f"{float(rec['duration']):.1f}s"
    if kind == "deny":
        reason = str(rec.get("reason", ""))
    else:  # the conduit column already says why it was allowed
        reason = str(rec.get("end_reason", "")) + (" resync" if rec.get("resync") else "")
    return _line(
        [
            ts,
            kind,
            str(rec.get("identity") or "-"),
            _place(rec, "src"),
            _place(rec, "dst"),
            str(rec.get("service", "")),
            str(rec.get("conduit") or "-"),
            pkts,
            bytes_,
            dur,
            reason,
        ]
    )


def _modbus_row(ts: str, rec: dict[str, Any]) -> str:
    """A transaction: the function in the service column, what it touched and the answer."""
    func = str(rec.get("func", "")).lower()
    what = [str(rec.get("verdict", "")), func, f"unit {rec.get('unit')}"]
    if "table" in rec:
        what.append(f"{rec['table']} {rec.get('address')}+{rec.get('quantity')}")
    if "values" in rec:
        what.append("values " + ",".join(str(v) for v in rec["values"]))
    if "exception" in rec:
        what.append(f"-> {rec['exception']} ({rec.get('exception_by', 'gateway')})")
    latency = f"{rec['latency_ms']:.1f}ms" if "latency_ms" in rec else ""
    return _line(
        [
            ts,
            "modbus",
            str(rec.get("identity") or "-"),
            str(rec.get("id.orig_h", "-")),
            _place(rec, "dst"),
            "modbus",
            str(rec.get("conduit") or "-"),
            "",
            "",
            latency,
            " ".join(what),
        ]
    )
