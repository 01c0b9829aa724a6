"""libnftables JSON -> nft text, for `zonegate render`, golden files and diffs.

Covers the expression shapes the compiler emits (and that `nft -j list` gives back
for them). The output is valid `nft -f` input: a namespace test feeds it to `nft -c`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from policyd.nftjson import Json

_QUOTED_META = {"iifname", "oifname", "day", "hour"}
_QUOTED_TYPES = {"ifname"}


def _quoted(left: Json | None) -> bool:
    return bool(left and "meta" in left and left["meta"]["key"] in _QUOTED_META)


def expr(e: Any, quote: bool = False) -> str:
    """One expression (a value, a set, a payload field ...)."""
    if isinstance(e, bool):
        return "true" if e else "false"
    if isinstance(e, int):
        return str(e)
    if isinstance(e, str):
        if e.startswith("@"):
            return e
        return f'"{e}"' if quote else e
    if isinstance(e, list):
        return "{ " + ", ".join(expr(x, quote) for x in e) + " }"
    if "payload" in e:
        p = e["payload"]
        if "base" in p:
            return f"@{p['base']},{p['offset']},{p['len']}"
        return f"{p['protocol']} {p['field']}"
    if "meta" in e:
        key = e["meta"]["key"]
        return key if key in ("iifname", "oifname") else f"meta {key}"
    if "ct" in e:
        c = e["ct"]
        return f"ct {c['dir']} {c['key']}" if "dir" in c else f"ct {c['key']}"
    if "socket" in e:
        return f"socket {e['socket']['key']}"
    if "fib" in e:
        return f"fib {' . '.join(e['fib']['flags'])} {e['fib']['result']}"
    if "set" in e:
        return "{ " + ", ".join(_element(x, quote) for x in e["set"]) + " }"
    if "range" in e:
        lo, hi = e["range"]
        return f"{expr(lo, quote)}-{expr(hi, quote)}"
    if "prefix" in e:
        return f"{e['prefix']['addr']}/{e['prefix']['len']}"
    if "concat" in e:
        return " . ".join(expr(x, quote) for x in e["concat"])
    if "elem" in e:
        el = e["elem"]
        text = expr(el["val"], quote)
        if "timeout" in el:
            text += f" timeout {el['timeout']}s"
        return text
    return verdict(e)


def verdict(e: Json) -> str:
    if "jump" in e:
        return f"jump {e['jump']['target']}"
    if "goto" in e:
        return f"goto {e['goto']['target']}"
    for word in ("accept", "drop", "return", "continue"):
        if word in e:
            return word
    raise ValueError(f"cannot render expression {e!r}")


def _element(x: Any, quote: bool, hexa: bool = False) -> str:
    if isinstance(x, list) and len(x) == 2:  # map element: key : data
        key = hex(x[0]) if hexa and isinstance(x[0], int) else expr(x[0], quote)
        return f"{key} : {verdict(x[1])}"
    return hex(x) if hexa and isinstance(x, int) else expr(x, quote)


def statement(s: Json) -> str:
    if "match" in s:
        m = s["match"]
        left, op, right = m["left"], m["op"], m["right"]
        q = _quoted(left)
        lhs = expr(left)
        if "fib" in left and isinstance(right, bool):
            return f"{lhs} {'exists' if right == (op == '==') else 'missing'}"
        if left.get("ct", {}).get("key") == "mark" and isinstance(right, int):
            rhs = hex(right)
        else:
            rhs = expr(right, q)
        return f"{lhs} {rhs}" if op in ("==", "in") else f"{lhs} {op} {rhs}"
    if "vmap" in s:
        v = s["vmap"]
        return f"{expr(v['key'])} vmap {expr(v['data'])}"
    if "mangle" in s:
        value = s["mangle"]["value"]
        shown = hex(value) if isinstance(value, int) else expr(value)
        return f"{expr(s['mangle']['key'])} set {shown}"
    if "limit" in s:
        lim = s["limit"]
        text = f"limit rate {lim['rate']}/{lim.get('per', 'second')}"
        if lim.get("burst"):
            text += f" burst {lim['burst']} packets"
        return text
    if "log" in s:
        lg = s["log"]
        text = "log"
        if "prefix" in lg:
            text += f' prefix "{lg["prefix"]}"'
        if "group" in lg:
            text += f" group {lg['group']}"
        if "snaplen" in lg:
            text += f" snaplen {lg['snaplen']}"
        if "queue-threshold" in lg:
            text += f" queue-threshold {lg['queue-threshold']}"
        return text
    if "counter" in s:
        return "counter"
    if "tproxy" in s:
        tp = s["tproxy"]
        return f"tproxy {tp['family']} to {tp.get('addr', '')}:{tp['port']}"
    return verdict(s)


def rule_text(rule: Json) -> str:
    text = " ".join(statement(s) for s in rule["expr"])
    if rule.get("comment"):
        text += f' comment "{rule["comment"]}"'
    return text


def _set_block(kind: str, body: Json) -> list[str]:
    t = body["type"]
    type_text = " . ".join(t) if isinstance(t, list) else t
    if kind == "map":
        type_text += f" : {body['map']}"
    lines = [f"\t{kind} {body['name']} {{", f"\t\ttype {type_text}"]
    if body.get("flags"):
        lines.append(f"\t\tflags {','.join(body['flags'])}")
    elems = body.get("elem") or []
    if elems:
        quote = isinstance(t, str) and t in _QUOTED_TYPES
        shown = [_element(x, quote, t == "mark") for x in elems]
        joined = ",\n\t\t\t     ".join(shown)
        lines.append(f"\t\telements = {{ {joined} }}")
    lines.append("\t}")
    return lines


def canonical(objects: Iterable[Json]) -> list[Json]:
    """The same ruleset with what a kernel listing adds or reorders taken out.

    Handles and element expiry/timeouts are dropped (they change by the second), set
    elements and anonymous sets are sorted, `meta hour` is written HH:MM:SS. Used to
    diff a compiled ruleset against `nft -j list table`.
    """
    return [_canon(o) for o in objects if "metainfo" not in o]


def _sort_key(x: Any) -> str:
    return json.dumps(x, sort_keys=True)


def _canon(x: Any, key: str | None = None) -> Any:
    if isinstance(x, dict):
        if "elem" in x and isinstance(x["elem"], dict):  # a timed element
            return _canon(x["elem"]["val"])
        out = {k: _canon(v, k) for k, v in x.items() if k not in ("handle", "expires")}
        if key in ("set", "map") and isinstance(out.get("elem"), list):
            out["elem"] = sorted(out["elem"], key=_sort_key)
        if "match" in out and out["match"]["left"] == {"meta": {"key": "hour"}}:
            right = out["match"]["right"]
            if isinstance(right, dict) and "range" in right:
                right["range"] = [_hms(v) for v in right["range"]]
        return out
    if isinstance(x, list):
        items = [_canon(v) for v in x]
        if key == "set":
            merged = _merged_addresses(items)
            return merged if merged is not None else sorted(items, key=_sort_key)
        return items
    return x


def _span(item: Any) -> tuple[int, int] | None:
    try:
        if isinstance(item, str):
            a = int(IPv4Address(item))
            return a, a
        if isinstance(item, dict) and "prefix" in item:
            net = IPv4Network(f"{item['prefix']['addr']}/{item['prefix']['len']}")
            return int(net.network_address), int(net.broadcast_address)
        if isinstance(item, dict) and "range" in item:
            lo, hi = (int(IPv4Address(v)) for v in item["range"])
            return lo, hi
    except (ValueError, TypeError, KeyError):
        return None
    return None


def _merged_addresses(items: list[Any]) -> list[Any] | None:
    """An anonymous set of IPv4 addresses/prefixes/ranges as merged ranges: the kernel
    merges adjacent intervals of a constant set, so `10.0.0.0/24, 10.0.1.0/24` is listed
    back as `10.0.0.0-10.0.1.255`. None when the set holds anything else."""
    spans = [_span(i) for i in items]
    if not spans or any(sp is None for sp in spans):
        return None
    out: list[list[int]] = []
    for lo, hi in sorted(sp for sp in spans if sp is not None):
        if out and lo <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return [{"range": [str(IPv4Address(lo)), str(IPv4Address(hi))]} for lo, hi in out]


def _hms(v: Any) -> Any:
    if isinstance(v, str) and v.count(":") == 1:
        return v + ":00"
    return v


def render_text(objects: Iterable[Json]) -> str:
    """The table as `nft list table` would print it (near enough to diff and review)."""
    objs = list(objects)
    tables = [o["table"] for o in objs if "table" in o]
    if not tables:
        return ""
    t = tables[0]
    out = [f"table {t['family']} {t['name']} {{"]
    blocks: list[list[str]] = []
    for o in objs:
        for kind in ("set", "map"):
            if kind in o:
                blocks.append(_set_block(kind, o[kind]))
    rules: dict[str, list[str]] = {}
    for o in objs:
        if "rule" in o:
            rules.setdefault(o["rule"]["chain"], []).append(rule_text(o["rule"]))
    for o in objs:
        if "chain" not in o:
            continue
        c = o["chain"]
        lines = [f"\tchain {c['name']} {{"]
        if "hook" in c:
            prio = "filter" if c.get("prio", 0) == 0 else str(c["prio"])
            lines.append(
                f"\t\ttype {c['type']} hook {c['hook']} priority {prio}; policy {c['policy']};"
            )
        lines.extend(f"\t\t{r}" for r in rules.get(c["name"], []))
        lines.append("\t}")
        blocks.append(lines)
    for i, block in enumerate(blocks):
        if i:
            out.append("")
        out.extend(block)
    out.append("}")
    return "\n".join(out) + "\n"
