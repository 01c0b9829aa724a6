"""Two tunneld daemons in two namespaces with real wireguard-go: the whole path."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.tunneld.netns_daemons import (
    INTERVAL,
    ROOT,
    Sites,
    both_up,
    rotations,
    send_raw,
    wait_for,
)
from tests.tunneld.nsutil import ping
from tunneld import messages as m
from tunneld.keys import keygen, load_public

pytestmark = pytest.mark.root


def test_tunnel_up_psk_rotates_and_traffic_flows(sites: Sites) -> None:
    both_up(sites)
    assert ping(sites.pair.a, "100.64.0.2"), sites.a.log_tail()
    first = sites.a.psk_digest()
    assert first == sites.b.psk_digest()
    n = rotations(sites.a)
    wait_for(lambda: rotations(sites.a) >= n + 2, 6 * INTERVAL, "two rotations", sites.a)
    wait_for(lambda: sites.a.psk_digest() == sites.b.psk_digest(), 5, "same PSK", sites.a)
    assert sites.a.psk_digest() != first
    assert ping(sites.pair.a, "100.64.0.2")
    peer = sites.a.peer()
    assert peer["role"] == "initiator" and peer["psk_age"] is not None
    text = subprocess.run(
        [sys.executable, "-m", "tunneld.cli", "status", "--socket", str(sites.a.sock)],
        capture_output=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        timeout=20,
        check=True,
    ).stdout.decode()
    assert "site-b" in text and "initiator" in text
    for site in ("site-a", "site-b"):  # fingerprints to compare over the phone
        assert load_public(sites.keys[site] / "identity.pub").fingerprint in text


@pytest.mark.sr("SR 1.1")
def test_wrong_identity_key_gets_no_psk_and_no_traffic(sites: Sites) -> None:
    impostor = sites.base / "keys" / "impostor"
    keygen(impostor)
    # a pins site-b's real keys; "site-b" runs with other keys (its own topology pins them).
    sites.a.start(sites.topology("a"), sites.keys["site-a"])
    sites.b.start(sites.topology("b", pin_b=impostor), impostor)
    wait_for(
        # Not charged to site-a: before MAC1 nobody is (the hello only claims site-a).
        lambda: int(str((sites.b.status() or {}).get("unattributed_failures", 0))) >= 1,
        20,
        "rejections at b",
        sites.a,
        sites.b,
    )
    assert rotations(sites.a) == 0 and rotations(sites.b) == 0
    assert sites.a.psk_digest() != sites.b.psk_digest()
    assert not ping(sites.pair.a, "100.64.0.2", timeout=3.0)
    st = sites.b.status()
    assert st is not None
    reasons = str(st["peers"]) + str(st["last_unattributed_failure"])
    assert "not addressed to this node" in reasons or "bad MAC1" in reasons, reasons


@pytest.mark.sr("SR 1.1", "SR 1.13")
def test_tampered_handshake_packets_are_rejected(sites: Sites) -> None:
    both_up(sites)
    before = rotations(sites.b)
    hello = bytearray(m.message_size(m.INIT_HELLO, *[m.PARAMS_BY_WIRE_ID[1]] * 2))
    hello[0:4] = bytes([m.INIT_HELLO, 1, 1, 1])
    garbage = [bytes(hello), b"\x07" * 60, bytes(hello[:100])]
    for frame in garbage:  # one connection each: the first rejected frame closes it
        send_raw(sites.pair.a, sites.pair.ip_b, [frame])

    def rejected() -> bool:
        st = sites.b.status()
        return st is not None and int(str(st["unattributed_failures"])) >= 3

    wait_for(rejected, 10, "three rejections", sites.b)
    st = sites.b.status()
    assert st is not None
    assert "InitHello" in str(st["last_unattributed_failure"]) or "truncated" in str(
        st["last_unattributed_failure"]
    )
    assert ping(sites.pair.a, "100.64.0.2")  # the real tunnel is unaffected
    assert rotations(sites.b) >= before


def test_restarting_one_side_recovers(sites: Sites) -> None:
    both_up(sites)
    sites.b.stop()
    assert not ping(sites.pair.a, "100.64.0.2", timeout=1.5)
    sites.b.start(sites.topology("shared"), sites.keys["site-b"])
    wait_for(lambda: rotations(sites.b) >= 1, 15, "PSK after restart", sites.a, sites.b)
    assert ping(sites.pair.a, "100.64.0.2"), sites.b.log_tail()


def test_three_component_tunnel_across_backends(sites: Sites) -> None:
    """X25519 + ML-KEM + HQC-256 pinned for the pair; site-a computes with pqcrypto,
    site-b with cryptography (ML-KEM) + pqcrypto (HQC). RespHello is 16.7 kB: the
    transport carries it; the tunnel comes up, rotates and carries traffic."""
    topo = sites.topology("hqc", code_kem_b="hqc-256")
    sites.a.start(topo, sites.keys["site-a"], kem_backend="pqcrypto")
    sites.b.start(topo, sites.keys["site-b"], kem_backend="cryptography")
    wait_for(lambda: rotations(sites.a) >= 2, 8 * INTERVAL, "two PSKs", sites.a, sites.b)
    assert sites.a.peer()["kem"] == sites.b.peer()["kem"] == "ml-kem-768+hqc-256"
    wait_for(lambda: sites.a.psk_digest() == sites.b.psk_digest(), 5, "same PSK", sites.a)
    assert ping(sites.pair.a, "100.64.0.2"), sites.a.log_tail()


def test_peer_without_the_third_component_gets_no_tunnel(sites: Sites) -> None:
    """site-b pins HQC; site-a's (stale) topology does not: no PSK, no traffic, and b
    says why. Nothing falls back to two components."""
    sites.a.start(sites.topology("a"), sites.keys["site-a"])
    sites.b.start(sites.topology("b", code_kem_b="hqc-128"), sites.keys["site-b"])
    wait_for(
        lambda: int(sites.b.peer()["failures"]) >= 2 if sites.b.status() else False,
        20,
        "rejections at b",
        sites.a,
        sites.b,
    )
    assert rotations(sites.a) == 0 and rotations(sites.b) == 0
    assert "ephemeral KEM is not ml-kem-768+hqc-128" in str(sites.b.peer()), sites.b.peer()
    assert sites.a.psk_digest() != sites.b.psk_digest()
    assert not ping(sites.pair.a, "100.64.0.2", timeout=3.0)
