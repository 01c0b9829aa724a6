"""A hand-built two-site plant used by the policyd unit tests.

Built directly as `Topology` objects (no loader), so these tests pin the compiler
against the model alone. `NOW` is a Wednesday 10:00 UTC (11:00 in Berlin, winter time).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, time, timedelta
from ipaddress import IPv4Address, IPv4Network
from typing import Any

import pytest

from tests.policyd.nsnet import Net, require_tools
from topology.model import (
    Approval,
    Asset,
    Conduit,
    Emergency,
    Gateway,
    Identity,
    Role,
    Schedule,
    ServiceRef,
    Site,
    Sources,
    Target,
    TargetKind,
    Topology,
    Zone,
    frozen_map,
)
from topology.services import BUILTIN_SERVICES

NOW = datetime(2025, 1, 15, 10, 0, tzinfo=UTC)


def _site(
    name: str,
    gw: str,
    overlay: str,
    zones: dict[str, tuple[str, int]],
    assets: dict[str, tuple[str, str]],
) -> Site:
    return Site(
        name=name,
        gateway=Gateway(underlay=gw, port=51820, overlay=IPv4Address(overlay)),
        zones=frozen_map({z: Zone(name, z, IPv4Network(c), sl) for z, (c, sl) in zones.items()}),
        assets=frozen_map({a: Asset(name, a, z, IPv4Address(ip)) for a, (z, ip) in assets.items()}),
    )


def _ident(name: str, roles: tuple[str, ...], overlay: str, **kw: Any) -> Identity:
    return Identity(name=name, kind="user", roles=roles, overlay=IPv4Address(overlay), **kw)


def _conduit(
    name: str, src: Sources, kind: TargetKind, target: str, allow: list[str], **kw: Any
) -> Conduit:
    refs = []
    for a in allow:
        svc, _, classes = a.partition("/")
        refs.append(ServiceRef(svc, tuple(classes.split("+")) if classes else ()))
    site, _, tname = target.partition("/")
    return Conduit(
        name=name, sources=src, target=Target(kind, site, tname), allow=tuple(refs), **kw
    )


WEEKDAYS = frozenset(range(5))


def build_plant() -> Topology:
    sites = {
        "plant-a": _site(
            "plant-a",
            "192.0.2.10",
            "100.64.0.1",
            {"control": ("10.10.1.0/24", 3), "enterprise": ("10.10.9.0/24", 1)},
            {
                "plc-1": ("control", "10.10.1.5"),
                "hmi-1": ("control", "10.10.1.20"),
                "historian": ("enterprise", "10.10.9.5"),
            },
        ),
        "plant-b": _site(
            "plant-b",
            "192.0.2.20",
            "100.64.0.2",
            {"control": ("10.20.1.0/24", 3)},
            {"plc-b1": ("control", "10.20.1.5")},
        ),
    }
    identities = [
        _ident("eng-1", ("plc-engineer",), "100.64.1.10"),
        _ident("eng-2", ("plc-engineer",), "100.64.1.11", valid_until=NOW + timedelta(days=30)),
        _ident("eng-old", ("plc-engineer",), "100.64.1.99", valid_until=NOW - timedelta(days=1)),
        _ident("eng-new", ("plc-engineer",), "100.64.1.98", valid_from=NOW + timedelta(days=2)),
        _ident("lead-1", ("shift-lead",), "100.64.1.20"),
        _ident("vendor-1", ("vendor-acme",), "100.64.2.10"),
        _ident("guest", (), "100.64.3.1"),
        Identity(name="plant-b", kind="site", overlay=IPv4Address("100.64.0.2"), site="plant-b"),
    ]
    conduits = [
        _conduit(
            "engineers-read-plcs",
            Sources(roles=("plc-engineer",)),
            TargetKind.ZONE,
            "plant-a/control",
            ["ssh", "modbus/read"],
            schedule=Schedule(WEEKDAYS, time(7), time(18), "Europe/Berlin"),
        ),
        _conduit(
            "lead-writes-plc1",
            Sources(identities=("lead-1",)),
            TargetKind.ASSET,
            "plant-a/plc-1",
            ["modbus/read+write"],
        ),
        _conduit(
            "vendor-maintenance",
            Sources(roles=("vendor-acme",)),
            TargetKind.ASSET,
            "plant-a/plc-1",
            ["modbus/read+write"],
            approval=Approval(("plc-engineer",), (), timedelta(hours=4)),
            record=True,
        ),
        _conduit(
            "break-glass",
            Sources(roles=("shift-lead",)),
            TargetKind.ZONE,
            "plant-a/control",
            ["ssh", "modbus"],
            emergency=Emergency(timedelta(hours=1)),
        ),
        _conduit(
            "b-to-historian",
            Sources(zones=("plant-b/control",)),
            TargetKind.ASSET,
            "plant-a/historian",
            ["https"],
        ),
        _conduit(
            "a-to-b-opcua",
            Sources(zones=("plant-a/enterprise",)),
            TargetKind.ZONE,
            "plant-b/control",
            ["opcua"],
        ),
        _conduit(
            "enterprise-hmi",
            Sources(zones=("plant-a/enterprise",)),
            TargetKind.ASSET,
            "plant-a/hmi-1",
            ["vnc"],
        ),
        _conduit(
            "night-shift",
            Sources(roles=("shift-lead",)),
            TargetKind.ASSET,
            "plant-a/hmi-1",
            ["vnc"],
            schedule=Schedule(frozenset(range(7)), time(22), time(6), "UTC"),
        ),
    ]
    return Topology(
        sites=frozen_map(sites),
        roles=frozen_map({r: Role(r) for r in ("plc-engineer", "shift-lead", "vendor-acme")}),
        identities=frozen_map({i.name: i for i in identities}),
        services=BUILTIN_SERVICES,
        conduits=frozen_map({c.name: c for c in conduits}),
        tests=(),
        files=(),
    )


@pytest.fixture(scope="session")
def plant() -> Topology:
    return build_plant()


@pytest.fixture
def net() -> Iterator[Net]:
    """identity -- gateway -- zone namespaces with real servers in the zone."""
    require_tools()
    n = Net()
    try:
        n.up()
        n.start_servers()
        yield n
    finally:
        n.down()
