"""Gateway plans serve user and service identities: who is a peer, who is refused, when."""

from __future__ import annotations

from datetime import UTC, datetime
from ipaddress import IPv4Network
from pathlib import Path

import pytest

import topology
from topology.model import Topology
from tunneld import messages as m
from tunneld.keyring import Materialized, materialize_keys
from tunneld.plan import plan

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "plant"
NOW = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
USERS = ("engineer-1", "engineer-2", "shift-lead-1", "safety-engineer-1", "vendor-tech")


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Materialized:
    base = tmp_path_factory.mktemp("plant")
    # engineer-2 deliberately has no keys pinned.
    names = ["plant-a", "plant-b", *(u for u in USERS if u != "engineer-2")]
    return materialize_keys(EXAMPLE, base, names)


@pytest.fixture(scope="module")
def topo(keyed: Materialized) -> Topology:
    return topology.load(keyed.topology).topology


def test_users_whose_conduits_reach_the_site_are_responder_peers(topo: Topology) -> None:
    p = plan(topo, "plant-a", NOW)
    users = {peer.name: peer for peer in p.peers if peer.kind == "user"}
    assert set(users) == {"engineer-1", "shift-lead-1", "safety-engineer-1", "vendor-tech"}
    vt = users["vendor-tech"]
    assert vt.endpoint is None and vt.role == "responder"
    assert vt.allowed_ips == ("100.64.2.10/32",)
    assert vt.routes == (IPv4Network("100.64.2.10/32"),)
    assert vt.kem == "ml-kem-768"
    # The site peer is unchanged: endpoint, overlay and zones.
    (site,) = [peer for peer in p.peers if peer.kind == "site"]
    assert site.name == "plant-b" and site.endpoint == "192.0.2.20:51820"


def test_user_without_keys_is_skipped_with_the_fix(topo: Topology) -> None:
    p = plan(topo, "plant-a", NOW)
    assert all(peer.name != "engineer-2" for peer in p.peers)
    (line,) = [s for s in p.skipped if "engineer-2" in s]
    assert "tunneld keygen" in line and "keys:" in line


def test_identities_without_a_conduit_here_are_refused_as_such(topo: Topology) -> None:
    p = plan(topo, "plant-b", NOW)
    assert {peer.name for peer in p.peers if peer.kind == "user"} == {"engineer-1"}
    refused = {r.name: r.code for r in p.refused}
    assert refused == {
        "vendor-tech": m.REFUSED_NO_CONDUIT,
        "shift-lead-1": m.REFUSED_NO_CONDUIT,
        "safety-engineer-1": m.REFUSED_NO_CONDUIT,
    }


@pytest.mark.parametrize(
    ("at", "code", "replan"),
    [
        (
            datetime(2025, 12, 1, tzinfo=UTC),
            m.REFUSED_NOT_YET_VALID,
            datetime(2026, 1, 1, tzinfo=UTC),
        ),
        (NOW, None, datetime(2027, 6, 30, tzinfo=UTC)),
        (datetime(2027, 6, 30, tzinfo=UTC), m.REFUSED_EXPIRED, None),
        (datetime(2027, 7, 15, tzinfo=UTC), m.REFUSED_EXPIRED, None),
    ],
)
def test_validity_window_decides_and_schedules_the_next_plan(
    topo: Topology, at: datetime, code: int | None, replan: datetime | None
) -> None:
    p = plan(topo, "plant-a", at)
    refused = {r.name: r.code for r in p.refused}
    is_peer = any(peer.name == "vendor-tech" for peer in p.peers)
    assert refused.get("vendor-tech") == code
    assert is_peer == (code is None)
    assert p.replan_at == replan


def test_gateway_plan_listens_on_its_port(topo: Topology) -> None:
    assert plan(topo, "plant-a", NOW).listen_port == 51820
