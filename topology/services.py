"""The built-in services catalog: conduits name services, never raw ports.

Function-code classes are matched in the kernel on the first application data unit
of a segment (`@ih,OFFSET,8`); see docs/topology.md for what that can and cannot see.
"""

from __future__ import annotations

from collections.abc import Mapping

from topology.model import FunctionClass, Service, Transport, frozen_map

# Modbus/TCP: MBAP header is 7 bytes, the function code is byte 7 of the payload.
MODBUS_READ = (1, 2, 3, 4, 43)  # 43/14 is Read Device Identification
MODBUS_WRITE = (5, 6, 15, 16, 21, 22, 23)
MODBUS_DIAGNOSTICS = (8,)  # restart, listen-only mode and friends


def _svc(
    name: str,
    transport: Transport,
    ports: tuple[int, ...],
    description: str,
    classes: dict[str, tuple[int, ...]] | None = None,
    offset: int | None = None,
) -> Service:
    return Service(
        name=name,
        transport=transport,
        ports=ports,
        description=description,
        classes=frozen_map({k: FunctionClass(k, v) for k, v in (classes or {}).items()}),
        payload_offset=offset,
    )


BUILTIN_SERVICES: Mapping[str, Service] = frozen_map(
    {
        s.name: s
        for s in (
            _svc("ssh", "tcp", (22,), "Secure Shell"),
            _svc("rdp", "tcp", (3389,), "Remote Desktop"),
            _svc("vnc", "tcp", (5900,), "VNC remote framebuffer"),
            _svc("http", "tcp", (80,), "HTTP"),
            _svc("https", "tcp", (443,), "HTTPS"),
            _svc(
                "modbus",
                "tcp",
                (502,),
                "Modbus/TCP",
                {"read": MODBUS_READ, "write": MODBUS_WRITE, "diagnostics": MODBUS_DIAGNOSTICS},
                56,
            ),
            _svc("opcua", "tcp", (4840,), "OPC UA binary"),
            _svc("enip", "tcp", (44818,), "EtherNet/IP explicit messaging"),
            # S7comm over ISO-on-TCP: TPKT(4) + COTP(3) + S7 header(10) -> function at byte 17.
            _svc(
                "s7",
                "tcp",
                (102,),
                "Siemens S7comm",
                {
                    "read": (0x04,),
                    "write": (0x05,),
                    "control": (0x28, 0x29),
                    "download": (0x1A, 0x1B, 0x1C),
                },
                136,
            ),
            # DNP3: link header(10 incl. CRC) + transport(1) + app control(1) -> function at 12.
            _svc(
                "dnp3",
                "tcp",
                (20000,),
                "DNP3 over TCP",
                {
                    "read": (0x01,),
                    "write": (0x02,),
                    "operate": (0x03, 0x04, 0x05, 0x06),
                    "restart": (0x0D, 0x0E),
                },
                96,
            ),
            _svc("profinet", "udp", (34964,), "PROFINET context manager (DCE/RPC)"),
        )
    }
)
