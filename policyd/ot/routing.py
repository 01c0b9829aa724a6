"""The host side of steering: policy routing that delivers steered packets locally.

TPROXY hands a packet to the tier's socket, but the routing decision must also say
"local" or the packet is forwarded. Packets carrying the steer mark (compile_ot) use a
table whose only route is `local 0.0.0.0/0 dev lo`. tcp_fwmark_accept makes the tier's
accepted sockets carry the packet mark (the admitting conduit's mark, set by the
kernel's `ot_input_mark` chain). All three are per network namespace and idempotent.
If this routing is missing, steered packets are dropped in `ot_forward`: fail closed.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from policyd.compile_ot import ROUTE_TABLE, STEER_MARK

FWMARK_ACCEPT = Path("/proc/sys/net/ipv4/tcp_fwmark_accept")


class RoutingError(RuntimeError):
    pass


def _ip(*argv: str) -> str:
    out = subprocess.run(["ip", "-4", *argv], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RoutingError(f"ip {' '.join(argv)}: {out.stderr.strip()}")
    return out.stdout


def install() -> None:
    mark = f"{STEER_MARK:#x}/0xff000000"
    if f"fwmark {mark} lookup {ROUTE_TABLE}" not in _ip("rule", "show"):
        _ip("rule", "add", "fwmark", mark, "lookup", str(ROUTE_TABLE), "pref", str(ROUTE_TABLE))
    _ip("route", "replace", "local", "0.0.0.0/0", "dev", "lo", "table", str(ROUTE_TABLE))
    FWMARK_ACCEPT.write_text("1\n")
