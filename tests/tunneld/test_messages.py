"""Codec: exact lengths, strict headers, and no exception but DecodeError on any input."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunneld import messages as m
from tunneld.kem import ML_KEM_768, ML_KEM_1024

K768, K1024 = ML_KEM_768, ML_KEM_1024


def test_sizes_ml_kem_768() -> None:
    assert m.message_size(m.INIT_HELLO, K768, K768) == 2400
    assert m.message_size(m.RESP_HELLO, K768, K768) == 2300
    assert m.message_size(m.INIT_CONF) == 60
    assert m.message_size(m.RESP_CONF) == 60
    assert m.message_size(m.REKEY_REQUEST) == 60


def test_largest_message_fits_limit() -> None:
    assert m.message_size(m.INIT_HELLO, K1024, K1024) == 3264 <= m.MAX_MESSAGE_SIZE


def hello(eph: int = 1, static: int = 1) -> m.InitHello:
    a = {1: K768, 2: K1024}[eph]
    b = {1: K768, 2: K1024}[static]
    return m.InitHello(
        eph,
        static,
        7,
        b"I" * 16,
        b"R" * 16,
        123,
        b"x" * 32,
        b"p" * a.public_key_size,
        b"y" * 32,
        b"c" * b.ciphertext_size,
        b"M" * 16,
    )


SAMPLES: list[m.Message] = [
    hello(),
    hello(2, 1),
    m.RespHello(1, 2, 1, 2, b"x" * 32, b"c" * 1088, b"y" * 32, b"d" * 1568, b"T" * 32, b"M" * 16),
    m.InitConf(1, 2, b"T" * 32, b"M" * 16),
    m.RespConf(3, 4, b"T" * 32, b"M" * 16),
    m.RekeyRequest(b"I" * 16, b"R" * 16, 99, b"M" * 16),
]


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda x: type(x).__name__)
def test_roundtrip(msg: m.Message) -> None:
    assert m.decode(m.encode(msg)) == msg


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda d: d[:3], "truncated header"),
        (lambda d: d[:-1], "truncated"),
        (lambda d: d + b"\x00", "trailing data"),
        (lambda d: d + bytes(m.MAX_MESSAGE_SIZE), "oversized"),
        (lambda d: bytes([9]) + d[1:], "unknown message type"),
        (lambda d: d[:1] + bytes([2]) + d[2:], "unsupported version"),
        (lambda d: d[:2] + bytes([99]) + d[3:], "unknown KEM id"),
        (lambda d: b"", "truncated header"),
    ],
)
def test_rejects_with_reason(mutate: object, reason: str) -> None:
    data = m.encode(SAMPLES[0])
    with pytest.raises(m.DecodeError, match=reason):
        m.decode(mutate(data))  # type: ignore[operator]


def test_reserved_bytes_must_be_zero() -> None:
    data = bytearray(m.encode(SAMPLES[3]))
    data[3] = 1
    with pytest.raises(m.DecodeError, match="reserved"):
        m.decode(bytes(data))


@settings(max_examples=300)
@given(st.binary(max_size=5000))
def test_random_bytes_only_decode_error(data: bytes) -> None:
    try:
        m.decode(data)
    except m.DecodeError as exc:
        assert exc.reason


@settings(max_examples=300)
@given(st.sampled_from(SAMPLES), st.integers(0, 3300), st.integers(1, 255))
def test_single_byte_change_decodes_or_is_rejected(msg: m.Message, pos: int, x: int) -> None:
    data = bytearray(m.encode(msg))
    data[pos % len(data)] ^= x
    try:
        again = m.decode(bytes(data))
    except m.DecodeError:
        return
    assert again != msg
