"""WireGuard adapter against real wireguard-go in two network namespaces."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Iterator
from ipaddress import IPv4Interface, IPv4Network

import pytest

from tests.tunneld.nsutil import Pair, need, ns_pair, ping
from tunneld.keys import wg_public_key
from tunneld.links import LinkSpec, reconcile_link
from tunneld.wg import InterfaceSpec, PeerSpec, WireGuard

pytestmark = pytest.mark.root


class Side:
    def __init__(self, ns: str, ifname: str, underlay: str, overlay: str) -> None:
        self.wg = WireGuard(ifname, netns=ns)
        self.priv = secrets.token_bytes(32)
        self.pub = wg_public_key(self.priv)
        self.underlay = underlay
        self.overlay = overlay

    def peer_spec(self) -> PeerSpec:
        return PeerSpec(self.pub, (f"{self.overlay}/32",), f"{self.underlay}:51820")

    def spec(self, other: Side) -> InterfaceSpec:
        return InterfaceSpec(self.priv, 51820, (other.peer_spec(),))


@pytest.fixture
def tunnel() -> Iterator[tuple[Pair, Side, Side]]:
    need("wireguard-go", "wireguard-go")
    need("wg", "wireguard-tools")
    with ns_pair() as pair:
        a = Side(pair.a, pair.ifname("wa"), pair.ip_a, "100.64.0.1")
        b = Side(pair.b, pair.ifname("wb"), pair.ip_b, "100.64.0.2")
        try:
            for side, other in ((a, b), (b, a)):
                side.wg.create()
                side.wg.reconcile(side.spec(other))
                reconcile_link(
                    LinkSpec(
                        side.wg.ifname,
                        (IPv4Interface(f"{side.overlay}/32"),),
                        (IPv4Network(f"{other.overlay}/32"),),
                    ),
                    netns=side.wg.netns,
                )
            yield pair, a, b
        finally:
            a.wg.destroy()
            b.wg.destroy()


def test_new_peer_has_random_psk_and_no_traffic(tunnel: tuple[Pair, Side, Side]) -> None:
    pair, a, b = tunnel
    assert a.wg.backend == "wireguard-go"
    peer = a.wg.show_dump().peers[b.pub]
    assert peer.psk is not None  # random PSK, never "(none)"
    assert not ping(pair.a, b.overlay, timeout=2.0)


def test_same_psk_carries_traffic_and_expiry_cuts_it(tunnel: tuple[Pair, Side, Side]) -> None:
    pair, a, b = tunnel
    psk = secrets.token_bytes(32)
    a.wg.set_psk(b.pub, psk)
    b.wg.set_psk(a.pub, psk)
    assert a.wg.show_dump().peers[b.pub].psk == psk
    assert ping(pair.a, b.overlay)
    a.wg.expire_psk(b.peer_spec())
    dump = a.wg.show_dump().peers[b.pub]
    assert dump.psk != psk and dump.latest_handshake == 0  # sessions dropped
    assert not ping(pair.a, b.overlay, timeout=2.0)


def test_reconcile_changes_only_what_differs(tunnel: tuple[Pair, Side, Side]) -> None:
    pair, a, b = tunnel
    psk = secrets.token_bytes(32)
    a.wg.set_psk(b.pub, psk)
    b.wg.set_psk(a.pub, psk)
    assert ping(pair.a, b.overlay)
    assert a.wg.reconcile(a.spec(b)) == []  # reload without change: nothing touched
    wider = PeerSpec(b.pub, ("100.64.0.2/32", "10.20.1.0/24"), f"{b.underlay}:51820")
    changes = a.wg.reconcile(InterfaceSpec(a.priv, 51820, (wider,)))
    assert [c.kind for c in changes] == ["update"]
    after = a.wg.show_dump().peers[b.pub]
    assert after.psk == psk and after.latest_handshake > 0  # session and PSK survived
    assert ping(pair.a, b.overlay, timeout=3.0)
    stranger = PeerSpec(secrets.token_bytes(32), ("100.64.9.9/32",))
    kinds = sorted(c.kind for c in a.wg.reconcile(InterfaceSpec(a.priv, 51820, (stranger,))))
    assert kinds == ["add", "remove"]
    assert set(a.wg.show_dump().peers) == {stranger.public_key}


def test_link_reconcile_is_idempotent(tunnel: tuple[Pair, Side, Side]) -> None:
    _, a, _ = tunnel
    spec = LinkSpec(a.wg.ifname, (IPv4Interface("100.64.0.1/32"),), (IPv4Network("100.64.0.2/32"),))
    assert reconcile_link(spec, netns=a.wg.netns) == []
    more = LinkSpec(spec.ifname, spec.addresses, (*spec.routes, IPv4Network("10.20.1.0/24")))
    assert reconcile_link(more, netns=a.wg.netns) == [f"route add 10.20.1.0/24 dev {spec.ifname}"]
    assert reconcile_link(spec, netns=a.wg.netns) == [f"route del 10.20.1.0/24 dev {spec.ifname}"]


def test_wg_set_path_keeps_secrets_off_argv(
    tunnel: tuple[Pair, Side, Side], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The `wg set` path (used for kernel WireGuard) works and puts no key on argv."""
    pair, a, b = tunnel
    seen: list[list[str]] = []
    real_run = WireGuard._run

    def spy(self: WireGuard, args: list[str], stdin: bytes | None = None) -> str:
        seen.append(list(args))
        return real_run(self, args, stdin)

    monkeypatch.setattr(WireGuard, "_run", spy)
    a.wg.use_uapi = b.wg.use_uapi = False
    psk = secrets.token_bytes(32)
    a.wg.set_psk(b.pub, psk)
    b.wg.set_psk(a.pub, psk)
    assert ping(pair.a, b.overlay)
    flat = " ".join(" ".join(x) for x in seen)
    assert base64.b64encode(psk).decode() not in flat and psk.hex() not in flat
    assert "/dev/stdin" in flat
