"""Remote users join plant-a's gateway through real wireguard-go tunnels in namespaces.

No policyd here: the gateway forwards plainly, so what these tests prove is the tunnel
(PQ PSK, routes, refusals, revocation), not the policy.
"""

from __future__ import annotations

import json
import os
import subprocess
from datetime import UTC, datetime, timedelta

import pytest

from tests.remote.netns_plant import LAN_HOSTS, ROOT, PlantNet, tunneld, wait_for
from tests.tunneld.nsutil import ping

pytestmark = pytest.mark.root


@pytest.mark.sr("SR 1.1", "SR 1.1 RE1", "SR 1.13")
def test_users_join_with_pq_psk_and_reach_exactly_their_routes(plant: PlantNet) -> None:
    plant.start_gateway()
    vendor = plant.join("vendor-tech")
    engineer = plant.join("engineer-1")
    plant.wait_joined(vendor)
    plant.wait_joined(engineer)
    assert ping(vendor.ns, LAN_HOSTS["plc-1"]), plant.logs()
    assert ping(engineer.ns, LAN_HOSTS["plc-2"]), plant.logs()
    # The vendor's profile routes plc-1 only: plc-2 is not reachable from its machine.
    routes = plant.in_ns(vendor.ns, "ip", "-4", "route", "show", "dev", vendor.ifname)
    assert "10.10.1.5 " in routes and "10.10.1.0/24" not in routes, routes
    assert not ping(vendor.ns, LAN_HOSTS["plc-2"], timeout=1.0)
    # The gateway serves both users as endpoint-less responder peers of kind user.
    gw = plant.gw_status()
    assert gw is not None
    for name in ("vendor-tech", "engineer-1"):
        peer = gw["peers"][name]
        assert (peer["kind"], peer["role"]) == ("user", "responder")
        assert peer["rotations"] >= 1
    assert vendor.gateway()["role"] == "initiator"
    # The traffic really went through the tunnel (WireGuard counted it).
    assert gw["peers"]["vendor-tech"]["wg_rx"] > 0


@pytest.mark.sr("SR 1.1")
def test_expired_identity_is_refused_and_told_why(plant: PlantNet) -> None:
    profile = plant.issue_profile("vendor-tech")  # issued while valid
    plant.set_identity("vendor-tech", valid_until=_ago(days=1), valid_from=_ago(days=30))
    plant.start_gateway()
    vendor = plant.join("vendor-tech", profile=profile)
    assert vendor.proc is not None and plant.gateway is not None
    wait_for(lambda: "refused" in vendor.log_text(), 20, "a refusal", vendor.proc, plant.gateway)
    assert (
        "gateway plant-a refused: identity vendor-tech is outside its validity window"
        in vendor.log_text()
    ), vendor.log_tail()
    assert "unauthenticated" not in vendor.log_text()
    assert vendor.rotations() == 0
    # `tunneld status` on the user's machine shows the same reason.
    text = subprocess.run(
        tunneld("status", "--socket", str(vendor.sock)),
        capture_output=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        timeout=20,
        check=True,
    ).stdout.decode()
    assert "plant-a" in text and "outside its validity window" in text, text
    assert not ping(vendor.ns, LAN_HOSTS["plc-1"], timeout=2.0)
    gw = plant.gw_status()
    assert gw is not None and "vendor-tech" not in gw["peers"]
    assert gw["refused_identities"]["vendor-tech"] == 4  # REFUSED_EXPIRED


@pytest.mark.sr("SR 2.6")
def test_revoked_while_joined_loses_the_tunnel(joined_plant: PlantNet) -> None:
    plant = joined_plant
    vendor = plant.users["vendor-tech"]
    assert ping(vendor.ns, LAN_HOSTS["plc-1"]), plant.logs()
    plant.remove_identity("vendor-tech")
    plant.reload_gateway()
    assert plant.gateway is not None and vendor.proc is not None

    def gone() -> bool:
        st = plant.gw_status()
        return st is not None and "vendor-tech" not in st["peers"]

    wait_for(gone, 10, "the gateway to drop vendor-tech", plant.gateway)
    assert not ping(vendor.ns, LAN_HOSTS["plc-1"], timeout=2.0)
    # Its next rotation is refused: unknown identity, an unauthenticated answer.
    wait_for(
        lambda: "does not know this identity" in vendor.log_text(),
        20,
        "the client to report the refusal",
        vendor.proc,
    )
    assert "[unauthenticated reply]" in vendor.log_text()


@pytest.mark.sr("SR 2.6")
def test_validity_ending_while_joined_cuts_the_tunnel_without_reload(
    joined_plant: PlantNet,
) -> None:
    plant = joined_plant
    vendor = plant.users["vendor-tech"]
    assert plant.gateway is not None and vendor.proc is not None
    # The topology shortens vendor-tech's validity to a few seconds from now; after this
    # one reload nothing else happens: the gateway must act at valid_until by itself.
    until = datetime.now(UTC) + timedelta(seconds=3)
    plant.set_identity("vendor-tech", valid_until=until.isoformat())
    plant.reload_gateway()

    def dropped() -> bool:
        st = plant.gw_status()
        return st is not None and "vendor-tech" not in st["peers"]

    wait_for(dropped, 20, "the gateway to drop vendor-tech at valid_until", plant.gateway)
    assert datetime.now(UTC) >= until
    assert "validity window opened or closed: re-planning" in plant.gateway.log_text()
    assert not ping(vendor.ns, LAN_HOSTS["plc-1"], timeout=2.0)
    wait_for(
        lambda: "outside its validity window (it has ended)" in vendor.log_text(),
        20,
        "the client to report the refusal",
        vendor.proc,
    )


@pytest.mark.sr("SR 1.1")
def test_keys_not_matching_the_pin_get_no_psk_and_no_traffic(plant: PlantNet) -> None:
    # The user's profile and keys agree, but the gateway's topology pins other keys for
    # vendor-tech (e.g. re-keyed since): its InitHello can not be attributed.
    profile = plant.issue_profile("vendor-tech")
    other = plant.key_dir("engineer-2") / "identity.pub"
    plant.set_identity("vendor-tech", keys=str(other))
    plant.set_identity("engineer-2", keys=None)
    plant.edit_topology(_drop_none_keys)
    plant.start_gateway()
    vendor = plant.join("vendor-tech", profile=profile)
    assert vendor.proc is not None and plant.gateway is not None
    wait_for(lambda: "refused" in vendor.log_text(), 20, "a refusal", vendor.proc, plant.gateway)
    assert "does not know this identity's keys" in vendor.log_text(), vendor.log_tail()
    assert vendor.rotations() == 0
    assert not plant.same_psk(vendor)
    assert not ping(vendor.ns, LAN_HOSTS["plc-1"], timeout=2.0)
    gw = plant.gw_status()
    assert gw is not None and gw["peers"]["vendor-tech"]["rotations"] == 0
    assert gw["unattributed_failures"] >= 1
    status_text = json.dumps(gw)
    assert "not pinned here" in status_text


def _ago(days: int) -> str:
    return (datetime.now(UTC) - timedelta(days=days)).date().isoformat()


def _drop_none_keys(s: dict[str, object]) -> None:
    idents = s["identities"]
    assert isinstance(idents, dict)
    for entry in idents.values():
        if isinstance(entry, dict) and entry.get("keys", "") is None:
            del entry["keys"]
