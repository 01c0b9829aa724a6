"""Raw Modbus requests driven over stdin, run in a namespace: `witness_client.py SRC DST`.

Each stdin line is `tcp read|write|diag|connect` (one TCP connection kept across lines, opened
on first use or by `connect`) or `udp read|write|diag` (a new socket, so a new source port,
per datagram; `udp:PORT ...` from that port). Prints one JSON line per command: {"op": ..., "reply": bool}. Whether a
request was executed is read from the witness device's journal, never from the reply.
"""

from __future__ import annotations

import json
import socket
import sys

from zonegate.lab import modbus_device as md

src, dst = sys.argv[1], sys.argv[2]
tcp: socket.socket | None = None


def ask(sock: socket.socket, adu: bytes, udp: bool) -> bool:
    try:
        if udp:
            sock.sendto(adu, (dst, 502))
        else:
            sock.sendall(adu)
        return bool(sock.recv(260))
    except OSError:
        return False


for tid, line in enumerate(sys.stdin, 1):
    kind, _, op = line.strip().partition(" ")
    if op == "write":
        adu = md.write_register(tid, 1, tid)
    elif op == "diag":
        adu = md.diagnostics(tid)
    else:
        adu = md.read(tid)
    ok = False
    if kind.startswith("udp"):  # "udp": a fresh source port; "udp:PORT": that port
        port = int(kind.partition(":")[2] or 0)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((src, port))
            s.settimeout(1.0)
            ok = ask(s, adu, True)
    else:
        if tcp is None:
            tcp = socket.socket()
            tcp.bind((src, 0))
            tcp.settimeout(1.5)
            try:
                tcp.connect((dst, 502))
                ok = True
            except OSError:
                ok = False
        if op != "connect":
            ok = ask(tcp, adu, False)
    print(json.dumps({"op": line.strip(), "reply": ok}), flush=True)
