"""Keeping an emulated plant up to look around in it (`--keep`), then tearing it down.

The plant only lives as long as the process that built it (Mininet's host shells
belong to it), so "keep" means: print how to get into every host from another
terminal (`mnexec -a PID`, which enters the host's network and mount namespaces, so
its private /run/zonegate with the daemons' sockets too), then hold until Ctrl-C, or
open Mininet's own CLI when stdin is a terminal. Teardown follows either way.
"""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any

from policyd.conventions import API_PORT
from topology.table import format_table


def host_table(plant: Any) -> str:
    """One line per host: its topology name, Mininet node, PID and addresses."""
    rows = []
    for h in plant.plan.hosts:
        node = plant.host(h.label)
        addrs = " ".join(str(i.address) for i in h.interfaces)
        rows.append([h.kind, h.label, h.node, str(node.pid), addrs])
    return format_table(["KIND", "NAME", "NODE", "PID", "ADDRESSES"], rows)


def instructions(plant: Any, flow_logs: list[str]) -> str:
    """What to run in the hosts, with real PIDs and names filled in."""
    gateways = [h for h in plant.plan.hosts if h.kind == "gateway"]
    users = [h for h in plant.plan.hosts if h.kind == "user"]
    assets = [h for h in plant.plan.hosts if h.kind == "asset" and h.modbus]
    gw = plant.host(gateways[0].label) if gateways else None
    lines = ["The network stays up. From another terminal, as root, in the repository:", ""]
    if gw is not None:
        site = gateways[0].label
        lines += [
            f"  mnexec -a {gw.pid} nft list table inet zonegate      # {site}'s rules",
            f"  mnexec -a {gw.pid} wg show                           # tunnels, PSK set",
            f"  mnexec -a {gw.pid} .venv/bin/tunneld status --node {site}",
            f"  mnexec -a {gw.pid} .venv/bin/zonegate grant list",
            f"  mnexec -a {gw.pid} conntrack -L                      # flows, with ct mark",
            f"  mnexec -a {gw.pid} bash                              # a shell on {site}",
        ]
    if users and assets:
        u, a = plant.host(users[0].label), assets[0]
        addr = a.interfaces[0].address.ip
        lines += [
            f"  mnexec -a {u.pid} .venv/bin/python -m zonegate.lab.probe {addr} modbus/read"
            f"   # as {users[0].label}, to {a.label}",
            f"  mnexec -a {u.pid} .venv/bin/tunneld status",
        ]
        if gateways:
            overlay = plant.topology.sites[gateways[0].label].gateway.overlay
            console = f"http://{overlay}:{API_PORT}/console/requests"
            lines += [
                f"  # the approvals console, through {users[0].label}'s tunnel:",
                f"  mnexec -a {u.pid} curl -s {console}",
                f"  mnexec -a {u.pid} chromium --headless --no-sandbox "
                f"--screenshot=/tmp/console.png {console}",
            ]
    for path in flow_logs:
        lines.append(f"  tail -f {path}")
    lines += ["", "Hosts:", host_table(plant)]
    return "\n".join(lines)


def hold(plant: Any, interactive: bool | None = None) -> None:
    """Block until Ctrl-C (or SIGTERM), or run Mininet's CLI on a terminal."""
    if interactive is None:
        interactive = sys.stdin.isatty()
    if interactive:
        from mininet.cli import CLI

        print("Mininet CLI: NODE CMD runs CMD in a host (nodes above); `exit` tears it down.")
        CLI(plant.net)
        print("tearing down ...", flush=True)
        return
    print("Ctrl-C tears everything down.", flush=True)
    done = threading.Event()
    old = signal.signal(signal.SIGTERM, lambda *_: done.set())
    try:
        while not done.wait(1.0):
            pass
    except KeyboardInterrupt:  # the expected way out: not an interruption of the run
        pass
    finally:
        signal.signal(signal.SIGTERM, old)
    print("tearing down ...", flush=True)
