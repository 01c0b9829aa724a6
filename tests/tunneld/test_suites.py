"""Three-component suites (X25519 + ML-KEM + HQC): the combiner, handshakes across
backends, and no downgrade: a peer or an attacker can not strip the third component."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

import topology
from tests.tunneld.tunneld_helpers import (
    FakeClock,
    FakeRandom,
    Ident,
    make_ident,
    run_handshake,
    sends,
)
from tunneld import messages as m
from tunneld import profile as prof
from tunneld import transcript as t
from tunneld.handshake import Endpoint
from tunneld.handshake_types import PeerConfig, PskReady, Rejected, Role
from tunneld.hybrid import HybridCiphertext, HybridPrivateKey, HybridPublicKey, split
from tunneld.kem import PARAMS, KemError, KemPrivateKey, get_backend
from tunneld.keyring import materialize_keys
from tunneld.keys import load_public
from tunneld.plan import plan, stronger_code

SUITES = ["ml-kem-768+hqc-128", "ml-kem-1024+hqc-256"]
ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "plant"
NOW = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)


def peer(ident: Ident, role: Role, kem: str, backend: str) -> PeerConfig:
    s = ident.static
    pub = HybridPublicKey(get_backend(backend), s.kem, s.x_public, s.kem_public)
    return PeerConfig(ident.name, pub, ident.wg_public, role, kem)


def endpoints(
    a_kem: str, b_kem: str, a_backend: str = "pqcrypto", b_backend: str = "pqcrypto"
) -> tuple[Endpoint, Endpoint, FakeClock, Ident, Ident]:
    """a initiates towards b; each side pins the suite it is given (normally the same)."""
    a, b = make_ident("site-a"), make_ident("site-b")
    clock = FakeClock()
    ea = Endpoint(
        a.local(),
        [peer(b, "initiator", a_kem, a_backend)],
        backend=get_backend(a_backend),
        clock=clock,
        rng=FakeRandom(b"a"),
    )
    eb = Endpoint(
        b.local(),
        [peer(a, "responder", b_kem, b_backend)],
        backend=get_backend(b_backend),
        clock=clock,
        rng=FakeRandom(b"b"),
    )
    return ea, eb, clock, a, b


# -- the combiner --------------------------------------------------------------------


@pytest.mark.parametrize("suite", SUITES)
def test_three_component_hybrid_binds_every_component(suite: str) -> None:
    backend = get_backend("cryptography")  # HQC comes from pqcrypto (backend_for)
    priv = HybridPrivateKey.generate(backend, suite, os.urandom)
    assert len(priv.kem_public) == PARAMS[suite].public_key_size
    pub = HybridPublicKey(backend, suite, priv.x_public, priv.kem_public)
    shared, ct = pub.encapsulate(os.urandom)
    assert len(ct.m) == PARAMS[suite].ciphertext_size
    assert priv.decapsulate(ct) == shared
    # Flipping a bit in either post-quantum ciphertext (ML-KEM's, then HQC's) changes the
    # combined secret: each component's secret and ciphertext are in the hash.
    offset = 0
    for _, part in split(suite, ct.m, "ciphertext_size"):
        flipped = ct.m[:offset] + bytes([ct.m[offset] ^ 1]) + ct.m[offset + 1 :]
        assert priv.decapsulate(HybridCiphertext(ct.x, flipped)) != shared
        offset += len(part)
    with pytest.raises(KemError, match="must be"):
        priv.decapsulate(HybridCiphertext(ct.x, ct.m[:-1]))
    # Each component's shared secret is in the hash too: a component that decapsulated
    # to another secret (the same ciphertexts) changes the result.
    for i, key in enumerate(list(priv._kem_keys)):
        priv._kem_keys[i] = _Skewed(key)
        assert priv.decapsulate(ct) != shared
        priv._kem_keys[i] = key
    assert priv.decapsulate(ct) == shared


class _Skewed:
    """A decapsulation key whose secret is off by one bit."""

    def __init__(self, key: KemPrivateKey) -> None:
        self.key = key
        self.public_bytes = key.public_bytes
        self.seed = key.seed

    def decapsulate(self, ct: bytes) -> bytes:
        ss = self.key.decapsulate(ct)
        return bytes([ss[0] ^ 1]) + ss[1:]


def test_two_component_suite_combines_as_before() -> None:
    """Adding suites did not change the two-component combiner (deployed peers interop)."""
    backend = get_backend("cryptography")
    rng = FakeRandom(b"combiner")
    priv = HybridPrivateKey.generate(backend, "ml-kem-768", rng)
    pub = HybridPublicKey(backend, "ml-kem-768", priv.x_public, priv.kem_public)
    shared, ct = pub.encapsulate(rng)
    ss_m = priv._kem_keys[0].decapsulate(ct.m)
    ss_x = priv.static_dh(ct.x)
    assert shared == t.sha3(
        b"zonegate-tunneld-v1 hybrid-kem", b"ml-kem-768", ss_m, ss_x, ct.m, ct.x, pub.digest
    )


def test_identity_keys_stay_ml_kem() -> None:
    with pytest.raises(KemError, match="ephemeral only"):
        HybridPrivateKey(get_backend("pqcrypto"), "ml-kem-768+hqc-128", bytes(32), bytes(64))


# -- handshakes ----------------------------------------------------------------------


@pytest.mark.parametrize("suite", SUITES)
@pytest.mark.parametrize(
    ("a_backend", "b_backend"),
    [("pqcrypto", "pqcrypto"), ("cryptography", "pqcrypto"), ("pqcrypto", "cryptography")],
)
def test_three_component_handshake_across_backends(
    suite: str, a_backend: str, b_backend: str
) -> None:
    ea, eb, clock, _, _ = endpoints(suite, suite, a_backend, b_backend)
    tr = run_handshake(ea, eb, clock)
    assert tr.psk_a == tr.psk_b and len(tr.psk_a) == 32
    assert m.decode(tr.msg1).eph_kem == PARAMS[suite].wire_id  # type: ignore[union-attr]
    assert len(tr.msg1) == m.message_size(m.INIT_HELLO, PARAMS[suite], PARAMS["ml-kem-768"])
    assert len(tr.msg2) <= m.MAX_MESSAGE_SIZE


@pytest.mark.parametrize(("a_backend", "b_backend"), [("cryptography", "pqcrypto")])
def test_two_component_handshake_across_backends(a_backend: str, b_backend: str) -> None:
    ea, eb, clock, _, _ = endpoints("ml-kem-1024", "ml-kem-1024", a_backend, b_backend)
    tr = run_handshake(ea, eb, clock)
    assert tr.psk_a == tr.psk_b


# -- no downgrade --------------------------------------------------------------------


def test_responder_pinning_hqc_refuses_a_two_component_hello() -> None:
    """An initiator whose topology lacks the third component gets no PSK (fail closed)."""
    ea, eb, clock, _, _ = endpoints("ml-kem-768", "ml-kem-768+hqc-128")
    clock.advance(ea.next_deadline() - clock.now)
    (hello,) = sends(ea.poll())
    before = eb.fingerprint()
    out = eb.receive(hello)
    assert [type(e) for e in out] == [Rejected]
    assert "ephemeral KEM is not ml-kem-768+hqc-128" in out[0].reason  # type: ignore[union-attr]
    assert eb.fingerprint() == before


def _strip_hqc(hello: bytes, mac_key: bytes) -> bytes:
    """What an attacker who can forge MAC1 (it knows a static X25519 key) sends: the same
    InitHello with the HQC public key cut out and the header saying plain ML-KEM."""
    msg = m.decode(hello)
    assert isinstance(msg, m.InitHello)
    (_, ml_pk), _ = split("ml-kem-768+hqc-128", msg.epk_m, "public_key_size")
    stripped = m.InitHello(
        eph_kem=PARAMS["ml-kem-768"].wire_id,
        static_kem=msg.static_kem,
        sender=msg.sender,
        initiator=msg.initiator,
        responder=msg.responder,
        timestamp=msg.timestamp,
        epk_x=msg.epk_x,
        epk_m=ml_pk,
        sct_x=msg.sct_x,
        sct_m=msg.sct_m,
    )
    body = m.body(stripped)
    return body + t.mac1(mac_key, body)


def test_attacker_can_not_strip_the_third_component() -> None:
    ea, eb, clock, a, b = endpoints("ml-kem-768+hqc-128", "ml-kem-768+hqc-128")
    clock.advance(ea.next_deadline() - clock.now)
    (hello,) = sends(ea.poll())
    dh = a.static.static_dh(b.static.x_public)
    forged = _strip_hqc(hello, t.mac1_key(dh, ea.local.id, eb.local.id))
    before = eb.fingerprint()
    out = eb.receive(forged)
    assert "ephemeral KEM is not ml-kem-768+hqc-128" in out[0].reason  # type: ignore[union-attr]
    assert not any(isinstance(e, PskReady) for e in out)
    assert eb.fingerprint() == before
    # The genuine hello still completes: the forgery cost the pair nothing.
    (resp,) = sends(eb.receive(hello))
    assert sends(ea.receive(resp))


def test_stripped_hello_accepted_by_a_misconfigured_responder_fails_at_initiator() -> None:
    """Even a responder talked into two components (wrong topology, forged MAC1) can not
    make the initiator install a key: it rejects an answer for another suite, and the
    suite name in h0 would make key confirmation fail anyway."""
    ea, eb, clock, a, b = endpoints("ml-kem-768+hqc-128", "ml-kem-768")
    clock.advance(ea.next_deadline() - clock.now)
    (hello,) = sends(ea.poll())
    dh = a.static.static_dh(b.static.x_public)
    forged = _strip_hqc(hello, t.mac1_key(dh, ea.local.id, eb.local.id))
    (resp,) = sends(eb.receive(forged))
    before = ea.fingerprint()
    out = ea.receive(resp)
    assert [type(e) for e in out] == [Rejected]
    assert "ephemeral KEM differs" in out[0].reason  # type: ignore[union-attr]
    assert ea.fingerprint() == before
    # The transcript binds the suite by name: the two sides' h0 differ.
    ids = (ea.local.id, eb.local.id, a.wg_public, b.wg_public, a.static.digest, b.static.digest)
    assert t.prologue("ml-kem-768+hqc-128", *ids) != t.prologue("ml-kem-768", *ids)


# -- pinned in the topology ----------------------------------------------------------


@pytest.fixture(scope="module")
def plant_with_hqc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example plant with plant-b asking for HQC-192 on its tunnels."""
    base = tmp_path_factory.mktemp("plant-hqc")
    names = ["plant-a", "plant-b", "engineer-1"]
    keyed = materialize_keys(EXAMPLE, base, names)
    sites = keyed.topology / "sites.yaml"
    text = sites.read_text()
    anchor = "    description: Pumping station\n"
    assert anchor in text
    sites.write_text(text.replace(anchor, anchor + "    code_kem: hqc-192\n"))
    return keyed.topology


def test_site_pair_suite_is_pinned_the_same_on_both_sides(plant_with_hqc: Path) -> None:
    topo = topology.load(plant_with_hqc).topology
    assert topo.sites["plant-b"].code_kem == "hqc-192" and topo.sites["plant-a"].code_kem is None
    a_view = {p.name: p.kem for p in plan(topo, "plant-a", NOW).peers}
    b_view = {p.name: p.kem for p in plan(topo, "plant-b", NOW).peers}
    # Either site asking is enough; both gateways compute the same suite for the pair.
    assert a_view["plant-b"] == b_view["plant-a"] == "ml-kem-768+hqc-192"
    # A site that does not ask keeps two components for its own users.
    assert a_view["engineer-1"] == "ml-kem-768"


def test_stronger_code_kem_wins() -> None:
    assert stronger_code("hqc-256", "hqc-128") == "hqc-256"
    assert stronger_code(None, "hqc-192") == "hqc-192"
    assert stronger_code(None, None) is None


def test_gateway_refuses_a_suite_no_backend_here_computes(tmp_path: Path) -> None:
    """HQC pinned, pqcrypto absent: the daemon stops at start-up with the fix, before it
    touches WireGuard (it would otherwise fail at the first handshake, every 120 s)."""
    keyed = materialize_keys(EXAMPLE, tmp_path, ["plant-a", "plant-b"])
    sites = keyed.topology / "sites.yaml"
    anchor = "    description: Pumping station\n"
    sites.write_text(sites.read_text().replace(anchor, anchor + "    code_kem: hqc-128\n"))
    hide = tmp_path / "hide"
    (hide / "pqcrypto").mkdir(parents=True)
    (hide / "pqcrypto" / "__init__.py").write_text("raise ImportError('hidden by the test')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(hide), str(ROOT)]))
    argv = [sys.executable, "-m", "tunneld.cli", "--topology", str(keyed.topology)]
    argv += ["--node", "plant-a", "--keys", str(keyed.keys["plant-a"])]
    res = subprocess.run(argv, env=env, capture_output=True, timeout=60, check=False)
    err = res.stderr.decode()
    assert res.returncode == 2, err
    assert "peer plant-b pins KEM suite ml-kem-768+hqc-128" in err
    assert "install the pq extra" in err


def test_user_profile_pins_the_suite_its_gateway_expects(plant_with_hqc: Path) -> None:
    """A user's profile carries the suite the gateway computes for that user: a user
    joining plant-b (code_kem: hqc-192) handshakes with three components."""
    topo = topology.load(plant_with_hqc).topology
    bundle = load_public(plant_with_hqc.parent / "keys" / "engineer-1" / "identity.pub")
    profile = prof.issue(topo, "engineer-1", bundle, NOW)
    suites = {g.site: g.kem for g in profile.gateways}
    gateway_view = {
        site: {p.name: p.kem for p in plan(topo, site, NOW).peers}.get("engineer-1")
        for site in suites
    }
    assert suites == gateway_view
    assert suites["plant-b"] == "ml-kem-768+hqc-192"


# -- wire format ---------------------------------------------------------------------


def test_every_suite_fits_the_transport_and_has_one_valid_length() -> None:
    sizes = {
        (name, t): m.message_size(t, p, PARAMS["ml-kem-1024"])
        for name, p in PARAMS.items()
        for t in (m.INIT_HELLO, m.RESP_HELLO)
    }
    assert max(sizes.values()) == m.MAX_MESSAGE_SIZE == 17681 <= m.FRAME_LIMIT
    assert sizes[("ml-kem-1024+hqc-256", m.RESP_HELLO)] == m.MAX_MESSAGE_SIZE
    assert len({p.wire_id for p in PARAMS.values()}) == len(PARAMS)


def test_a_three_part_suite_is_never_a_static_kem_on_the_wire() -> None:
    """Identity keys are ML-KEM: a header naming an HQC suite as the static KEM is
    rejected by the decoder, before any state or cryptography."""
    eph, bad_static = PARAMS["ml-kem-768"], PARAMS["ml-kem-768+hqc-128"]
    data = bytearray(m.message_size(m.INIT_HELLO, eph, bad_static))
    data[0:4] = bytes([m.INIT_HELLO, m.VERSION, eph.wire_id, bad_static.wire_id])
    with pytest.raises(m.DecodeError, match="not an identity KEM"):
        m.decode(bytes(data))


@pytest.fixture(scope="module")
def plant_conduit_hqc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example plant with two conduits asking for HQC: the site-to-site SCADA one
    (hqc-256) and the engineers' one into plant-b (hqc-128); no site asks."""
    base = tmp_path_factory.mktemp("plant-conduit-hqc")
    keyed = materialize_keys(EXAMPLE, base, ["plant-a", "plant-b", "engineer-1", "shift-lead-1"])
    conduits = keyed.topology / "conduits.yaml"
    text = conduits.read_text()
    for anchor, code in (
        (
            "    description: Site-to-site - plant-b's SCADA polls plant-a's control zone\n",
            "hqc-256",
        ),
        ("    to: {zone: plant-b/control}\n", "hqc-128"),
    ):
        assert anchor in text
        text = text.replace(anchor, anchor + f"    code_kem: {code}\n")
    conduits.write_text(text)
    return keyed.topology


def test_conduit_pins_the_third_component_of_the_tunnels_that_carry_it(
    plant_conduit_hqc: Path,
) -> None:
    topo = topology.load(plant_conduit_hqc).topology
    assert topo.conduits["plant-b-scada-reads-a"].code_kem == "hqc-256"
    a_view = {p.name: p.kem for p in plan(topo, "plant-a", NOW).peers}
    b_view = {p.name: p.kem for p in plan(topo, "plant-b", NOW).peers}
    # The site-to-site conduit pins the pair, seen the same from both ends.
    assert a_view["plant-b"] == b_view["plant-a"] == "ml-kem-768+hqc-256"
    # engineer-1 reaches plant-b through the hqc-128 conduit, plant-a through others.
    assert b_view["engineer-1"] == "ml-kem-768+hqc-128"
    assert a_view["engineer-1"] == "ml-kem-768"
    # shift-lead-1 has no conduit into plant-b with code_kem: two components everywhere.
    assert a_view["shift-lead-1"] == "ml-kem-768"
    bundle = load_public(plant_conduit_hqc.parent / "keys" / "engineer-1" / "identity.pub")
    profile = prof.issue(topo, "engineer-1", bundle, NOW)
    assert {g.site: g.kem for g in profile.gateways} == {
        "plant-a": "ml-kem-768",
        "plant-b": "ml-kem-768+hqc-128",
    }
