"""A stand-in for a plant asset: a real Modbus/TCP server and TCP/UDP listeners.

Used by the emulated plant and the namespace tests, so policy is proven against real
protocol stacks: Modbus requests are real pymodbus ADUs, whose function codes the
gateway's kernel rules must match. Run as `python -m zonegate.lab.assetsim --modbus 502
--tcp 22 --tcp 443 --udp 34964 [--bind ADDR]`; it serves until killed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal

BANNER = b"zonegate-asset\n"


async def _banner(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Greet, then echo: a client proves the path both ways by reading the banner."""
    try:
        writer.write(BANNER)
        await writer.drain()
        while data := await reader.read(4096):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


class _UdpEcho(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a datagram endpoint

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.transport is not None:
            self.transport.sendto(BANNER + data, addr)


async def serve(bind: str, modbus_port: int | None, tcp: list[int], udp: list[int]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    servers = [await asyncio.start_server(_banner, bind, port) for port in tcp]
    transports = [
        (await loop.create_datagram_endpoint(_UdpEcho, local_addr=(bind, port)))[0] for port in udp
    ]
    modbus_task = None
    if modbus_port is not None:
        modbus_task = asyncio.create_task(_modbus(bind, modbus_port))
        await _listening("127.0.0.1" if bind == "0.0.0.0" else bind, modbus_port)
    print("ready", flush=True)
    await stop.wait()
    for server in servers:
        server.close()
    for transport in transports:
        transport.close()
    if modbus_task is not None:
        modbus_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await modbus_task


async def _listening(host: str, port: int, timeout: float = 20.0) -> None:
    """Wait until the port accepts, so 'ready' means every service really is."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection(host, port)
            writer.close()
            return
        except OSError:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.05)


async def _modbus(bind: str, port: int) -> None:
    from pymodbus.datastore import (
        ModbusDeviceContext,
        ModbusSequentialDataBlock,
        ModbusServerContext,
    )
    from pymodbus.server import StartAsyncTcpServer

    block = ModbusSequentialDataBlock(1, [0] * 100)  # addresses start at 1 in pymodbus 3.16
    device = ModbusDeviceContext(di=block, co=block, hr=block, ir=block)
    context = ModbusServerContext(devices=device, single=True)
    await StartAsyncTcpServer(context=context, address=(bind, port))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bind", default="0.0.0.0")
    parser.add_argument("--modbus", type=int, metavar="PORT", help="serve Modbus/TCP here")
    parser.add_argument("--tcp", type=int, action="append", default=[], metavar="PORT")
    parser.add_argument("--udp", type=int, action="append", default=[], metavar="PORT")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    asyncio.run(serve(args.bind, args.modbus, args.tcp, args.udp))


if __name__ == "__main__":
    main()
