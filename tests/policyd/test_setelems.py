"""The nfnetlink element encoder, byte for byte, and when it hands over to libnftables."""

from __future__ import annotations

import struct
from typing import Any

import pytest

from policyd import nfnetlink as nfnl
from policyd.setelems import MAX_ELEMENTS, SetInfo, encode, parse_set

HASH = SetInfo(ipv4=True, interval=False, timeout=True)
INTERVAL = SetInfo(ipv4=True, interval=True, timeout=True)

# What `nft add element inet t z { 10.1.2.0/24 timeout 30s }` sends (strace of nft 1.0.6):
# start key with the timeout, then the address after the block flagged INTERVAL_END.
# libnftables numbers the second nest 2; the kernel ignores nest numbers, we write 1.
LIBNFTABLES_PREFIX = (
    b"\x1c\x00\x01\x80\x0c\x00\x04\x00\x00\x00\x00\x00\x00\x00\x75\x30"
    b"\x0c\x00\x01\x80\x08\x00\x01\x00\x0a\x01\x02\x00"
    b"\x18\x00\x01\x80\x08\x00\x03\x00\x00\x00\x00\x01"
    b"\x0c\x00\x01\x80\x08\x00\x01\x00\x0a\x01\x03\x00"
)


def test_prefix_with_timeout_matches_libnftables() -> None:
    el = {"elem": {"val": {"prefix": {"addr": "10.1.2.0", "len": 24}}, "timeout": 30}}
    assert encode(INTERVAL, [el], delete=False) == LIBNFTABLES_PREFIX


def test_plain_address_in_a_hash_set() -> None:
    got = encode(HASH, ["100.64.1.10"], delete=False)
    assert got == nfnl.nest(1, nfnl.nest(1, nfnl.attr(1, bytes([100, 64, 1, 10]))))


def test_address_in_an_interval_set_is_a_one_address_block() -> None:
    def key(last: int, flags: bytes = b"") -> bytes:
        value = nfnl.nest(1, nfnl.attr(1, bytes([10, 1, 3, last])))
        return nfnl.nest(1, *([nfnl.attr(3, flags)] if flags else []), value)

    got = encode(INTERVAL, ["10.1.3.7"], delete=False)
    assert got == key(7) + key(8, b"\0\0\0\1")


def test_delete_drops_the_timeout() -> None:
    el = {"elem": {"val": "100.64.1.10", "timeout": 60}}
    assert encode(HASH, [el], delete=True) == encode(HASH, ["100.64.1.10"], delete=False)


def test_a_comment_is_userdata_as_libnftnl_writes_it() -> None:
    got = encode(HASH, [{"elem": {"val": "100.64.1.10", "timeout": 5, "comment": "g1-ab"}}], False)
    assert got is not None and nfnl.attr(6, bytes([0, 6]) + b"g1-ab\0") in got


def test_range_end_is_exclusive() -> None:
    got = encode(INTERVAL, [{"range": ["10.0.0.5", "10.0.0.9"]}], delete=True)
    assert got is not None and b"\x0a\x00\x00\x05" in got and b"\x0a\x00\x00\x0a" in got


@pytest.mark.parametrize(
    ("info", "elements"),
    [
        (SetInfo(ipv4=False, interval=False, timeout=False), ["100.64.1.10"]),  # not ipv4_addr
        (HASH, ["zg*"]),  # ifname
        (HASH, ["fd00::1"]),
        (HASH, [{"prefix": {"addr": "10.0.0.0", "len": 8}}]),  # a block needs an interval set
        (INTERVAL, [{"prefix": {"addr": "0.0.0.0", "len": 0}}]),  # no end key to write
        (HASH, [{"elem": {"val": "100.64.1.10", "comment": "\u00e9"}}]),  # not ASCII
        (HASH, [{"elem": {"val": "100.64.1.10", "comment": "x" * 200}}]),  # too long
        (HASH, [{"elem": {"val": "100.64.1.10", "timeout": "1h"}}]),
        (
            SetInfo(ipv4=True, interval=False, timeout=False),
            [{"elem": {"val": "1.2.3.4", "timeout": 5}}],
        ),
        (HASH, ["1.2.3.4"] * (MAX_ELEMENTS + 1)),
    ],
)
def test_left_to_libnftables(info: SetInfo, elements: list[Any]) -> None:
    assert encode(info, elements, delete=False) is None


def test_parse_set_reads_key_type_and_flags() -> None:
    def reply(flags: int, key_type: int, key_len: int) -> dict[int, bytes]:
        body = (
            nfnl.strz(1, "zonegate")
            + nfnl.strz(2, "zgrant_x")
            + nfnl.be32(3, flags)
            + nfnl.be32(4, key_type)
            + nfnl.be32(5, key_len)
        )
        return nfnl.parse_attrs(body)

    assert parse_set(reply(0x14, 7, 4)) == SetInfo(ipv4=True, interval=True, timeout=True)
    assert parse_set(reply(0x10, 7, 4)) == SetInfo(ipv4=True, interval=False, timeout=True)
    assert not parse_set(reply(0x08, 7, 4)).ipv4  # a map
    assert not parse_set(reply(0x04, 0x1C, 16)).ipv4  # ipv6_addr


def test_attributes_are_padded() -> None:
    a = nfnl.strz(2, "ids")  # 4 header + 4 payload
    b = nfnl.strz(2, "ids_x")  # 4 + 6 -> padded to 12
    assert len(a) == 8 and len(b) == 12
    assert struct.unpack_from("=H", b)[0] == 10
    assert nfnl.parse_attrs(b + a) == {2: b"ids\0"}  # last one of a type wins
