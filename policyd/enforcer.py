"""The kernel side of grants, and how the API tells a tunnel caller from a spoofer.

A grant is one set element with a timeout (policyd/kernel.py), so it closes even if
policyd is dead. Revocation deletes the element, which stops the identity's open sessions on that
conduit at their next packet (the established path checks it); their conntrack entries
are then deleted so each gets its flow end record with reason `revoked`.
"""

from __future__ import annotations

import json
import logging
import subprocess
from datetime import timedelta
from ipaddress import IPv4Address
from typing import TYPE_CHECKING

from policyd import kernel
from policyd.grants import GrantError
from topology.model import Conduit, Identity

if TYPE_CHECKING:
    from policyd.daemon import Daemon

log = logging.getLogger("policyd")


def arrived_via_tunnel(address: IPv4Address, prefixes: tuple[str, ...]) -> bool:
    """True when the route back to `address` leaves through one of our tunnels.

    WireGuard admits a packet only from its peer's allowed IPs, and the route to an
    identity's overlay address goes through its tunnel: a spoofed overlay source on
    another interface fails this check (and the kernel's input chain before it).
    """
    try:
        out = subprocess.run(
            ["ip", "-j", "route", "get", str(address)],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout
        dev = str(json.loads(out)[0].get("dev", ""))
    except (subprocess.SubprocessError, OSError, ValueError, IndexError):
        return False
    return dev.startswith(prefixes)


class KernelEnforcer:
    """Implements the API's Enforcer on the daemon's persistent nft handle."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    def open_grant(self, identity: Identity, conduit: Conduit, timeout: timedelta) -> None:
        rs = self.daemon.current
        if rs is None:
            raise GrantError(503, "no policy is applied yet")
        try:
            self.daemon.nft.add_grant(rs, conduit.name, identity.name, timeout)
        except kernel.GrantError as exc:
            raise GrantError(409, str(exc)) from None
        except kernel.NftError as exc:
            raise GrantError(500, f"kernel refused the grant: {exc}") from None

    def close_grant(self, identity: Identity, conduit: Conduit) -> None:
        rs = self.daemon.current
        if rs is None:
            return
        try:
            self.daemon.nft.remove_grant(rs, conduit.name, identity.name)
        except (kernel.GrantError, kernel.NftError) as exc:
            log.warning("closing grant of %s on %s: %s", identity.name, conduit.name, exc)
        # The kernel already drops the sessions' next packets (the element is gone);
        # this deletes their conntrack entries so each ends now with reason "revoked".
        self.daemon.end_grant_flows(conduit.name, identity.name, "revoked")
