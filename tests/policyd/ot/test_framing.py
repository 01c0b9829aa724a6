"""Framing and strict decoding: what the tier forwards is exactly what it checked."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policyd.ot.framing import MBAP, Adu, FrameError, Framer, Refusal, check_reply, decode_request
from topology.modbus import ILLEGAL_DATA_VALUE, ILLEGAL_FUNCTION, Access
from zonegate.lab.modbus_device import read, request, write_coil, write_register, write_registers

ADUS = st.one_of(
    st.builds(
        read,
        st.integers(0, 0xFFFF),
        st.sampled_from([1, 2, 3, 4]),
        st.integers(0, 60000),
        st.integers(1, 100),
    ),
    st.builds(
        write_register, st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.integers(0, 0xFFFF)
    ),
    st.builds(write_coil, st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.booleans()),
    st.builds(
        write_registers,
        st.integers(0, 0xFFFF),
        st.integers(0, 60000),
        st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=123),
    ),
)


@given(st.lists(ADUS, min_size=1, max_size=8), st.data())
def test_any_cut_of_the_stream_gives_the_same_adus(adus: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(adus)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    framer = Framer()
    got = []
    prev = 0
    for cut in [*cuts, len(stream)]:
        got.extend(raw for _, raw in framer.feed(stream[prev:cut]))
        prev = cut
    assert got == adus
    assert framer.pending == 0


@given(st.binary(min_size=0, max_size=300))
def test_garbage_is_either_framed_exactly_or_refused(blob: bytes) -> None:
    """Never a silent resynchronisation: each ADU consumed is its MBAP length exactly."""
    framer = Framer()
    try:
        out = list(framer.feed(blob))
    except FrameError:
        return
    assert sum(len(raw) for _, raw in out) + framer.pending == len(blob)
    for adu, raw in out:
        assert MBAP.unpack_from(raw)[1] == 0 and len(raw) <= 260 and raw.endswith(adu.pdu)


@pytest.mark.parametrize(
    "raw",
    [
        "0001 0001 0006 01 03 0000 0001",  # protocol id 1
        "0001 0000 0001 01",  # no PDU
        "0001 0000 00ff 01",  # 255 > 254
    ],
)
def test_bad_headers(raw: str) -> None:
    with pytest.raises(FrameError):
        list(Framer().feed(bytes.fromhex(raw)))


def adu(pdu_hex: str, unit: int = 1) -> Adu:
    return Adu(1, unit, bytes.fromhex(pdu_hex))


@pytest.mark.parametrize(
    "pdu",
    [
        "03 0000 0001 00",  # trailing byte after a read
        "03 0000",  # short read
        "10 000a 0001 04 0001 0002",  # byte count 4 for one register
        "10 000a 0002 04 0001",  # byte count says 4, two bytes follow
        "0f 0000 0009 01 ff",  # 9 coils need 2 bytes
        "06 0001 0002 03",  # single write with a trailing byte
        "17 0000 0001 0000 0001 02 00",  # 23: byte count 2, one byte
        "08 0000",  # diagnostics without data
        "15 05 06 0000 0000 00",  # file record: byte count disagrees
    ],
)
def test_pdus_that_lie_about_their_length_are_frame_errors(pdu: str) -> None:
    with pytest.raises(FrameError):
        decode_request(adu(pdu))


def test_decoded_requests() -> None:
    got = decode_request(Adu(1, 1, write_registers(1, 100, [7, 8])[7:]))
    assert not isinstance(got, Refusal)
    assert got.accesses == (Access("write", "holding_registers", 100, 2, (7, 8)),)
    got = decode_request(adu("0f 0010 000a 02 ff 01"))
    assert not isinstance(got, Refusal)
    assert got.accesses[0].values == (1,) * 8 + (1, 0)
    got = decode_request(adu("17 0001 0002 0064 0001 02 002a"))
    assert not isinstance(got, Refusal)
    assert [a.kind for a in got.accesses] == ["write", "read"]
    assert decode_request(Adu(1, 1, write_coil(1, 5, True)[7:])) != decode_request(
        Adu(1, 1, write_coil(1, 5, False)[7:])
    )


@pytest.mark.parametrize(
    ("pdu", "code"),
    [
        ("05 0001 1234", ILLEGAL_DATA_VALUE),  # coil value neither 0 nor ff00
        ("03 0000 0000", ILLEGAL_DATA_VALUE),
        ("01 0000 07d1", ILLEGAL_DATA_VALUE),  # 2001 coils
        ("2b 0d 00 00", ILLEGAL_FUNCTION),
        ("07", ILLEGAL_FUNCTION),
        ("5a 01", ILLEGAL_FUNCTION),
        ("83 0000 0001", ILLEGAL_FUNCTION),  # an exception code as a request
    ],
)
def test_refusals(pdu: str, code: int) -> None:
    got = decode_request(adu(pdu))
    assert isinstance(got, Refusal) and got.exception == code


def test_exception_reply_echoes_the_transaction() -> None:
    a = Adu(0x1234, 7, bytes.fromhex("06 0001 0002"))
    assert a.exception(2) == struct.pack(">HHHB", 0x1234, 0, 3, 7) + bytes([0x86, 2])


def test_check_reply() -> None:
    assert check_reply(3, bytes.fromhex("03 02 0000")) is None
    assert check_reply(3, bytes.fromhex("83 02")) == 2
    with pytest.raises(FrameError):
        check_reply(3, bytes.fromhex("04 02 0000"))
    with pytest.raises(FrameError):
        check_reply(3, bytes.fromhex("83 02 00"))


def test_request_builder_round_trip() -> None:
    (got,) = [a for a, _ in Framer().feed(request(9, 3, bytes.fromhex("03 0001 0001")))]
    assert (got.tid, got.unit, got.pdu) == (9, 3, bytes.fromhex("03 0001 0001"))
