"""Run inside a namespace: a zone's servers, or one client probe printing JSON.

nsprobe.py serve PORT...            pymodbus server on 502 (if listed) + TCP listeners
nsprobe.py modbus SRC DST read|write one Modbus/TCP request from SRC; {"ok": ...}
nsprobe.py tcp SRC DST PORT          connect and read the banner; {"ok": ...}
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time


def serve(ports: list[int]) -> None:
    for port in ports:
        if port == 502:
            continue
        srv = socket.create_server(("0.0.0.0", port), reuse_port=True)

        def loop(s: socket.socket = srv) -> None:
            while True:
                conn, _ = s.accept()
                conn.sendall(b"ok\n")
                conn.close()

        threading.Thread(target=loop, daemon=True).start()
    if 502 in ports:
        from pymodbus.datastore import (
            ModbusDeviceContext,
            ModbusSequentialDataBlock,
            ModbusServerContext,
        )
        from pymodbus.server import StartTcpServer

        block = ModbusSequentialDataBlock(1, [7] * 100)
        device = ModbusDeviceContext(hr=block, ir=block, co=block, di=block)
        ctx = ModbusServerContext(devices=device, single=True)
        threading.Thread(
            target=StartTcpServer, args=(ctx,), kwargs={"address": ("0.0.0.0", 502)}, daemon=True
        ).start()
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", 502), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
    print("ready", flush=True)
    while True:
        time.sleep(3600)


def modbus(src: str, dst: str, op: str) -> dict[str, object]:
    from pymodbus.client import ModbusTcpClient

    client = ModbusTcpClient(dst, port=502, source_address=(src, 0), timeout=1.5, retries=0)
    try:
        if not client.connect():
            return {"ok": False, "error": "connect failed"}
        if op == "read":
            rr = client.read_holding_registers(1, count=2)
        else:
            rr = client.write_register(1, 42)
        return {"ok": not rr.isError(), "result": str(rr)}
    except Exception as e:  # the probe reports, the test decides
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}
    finally:
        client.close()


def tcp(src: str, dst: str, port: int) -> dict[str, object]:
    try:
        s = socket.create_connection((dst, port), timeout=1.5, source_address=(src, 0))
        data = s.recv(16)
        s.close()
        return {"ok": data == b"ok\n"}
    except OSError as e:
        return {"ok": False, "error": str(e)}


def main() -> None:
    cmd = sys.argv[1]
    if cmd == "serve":
        serve([int(p) for p in sys.argv[2:]])
    elif cmd == "modbus":
        print(json.dumps(modbus(sys.argv[2], sys.argv[3], sys.argv[4])))
    elif cmd == "tcp":
        print(json.dumps(tcp(sys.argv[2], sys.argv[3], int(sys.argv[4]))))


if __name__ == "__main__":
    main()
