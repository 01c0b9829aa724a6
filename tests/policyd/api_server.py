"""Serve the control API with the in-memory grant kernel, for load and abuse tests.

`api_server.py SOCKET HOST PORT [TOTAL PER_SOURCE HEADER_TIMEOUT]`: prints "ready"
once both listeners are up, then serves until killed. Every caller on HOST counts
as arriving through a tunnel; the identities are examples/plant's.
"""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime
from ipaddress import IPv4Address
from pathlib import Path

from policyd.api.app import serve
from policyd.api.context import ControlState
from policyd.api.guard import Guard, Limits
from policyd.grant_service import GrantService
from policyd.grants import GrantBook
from tests.policyd.fake_kernel import FakeKernel
from topology import load

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "plant"


async def main() -> None:
    sock, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    total, per_source, header = 1024, 64, 10.0
    if len(sys.argv) > 6:
        total, per_source, header = int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])

    book = GrantBook(load(EXAMPLE).topology)
    kernel = FakeKernel(lambda: book.topology, lambda: datetime.now(UTC))
    service = GrantService(book, kernel, lambda _e: None)

    async def anywhere(_a: IPv4Address) -> bool:
        return True

    state = ControlState(service=service, gateway="plant-a", via_tunnel=anywhere)
    guard = Guard(Limits(total=total, per_source=per_source, header_timeout=header))
    await serve(state, Path(sock), host, port, guard)
    print("ready", flush=True)
    await asyncio.Event().wait()


asyncio.run(main())
