"""The long form of a Modbus allow entry: reading it, its errors, and `decide`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.topology.conftest import BASE
from tests.topology.test_errors import errors_of, line_of
from topology import load
from topology.modbus import (
    GATEWAY_PATH_UNAVAILABLE,
    ILLEGAL_DATA_ADDRESS,
    ILLEGAL_DATA_VALUE,
    ILLEGAL_FUNCTION,
    Access,
    ModbusRequest,
    decide,
    scope_of,
)
from topology.model import ALL_TABLES, AddressRange, ModbusScope

SHORT = "allow: [{modbus: read}, ssh]"
LONG = """allow:
      - modbus:
          units: [1, 3-4]
          read: {holding_registers: [0-99], input_registers: all}
          write:
            holding_registers: [10-19, {addresses: 20-29, values: 0-1000}]
          on_deny: reset"""


def test_long_form_loads_and_keeps_the_kernel_classes(
    write_topology: Callable[[str], Path],
) -> None:
    topo = load(write_topology(BASE.replace(SHORT, LONG))).topology
    (conduit,) = [c for c in topo.conduits.values() if c.allow[0].modbus is not None]
    ref = conduit.allow[0]
    assert ref.classes == ("read", "write")
    scope = ref.modbus
    assert scope is not None and scope.units == ((1, 1), (3, 4)) and scope.on_deny == "reset"
    assert scope.read is not None and scope.read["input_registers"] == (AddressRange(0, 65535),)
    assert scope.write is not None
    assert scope.write["holding_registers"] == (
        AddressRange(10, 19),
        AddressRange(20, 29, (0, 1000)),
    )
    assert "holding_registers 10-19, 20-29 values 0-1000" in str(ref)


BAD = [
    ("units: [1, 3-4]", "units: [1, 300]", "unit 300-300 is outside 0-255"),
    ("units: [1, 3-4]", "units: [4-3]", "ends before it starts"),
    ("units: [1, 3-4]", "units: [one]", "is not a number or a range"),
    ("[0-99]", "[0-70000]", "is outside 0-65535"),
    ("holding_registers: [0-99]", "holding_regs: [0-99]", "unknown Modbus table 'holding_regs'"),
    (
        "input_registers: all}",
        "input_registers: all}\n          frobnicate: true",
        "unknown key 'frobnicate'",
    ),
    ("values: 0-1000", "values: 0-70000", "values 0-70000 is outside 0-65535"),
    ("on_deny: reset", "on_deny: silence", "on_deny must be exception or reset"),
    (
        "read: {holding_registers: [0-99], input_registers: all}",
        "read: {holding_registers: [{addresses: 1-2, values: 0-1}]}",
        "value bounds apply to writes only",
    ),
    ("holding_registers: [10-19,", "input_registers: [10-19,", "input_registers are read-only"),
    (
        "read: {holding_registers: [0-99], input_registers: all}",
        "read: everything",
        "must be 'all' or a mapping",
    ),
]


@pytest.mark.parametrize(("old", "new", "message"), BAD, ids=[b[2][:30] for b in BAD])
def test_long_form_errors_name_file_line_column(
    write_topology: Callable[[str], Path], old: str, new: str, message: str
) -> None:
    text = BASE.replace(SHORT, LONG.replace(old, new))
    assert new in text
    path = write_topology(text)
    diags = errors_of(path)
    hits = [d for d in diags if message in d.message]
    assert hits, [str(d) for d in diags]
    loc = hits[0].location
    assert loc is not None and loc.file == str(path) and loc.col >= 1
    assert loc.line == line_of(text, new.splitlines()[-1].strip()), str(hits[0])


def test_an_entry_that_allows_nothing(write_topology: Callable[[str], Path]) -> None:
    text = BASE.replace(SHORT, "allow:\n      - modbus: {units: [1]}")
    assert any("allows nothing" in d.message for d in errors_of(write_topology(text)))


def test_only_modbus_takes_ranges(write_topology: Callable[[str], Path]) -> None:
    text = BASE.replace(SHORT, "allow:\n      - ssh: {units: [1]}")
    assert any("only modbus takes" in d.message for d in errors_of(write_topology(text)))


SCOPE = ModbusScope(
    units=((1, 1),),
    read=ALL_TABLES,
    write={"holding_registers": (AddressRange(10, 19), AddressRange(20, 29, (0, 1000)))},
)


def write(address: int, *values: int, unit: int = 1) -> ModbusRequest:
    fc = 6 if len(values) == 1 else 16
    return ModbusRequest(
        unit, fc, (Access("write", "holding_registers", address, len(values), values),)
    )


@pytest.mark.parametrize(
    ("req", "code"),
    [
        (write(10, 5), None),
        (write(19, 5), None),
        (write(9, 5), ILLEGAL_DATA_ADDRESS),
        (write(30, 5), ILLEGAL_DATA_ADDRESS),
        (write(19, 5, 1000), None),
        (write(19, 5, 1001), ILLEGAL_DATA_VALUE),
        (write(28, 1, 2, 3), ILLEGAL_DATA_ADDRESS),
        (write(10, 5, unit=2), GATEWAY_PATH_UNAVAILABLE),
        (ModbusRequest(1, 8), ILLEGAL_FUNCTION),
        (
            ModbusRequest(1, 22, (Access("write", "holding_registers", 20, 1, None),)),
            ILLEGAL_DATA_VALUE,
        ),
        (ModbusRequest(1, 22, (Access("write", "holding_registers", 12, 1, None),)), None),
        (ModbusRequest(1, 21), ILLEGAL_DATA_ADDRESS),  # file records: only with write: all
    ],
)
def test_decide(req: ModbusRequest, code: int | None) -> None:
    got = decide([SCOPE], req)
    assert got.allowed is (code is None) and got.exception == code, got


def test_short_forms_keep_their_meaning() -> None:
    from topology.model import ServiceRef

    read_only = scope_of(ServiceRef("modbus", ("read",)))
    assert decide([read_only], ModbusRequest(9, 3, (Access("read", "coils", 65535, 1),))).allowed
    assert decide([read_only], write(0, 1)).exception == ILLEGAL_FUNCTION
    everything = scope_of(ServiceRef("modbus"))
    assert decide([everything], ModbusRequest(1, 8)).allowed
    assert decide([everything], ModbusRequest(1, 21)).allowed


ranges = st.lists(
    st.tuples(st.integers(0, 300), st.integers(0, 40)).map(
        lambda t: AddressRange(t[0], t[0] + t[1])
    ),
    min_size=1,
    max_size=4,
)


@given(ranges, st.integers(0, 400), st.integers(1, 50))
def test_containment_is_every_address_inside(
    rs: list[AddressRange], address: int, qty: int
) -> None:
    """Allowed exactly when every address of the request lies in some range (never overlap)."""
    scope = ModbusScope(read={"coils": tuple(rs)})
    req = ModbusRequest(1, 1, (Access("read", "coils", address, qty),))
    inside = all(any(r.first <= a <= r.last for r in rs) for a in range(address, address + qty))
    got = decide([scope], req)
    assert got.allowed is inside
    if not inside:
        assert got.exception == ILLEGAL_DATA_ADDRESS


def test_a_declared_test_carries_a_modbus_request(write_topology: Callable[[str], Path]) -> None:
    text = BASE.replace(SHORT, LONG.replace("on_deny: reset", "on_deny: exception"))
    text += (
        "  - {from: eng-1, to: site-a/plc-1, service: modbus/write, expect: allow,"
        " modbus: {address: 12, values: [5]}}\n"
        "  - {from: eng-1, to: site-a/plc-1, service: modbus/write, expect: deny,"
        " modbus: {address: 25, values: [1001]}}\n"
    )
    from topology.policy_tests import run_tests

    topo = load(write_topology(text)).topology
    results = run_tests(topo)
    assert all(r.passed for r in results), [r.as_dict() for r in results if not r.passed]
    assert "exception 03" in results[-1].verdict.reason
    bad = text.replace("service: modbus/write, expect: deny,", "service: ssh, expect: deny,")
    diags = errors_of(write_topology(bad))
    assert any(
        "only modbus tests take 'modbus'" in d.message and d.code == "ZG-E090" for d in diags
    )
