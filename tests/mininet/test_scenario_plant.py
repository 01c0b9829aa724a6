"""examples/plant end to end: real daemons, real tunnels, the file's tests as real traffic."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mininet.conftest import bring_up
from tunneld.keys import load_public
from zonegate.lab.plant_daemons import in_host
from zonegate.lab.scenario import Scenario
from zonegate.lab.scenario_cases import SKIP_PINNED, outcome_table, summary

pytestmark = [pytest.mark.root, pytest.mark.mininet]

# Drops Modbus in the forward path of one gateway, beside our table: a gateway that
# blocks what the policy allows must show up as a MISMATCH.
BREAK = (
    "add table inet zgbreak\n"
    # prerouting, before anything of zonegate's: Modbus flows are steered to the OT tier
    # there and never reach the forward hook
    "add chain inet zgbreak block { type filter hook prerouting priority -400; policy accept; }\n"
    "add rule inet zgbreak block tcp dport 502 drop\n"
)


class TestPlantScenario:
    scenario: Scenario

    @pytest.fixture(autouse=True, scope="class")
    @classmethod
    def plant(cls, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
        for scenario in bring_up("plant", tmp_path_factory):
            cls.scenario = scenario
            yield

    def psk_digest(self, site: str, peer: str) -> str:
        """Digest of the PSK `site` holds for `peer` (tests never print keys)."""
        pub = load_public(self.scenario.workdir / "keys" / peer / "identity.pub")
        peer_key = base64.b64encode(pub.wireguard).decode()
        rc, out = in_host(self.scenario.host(site), ["wg", "show", "zg0", "preshared-keys"])
        assert rc == 0, out
        (psk,) = [line.split("\t")[1] for line in out.splitlines() if line.startswith(peer_key)]
        assert psk != "(none)"
        return hashlib.sha256(psk.encode()).hexdigest()[:12]

    def test_site_tunnels_hold_the_same_post_quantum_psk(self) -> None:
        st = self.scenario.daemons.status("plant-a") if self.scenario.daemons else None
        assert st is not None
        assert st["peers"]["plant-b"]["psk_age"] is not None
        assert self.psk_digest("plant-a", "plant-b") == self.psk_digest("plant-b", "plant-a")
        print(self.scenario.tunnel_table())

    def test_declared_tests_match_the_model_as_real_traffic(self) -> None:
        outcomes = self.scenario.run_tests()
        print(outcome_table(outcomes))
        print(summary(outcomes))
        assert all(o.ok for o in outcomes), outcome_table(outcomes)
        ran = [o for o in outcomes if o.case.runnable]
        # Site-to-site flows both ways of the verdict really ran through the tunnel.
        assert {o.passed for o in ran} == {True, False}
        assert any(o.passed and o.case.test.source == "plant-b/scada-b" for o in ran), (
            "no allowed flow crossed the tunnel"
        )
        pinned = [o for o in outcomes if o.case.test.at is not None]
        assert pinned and all(o.case.skip == SKIP_PINNED and o.passed is None for o in pinned)
        # Everything else ran: users through their own tunnels, grants through the API.
        assert all(o.case.runnable for o in outcomes if o.case.test.at is None)
        granted = [o for o in ran if o.case.test.granted]
        assert granted and all("grants: none" not in o.detail for o in granted)

    def test_a_gateway_that_blocks_an_allowed_flow_is_a_mismatch(self, tmp_path: Path) -> None:
        gw = self.scenario.host("plant-a")
        (tmp_path / "break.nft").write_text(BREAK)
        rc, out = in_host(gw, ["nft", "-f", str(tmp_path / "break.nft")])
        assert rc == 0, out
        try:
            # Site-to-site and local flows only: user flows would just repeat the point.
            outcomes = self.scenario.run_tests(only=lambda c: "/" in c.test.source)
        finally:
            gw.cmd("nft delete table inet zgbreak")
        print(outcome_table(outcomes))
        bad = [o for o in outcomes if not o.ok]
        assert bad, "breaking plant-a's forwarding went unnoticed"
        assert all(o.case.model is not None and o.case.model.allowed for o in bad)
        assert "MISMATCH" in outcome_table(outcomes)
