"""The witness device executes every ADU it receives: pipelined, split, over UDP."""

from __future__ import annotations

import asyncio
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from zonegate.lab import modbus_device as md


@pytest.fixture
def device(tmp_path: Path):  # type: ignore[no-untyped-def]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    journal = tmp_path / "journal.jsonl"
    argv = [sys.executable, "-m", "zonegate.lab.modbus_device", "--journal", str(journal)]
    argv += ["--bind", "127.0.0.1", "--port", str(port), "--udp", str(port)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield port, journal
    finally:
        proc.terminate()
        proc.wait(timeout=5)


def _exchange(port: int, chunks: list[bytes], replies: int) -> list[tuple[int, int, bytes]]:
    async def run() -> list[tuple[int, int, bytes]]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for chunk in chunks:
            writer.write(chunk)
            await writer.drain()
            await asyncio.sleep(0.01)  # separate segments
        data = b""
        while len(md.split_replies(data)) < replies:
            data += await asyncio.wait_for(reader.read(4096), 5)
        writer.close()
        return md.split_replies(data)

    return asyncio.run(run())


def test_pipelined_write_behind_a_read_is_executed(device: tuple[int, Path]) -> None:
    port, journal = device
    replies = _exchange(port, [md.read(1, address=10) + md.write_register(2, 10, 77)], 2)
    assert [tid for tid, _, _ in replies] == [1, 2]
    assert [e["function"] for e in md.read_journal(journal)] == [3, 6]
    replies = _exchange(port, [md.read(3, address=10)], 1)
    assert struct.unpack(">H", replies[0][2][2:4])[0] == 77


def test_write_split_byte_by_byte_is_executed(device: tuple[int, Path]) -> None:
    port, journal = device
    adu = md.write_registers(5, 100, [1, 2, 3])
    _exchange(port, [bytes([b]) for b in adu], 1)
    assert md.writes(journal) == [
        {
            "transport": "tcp",
            "peer": "127.0.0.1",
            "port": md.writes(journal)[0]["port"],
            "tid": 5,
            "unit": 1,
            "protocol": 0,
            "function": 16,
            "table": "holding_registers",
            "address": 100,
            "values": [1, 2, 3],
        }
    ]


def test_udp_datagram_with_two_adus_executes_both(device: tuple[int, Path]) -> None:
    port, journal = device
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.sendto(md.read(1) + md.write_coil(2, 4, True), ("127.0.0.1", port))
        got = [s.recvfrom(4096)[0] for _ in range(2)]
    assert len(got) == 2
    assert [e["function"] for e in md.read_journal(journal)] == [3, 5]


def test_unknown_function_is_an_exception_reply() -> None:
    reply, done = md.execute(md.Tables(), bytes([0x41, 0, 0]))
    assert reply == bytes([0xC1, 1]) and done["function"] == 0x41
