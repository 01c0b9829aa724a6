from __future__ import annotations

import pytest

from policyd.flowlog.community_id import community_id
from tests.flowlog.community_id_vectors import VECTORS


@pytest.mark.parametrize(("proto", "saddr", "daddr", "sport", "dport", "seed0", "seed1"), VECTORS)
def test_published_vectors(
    proto: int, saddr: str, daddr: str, sport: int | None, dport: int | None, seed0: str, seed1: str
) -> None:
    assert community_id(saddr, daddr, proto, sport, dport) == seed0
    assert community_id(saddr, daddr, proto, sport, dport, seed=1) == seed1


def test_zeek_doc_example() -> None:
    assert community_id("1.2.3.4", "5.6.7.8", 6, 1122, 3344) == "1:wCb3OG7yAFWelaUydu0D+125CLM="


def test_both_directions_hash_the_same() -> None:
    a = community_id("10.1.1.5", "100.64.1.1", 6, 502, 40000)
    assert a == community_id("100.64.1.1", "10.1.1.5", 6, 40000, 502)
    assert a != community_id("100.64.1.1", "10.1.1.5", 17, 40000, 502)
