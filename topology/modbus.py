"""What a Modbus request touches, and whether a conduit's Modbus entries allow it.

Pure: the OT transaction tier in policyd decodes each request from the wire into a
`ModbusRequest` and asks `decide`; `zonegate explain` builds the same request from its
command line and asks the same function, so the two cannot disagree.

The answer names the Modbus exception a forbidden request gets: 01 illegal function
(the function is in no allowed class), 0A gateway path unavailable (the unit is not
allowed behind this conduit), 02 illegal data address (an address outside every allowed
range: the request's first *and last* address must be inside), 03 illegal data value
(a written value outside its range's bounds, or a write that cannot be bounded).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from topology.model import (
    ALL_TABLES,
    AddressRange,
    ModbusScope,
    OnDeny,
    ServiceRef,
    TableRanges,
)
from topology.services import MODBUS_DIAGNOSTICS, MODBUS_READ, MODBUS_WRITE

ILLEGAL_FUNCTION = 0x01
ILLEGAL_DATA_ADDRESS = 0x02
ILLEGAL_DATA_VALUE = 0x03
GATEWAY_PATH_UNAVAILABLE = 0x0A

EXCEPTION_NAMES = {
    ILLEGAL_FUNCTION: "illegal function",
    ILLEGAL_DATA_ADDRESS: "illegal data address",
    ILLEGAL_DATA_VALUE: "illegal data value",
    GATEWAY_PATH_UNAVAILABLE: "gateway path unavailable",
}

FUNCTION_NAMES = {
    1: "read_coils",
    2: "read_discrete_inputs",
    3: "read_holding_registers",
    4: "read_input_registers",
    5: "write_single_coil",
    6: "write_single_register",
    8: "diagnostics",
    15: "write_multiple_coils",
    16: "write_multiple_registers",
    21: "write_file_record",
    22: "mask_write_register",
    23: "read_write_multiple_registers",
    43: "read_device_identification",
}

AccessKind = Literal["read", "write"]


@dataclass(frozen=True)
class Access:
    """One contiguous read or write of one table (function 23 makes two)."""

    kind: AccessKind
    table: str
    address: int
    quantity: int
    values: tuple[int, ...] | None = ()  # written values; None: not boundable (mask write)

    @property
    def last(self) -> int:
        return self.address + self.quantity - 1


@dataclass(frozen=True)
class ModbusRequest:
    unit: int
    function: int
    accesses: tuple[Access, ...] = ()

    @property
    def function_class(self) -> str | None:
        for name, codes in (
            ("read", MODBUS_READ),
            ("write", MODBUS_WRITE),
            ("diagnostics", MODBUS_DIAGNOSTICS),
        ):
            if self.function in codes:
                return name
        return None


def describe_request(req: ModbusRequest) -> str:
    parts = [f"unit {req.unit}", FUNCTION_NAMES.get(req.function, f"function {req.function}")]
    for a in req.accesses:
        span = str(a.address) if a.quantity == 1 else f"{a.address}-{a.last}"
        parts.append(f"{a.table} {span}")
        if a.kind == "write" and a.values:
            parts.append("values " + ",".join(str(v) for v in a.values[:16]))
    return " ".join(parts)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    exception: int | None = None  # the Modbus exception code of a denial
    reason: str = ""
    on_deny: OnDeny = "exception"


def scope_of(ref: ServiceRef) -> ModbusScope:
    """A `{modbus: ...}` entry as a scope: the short forms allow whole tables."""
    if ref.modbus is not None:
        return ref.modbus
    classes = set(ref.classes) or {"read", "write", "diagnostics"}
    return ModbusScope(
        read=ALL_TABLES if "read" in classes else None,
        write=ALL_TABLES if "write" in classes else None,
        diagnostics="diagnostics" in classes,
    )


def _covered(ranges: Sequence[AddressRange], access: Access) -> tuple[int | None, str]:
    """None if every address (and written value) is inside; else the exception code."""
    for r in ranges:  # the common case: one range holds the whole request
        if r.first <= access.address and access.last <= r.last:
            if access.kind == "write" and r.values is not None:
                return _bounded(r, access.values or None, access)
            return None, ""
    for i, address in enumerate(range(access.address, access.last + 1)):
        inside = [r for r in ranges if r.first <= address <= r.last]
        if not inside:
            return (
                ILLEGAL_DATA_ADDRESS,
                f"{access.table} address {address} is outside {_ranges(ranges)}",
            )
        if access.kind == "write" and inside[0].values is not None:
            one = access.values[i : i + 1] if access.values is not None else None
            code, why = _bounded(inside[0], one or None, access)
            if code is not None:
                return code, why
    return None, ""


def _bounded(
    r: AddressRange, values: Sequence[int] | None, access: Access
) -> tuple[int | None, str]:
    assert r.values is not None
    lo, hi = r.values
    if values is None:
        return ILLEGAL_DATA_VALUE, f"{access.table} {r} has value bounds this write cannot keep"
    for v in values:
        if not lo <= v <= hi:
            return (
                ILLEGAL_DATA_VALUE,
                f"value {v} outside {lo}-{hi} for {access.table} {r.first}-{r.last}",
            )
    return None, ""


def _ranges(ranges: Sequence[AddressRange]) -> str:
    return ", ".join(f"{r.first}-{r.last}" for r in ranges) or "nothing"


def _decide_one(scope: ModbusScope, req: ModbusRequest) -> tuple[int, int | None, str]:
    """(how far the request got, exception, reason); exception None means allowed."""
    cls = req.function_class
    allowed_classes = scope.classes
    if cls is None or cls not in allowed_classes:
        return 0, ILLEGAL_FUNCTION, f"function {req.function} is not in {'/'.join(allowed_classes)}"
    if req.function == 23 and "read" not in allowed_classes:
        return 0, ILLEGAL_FUNCTION, "function 23 reads too and reading is not allowed"
    if scope.units and not any(a <= req.unit <= b for a, b in scope.units):
        return 1, GATEWAY_PATH_UNAVAILABLE, f"unit {req.unit} is not allowed"
    if req.function == 21 and scope.write is not ALL_TABLES:
        return 2, ILLEGAL_DATA_ADDRESS, "file records are outside every allowed range"
    for access in req.accesses:
        tables: TableRanges | None = scope.read if access.kind == "read" else scope.write
        ranges = tables.get(access.table, ()) if tables is not None else ()
        if not ranges:
            return 2, ILLEGAL_DATA_ADDRESS, f"no {access.kind} of {access.table} is allowed"
        code, why = _covered(ranges, access)
        if code is not None:
            return (2 if code == ILLEGAL_DATA_ADDRESS else 3), code, why
    return 4, None, ""


def decide(scopes: Sequence[ModbusScope], req: ModbusRequest) -> Decision:
    """Allowed if any scope allows it; else the exception of the scope that got furthest."""
    if not scopes:
        return Decision(False, ILLEGAL_FUNCTION, "no Modbus access on this conduit")
    best: tuple[int, int | None, str] = (-1, ILLEGAL_FUNCTION, "")
    for scope in scopes:
        got = _decide_one(scope, req)
        if got[1] is None:
            return Decision(True)
        if got[0] > best[0]:
            best = got
    on_deny: OnDeny = "reset" if any(s.on_deny == "reset" for s in scopes) else "exception"
    return Decision(False, best[1], best[2], on_deny)


def conduit_scopes(allow: Sequence[ServiceRef], service: str = "modbus") -> tuple[ModbusScope, ...]:
    return tuple(scope_of(ref) for ref in allow if ref.service == service)


_READ_FC = {"coils": 1, "discrete_inputs": 2, "holding_registers": 3, "input_registers": 4}


def request_for(
    function_class: str | None,
    table: str = "holding_registers",
    unit: int = 1,
    address: int = 0,
    count: int | None = None,
    values: Sequence[int] = (),
) -> ModbusRequest:
    """The request a client would send for a class (`zonegate explain --address ...`)."""
    if function_class == "diagnostics":
        return ModbusRequest(unit, 8)
    if function_class == "write":
        vals = tuple(values) or (0,)
        single, multiple = (5, 15) if table == "coils" else (6, 16)
        fc = single if len(vals) == 1 else multiple
        return ModbusRequest(unit, fc, (Access("write", table, address, len(vals), vals),))
    qty = count or 1
    return ModbusRequest(unit, _READ_FC[table], (Access("read", table, address, qty),))
