"""Reading the long form of a Modbus allow entry: units, tables, address ranges, values.

    allow:
      - modbus:
          units: [1, 3-5]
          read: {holding_registers: [0-99], input_registers: all}
          write:
            holding_registers: [100-119, {addresses: 200-209, values: 0-1000}]
          on_deny: exception        # or reset

Every problem is reported at its FILE:LINE:COL; see docs/topology.md.
"""

from __future__ import annotations

from types import MappingProxyType

from topology.fields import Reader, suggest
from topology.model import (
    ALL_TABLES,
    MODBUS_TABLES,
    AddressRange,
    ModbusProbe,
    ModbusScope,
    TableRanges,
)
from topology.yamlnodes import YMap, YNode, YScalar, YSeq, describe

SCOPE_KEYS = ("units", "read", "write", "diagnostics", "on_deny")


def _span(r: Reader, node: YNode, what: str, hi: int) -> tuple[int, int] | None:
    """`5` or `"0-99"`, inside 0..hi, first <= last."""
    if isinstance(node, YScalar) and type(node.value) is int:
        a = b = node.value
    elif isinstance(node, YScalar) and isinstance(node.value, str):
        lo_text, sep, hi_text = node.value.partition("-")
        if not sep or not lo_text.strip().isdigit() or not hi_text.strip().isdigit():
            r.error(node.location, f"{what} '{node.value}' is not a number or a range N-M")
            return None
        a, b = int(lo_text), int(hi_text)
    else:
        r.error(node.location, f"{what} must be a number or a range N-M, found {describe(node)}")
        return None
    if not (0 <= a <= hi and 0 <= b <= hi):
        r.error(node.location, f"{what} {a}-{b} is outside 0-{hi}")
        return None
    if a > b:
        r.error(node.location, f"{what} {a}-{b} ends before it starts", f"write {b}-{a}")
        return None
    return a, b


def _items(node: YNode) -> list[YNode]:
    return node.items if isinstance(node, YSeq) else [node]


def _units(r: Reader, node: YNode | None) -> tuple[tuple[int, int], ...] | None:
    if node is None:
        return ()
    out = []
    for item in _items(node):
        span = _span(r, item, "unit", 255)
        if span is None:
            return None
        out.append(span)
    if not out:
        r.error(node.location, "units is empty", "leave 'units' out to allow every unit")
        return None
    return tuple(sorted(out))


def _ranges(r: Reader, table: str, node: YNode, writing: bool) -> tuple[AddressRange, ...] | None:
    out = []
    bit = table in ("coils", "discrete_inputs")
    for item in _items(node):
        values = None
        where = item
        if isinstance(item, YMap):
            if not writing:
                r.error(item.location, "value bounds apply to writes only")
                return None
            r.keys(item, ("addresses", "values"), f"a {table} range")
            where = r.required(item, "addresses", f"a {table} range") or item
            if item.get("addresses") is None:
                return None
            vnode = item.get("values")
            if vnode is not None:
                values = _span(r, vnode, "values", 1 if bit else 0xFFFF)
                if values is None:
                    return None
        span = _span(r, where, f"{table} address", 0xFFFF)
        if span is None:
            return None
        out.append(AddressRange(span[0], span[1], values))
    if not out:
        r.error(node.location, f"{table} lists no addresses", "write 'all' or ranges such as 0-99")
        return None
    return tuple(sorted(out, key=lambda x: (x.first, x.last)))


def _tables(r: Reader, node: YNode | None, kind: str) -> TableRanges | bool | None:
    """None: not given; False: an error was reported; else the ranges per table."""
    if node is None:
        return None
    if isinstance(node, YScalar) and node.value == "all":
        return ALL_TABLES
    if not isinstance(node, YMap):
        r.error(
            node.location,
            f"{kind} must be 'all' or a mapping of tables to ranges, found {describe(node)}",
            f"tables: {', '.join(MODBUS_TABLES)}",
        )
        return False
    out: dict[str, tuple[AddressRange, ...]] = {}
    for table, (loc, value) in node.entries.items():
        if table not in MODBUS_TABLES:
            r.error(loc, f"unknown Modbus table '{table}'", suggest(table, MODBUS_TABLES))
            return False
        if kind == "write" and table in ("discrete_inputs", "input_registers"):
            r.error(loc, f"{table} are read-only in Modbus", "write coils or holding_registers")
            return False
        if isinstance(value, YScalar) and value.value == "all":
            out[table] = (AddressRange(0, 0xFFFF),)
            continue
        ranges = _ranges(r, table, value, kind == "write")
        if ranges is None:
            return False
        out[table] = ranges
    if not out:
        r.error(node.location, f"{kind} names no table", "leave it out to allow no access")
        return False
    return MappingProxyType(out)


def read_scope(r: Reader, node: YMap) -> ModbusScope | None:
    """The scope of one `{modbus: {...}}` entry, or None after reporting every problem."""
    r.keys(node, SCOPE_KEYS, "a modbus allow entry")
    units = _units(r, node.get("units"))
    read = _tables(r, node.get("read"), "read")
    write = _tables(r, node.get("write"), "write")
    diagnostics = r.boolean(node.get("diagnostics"), "diagnostics") or False
    on_deny = r.string(node.get("on_deny"), "on_deny") or "exception"
    ok = units is not None and read is not False and write is not False
    if on_deny not in ("exception", "reset"):
        r.error(
            node.key_location("on_deny"), f"on_deny must be exception or reset, not '{on_deny}'"
        )
        ok = False
    if ok and read is None and write is None and not diagnostics:
        r.error(
            node.location, "a modbus allow entry allows nothing", "give read, write or diagnostics"
        )
        ok = False
    if not ok or units is None or isinstance(read, bool) or isinstance(write, bool):
        return None
    return ModbusScope(
        units=units,
        read=read,
        write=write,
        diagnostics=diagnostics,
        on_deny="reset" if on_deny == "reset" else "exception",
    )


def read_probe(r: Reader, node: YNode | None) -> ModbusProbe | None:
    """A declared test's request: `modbus: {unit: 1, table: coils, address: 5, values: [1]}`."""
    m = r.mapping(node, "a test's modbus request")
    if m is None:
        return None
    r.keys(m, ("unit", "table", "address", "count", "values"), "a test's modbus request")
    unit = r.integer(m.get("unit"), "unit", 0, 255)
    address = r.integer(m.get("address"), "address", 0, 0xFFFF)
    count = r.integer(m.get("count"), "count", 1, 2000)
    table = r.string(m.get("table"), "table") or "holding_registers"
    ok = all(
        m.get(k) is None or v is not None
        for k, v in (("unit", unit), ("address", address), ("count", count))
    )
    if table not in MODBUS_TABLES:
        r.error(
            m.key_location("table"),
            f"unknown Modbus table '{table}'",
            suggest(table, MODBUS_TABLES),
        )
        ok = False
    values: list[int] = []
    vnode = m.get("values")
    for item in _items(vnode) if vnode is not None else []:
        v = r.integer(item, "value", 0, 0xFFFF)
        if v is None:
            ok = False
        else:
            values.append(v)
    if not ok:
        return None
    return ModbusProbe(unit if unit is not None else 1, table, address or 0, count, tuple(values))
