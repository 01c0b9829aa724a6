"""A Modbus device that executes every request it receives and writes down each one.

Enforcement tests need a witness: pymodbus's server drops the second request when two
ADUs arrive in one TCP segment, so it cannot prove that a smuggled write did not land.
This device frames the byte stream itself by the MBAP length (pipelined ADUs, ADUs split
across segments), executes every request against its own tables, answers it, and
appends one JSON line per executed request to a journal file. A test then reads the
journal (and the registers) to see what really reached the device.

Run as `python -m zonegate.lab.modbus_device --journal FILE [--bind ADDR] [--port 502]
[--udp 502]`; prints `ready` once listening, serves until SIGTERM/SIGINT.
Also holds the client-side helpers tests use to build raw requests (`request`, `read`,
`write_register`, ...), so a test can pipeline or split them at will.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MBAP = struct.Struct(">HHHB")  # transaction id, protocol id, length, unit id
TABLE_SIZE = 65536
READS = {1: "coils", 2: "discrete_inputs", 3: "holding_registers", 4: "input_registers"}


# --- requests as bytes (client side) ------------------------------------------------------


def request(tid: int, unit: int, pdu: bytes) -> bytes:
    """One Modbus/TCP ADU: MBAP header (length counts the unit id and the PDU) + PDU."""
    return MBAP.pack(tid, 0, len(pdu) + 1, unit) + pdu


def read(tid: int, fc: int = 3, address: int = 0, count: int = 1, unit: int = 1) -> bytes:
    return request(tid, unit, struct.pack(">BHH", fc, address, count))


def write_register(tid: int, address: int, value: int, unit: int = 1) -> bytes:
    return request(tid, unit, struct.pack(">BHH", 6, address, value))


def write_coil(tid: int, address: int, on: bool, unit: int = 1) -> bytes:
    return request(tid, unit, struct.pack(">BHH", 5, address, 0xFF00 if on else 0))


def write_registers(tid: int, address: int, values: list[int], unit: int = 1) -> bytes:
    body = b"".join(struct.pack(">H", v) for v in values)
    return request(tid, unit, struct.pack(">BHHB", 16, address, len(values), len(body)) + body)


def diagnostics(tid: int, sub: int = 0, data: int = 0, unit: int = 1) -> bytes:
    return request(tid, unit, struct.pack(">BHH", 8, sub, data))


def split_replies(data: bytes) -> list[tuple[int, int, bytes]]:
    """Complete replies in `data` as (transaction id, unit, PDU); a partial tail is ignored."""
    out = []
    while len(data) >= MBAP.size:
        tid, _, length, unit = MBAP.unpack_from(data)
        end = MBAP.size - 1 + length
        if len(data) < end:
            break
        out.append((tid, unit, data[MBAP.size : end]))
        data = data[end:]
    return out


# --- the device ---------------------------------------------------------------------------


@dataclass
class Tables:
    coils: bytearray = field(default_factory=lambda: bytearray(TABLE_SIZE))
    discrete_inputs: bytearray = field(default_factory=lambda: bytearray(TABLE_SIZE))
    holding_registers: list[int] = field(default_factory=lambda: [0] * TABLE_SIZE)
    input_registers: list[int] = field(default_factory=lambda: [0] * TABLE_SIZE)


def _exception(fc: int, code: int) -> bytes:
    return bytes([fc | 0x80, code])


def execute(tables: Tables, pdu: bytes) -> tuple[bytes, dict[str, Any]]:
    """Execute one request PDU; return the reply PDU and what was done (for the journal)."""
    fc = pdu[0] if pdu else 0
    done: dict[str, Any] = {"function": fc}
    try:
        if fc in READS:
            address, count = struct.unpack_from(">HH", pdu, 1)
            done |= {"table": READS[fc], "address": address, "count": count}
            if not 1 <= count <= 125 or address + count > TABLE_SIZE:
                return _exception(fc, 3), done
            if fc in (1, 2):
                bits = (tables.coils if fc == 1 else tables.discrete_inputs)[
                    address : address + count
                ]
                packed = bytearray((count + 7) // 8)
                for i, bit in enumerate(bits):
                    if bit:
                        packed[i // 8] |= 1 << (i % 8)
                return bytes([fc, len(packed)]) + bytes(packed), done
            regs = tables.holding_registers if fc == 3 else tables.input_registers
            values = regs[address : address + count]
            return bytes([fc, 2 * count]) + struct.pack(f">{count}H", *values), done
        if fc == 5:
            address, value = struct.unpack_from(">HH", pdu, 1)
            tables.coils[address] = 1 if value == 0xFF00 else 0
            done |= {"table": "coils", "address": address, "values": [value]}
            return pdu[:5], done
        if fc == 6:
            address, value = struct.unpack_from(">HH", pdu, 1)
            tables.holding_registers[address] = value
            done |= {"table": "holding_registers", "address": address, "values": [value]}
            return pdu[:5], done
        if fc == 15:
            address, count, _nbytes = struct.unpack_from(">HHB", pdu, 1)
            new_bits = bytes((pdu[6 + i // 8] >> (i % 8)) & 1 for i in range(count))
            tables.coils[address : address + count] = new_bits
            done |= {"table": "coils", "address": address, "count": count, "values": list(new_bits)}
            return pdu[:5], done
        if fc == 16:
            address, count, _nbytes = struct.unpack_from(">HHB", pdu, 1)
            values = list(struct.unpack_from(f">{count}H", pdu, 6))
            tables.holding_registers[address : address + count] = values
            done |= {"table": "holding_registers", "address": address, "values": values}
            return pdu[:5], done
        if fc == 8:
            done |= {"sub_function": struct.unpack_from(">H", pdu, 1)[0]}
            return pdu, done  # echo, as "return query data" does
    except (struct.error, IndexError, ValueError):
        return _exception(fc, 3), done | {"malformed": True}
    return _exception(fc, 1), done


class Device:
    """The tables and the journal; one per process, shared by its TCP and UDP servers."""

    def __init__(self, journal: Path) -> None:
        self.tables = Tables()
        self.journal = journal

    def handle(self, adu: bytes, peer: tuple[str, int], transport: str) -> bytes:
        tid, proto, _length, unit = MBAP.unpack_from(adu)
        reply, done = execute(self.tables, adu[MBAP.size :])
        entry = {"transport": transport, "peer": peer[0], "port": peer[1], "tid": tid, "unit": unit}
        entry |= {"protocol": proto} | done
        with self.journal.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry) + "\n")
        return MBAP.pack(tid, proto, len(reply) + 1, unit) + reply

    async def serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        try:
            while True:
                header = await reader.readexactly(MBAP.size)
                length = MBAP.unpack(header)[2]
                if length < 2:
                    break  # no PDU: a framing error ends the connection, as a device would
                adu = header + await reader.readexactly(length - 1)
                writer.write(self.handle(adu, peer, "tcp"))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            writer.close()


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, device: Device) -> None:
        self.device = device
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a datagram endpoint

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        # Every ADU in the datagram is executed, not only the first.
        while len(data) > MBAP.size and self.transport is not None:
            end = MBAP.size - 1 + MBAP.unpack_from(data)[2]
            if end > len(data) or end <= MBAP.size:
                return
            self.transport.sendto(self.device.handle(data[:end], addr, "udp"), addr)
            data = data[end:]


def read_journal(path: Path) -> list[dict[str, Any]]:
    """What the device executed, in order (empty when nothing reached it)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def writes(path: Path) -> list[dict[str, Any]]:
    """The executed requests that changed the device: function codes 5, 6, 15, 16."""
    return [e for e in read_journal(path) if e["function"] in (5, 6, 15, 16)]


async def serve(journal: Path, bind: str, port: int, udp: int | None) -> None:
    device = Device(journal)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = await asyncio.start_server(device.serve_tcp, bind, port)
    transport = None
    if udp is not None:
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Udp(device), local_addr=(bind, udp)
        )
    print("ready", flush=True)
    await stop.wait()
    server.close()
    if transport is not None:
        transport.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--journal", type=Path, required=True, help="JSON lines, one per request")
    parser.add_argument("--bind", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=502, help="Modbus/TCP port")
    parser.add_argument("--udp", type=int, metavar="PORT", help="also serve Modbus/UDP here")
    args = parser.parse_args()
    asyncio.run(serve(args.journal, args.bind, args.port, args.udp))


if __name__ == "__main__":
    main()
