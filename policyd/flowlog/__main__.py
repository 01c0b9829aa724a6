"""`python -m policyd.flowlog`: run the recorder on its own (demo, benchmark, debugging).

policyd embeds `FlowRecorder` in its own loop; this runner exists so the recorder
can be started alone inside a namespace, and prints its final status as JSON on
SIGTERM/SIGINT so a benchmark or test can read exact counters.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import Sequence

from policyd.flowlog.auditchain import AuditChain
from policyd.flowlog.recorder import FlowRecorder, RecorderConfig
from policyd.flowlog.records import AuditEvent
from policyd.flowlog.sinks import JsonLinesFile, Sink, Syslog5424
from topology import TopologyError, load


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m policyd.flowlog", description=__doc__)
    p.add_argument("topology", help="topology file or directory")
    p.add_argument("--gateway", required=True, help="the site whose gateway this is")
    p.add_argument("--log", help="JSON-lines file to write (rotated)")
    p.add_argument("--max-bytes", type=int, default=64 * 1024 * 1024)
    p.add_argument("--max-age", type=float, default=86400.0, help="seconds")
    p.add_argument("--syslog", help="HOST:PORT (UDP) or /dev/log")
    p.add_argument("--netns", help="read this network namespace's conntrack and NFLOG")
    p.add_argument("--rcvbuf", type=int, default=RecorderConfig.rcvbuf, help="bytes")
    p.add_argument("--no-starts", action="store_true", help="no flow start records")
    p.add_argument("--status", help="write the final status JSON here (else stdout)")
    return p


async def _run(args: argparse.Namespace) -> dict[str, object]:
    topo = load(args.topology).topology
    sinks: list[Sink] = []
    chain = None
    if args.log:
        log = JsonLinesFile(args.log, max_bytes=args.max_bytes, max_age=args.max_age)
        sinks.append(log)
        chain = AuditChain.resume(log.path)  # the audit chain continues this log's
    if args.syslog:
        sinks.append(Syslog5424(args.syslog))
    config = RecorderConfig(netns=args.netns, rcvbuf=args.rcvbuf, flow_starts=not args.no_starts)
    recorder = FlowRecorder(topo, args.gateway, sinks, config, chain)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, recorder.request_stop)
    await recorder.start()
    recorder.emit_audit(AuditEvent("recorder_start", details={"netns": args.netns}))
    print("recording", file=sys.stderr, flush=True)
    await recorder.stop_requested()
    recorder.emit_audit(AuditEvent("recorder_stop"))
    await recorder.stop()
    return recorder.status()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        status = asyncio.run(_run(args))
    except TopologyError as exc:
        for d in exc.diagnostics:
            print(d, file=sys.stderr)
        return 1
    text = json.dumps(status, indent=2)
    if args.status:
        with open(args.status, "w") as fh:
            fh.write(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
