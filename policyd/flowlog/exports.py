"""Where a gateway's records leave the machine: syslog (UDP, TCP, TLS) and IPFIX.

One set of command-line options, shared by `policyd` and `python -m policyd.flowlog`,
and one function that turns them into sinks; a bad option is an error naming the
option and the value, raised before the recorder starts.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from policyd.flowlog.ipfix import DOCUMENTATION_PEN, IpfixExporter, observation_domain
from policyd.flowlog.records import EVENT_KINDS
from policyd.flowlog.sinks import Sink, Syslog5424
from policyd.flowlog.syslog_stream import SyslogStream


class ExportError(ValueError):
    """An export option is wrong; the message names the option."""


@dataclass(frozen=True)
class ExportOptions:
    syslog: str | None = None  # /dev/log, HOST:PORT (UDP), udp://, tcp:// or tls://HOST:PORT
    syslog_events: tuple[str, ...] | None = None  # None: every kind
    syslog_ca: Path | None = None
    syslog_server_name: str | None = None
    syslog_cert: Path | None = None
    syslog_key: Path | None = None
    ipfix: str | None = None  # udp://HOST:PORT or tcp://HOST:PORT
    ipfix_pen: int = DOCUMENTATION_PEN
    ipfix_domain: int | None = None  # None: derived from the gateway's name


def add_arguments(group: argparse._ArgumentGroup | argparse.ArgumentParser) -> None:
    group.add_argument(
        "--syslog",
        help="also send records to syslog: /dev/log, HOST:PORT or udp://HOST:PORT (RFC 5426), "
        "tcp://HOST:PORT (RFC 6587) or tls://HOST:PORT (RFC 5425)",
    )
    group.add_argument(
        "--syslog-events", help=f"comma list of record kinds for syslog ({','.join(EVENT_KINDS)})"
    )
    group.add_argument("--syslog-ca", type=Path, help="CA file the TLS server must chain to")
    group.add_argument("--syslog-server-name", help="name the TLS server's certificate must have")
    group.add_argument("--syslog-cert", type=Path, help="client certificate (PEM) for TLS")
    group.add_argument("--syslog-key", type=Path, help="its private key (PEM)")
    group.add_argument(
        "--ipfix", help="export flow ends and denies as IPFIX: udp://HOST:PORT or tcp://HOST:PORT"
    )
    group.add_argument(
        "--ipfix-pen",
        type=int,
        default=DOCUMENTATION_PEN,
        help=f"enterprise number of the Zonegate elements (default {DOCUMENTATION_PEN})",
    )
    group.add_argument(
        "--ipfix-domain", type=int, help="observation domain id (default: from the gateway name)"
    )


def from_args(args: argparse.Namespace) -> ExportOptions:
    events = None
    if args.syslog_events:
        events = tuple(e.strip() for e in args.syslog_events.split(",") if e.strip())
    return ExportOptions(
        syslog=args.syslog,
        syslog_events=events,
        syslog_ca=args.syslog_ca,
        syslog_server_name=args.syslog_server_name,
        syslog_cert=args.syslog_cert,
        syslog_key=args.syslog_key,
        ipfix=args.ipfix,
        ipfix_pen=args.ipfix_pen,
        ipfix_domain=args.ipfix_domain,
    )


def build_sinks(opts: ExportOptions, gateway: str) -> list[Sink]:
    """The sinks the options ask for; ExportError names the first bad option."""
    sinks: list[Sink] = []
    try:
        _build(opts, gateway, sinks)
    except ExportError:
        for sink in sinks:  # e.g. a syslog sender thread already started
            sink.close()
        raise
    return sinks


def _build(opts: ExportOptions, gateway: str, sinks: list[Sink]) -> None:
    if opts.syslog_events is not None:
        unknown = sorted(set(opts.syslog_events) - set(EVENT_KINDS))
        if unknown:
            raise ExportError(f"--syslog-events: unknown record kind(s) {', '.join(unknown)}")
    if opts.syslog:
        for option, path in (
            ("--syslog-ca", opts.syslog_ca),
            ("--syslog-cert", opts.syslog_cert),
            ("--syslog-key", opts.syslog_key),
        ):
            if path is not None and not path.is_file():
                raise ExportError(f"{option}: no such file: {path}")
        try:
            if opts.syslog.startswith(("tcp://", "tls://")):
                sinks.append(
                    SyslogStream(
                        opts.syslog,
                        events=opts.syslog_events,
                        cafile=str(opts.syslog_ca) if opts.syslog_ca else None,
                        server_name=opts.syslog_server_name,
                        certfile=str(opts.syslog_cert) if opts.syslog_cert else None,
                        keyfile=str(opts.syslog_key) if opts.syslog_key else None,
                    )
                )
            else:
                address = opts.syslog.removeprefix("udp://")
                sinks.append(Syslog5424(address, events=opts.syslog_events))
        except (ValueError, OSError) as exc:
            raise ExportError(f"--syslog {opts.syslog}: {exc}") from exc
    if opts.ipfix:
        if not 0 < opts.ipfix_pen < 2**32:
            raise ExportError(f"--ipfix-pen: {opts.ipfix_pen} is not an enterprise number")
        domain = opts.ipfix_domain if opts.ipfix_domain is not None else observation_domain(gateway)
        if not 0 <= domain < 2**32:
            raise ExportError(f"--ipfix-domain: {domain} is out of range (0 .. 2^32-1)")
        try:
            sinks.append(IpfixExporter(opts.ipfix, domain=domain, pen=opts.ipfix_pen))
        except (ValueError, OSError) as exc:
            raise ExportError(f"--ipfix {opts.ipfix}: {exc}") from exc
