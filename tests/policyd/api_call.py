"""Call policyd's API from an identity's overlay address: `api_call.py SRC METHOD URL [JSON]`.

Prints one JSON line: {"status": N, "body": ...}. Binding SRC stands in for the
tunnel: on a real user machine the WireGuard interface has only that address.
"""

from __future__ import annotations

import asyncio
import json
import sys

import aiohttp


async def main() -> None:
    src, method, url = sys.argv[1:4]
    body = json.loads(sys.argv[4]) if len(sys.argv) > 4 else None
    connector = aiohttp.TCPConnector(local_addr=(src, 0))
    async with (
        aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=5)) as s,
        s.request(method, url, json=body) as r,
    ):
        print(json.dumps({"status": r.status, "body": await r.json(content_type=None)}))


asyncio.run(main())
