"""Open or close grants straight in a gateway's kernel, for declared `granted: true` tests.

A test marked `granted` is evaluated "as if an approved grant or emergency activation
were active" for every conduit that needs one. To replay it as traffic, the gateway
must really hold those grants: this opens, for one source, a grant on every
approval/emergency conduit the gateway's compiled ruleset admits it to, through
policyd's kernel adapter (`NftHandle.add_grant`), and closes them again afterwards.
It runs inside the gateway host (its network namespace), as root.

Stopgap until policyd's control API (`zonegate grant`) is available in the daemon:
then the scenario requests and approves through the API instead.

    python -m topology.direct_grants open|close --topology DIR --gateway SITE
        --source IDENTITY|SITE/ZONE|SITE/ASSET [--seconds N]
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime, timedelta

import topology
from policyd.compiler import CompileOptions, Ruleset, compile_ruleset
from topology.model import Topology


def grant_sources(topo: Topology, source: str) -> list[str]:
    """What a grant can be keyed on for this source: the identity, or its zone."""
    if source in topo.identities:
        return [source]
    asset = topo.asset(source)
    if asset is not None:
        return [asset.zone_ref]
    return [source]


def admissible(rs: Ruleset, keys: list[str]) -> list[tuple[str, str]]:
    """(conduit, key) pairs this gateway could grant."""
    out = []
    for name, plan in sorted(rs.conduits.items()):
        if not plan.needs_grant:
            continue
        for key in keys:
            if key in plan.identities or key in plan.zones:
                out.append((name, key))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m topology.direct_grants", description=__doc__)
    p.add_argument("action", choices=("open", "close"))
    p.add_argument("--topology", required=True)
    p.add_argument("--gateway", required=True)
    p.add_argument("--source", required=True)
    p.add_argument("--seconds", type=int, default=60)
    p.add_argument("--tunnel", default="zg0")
    args = p.parse_args(argv)

    from policyd.kernel import NftHandle

    topo = topology.load(args.topology).topology
    now = datetime.now(UTC)
    rs = compile_ruleset(topo, args.gateway, now=now, options=CompileOptions((args.tunnel,)))
    nft = NftHandle()
    done = []
    for conduit, key in admissible(rs, grant_sources(topo, args.source)):
        if args.action == "open":
            g = nft.add_grant(rs, conduit, key, timedelta(seconds=args.seconds), now=now)
            done.append({"conduit": conduit, "source": key, "until": g.expires.isoformat()})
        elif nft.remove_grant(rs, conduit, key):
            done.append({"conduit": conduit, "source": key})
    print(json.dumps({"gateway": args.gateway, "action": args.action, "grants": done}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
