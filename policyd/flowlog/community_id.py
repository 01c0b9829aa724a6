"""Community ID v1 (corelight/community-id-spec): one flow hash every tool agrees on.

With it a SIEM joins our flow and deny records to Zeek, Suricata, Arkime or Elastic
records of the same connection without matching five fields by hand.
sha1(seed . saddr . daddr . proto . 0 . sport . dport), endpoints ordered so both
directions hash the same, base64, prefixed "1:". ICMP type/code map to port
equivalents as Zeek does: a request and its reply are one flow.
"""

from __future__ import annotations

import base64
import hashlib
import socket
import struct

# type -> counterpart type; a type not listed is "one way" and keeps its code as dport.
_ICMP4 = {8: 0, 0: 8, 13: 14, 14: 13, 15: 16, 16: 15, 10: 9, 17: 18, 18: 17}
_ICMP6 = {128: 129, 129: 128, 133: 134, 134: 133, 135: 136, 136: 135, 130: 131, 131: 130}
_ICMP6 |= {139: 140, 140: 139, 144: 145, 145: 144}
_PORTED = (6, 17, 132)


def _packed(address: str) -> bytes:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    return socket.inet_pton(family, address)


def community_id(
    saddr: str,
    daddr: str,
    proto: int,
    sport: int | None = None,
    dport: int | None = None,
    seed: int = 0,
) -> str:
    """The v1 Community ID. For ICMP/ICMPv6 pass the type as sport and the code as dport."""
    src, dst = _packed(saddr), _packed(daddr)
    one_way = False
    if proto in (1, 58) and sport is not None:
        table = _ICMP4 if proto == 1 else _ICMP6
        if sport in table:
            dport = table[sport]
        else:
            one_way = True
    has_ports = sport is not None and dport is not None and (proto in _PORTED or proto in (1, 58))
    sp, dp = (sport or 0, dport or 0) if has_ports else (0, 0)
    if not one_way and (src, sp) > (dst, dp):
        src, dst, sp, dp = dst, src, dp, sp
    data = struct.pack("!H", seed) + src + dst + struct.pack("!BB", proto, 0)
    if has_ports:
        data += struct.pack("!HH", sp, dp)
    return "1:" + base64.b64encode(hashlib.sha1(data, usedforsecurity=False).digest()).decode()
