"""Real traffic for one declared flow: does it get through?

A Modbus probe sends a real request of the flow's function class (read: FC 3, write:
FC 6, diagnostics: FC 8) and needs a correct reply; other TCP services need the
asset's banner; UDP services need the echo. Anything else (timeout, reset, an error
reply) counts as blocked. Run as `python -m zonegate.lab.probe ADDRESS SERVICE`; exit 0
when the flow passed, 1 when it was blocked, 2 on usage errors.
"""

from __future__ import annotations

import argparse
import json
import logging
import socket
import sys
from dataclasses import asdict, dataclass

from topology.modbus import EXCEPTION_NAMES
from topology.refs import ServiceSpec, parse_service_spec
from topology.services import BUILTIN_SERVICES
from zonegate.lab.assetsim import BANNER


@dataclass(frozen=True)
class ProbeResult:
    passed: bool
    detail: str


@dataclass(frozen=True)
class Register:
    """Which register a Modbus probe reads or writes (default: register 1, value 42)."""

    address: int = 1
    value: int = 42
    unit: int = 1
    table: str = "holding_registers"


def probe(
    spec: ServiceSpec,
    address: str,
    timeout: float = 2.0,
    source: str | None = None,
    register: Register | None = None,
) -> ProbeResult:
    """`source` binds the client's address (an identity's overlay on a shared link)."""
    if spec.service == "modbus":
        fc = spec.function_class or "read"
        return _modbus(address, spec.port, fc, timeout, source, register or Register())
    if spec.transport == "udp":
        return _udp(address, spec.port, timeout, source)
    return _tcp(address, spec.port, timeout, source)


def _tcp(address: str, port: int, timeout: float, source: str | None) -> ProbeResult:
    bind = (source, 0) if source else None
    try:
        with socket.create_connection(
            (address, port), timeout=timeout, source_address=bind
        ) as sock:
            sock.settimeout(timeout)
            data = sock.recv(len(BANNER))
    except OSError as exc:
        return ProbeResult(False, f"tcp/{port}: {exc.__class__.__name__}: {exc}")
    if data == BANNER:
        return ProbeResult(True, f"tcp/{port}: banner received")
    return ProbeResult(False, f"tcp/{port}: connected but no banner ({data!r})")


def _udp(address: str, port: int, timeout: float, source: str | None) -> ProbeResult:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        try:
            if source:
                sock.bind((source, 0))
            sock.sendto(b"probe", (address, port))
            data, _ = sock.recvfrom(256)
        except OSError as exc:
            return ProbeResult(False, f"udp/{port}: {exc.__class__.__name__}: {exc}")
    ok = data.startswith(BANNER)
    return ProbeResult(ok, f"udp/{port}: {'echo received' if ok else 'unexpected reply'}")


def _modbus(
    address: str, port: int, function_class: str, timeout: float, source: str | None, reg: Register
) -> ProbeResult:
    from pymodbus.client import ModbusTcpClient
    from pymodbus.exceptions import ModbusException

    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    bind = (source, 0) if source else None
    client = ModbusTcpClient(address, port=port, timeout=timeout, retries=0, source_address=bind)
    try:
        if not client.connect():
            return ProbeResult(False, f"modbus: cannot connect to {address}:{port}")
        unit, at = reg.unit, reg.address
        if function_class == "write" and reg.table == "coils":
            reply = client.write_coil(at, bool(reg.value), device_id=unit)
        elif function_class == "write":
            reply = client.write_register(at, reg.value, device_id=unit)
        elif function_class == "diagnostics":
            reply = client.diag_query_data(b"\x12\x34", device_id=unit)
        else:
            read = {
                "coils": client.read_coils,
                "discrete_inputs": client.read_discrete_inputs,
                "input_registers": client.read_input_registers,
            }.get(reg.table, client.read_holding_registers)
            reply = read(at, count=1, device_id=unit)
        if reply.isError():
            code = getattr(reply, "exception_code", None)
            name = EXCEPTION_NAMES.get(code, "error reply") if isinstance(code, int) else ""
            shown = f"exception {code:02X} {name}" if name else f"error reply {reply}"
            return ProbeResult(False, f"modbus/{function_class}: {shown}")
        return ProbeResult(True, f"modbus/{function_class}: reply received")
    except (ModbusException, OSError) as exc:
        return ProbeResult(False, f"modbus/{function_class}: {exc.__class__.__name__}")
    finally:
        client.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("address")
    parser.add_argument("service", help="ssh, modbus/write, tcp/502, ...")
    parser.add_argument("--timeout", type=float, default=2.0)
    parser.add_argument("--source", help="client address to send from")
    parser.add_argument("--register", type=int, default=1, help="Modbus register (default 1)")
    parser.add_argument("--value", type=int, default=42, help="value a write sends (default 42)")
    parser.add_argument("--unit", type=int, default=1, help="Modbus unit id (default 1)")
    parser.add_argument("--table", default="holding_registers", help="Modbus table")
    args = parser.parse_args(argv)
    spec = parse_service_spec(args.service, BUILTIN_SERVICES)
    if isinstance(spec, tuple):
        print(f"probe: {spec[0]}", file=sys.stderr)
        return 2
    register = Register(args.register, args.value, args.unit, args.table)
    result = probe(spec, args.address, args.timeout, args.source, register)
    print(json.dumps(asdict(result)))
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
