"""The `modbus` record: one per transaction (request and its answer), Zeek-like names.

Zeek's modbus.log has `tid`, `unit`, `func` and `exception`; we keep those names and
add what an OT operator asks of a transaction at a zone boundary: who (identity,
conduit), what (table, address, quantity, written values, bounded in size), the verdict
and which exception answered it, and how long the device took. `community_id` is the
same as in the connection's `flow` record, so the two join. See docs/flowlog.md.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from policyd.flowlog.community_id import community_id
from policyd.flowlog.records import Record, iso
from topology.modbus import EXCEPTION_NAMES, FUNCTION_NAMES, ModbusRequest

MAX_VALUES = 16  # written values kept per record; the rest are counted, not listed


@dataclass(frozen=True, slots=True)
class ConnInfo:
    """The client connection a transaction belongs to, named once per connection."""

    gateway: str
    orig_h: str
    orig_p: int
    resp_h: str
    resp_p: int
    identity: str | None
    conduit: str | None
    dst_asset: str | None = None

    @property
    def community_id(self) -> str:
        return community_id(self.orig_h, self.resp_h, 6, self.orig_p, self.resp_p)


def func_name(fc: int) -> str:
    return FUNCTION_NAMES.get(fc, f"function_{fc}").upper()


def modbus_record(
    conn: ConnInfo,
    cid: str,
    tid: int,
    unit: int,
    fc: int,
    request: ModbusRequest | None,
    verdict: str,
    *,
    exception: int | None = None,
    by: str | None = None,  # "gateway" or "device": who answered with the exception
    reason: str = "",
    started: float | None = None,
    latency: float | None = None,
) -> Record:
    rec: dict[str, Any] = {
        "ts": iso(started if started is not None else time.time()),
        "event": "modbus",
        "gateway": conn.gateway,
        "community_id": cid,
        "id.orig_h": conn.orig_h,
        "id.orig_p": conn.orig_p,
        "id.resp_h": conn.resp_h,
        "id.resp_p": conn.resp_p,
        "proto": "tcp",
        "service": "modbus",
    }
    if conn.identity is not None:
        rec["identity"] = conn.identity
    if conn.conduit is not None:
        rec["conduit"] = conn.conduit
    if conn.dst_asset is not None:
        rec["dst_asset"] = conn.dst_asset
    rec["tid"] = tid
    rec["unit"] = unit
    rec["func"] = func_name(fc)
    rec["fc"] = fc
    if request is not None and request.accesses:
        first = request.accesses[0]
        rec["table"] = first.table
        rec["address"] = first.address
        rec["quantity"] = first.quantity
        if first.kind == "write" and first.values:
            rec["values"] = list(first.values[:MAX_VALUES])
            if len(first.values) > MAX_VALUES:
                rec["values_truncated"] = len(first.values) - MAX_VALUES
        if len(request.accesses) > 1:
            second = request.accesses[1]
            rec["read_address"] = second.address
            rec["read_quantity"] = second.quantity
    rec["verdict"] = verdict
    if exception is not None:
        rec["exception"] = (
            EXCEPTION_NAMES.get(exception, f"exception {exception}").upper().replace(" ", "_")
        )
        rec["exception_code"] = exception
        rec["exception_by"] = by or "gateway"
    if reason:
        rec["reason"] = reason
    if latency is not None:
        rec["latency_ms"] = round(latency * 1000, 3)
    return Record(rec)
