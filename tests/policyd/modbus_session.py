"""One long Modbus/TCP session driven over stdin: each line 'read' or 'write' -> a JSON line.

Run inside the identity namespace: `modbus_session.py SRC DST`. Used to show that a
revoked grant ends a session that is already open, not only new ones.
"""

from __future__ import annotations

import json
import logging
import sys

from pymodbus.client import ModbusTcpClient

logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
src, dst = sys.argv[1], sys.argv[2]
client = ModbusTcpClient(dst, port=502, source_address=(src, 0), timeout=1.5, retries=0)
print(json.dumps({"connected": bool(client.connect())}), flush=True)
for line in sys.stdin:
    op = line.strip()
    try:
        reply = client.write_register(1, 7) if op == "write" else client.read_holding_registers(1)
        ok = not reply.isError()
    except Exception:
        ok = False
    print(json.dumps({"op": op, "ok": ok}), flush=True)
