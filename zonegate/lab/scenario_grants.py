"""Real grants for declared `granted: true` tests, through policyd's control API.

A test marked `granted` is evaluated "as if an approved grant or emergency activation
were active" on every conduit that needs one. To replay it as traffic, each such
conduit admitting the test's identity really gets a grant, the way people get one:
`zonegate grant request` as the identity and `approve` as someone the conduit names
(or `emergency` as the identity), against the policyd of the gateway that enforces
the conduit, on its local socket inside that gateway's host. Afterwards the grants
are revoked, so the next test sees the policy without them.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from topology.model import Conduit, Topology


@dataclass(frozen=True)
class GrantStep:
    conduit: str
    site: str  # the gateway that enforces the conduit: its target's site
    emergency: bool
    approver: str | None  # who approves; None for emergency access


def approver_for(topo: Topology, conduit: Conduit, requester: str, now: datetime) -> str | None:
    """Someone the conduit names as approver, valid now, other than the requester."""
    assert conduit.approval is not None
    a = conduit.approval
    for ident in sorted(topo.identities.values(), key=lambda i: i.name):
        if ident.name == requester or not ident.valid_at(now):
            continue
        if a.names(ident):
            return ident.name
    return None


def grant_steps(topo: Topology, identity: str, now: datetime) -> list[GrantStep]:
    """Every grant the identity could hold: approval and emergency conduits admitting it."""
    ident = topo.identities[identity]
    steps = []
    for c in sorted(topo.conduits.values(), key=lambda c: c.name):
        if not c.sources.admits(ident):
            continue
        if c.approval is not None:
            approver = approver_for(topo, c, identity, now)
            if approver is not None:
                steps.append(GrantStep(c.name, c.target.site, False, approver))
        elif c.emergency is not None:
            steps.append(GrantStep(c.name, c.target.site, True, None))
    return steps


def grant_argv(site: str, acting_as: str, *action: str) -> list[str]:
    """`zonegate grant` on a gateway's local policyd socket, acting as an identity."""
    sock = f"/run/zonegate/policyd-{site}.sock"
    cli = [sys.executable, "-m", "zonegate.cli", "grant", "--socket", sock]
    return [*cli, "--as", acting_as, "--json", *action]


Runner = Callable[[str, list[str]], tuple[int, str]]  # (gateway site, argv) -> (rc, output)


def _call(run: Runner, site: str, argv: list[str]) -> dict[str, object]:
    rc, out = run(site, argv)
    try:
        data: dict[str, object] = json.loads(out)
    except json.JSONDecodeError:
        data = {"error": out.strip()[-300:]}
    if rc != 0:
        raise RuntimeError(f"{' '.join(argv[3:])} on {site} failed: {data.get('error', out)}")
    return data


def open_grants(
    run: Runner, topo: Topology, identity: str, now: datetime, duration: str, reason: str
) -> list[tuple[GrantStep, str]]:
    """Request and approve (or activate) every grant; (step, grant id) for each."""
    opened = []
    for step in grant_steps(topo, identity, now):
        common = ["--conduit", step.conduit, "--duration", duration, "--reason", reason]
        if step.emergency:
            data = _call(run, step.site, grant_argv(step.site, identity, "emergency", *common))
        else:
            data = _call(run, step.site, grant_argv(step.site, identity, "request", *common))
            assert step.approver is not None
            data = _call(
                run, step.site, grant_argv(step.site, step.approver, "approve", str(data["id"]))
            )
        if data.get("state") != "active":
            raise RuntimeError(f"grant on {step.conduit} for {identity} is {data.get('state')}")
        opened.append((step, str(data["id"])))
    return opened


def close_grants(run: Runner, identity: str, opened: list[tuple[GrantStep, str]]) -> None:
    for step, grant_id in opened:
        _call(run, step.site, grant_argv(step.site, identity, "revoke", grant_id))
