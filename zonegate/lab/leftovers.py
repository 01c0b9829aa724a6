"""What an emulated plant may leave behind, and a check that it left nothing.

A scenario owns everything named with its prefix: Mininet's host shells
(`bash ... mininet:PREFIX...`), their network namespaces, veth interfaces and Linux
bridges, and every process started inside those namespaces (wireguard-go, tunneld,
policyd, asset simulators). nft tables and sockets live inside the hosts' namespaces
and vanish with them, unless a process keeps a namespace alive, or something ran in
the root namespace by mistake: both are checked. `capture()` works from any process
(the teardown test captures a scenario running in a child it then interrupts), and
only ever looks at what carries this prefix, so concurrent runs are never touched.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
ROOT_SOCKETS = (Path("/run/zonegate"), Path("/var/run/wireguard"))


def _cmdline(pid: str) -> str:
    try:
        return (PROC / pid / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _netns(pid: str) -> int | None:
    try:
        return os.stat(PROC / pid / "ns" / "net").st_ino
    except OSError:
        return None


def _pids() -> list[str]:
    return [p.name for p in PROC.iterdir() if p.name.isdigit()]


def _shells(prefix: str) -> list[str]:
    marker = f"mininet:{prefix}"
    return [pid for pid in _pids() if marker in _cmdline(pid)]


def _root_nft_tables() -> frozenset[str]:
    res = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=False)
    return frozenset(line.strip() for line in res.stdout.splitlines() if line.strip())


def _root_sockets() -> frozenset[str]:
    return frozenset(str(p) for d in ROOT_SOCKETS if d.is_dir() for p in d.iterdir())


@dataclass(frozen=True)
class Footprint:
    """The namespaces of a running scenario and the root namespace's state beside it."""

    prefix: str
    netns: frozenset[int]
    root_ns: int | None
    nft_tables: frozenset[str]
    sockets: frozenset[str]
    watch: frozenset[str]  # file names our daemons create in /run/zonegate, /var/run/wireguard


def capture(
    prefix: str, watch: frozenset[str] = frozenset(), before: Footprint | None = None
) -> Footprint:
    """Record a scenario's namespaces; root-namespace state is taken from `before`
    (captured before the scenario started) when given, else now. `watch` names the
    socket files the scenario's daemons create in their private run directories: one
    of them in the root namespace's would mean a daemon escaped its host."""
    inodes = {_netns(pid) for pid in _shells(prefix)}
    root = _netns("self")  # switches (Linux bridges) have shells in the root namespace
    return Footprint(
        prefix,
        frozenset(i for i in inodes if i is not None and i != root),
        root,
        before.nft_tables if before else _root_nft_tables(),
        before.sockets if before else _root_sockets(),
        watch,
    )


def leftovers(fp: Footprint) -> list[str]:
    """Everything the scenario should have removed and did not; empty when clean."""
    found: list[str] = []
    for pid in _pids():
        cmd = _cmdline(pid)
        if f"mininet:{fp.prefix}" in cmd:
            found.append(f"process {pid} (Mininet host shell): {cmd.strip()}")
        elif fp.netns and _netns(pid) in fp.netns:
            found.append(f"process {pid} in a scenario namespace: {cmd.strip()}")
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=False)
    for line in links.stdout.splitlines():
        name = line.split(":", 2)[1].strip().split("@")[0] if ":" in line else ""
        if name.startswith(fp.prefix):
            kind = "bridge" if Path(f"/sys/class/net/{name}/bridge").exists() else "interface"
            found.append(f"{kind} {name}")
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    for line in netns.stdout.splitlines():
        if line.startswith(fp.prefix):
            found.append(f"named network namespace {line.split()[0]}")
    for table in sorted(_root_nft_tables() - fp.nft_tables):
        if "zonegate" in table:
            found.append(f"nft {table} in the root namespace")
    for sock in sorted(_root_sockets() - fp.sockets):
        if Path(sock).name in fp.watch:
            found.append(f"socket or file {sock} in the root namespace")
    return found
