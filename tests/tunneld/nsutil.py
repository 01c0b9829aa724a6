"""Pairs of network namespaces for tunneld's root tests (built on tests.netns)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from tests.netns import Namespaces, need, ping, sh

__all__ = ["Pair", "in_ns", "need", "ns_pair", "ping", "sh"]


def in_ns(ns: str, *args: str, check: bool = True) -> str:
    return sh(*args, ns=ns, check=check)


@dataclass(frozen=True)
class Pair:
    """Two namespaces joined by a veth: a at 10.99.0.1, b at 10.99.0.2."""

    tag: str
    a: str
    b: str
    ip_a: str = "10.99.0.1"
    ip_b: str = "10.99.0.2"

    def ifname(self, suffix: str) -> str:
        name = f"zt{self.tag}{suffix}"
        assert len(name) <= 15
        return name


@contextmanager
def ns_pair() -> Iterator[Pair]:
    """A `Pair`; on exit every process left in it (wireguard-go, daemons) ends."""
    with Namespaces("zt") as nets:
        pair = Pair(nets.tag[2:], nets.add(nets.tag + "a"), nets.add(nets.tag + "b"))
        nets.veth(
            (pair.a, nets.tag + "va"),
            (pair.b, nets.tag + "vb"),
            [f"{pair.ip_a}/24"],
            [f"{pair.ip_b}/24"],
        )
        yield pair
