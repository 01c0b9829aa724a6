"""YAML parsed into nodes that remember where they came from.

PyYAML's composer gives every node a start mark; we keep it on each key and value so
every later problem can be reported as FILE:LINE:COL, and we reject duplicate keys
(plain PyYAML silently keeps the last one, which hides mistakes in policy files).

Scalars follow the YAML 1.2 core schema, not PyYAML's YAML 1.1: `no`, `yes`, `on`,
`off` are strings (an asset named `no` stays `no`), `1:30` is a string (not 90), and
dates are strings that the readers parse. Mapping keys are always the text as written
(zone `010` is `010`, not 8). A plain integer with a leading zero (`010`) is an error:
YAML 1.1 reads it as octal 8, YAML 1.2 as 10, and a reader of the file cannot tell.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import yaml

from topology.diagnostics import Diagnostics, Location

# The YAML 1.2 core schema (https://yaml.org/spec/1.2.2/#1023-core-schema).
NULL_RE = re.compile(r"^(?:~|null|Null|NULL|)$")
BOOL_RE = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
INT_RE = re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$")
FLOAT_RE = re.compile(
    r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
)
LEADING_ZERO_RE = re.compile(r"^[-+]?0[0-9]+$")
# Plain scalars YAML 1.1 tools (and older PyYAML code) read as booleans.
YAML11_BOOLEANS = frozenset(
    w for b in ("y", "n", "yes", "no", "on", "off") for w in (b, b.capitalize(), b.upper())
)
STR_TAG = "tag:yaml.org,2002:str"


@dataclass
class YNode:
    location: Location


@dataclass
class YScalar(YNode):
    value: object  # str, int, float, bool or None (YAML 1.2 core schema)
    raw: str = ""  # the text as written, for plain scalars: a name `2024` stays "2024"

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


def to_plain(node: YNode | None) -> object:
    """The node as plain Python data (dicts, lists, scalars), e.g. for JSON Schema checks."""
    if node is None:
        return None
    if isinstance(node, YMap):
        return {k: to_plain(v) for k, (_, v) in node.entries.items()}
    if isinstance(node, YSeq):
        return [to_plain(i) for i in node.items]
    assert isinstance(node, YScalar)
    return node.value


class _Composer(yaml.SafeLoader):
    """PyYAML's scanner and composer; plain scalars are resolved by `_scalar` below."""

    yaml_implicit_resolvers = {}  # noqa: RUF012 (PyYAML's class attribute)


def _loc(path: str, mark: yaml.Mark) -> Location:
    return Location(path, mark.line + 1, mark.column + 1)


def parse_yaml(text: str, path: str, diags: Diagnostics) -> YNode | None:
    """Parse one document; on a syntax error add a diagnostic and return None."""
    loader = _Composer(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None
        return _convert(root, path, loader, diags)
    except yaml.MarkedYAMLError as exc:
        _syntax_error(exc, text, path, diags)
        return None
    except yaml.YAMLError as exc:
        diags.error(Location(path, 1, 1), f"YAML: {exc}", root=True)
        return None
    finally:
        loader.dispose()


def _syntax_error(exc: yaml.MarkedYAMLError, text: str, path: str, diags: Diagnostics) -> None:
    """Name the mistake a person made (a tab, an indentation) rather than the parser state."""
    mark = exc.problem_mark or exc.context_mark
    where = _loc(path, mark) if mark else Location(path, 1, 1)
    problem = exc.problem or exc.context or "invalid YAML"
    lines = text.splitlines()
    for number, line in enumerate(lines[: where.line], start=1):
        indent = line[: len(line) - len(line.lstrip(" \t"))]
        if "\t" in indent:
            diags.error(
                Location(path, number, indent.index("\t") + 1),
                f"tab character in the indentation of line {number}",
                "YAML indents with spaces only: replace the tab with spaces",
                root=True,
            )
            return
    if _is_indentation(problem, lines, where.line):
        culprit = _odd_line_out(lines, where.line)
        if culprit != where.line:
            text_line = lines[culprit - 1]
            where = Location(path, culprit, _indent(text_line) + 1)
        diags.error(
            where,
            f"indentation error: line {where.line} does not line up with the lines around it",
            f"indent line {where.line} with as many spaces as the other keys at its level "
            "(or add the missing ':' or '- ' on the line above)",
            root=True,
        )
        return
    opened = exc.context_mark
    if opened is not None and "flow" in (exc.context or "") and problem.startswith("expected"):
        bracket = "[" if "sequence" in (exc.context or "") else "{"
        diags.error(
            _loc(path, opened),
            f"YAML syntax: the '{bracket}' opened here is not closed",
            f"close it on this line, or check line {where.line} (the parser stopped there: "
            f"{problem})",
            root=True,
        )
        return
    hint = ""
    if "mapping values are not allowed here" in problem:
        hint = "a value that contains ': ' must be quoted"
    if exc.context_mark is not None and "flow" in (exc.context or ""):
        hint = f"the bracket opened at line {exc.context_mark.line + 1} is not closed"
    context = f" ({exc.context})" if exc.context and exc.problem else ""
    diags.error(where, f"YAML syntax: {problem}{context}", hint, root=True)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _is_indentation(problem: str, lines: list[str], number: int) -> bool:
    """Whether the parser's complaint at line `number` comes from a misaligned line."""
    if "expected <block end>" in problem or "did not find expected key" in problem:
        return True
    if "mapping values are not allowed here" not in problem or not 1 < number <= len(lines):
        return False
    above = [ln for ln in lines[: number - 1] if ln.strip() and not ln.lstrip().startswith("#")]
    if not above:
        return False
    prev = above[-1]
    # Deeper than the line above, which does not open a block: a stray indentation.
    return _indent(lines[number - 1]) > _indent(prev) and not prev.rstrip().endswith(":")


def _odd_line_out(lines: list[str], number: int) -> int:
    """The line to fix: the reported one, or the line above it when that one alone is
    less indented than its neighbours (a key dedented out of its block)."""
    content = [
        i
        for i in range(1, number + 1)
        if lines[i - 1].strip() and not lines[i - 1].lstrip().startswith("#")
    ]
    if len(content) < 3 or content[-1] != number:
        return number
    before, prev = content[-3], content[-2]
    here = _indent(lines[number - 1])
    if _indent(lines[before - 1]) == here > _indent(lines[prev - 1]):
        return prev
    return number


def _scalar(node: yaml.ScalarNode, loc: Location, diags: Diagnostics) -> object:
    text: str = node.value
    if node.style is not None:
        return text  # quoted or block scalar: always a string
    if node.tag != STR_TAG:
        return _explicit(node)
    if NULL_RE.match(text):
        return None
    if BOOL_RE.match(text):
        return text.lower() == "true"
    if LEADING_ZERO_RE.match(text):
        diags.error(
            loc,
            f"'{text}' is an ambiguous number: YAML 1.1 reads it as {_octal(text)}, "
            f"YAML 1.2 as {int(text)}",
            f"write {int(text)} if you mean the number, or quote it ('{text}') if it is a name",
            root=True,
        )
        return text
    if INT_RE.match(text):
        if text.startswith(("0o", "0x")):
            return int(text[2:], 8 if text[1] == "o" else 16)
        return int(text)
    if FLOAT_RE.match(text):
        return float(text.lower().replace(".inf", "inf").replace(".nan", "nan"))
    return text


def _explicit(node: yaml.ScalarNode) -> object:
    """A scalar with an explicit tag (`!!int 7`): constructed as YAML says."""
    return yaml.SafeLoader("").construct_object(node, deep=True)


def _octal(text: str) -> str:
    digits = text.lstrip("+-")
    try:
        return f"octal {int(digits, 8) * (-1 if text.startswith('-') else 1)}"
    except ValueError:
        return "an error (8 and 9 are not octal digits)"


def _convert(node: yaml.Node, path: str, loader: yaml.SafeLoader, diags: Diagnostics) -> YNode:
    loc = _loc(path, node.start_mark)
    if isinstance(node, yaml.ScalarNode):
        raw = node.value if node.style is None else ""
        return YScalar(loc, _scalar(node, loc, diags), raw)
    if isinstance(node, yaml.SequenceNode):
        return YSeq(loc, [_convert(item, path, loader, diags) for item in node.value])
    if isinstance(node, yaml.MappingNode):
        result = YMap(loc)
        for key_node, value_node in node.value:
            key_loc = _loc(path, key_node.start_mark)
            if not isinstance(key_node, yaml.ScalarNode):
                diags.error(key_loc, "mapping keys must be plain names, not lists or mappings")
                continue
            key = str(key_node.value)  # the text as written: keys are names
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
