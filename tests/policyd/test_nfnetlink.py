"""The shared nfnetlink core: attributes packed and walked back, nested, and cut short."""

from __future__ import annotations

import socket
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policyd.flowlog import conntrack
from policyd.nfnetlink import (
    NFNL_HDRLEN,
    NLA_F_NESTED,
    MalformedNetlink,
    attr,
    attrs,
    be32,
    be64,
    iter_attrs,
    messages,
    nest,
    nfnl_message,
    parse_attrs,
    strz,
)

kinds = st.integers(min_value=0, max_value=0x3FFF)
payloads = st.binary(max_size=40)
attr_lists = st.lists(st.tuples(kinds, payloads), max_size=12)


@given(attr_lists)
def test_packed_attributes_walk_back_in_order_with_padding(items: list[tuple[int, bytes]]) -> None:
    data = b"".join(attr(kind, payload) for kind, payload in items)
    assert len(data) % 4 == 0
    assert [(k, data[s:e]) for k, s, e in iter_attrs(data)] == items
    assert parse_attrs(data) == dict(items)  # the last of a repeated type wins
    assert {k: data[s:e] for k, (s, e) in attrs(data, 0, len(data)).items()} == dict(items)


def test_nested_attributes_keep_the_flag_on_the_wire_and_walk_by_offsets() -> None:
    data = nest(1, strz(2, "zonegate"), nest(3, be32(4, 0x5A000001), be64(5, 7)), attr(6, b"x"))
    assert struct.unpack_from("=HH", data)[1] == 1 | NLA_F_NESTED
    top = attrs(data, 0, len(data))
    assert list(top) == [1]  # the flag is stripped from the type
    inner = attrs(data, *top[1])
    assert data[slice(*inner[2])] == b"zonegate\0"
    assert data[slice(*inner[6])] == b"x"
    deeper = attrs(data, *inner[3])
    assert data[slice(*deeper[4])] == b"\x5a\x00\x00\x01"
    assert int.from_bytes(data[slice(*deeper[5])], "big") == 7


@given(attr_lists.filter(bool), st.data())
def test_a_cut_attribute_is_rejected_never_read_past_the_cut(
    items: list[tuple[int, bytes]], data: st.DataObject
) -> None:
    packed = [attr(kind, payload) for kind, payload in items]
    whole = b"".join(packed)
    cut = data.draw(st.integers(min_value=0, max_value=len(whole) - 1))
    bounds, pos = [], 0
    for part in packed:
        bounds.append((pos, pos + struct.unpack_from("=H", part)[0]))
        pos += len(part)
    kept = [item for item, (_, stop) in zip(items, bounds, strict=True) if stop <= cut]
    cut_inside = any(start + 4 <= cut < stop for start, stop in bounds)
    buf = whole + b"\xff" * 64  # what follows the cut must never be read as payload
    if cut_inside:
        with pytest.raises(MalformedNetlink, match="attribute at offset"):
            attrs(buf, 0, cut)
        with pytest.raises(MalformedNetlink):
            list(iter_attrs(buf, 0, cut))
    else:  # cut at a boundary, or inside the next 4-byte header: nothing of it is read
        assert [(k, buf[s:e]) for k, s, e in iter_attrs(buf, 0, cut)] == kept


def test_an_attribute_shorter_than_its_header_is_rejected_not_looped_on() -> None:
    with pytest.raises(MalformedNetlink, match="length 0"):
        attrs(struct.pack("=HH", 0, 1) + b"\0" * 8, 0, 12)
    with pytest.raises(MalformedNetlink, match="length 3"):
        parse_attrs(struct.pack("=HH", 3, 1) + b"\0" * 4)


def test_message_header_and_nfgenmsg_layout() -> None:
    msg = nfnl_message(4, 1, 0x5, socket.AF_INET, 7, attr(1, b"\x01"), seq=42)
    length, kind, flags, seq, pid = struct.unpack_from("=IHHII", msg)
    assert (length, kind, flags, seq, pid) == (len(msg), (4 << 8) | 1, 0x5, 42, 0)
    assert msg[16:20] == bytes([socket.AF_INET, 0, 0, 7])  # res_id in network order
    assert parse_attrs(msg[NFNL_HDRLEN:]) == {1: b"\x01"}


def test_a_cut_datagram_is_rejected_and_the_conntrack_decoder_says_so() -> None:
    msg = nfnl_message(1, 2, 0, socket.AF_INET, 0, nest(1, nest(1, attr(1, b"\0" * 4))))
    assert [(k, s, e) for k, _f, s, e in messages(msg, len(msg))] == [(0x102, 0, len(msg))]
    with pytest.raises(MalformedNetlink, match="message at offset 0"):
        list(messages(msg, len(msg) - 4))
    # the header says more than the kernel delivered inside the message: a clear error
    inner = bytearray(msg)
    struct.pack_into("=H", inner, NFNL_HDRLEN, 200)
    with pytest.raises(MalformedNetlink, match=f"attribute at offset {NFNL_HDRLEN}"):
        conntrack.decode_datagram(inner, len(inner))
