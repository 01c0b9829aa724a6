"""Run in the identity namespace: send raw Modbus/TCP bytes in chunks, report the answers.

`python ot_client.py --source ADDR --dst ADDR CHUNK_HEX...` connects from ADDR, sends each
chunk as its own segment (TCP_NODELAY, `--gap` seconds apart), reads until `--expect`
replies arrived, the peer closed or reset, or `--timeout`, and prints one JSON object:
{"connected", "replies": [[tid, unit, pdu_hex], ...], "reset", "eof"}.
"""

from __future__ import annotations

import argparse
import json
import socket
import time

from zonegate.lab.modbus_device import split_replies


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--source", required=True)
    p.add_argument("--dst", required=True)
    p.add_argument("--port", type=int, default=502)
    p.add_argument("--sport", type=int, default=0, help="source port (default: any)")
    p.add_argument("--gap", type=float, default=0.0)
    p.add_argument("--expect", type=int, default=1)
    p.add_argument("--timeout", type=float, default=3.0)
    p.add_argument("--again", type=float, help="after the answers, wait this long, send again")
    p.add_argument("chunks", nargs="+")
    a = p.parse_args()
    out: dict[str, object] = {"connected": False, "replies": [], "reset": False, "eof": False}
    try:
        s = socket.create_connection((a.dst, a.port), a.timeout, source_address=(a.source, a.sport))
    except OSError as exc:
        out["error"] = str(exc)
        print(json.dumps(out))
        return
    out["connected"] = True
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    data = bytearray()
    try:
        rounds = 1 if a.again is None else 2
        for n in range(rounds):
            if n:
                time.sleep(a.again)
            _exchange(s, a, data, a.expect * (n + 1))
    except (ConnectionResetError, BrokenPipeError):
        out["reset"] = True
    except EOFError:
        out["eof"] = True
    out["replies"] = [[tid, unit, pdu.hex()] for tid, unit, pdu in split_replies(bytes(data))]
    s.close()
    print(json.dumps(out))


def _exchange(s: socket.socket, a: argparse.Namespace, data: bytearray, expect: int) -> None:
    for chunk in a.chunks:
        s.sendall(bytes.fromhex(chunk))
        if a.gap:
            time.sleep(a.gap)
    deadline = time.monotonic() + a.timeout
    while len(split_replies(bytes(data))) < expect and time.monotonic() < deadline:
        s.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            got = s.recv(65536)
        except TimeoutError:
            break
        if not got:
            raise EOFError
        data += got


if __name__ == "__main__":
    main()
