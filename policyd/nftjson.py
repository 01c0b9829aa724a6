"""Small builders for libnftables JSON objects, so the compiler reads like the ruleset.

Only the shapes the compiler uses are here; every one of them is also understood by
`policyd.ruleset_eval` and rendered by `policyd.render`.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from typing import Any

from policyd.conventions import TABLE_FAMILY, TABLE_NAME

Json = dict[str, Any]


def table() -> Json:
    return {"family": TABLE_FAMILY, "name": TABLE_NAME}


def match(left: Json, right: Any, op: str = "==") -> Json:
    return {"match": {"op": op, "left": left, "right": right}}


def payload(protocol: str, field: str) -> Json:
    return {"payload": {"protocol": protocol, "field": field}}


def raw_payload(base: str, offset: int, length: int) -> Json:
    return {"payload": {"base": base, "offset": offset, "len": length}}


def meta(key: str) -> Json:
    return {"meta": {"key": key}}


def ct(key: str) -> Json:
    return {"ct": {"key": key}}


def anon_set(items: list[Any]) -> Json:
    return {"set": items}


def one_or_set(items: list[Any]) -> Any:
    """A single value as itself (nft stores a one-element anonymous set that way)."""
    return items[0] if len(items) == 1 else {"set": items}


def jump(chain: str) -> Json:
    return {"jump": {"target": chain}}


def accept() -> Json:
    return {"accept": None}


def drop() -> Json:
    return {"drop": None}


def set_ct_mark(mark: int) -> Json:
    return {"mangle": {"key": ct("mark"), "value": mark}}


def limit(rate: int, burst: int) -> Json:
    return {"limit": {"rate": rate, "burst": burst, "per": "second"}}


def nflog(
    prefix: str, group: int, snaplen: int | None = None, qthreshold: int | None = None
) -> Json:
    body: Json = {"prefix": prefix, "group": group}
    if snaplen is not None:
        body["snaplen"] = snaplen
    if qthreshold is not None:
        body["queue-threshold"] = qthreshold
    return {"log": body}


def network(net: IPv4Network) -> Any:
    """A set element or match value for an address block: an address or a prefix."""
    if net.prefixlen == 32:
        return str(net.network_address)
    return {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}


def address_range(lo: int, hi: int) -> Any:
    """An element for [lo, hi]: an address, a prefix when aligned, else a range."""
    if lo == hi:
        return str(IPv4Address(lo))
    size = hi - lo + 1
    if size & (size - 1) == 0 and lo % size == 0:
        return network(IPv4Network((lo, 32 - size.bit_length() + 1)))
    return {"range": [str(IPv4Address(lo)), str(IPv4Address(hi))]}


def rule(chain: str, expr: list[Json], comment: str | None = None) -> Json:
    body: Json = {**table_ref(), "chain": chain, "expr": expr}
    if comment:
        body["comment"] = comment[:127]
    return {"rule": body}


def table_ref() -> Json:
    return {"family": TABLE_FAMILY, "table": TABLE_NAME}


def chain(name: str, hook: str | None = None, policy: str = "drop") -> Json:
    body: Json = {**table_ref(), "name": name}
    if hook is not None:
        body.update({"type": "filter", "hook": hook, "prio": 0, "policy": policy})
    return {"chain": body}


def named_set(
    name: str,
    type_: str | list[str],
    flags: list[str],
    elements: list[Any],
    map_type: str | None = None,
) -> Json:
    body: Json = {**table_ref(), "name": name, "type": type_}
    if map_type is not None:
        body["map"] = map_type
    if flags:
        body["flags"] = flags
    if elements:
        body["elem"] = elements
    return {"map" if map_type is not None else "set": body}


def timed(value: Any, timeout: int | None) -> Any:
    """A set element, with a per-element timeout (seconds) when given."""
    if timeout is None:
        return value
    return {"elem": {"val": value, "timeout": timeout}}
