"""Modbus/TCP framing and strict request decoding, written for a security boundary.

Why not pymodbus's framer and PDU classes: they are built to talk to devices, not to
stand between them. Its framer resynchronises after a bad header (skips bytes until
something parses), its request decoders read the fields they need and ignore the rest
(trailing bytes, a byte count that disagrees with the quantity or with the MBAP
length), and its function table accepts codes a conduit never names. Each of those is a
place where the gateway and the PLC could read one byte stream as two different
requests. Here every ADU must be exactly what its function code says it is, or the
connection is reset: no resynchronisation, no guessing.

Limits from the Modbus Application Protocol v1.1b3: an ADU is at most 260 bytes (MBAP
7 + PDU 253), so the MBAP length field is 2..254 and the protocol id is 0.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

from topology.modbus import (
    ILLEGAL_DATA_ADDRESS,
    ILLEGAL_DATA_VALUE,
    ILLEGAL_FUNCTION,
    Access,
    ModbusRequest,
)

MBAP = struct.Struct(">HHHB")  # transaction id, protocol id, length, unit id
MAX_ADU = 260
MAX_LENGTH = MAX_ADU - 6  # the length field counts the unit id and the PDU
_ADDR_QTY = struct.Struct(">HH")
_MULTI = struct.Struct(">HHB")
_RW = struct.Struct(">HHHHB")

READ_TABLES = {1: "coils", 2: "discrete_inputs", 3: "holding_registers", 4: "input_registers"}
READ_LIMIT = {1: 2000, 2: 2000, 3: 125, 4: 125}


class FrameError(ValueError):
    """The byte stream is not Modbus/TCP: the connection is reset."""


@dataclass(frozen=True)
class Adu:
    tid: int
    unit: int
    pdu: bytes

    def reply(self, pdu: bytes) -> bytes:
        return MBAP.pack(self.tid, 0, len(pdu) + 1, self.unit) + pdu

    def exception(self, code: int) -> bytes:
        return self.reply(bytes([(self.pdu[0] | 0x80) & 0xFF, code]))


class Framer:
    """Cuts a byte stream into ADUs by the MBAP length; holds at most one partial ADU."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def feed(self, data: bytes) -> Iterator[tuple[Adu, bytes]]:
        """Complete ADUs (decoded, raw bytes) in order; raises FrameError on bad framing."""
        buf = self.buf
        buf += data
        pos = 0
        end = len(buf)
        while end - pos >= MBAP.size:
            tid, proto, length, unit = MBAP.unpack_from(buf, pos)
            if proto != 0:
                raise FrameError(f"protocol id {proto}, not 0 (Modbus)")
            if not 2 <= length <= MAX_LENGTH:
                raise FrameError(f"MBAP length {length} outside 2-{MAX_LENGTH}")
            stop = pos + 6 + length
            if stop > end:
                break
            raw = bytes(buf[pos:stop])
            yield Adu(tid, unit, raw[MBAP.size :]), raw
            pos = stop
        del buf[:pos]

    @property
    def pending(self) -> int:
        return len(self.buf)


@dataclass(frozen=True)
class Refusal:
    """A well-framed request refused before any policy: the exception it gets."""

    function: int
    exception: int
    reason: str


def _exact(pdu: bytes, n: int) -> None:
    if len(pdu) != n:
        raise FrameError(f"function {pdu[0]} needs a {n}-byte PDU, got {len(pdu)}")


def _address_span(fc: int, address: int, qty: int, limit: int) -> Refusal | None:
    if not 1 <= qty <= limit:
        return Refusal(fc, ILLEGAL_DATA_VALUE, f"quantity {qty} outside 1-{limit}")
    if address + qty > 0x10000:
        return Refusal(fc, ILLEGAL_DATA_ADDRESS, f"address {address}+{qty} past 65535")
    return None


def decode_request(adu: Adu) -> ModbusRequest | Refusal:
    """The request an ADU carries, strictly; FrameError when the PDU's own lengths lie."""
    pdu, unit = adu.pdu, adu.unit
    fc = pdu[0]
    if fc in READ_TABLES:
        _exact(pdu, 5)
        address, qty = _ADDR_QTY.unpack_from(pdu, 1)
        bad = _address_span(fc, address, qty, READ_LIMIT[fc])
        if bad:
            return bad
        return ModbusRequest(unit, fc, (Access("read", READ_TABLES[fc], address, qty),))
    if fc in (5, 6):
        _exact(pdu, 5)
        address, value = _ADDR_QTY.unpack_from(pdu, 1)
        if fc == 5:
            if value not in (0x0000, 0xFF00):
                return Refusal(fc, ILLEGAL_DATA_VALUE, f"coil value {value:#06x}")
            return ModbusRequest(unit, fc, (Access("write", "coils", address, 1, (value >> 15,)),))
        return ModbusRequest(
            unit, fc, (Access("write", "holding_registers", address, 1, (value,)),)
        )
    if fc in (15, 16):
        if len(pdu) < 6:
            raise FrameError(f"function {fc} PDU of {len(pdu)} bytes")
        address, qty, count = _MULTI.unpack_from(pdu, 1)
        limit = 1968 if fc == 15 else 123
        need = (qty + 7) // 8 if fc == 15 else 2 * qty
        if count != need or len(pdu) != 6 + count:
            raise FrameError(f"function {fc}: quantity {qty}, byte count {count}, {len(pdu)} bytes")
        bad = _address_span(fc, address, qty, limit)
        if bad:
            return bad
        body = pdu[6:]
        if fc == 15:
            values = tuple((body[i // 8] >> (i % 8)) & 1 for i in range(qty))
            return ModbusRequest(unit, fc, (Access("write", "coils", address, qty, values),))
        regs = struct.unpack(f">{qty}H", body)
        return ModbusRequest(unit, fc, (Access("write", "holding_registers", address, qty, regs),))
    if fc == 22:
        _exact(pdu, 7)
        address = _ADDR_QTY.unpack_from(pdu, 1)[0]
        return ModbusRequest(unit, fc, (Access("write", "holding_registers", address, 1, None),))
    if fc == 23:
        if len(pdu) < 10:
            raise FrameError(f"function 23 PDU of {len(pdu)} bytes")
        raddr, rqty, waddr, wqty, count = _RW.unpack_from(pdu, 1)
        if count != 2 * wqty or len(pdu) != 10 + count:
            raise FrameError(f"function 23: write quantity {wqty}, byte count {count}")
        bad = _address_span(fc, raddr, rqty, 125) or _address_span(fc, waddr, wqty, 121)
        if bad:
            return bad
        regs = struct.unpack(f">{wqty}H", pdu[10:])
        return ModbusRequest(
            unit,
            fc,
            (
                Access("write", "holding_registers", waddr, wqty, regs),
                Access("read", "holding_registers", raddr, rqty),
            ),
        )
    if fc == 8:
        if len(pdu) != 5:
            raise FrameError(f"function 8 PDU of {len(pdu)} bytes (sub-function and one word)")
        return ModbusRequest(unit, fc)
    if fc == 43:
        if len(pdu) != 4 or pdu[1] != 14:
            return Refusal(fc, ILLEGAL_FUNCTION, "only MEI type 14 (device identification)")
        return ModbusRequest(unit, fc)
    if fc == 21:
        _file_record(pdu)
        return ModbusRequest(unit, fc)
    return Refusal(fc, ILLEGAL_FUNCTION, f"function {fc} is not forwarded")


def _file_record(pdu: bytes) -> None:
    """Write File Record: byte count, then sub-requests of 7 bytes + 2 per record word."""
    if len(pdu) < 2 or pdu[1] != len(pdu) - 2 or not 9 <= pdu[1] <= 0xFB:
        raise FrameError("function 21: byte count disagrees with the PDU")
    pos = 2
    while pos < len(pdu):
        if len(pdu) - pos < 7 or pdu[pos] != 6:
            raise FrameError("function 21: bad sub-request")
        words = struct.unpack_from(">H", pdu, pos + 5)[0]
        pos += 7 + 2 * words
    if pos != len(pdu):
        raise FrameError("function 21: sub-requests overrun the PDU")


def check_reply(request_fc: int, pdu: bytes) -> int | None:
    """The exception code of a device reply (None if it is a normal reply)."""
    if not pdu:
        raise FrameError("empty reply PDU")
    if pdu[0] == (request_fc | 0x80):
        if len(pdu) != 2:
            raise FrameError("exception reply of wrong length")
        return pdu[1]
    if pdu[0] != request_fc:
        raise FrameError(f"reply function {pdu[0]} to request {request_fc}")
    return None
