"""YAML parsed into nodes that remember where they came from.

PyYAML's composer gives every node a start mark; we keep it on each key and value so
every later problem can be reported as FILE:LINE:COL, and we reject duplicate keys
(plain PyYAML silently keeps the last one, which hides mistakes in policy files).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import yaml

from topology.diagnostics import Diagnostics, Location


@dataclass
class YNode:
    location: Location


@dataclass
class YScalar(YNode):
    value: object  # str, int, float, bool, None, date or datetime as YAML resolves them

    def describe(self) -> str:
        return type_name(self.value)


@dataclass
class YSeq(YNode):
    items: list[YNode] = field(default_factory=list)


@dataclass
class YMap(YNode):
    # key -> (key location, value node); insertion order is file order
    entries: dict[str, tuple[Location, YNode]] = field(default_factory=dict)

    def get(self, key: str) -> YNode | None:
        entry = self.entries.get(key)
        return entry[1] if entry else None

    def key_location(self, key: str) -> Location:
        entry = self.entries.get(key)
        return entry[0] if entry else self.location


def type_name(value: object) -> str:
    if value is None:
        return "null"
    return {
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "string",
    }.get(type(value), type(value).__name__)


def describe(node: YNode) -> str:
    if isinstance(node, YScalar):
        return node.describe()
    return "list" if isinstance(node, YSeq) else "mapping"


def _loc(path: str, mark: yaml.Mark) -> Location:
    return Location(path, mark.line + 1, mark.column + 1)


def parse_yaml(text: str, path: str, diags: Diagnostics) -> YNode | None:
    """Parse one document; on a syntax error add a diagnostic and return None."""
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None
        return _convert(root, path, loader, diags)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = _loc(path, mark) if mark else Location(path, 1, 1)
        problem = exc.problem or exc.context or "invalid YAML"
        context = f" ({exc.context})" if exc.context and exc.problem else ""
        diags.error(where, f"YAML syntax: {problem}{context}")
        return None
    except yaml.YAMLError as exc:
        diags.error(Location(path, 1, 1), f"YAML: {exc}")
        return None
    finally:
        loader.dispose()


def _convert(node: yaml.Node, path: str, loader: yaml.SafeLoader, diags: Diagnostics) -> YNode:
    loc = _loc(path, node.start_mark)
    if isinstance(node, yaml.ScalarNode):
        return YScalar(loc, loader.construct_object(node, deep=True))
    if isinstance(node, yaml.SequenceNode):
        return YSeq(loc, [_convert(item, path, loader, diags) for item in node.value])
    if isinstance(node, yaml.MappingNode):
        result = YMap(loc)
        for key_node, value_node in node.value:
            key_loc = _loc(path, key_node.start_mark)
            if not isinstance(key_node, yaml.ScalarNode):
                diags.error(key_loc, "mapping keys must be plain names, not lists or mappings")
                continue
            key = str(loader.construct_object(key_node))
            if key in result.entries:
                first = result.entries[key][0]
                diags.error(
                    key_loc,
                    f"duplicate key '{key}' (first defined at line {first.line})",
                    "YAML keeps only one of them; merge the two or rename one",
                )
                continue
            result.entries[key] = (key_loc, _convert(value_node, path, loader, diags))
        return result
    raise yaml.YAMLError(f"unsupported YAML node {node!r}")  # aliases are resolved already
