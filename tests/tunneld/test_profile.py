"""Tunnel profiles: issue checks, exact routes, expiry, format, and the join-side checks."""

from __future__ import annotations

import json
import stat
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

import topology
from topology.model import TargetKind, Topology
from tunneld import profile as prof
from tunneld.cli import main as tunneld_main
from tunneld.daemon import Daemon, Options
from tunneld.keyring import Materialized, materialize_keys
from tunneld.keys import keygen, load_public
from tunneld.signing import Signer, load_signer, signer_keygen
from zonegate.cli import main as zonegate

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "plant"
NOW = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
KEYED = ("plant-a", "plant-b", "engineer-1", "vendor-tech", "shift-lead-1", "safety-engineer-1")


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Materialized:
    return materialize_keys(EXAMPLE, tmp_path_factory.mktemp("plant"), KEYED)


@pytest.fixture(scope="module")
def signer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("signer") / "signer"
    signer_keygen(d)
    return d


@pytest.fixture(scope="module")
def signer(signer_dir: Path) -> Signer:
    return load_signer(signer_dir)


@pytest.fixture(scope="module")
def topo(keyed: Materialized) -> Topology:
    return topology.load(keyed.topology).topology


def issue(topo: Topology, keyed: Materialized, name: str, **kw: object) -> prof.Profile:
    return prof.issue(topo, name, load_public(keyed.pub(name)), kw.pop("now", NOW), **kw)  # type: ignore[arg-type]


def nets(p: prof.Profile) -> dict[str, set[str]]:
    return {g.site: {str(r) for r in g.routes} for g in p.gateways}


# -- what a profile holds ------------------------------------------------------------


def test_vendor_profile_routes_only_its_plc_and_the_control_api(
    topo: Topology, keyed: Materialized
) -> None:
    p = issue(topo, keyed, "vendor-tech")
    assert nets(p) == {"plant-a": {"10.10.1.5/32", "100.64.0.1/32"}}
    (g,) = p.gateways
    assert g.endpoint == "192.0.2.10:51820" and g.api == "http://100.64.0.1:9780"
    assert g.bundle == load_public(keyed.pub("plant-a")) and g.kem == "ml-kem-768"
    assert p.overlay == IPv4Address("100.64.2.10") and p.kind == "user"
    assert p.keys_digest == load_public(keyed.pub("vendor-tech")).digest()


def test_engineer_profile_covers_both_sites(topo: Topology, keyed: Materialized) -> None:
    assert nets(issue(topo, keyed, "engineer-1")) == {
        # engineers-read-plcs (zone control) + historian-access (asset historian)
        "plant-a": {"10.10.1.0/24", "10.10.9.10/32", "100.64.0.1/32"},
        "plant-b": {"10.20.1.0/24", "100.64.0.2/32"},
    }


@pytest.mark.parametrize("name", ["engineer-1", "vendor-tech", "shift-lead-1", "safety-engineer-1"])
def test_routes_are_exactly_what_its_conduits_reach(
    topo: Topology, keyed: Materialized, name: str
) -> None:
    """Every asset and zone address: routed iff a conduit admitting the identity targets it."""
    p = issue(topo, keyed, name)
    ident = topo.identities[name]
    routed = {g.site: g.routes for g in p.gateways}
    for site in topo.sites.values():
        for zone in site.zones.values():
            probes = [*(a for a in site.assets.values() if a.zone == zone.name)]
            for addr in [zone.cidr[200], *(a.address for a in probes)]:
                want = any(
                    c.sources.admits(ident)
                    and c.target.site == site.name
                    and (
                        (c.target.kind is TargetKind.ZONE and c.target.name == zone.name)
                        or (
                            c.target.kind is TargetKind.ASSET
                            and site.assets[c.target.name].address == addr
                        )
                    )
                    for c in topo.conduits.values()
                )
                got = any(addr in r for r in routed.get(site.name, ()))
                assert got == want, (name, site.name, str(addr))


def test_expiry_is_the_earlier_of_validity_and_days(topo: Topology, keyed: Materialized) -> None:
    assert issue(topo, keyed, "vendor-tech").expires == NOW + timedelta(days=30)
    assert issue(topo, keyed, "vendor-tech", days=2).expires == NOW + timedelta(days=2)
    late = datetime(2027, 6, 20, tzinfo=UTC)
    assert issue(topo, keyed, "vendor-tech", now=late).expires == datetime(2027, 6, 30, tzinfo=UTC)


def test_profile_holds_no_secret(topo: Topology, keyed: Materialized) -> None:
    text = issue(topo, keyed, "vendor-tech").to_json()
    for who in ("vendor-tech", "plant-a"):
        wg_private = (keyed.keys[who] / "wireguard.key").read_text().strip()
        seeds = json.loads((keyed.keys[who] / "identity.key").read_text())
        for secret in (wg_private, seeds["x25519"], seeds["kem_seed"]):
            assert secret not in text


def test_json_round_trip(topo: Topology, keyed: Materialized) -> None:
    p = issue(topo, keyed, "engineer-1")
    assert prof.parse(p.to_json(), "x") == p


# -- refusals at issue time ------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "now", "days", "message"),
    [
        ("nobody", NOW, 30, "no identity 'nobody' in the topology"),
        ("plant-a", NOW, 30, "is a site gateway"),
        ("vendor-tech", datetime(2027, 7, 1, tzinfo=UTC), 30, "expired at 2027-06-30"),
        ("vendor-tech", datetime(2025, 12, 1, tzinfo=UTC), 30, "not valid until 2026-01-01"),
        ("engineer-2", NOW, 30, "add 'keys: PATH/identity.pub' to identity engineer-2"),
        ("vendor-tech", NOW, 0, "--days must be at least 1"),
    ],
)
def test_issue_refuses_with_a_reason(
    topo: Topology, keyed: Materialized, name: str, now: datetime, days: int, message: str
) -> None:
    bundle = load_public(keyed.pub("vendor-tech"))
    with pytest.raises(prof.ProfileError, match=message):
        prof.issue(topo, name, bundle, now, days)


def test_issue_refuses_keys_that_are_not_the_pinned_ones(
    topo: Topology, keyed: Materialized
) -> None:
    with pytest.raises(prof.ProfileError, match="not the ones the topology pins for vendor-tech"):
        prof.issue(topo, "vendor-tech", load_public(keyed.pub("engineer-1")), NOW)


# -- the command lines -------------------------------------------------------------------


def test_zonegate_profile_issue_and_show(
    keyed: Materialized,
    signer_dir: Path,
    signer: Signer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "vendor.json"
    argv = ["profile", "issue", str(keyed.topology), "--identity", "vendor-tech"]
    argv += ["--signing-key", str(signer_dir)]
    rc = zonegate([*argv, "--pubkeys", str(keyed.pub("vendor-tech")), "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    assert prof.load(out, signer.public.fingerprint).identity == "vendor-tech"
    assert zonegate(["profile", "show", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "gateway plant-a at 192.0.2.10:51820" in shown
    assert f"signed by {signer.public.fingerprint} (signature valid" in shown
    plant_a = load_public(keyed.pub("plant-a")).fingerprint
    assert f"key fingerprint {plant_a}" in shown
    rc = zonegate([*argv, "--pubkeys", str(keyed.pub("engineer-1")), "--out", str(out)])
    assert rc == 1 and "not the ones the topology pins" in capsys.readouterr().err


# -- the joining side --------------------------------------------------------------------


def test_parse_rejects_what_it_can_not_use(topo: Topology, keyed: Materialized) -> None:
    doc = json.loads(issue(topo, keyed, "vendor-tech").to_json())
    cases: list[tuple[object, str]] = [
        ("not json", "not JSON"),
        ({**doc, "format": "x"}, "not a zonegate-profile"),
        ({**doc, "version": 2}, "profile version 2; this tunneld reads version 1"),
        ({**doc, "gateways": []}, "non-empty list"),
        ({**doc, "overlay": "300.1.1.1"}, "'overlay' is not an IPv4 address"),
        ({**doc, "gateways": [{**doc["gateways"][0], "endpoint": "nohost"}]}, "not host:port"),
        ({**doc, "gateways": [{**doc["gateways"][0], "public_bundle": {}}]}, "public bundle"),
        (
            {**doc, "gateways": [{**doc["gateways"][0], "routes": ["10.1/33"]}]},
            "not an IPv4 network",
        ),
        ({**doc, "expires": "soon"}, "'expires' is not an ISO 8601 time"),
    ]
    for value, message in cases:
        text = value if isinstance(value, str) else json.dumps(value)
        with pytest.raises(prof.ProfileError, match=message):
            prof.parse(text, "p.json")


def test_check_usable_refuses_expired_profiles_and_other_keys(
    topo: Topology, keyed: Materialized
) -> None:
    p = issue(topo, keyed, "vendor-tech", days=1)
    own = load_public(keyed.pub("vendor-tech"))
    prof.check_usable(p, own, NOW, "keys/")
    with pytest.raises(prof.ProfileError, match="expired at 2026-11-26T10:00:00Z; ask"):
        prof.check_usable(p, own, NOW + timedelta(days=1), "keys/")
    with pytest.raises(prof.ProfileError, match="not the ones this profile was issued for"):
        prof.check_usable(p, load_public(keyed.pub("engineer-1")), NOW, "keys/")


def test_join_plan_is_initiator_peers_with_profile_routes(
    topo: Topology, keyed: Materialized
) -> None:
    p = issue(topo, keyed, "engineer-1")
    p = replace(p, gateways=(replace(p.gateways[0], endpoint="gw.example:51820"), p.gateways[1]))
    own = load_public(keyed.pub("engineer-1"))
    node = prof.join_plan(p, own, resolve=lambda host, port: "203.0.113.7")
    assert node.listen_port is None and node.expires == p.expires
    assert str(node.address) == "100.64.1.10/32" and node.bundle == own
    a, b = node.peers
    assert (a.name, a.role, a.endpoint) == ("plant-a", "initiator", "203.0.113.7:51820")
    assert set(a.allowed_ips) == {"10.10.1.0/24", "10.10.9.10/32", "100.64.0.1/32"}
    assert IPv4Network("10.20.1.0/24") in b.routes


def test_tunneld_join_refuses_before_touching_the_network(
    topo: Topology,
    keyed: Materialized,
    signer: Signer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    expired = issue(topo, keyed, "vendor-tech", now=datetime.now(UTC) - timedelta(days=3), days=1)
    prof.write(expired, tmp_path / "old.json", signer)
    fresh = issue(topo, keyed, "vendor-tech", now=datetime.now(UTC))
    prof.write(fresh, tmp_path / "new.json", signer)
    fp = signer.public.fingerprint
    other = tmp_path / "other-keys"
    keygen(other)
    for path, keys, message in [
        ("old.json", keyed.keys["vendor-tech"], "profile for vendor-tech expired at"),
        ("new.json", other, "are not the ones this profile was issued for"),
        ("missing.json", keyed.keys["vendor-tech"], "missing.json does not exist"),
    ]:
        argv = ["join", str(tmp_path / path), "--keys", str(keys), "--ifname", "zrnever0"]
        assert tunneld_main([*argv, "--signer", fp]) == 2
        assert message in capsys.readouterr().err
    with pytest.raises(prof.ProfileError, match="not the ones"):
        Daemon(Options(profile=tmp_path / "new.json", keys=other, signer=fp))
