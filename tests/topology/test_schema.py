"""The published JSON Schema says what the loader reads: same keys, and it rejects what
the loader rejects where a schema can say it.

When a test here fails after you added a field to the loader, its message names the
place in the format and the function of topology/schema.py to add it to; then run
`zonegate schema > docs/topology.schema.json`.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.topology.conftest import BASE
from tests.topology.test_errors import CASES
from topology import TopologyError, load
from topology.diagnostics import Diagnostics, Location
from topology.fields import Reader
from topology.schema import schema_text, topology_schema
from topology.yamlnodes import YMap, YNode, YSeq, parse_yaml, to_plain

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = topology_schema()
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)

# Where each part of the format is built in topology/schema.py.
SCHEMA_FUNCTION = {
    "sites": "site()",
    "roles": "role()",
    "identities": "identity()",
    "services": "service()",
    "conduits": "conduit()",
    "tests": "policy_test()",
}

# A topology that uses every mapping the loader knows (with the docs example and the
# examples this covers every key a schema section lists).
EVERYTHING = BASE.replace(
    "roles:\n",
    """services:
  vendor-proto:
    transport: tcp
    ports: [7000]
    description: every key
    payload_offset: 32
    classes: {read: [1], write: 2}
roles:
""",
).replace(
    "    allow: [https]\n",
    """    allow: [https, {vendor-proto: read}]
    schedule: {days: mon-fri, hours: "06:00-20:00", tz: Europe/Berlin}
    approval: {by: [lead], max: 4h}
    record: true
    description: all terms
    accept_risk: tested
  break-glass:
    from: {identities: [eng-1], zones: [site-a/office]}
    to: {zone: site-a/control}
    allow: ssh
    emergency: {max: 1h}
""",
)


def docs_snippets() -> Iterator[tuple[str, str]]:
    for md in sorted((ROOT / "docs").glob("*.md")):
        for i, block in enumerate(re.findall(r"```yaml\n(.*?)```", md.read_text(), re.S)):
            if not block.startswith("version:"):
                block = "version: 1\n" + block
            yield f"{md.name}#{i + 1}", block


def example_files() -> list[Path]:
    return sorted((ROOT / "examples").rglob("*.yaml"))


def plain(text: str) -> object:
    diags = Diagnostics()
    node = parse_yaml(text, "x.yaml", diags)
    assert not diags.items, diags.items
    return to_plain(node)


def schema_errors(text: str) -> list[str]:
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in VALIDATOR.iter_errors(plain(text))
    ]


def test_the_published_schema_is_the_generated_one() -> None:
    published = (ROOT / "docs" / "topology.schema.json").read_text()
    assert published == schema_text(), (
        "docs/topology.schema.json is stale: run `zonegate schema > docs/topology.schema.json`"
    )
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


@pytest.mark.parametrize("path", example_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_example_file_validates(path: Path) -> None:
    assert schema_errors(path.read_text()) == []


@pytest.mark.parametrize(("name", "text"), list(docs_snippets()), ids=lambda v: v[:20])
def test_every_docs_snippet_validates(name: str, text: str) -> None:
    assert schema_errors(text) == [], name


def test_everything_loads_and_validates(tmp_path: Path) -> None:
    (tmp_path / "t.yaml").write_text(EVERYTHING)
    load(tmp_path / "t.yaml")
    assert schema_errors(EVERYTHING) == []


NAMED_SECTIONS = {"sites", "roles", "identities", "services", "conduits"}


def _is_named(path: tuple[str, ...]) -> bool:
    """Whether the keys of the mapping at `path` are names (of sites, zones, classes...)."""
    if len(path) == 1:
        return path[0] in NAMED_SECTIONS
    return len(path) == 3 and path[2] in ("zones", "assets", "classes")


def _paths(node: YNode, path: tuple[str, ...], out: dict[Location, tuple[str, ...]]) -> None:
    """Each mapping's location -> its place in the format, names replaced by '*'."""
    if isinstance(node, YMap):
        out[node.location] = path
        for key, (_, child) in node.entries.items():
            _paths(child, (*path, "*" if _is_named(path) else key), out)
    elif isinstance(node, YSeq):
        for item in node.items:
            _paths(item, (*path, "[]"), out)


def _resolve(schema: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any] | None:
    """The object schema at `path`, following $ref, named sections and one-or-many."""
    node: dict[str, Any] | None = schema
    for step in path:
        node = _object_branch(node)
        if node is None:
            return None
        if step == "[]":
            node = node.get("items")
        elif step in node.get("properties", {}):
            node = node["properties"][step]
        else:
            extra = node.get("additionalProperties")
            node = extra if isinstance(extra, dict) else None
    return _object_branch(node)


def _object_branch(node: dict[str, Any] | None) -> dict[str, Any] | None:
    while node is not None and "$ref" in node:
        node = SCHEMA["$defs"][node["$ref"].rsplit("/", 1)[1]]
    if node is None:
        return None
    for branch in node.get("anyOf", []):
        found = _object_branch(branch)
        if found is not None and ("properties" in found or "items" in found):
            return found
    return node


def test_schema_lists_exactly_the_keys_the_loader_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Record every `Reader.keys(node, allowed)` call while loading, compare with the schema."""
    seen: list[tuple[Location, tuple[str, ...], str]] = []
    original = Reader.keys

    def recording(self: Reader, node: YMap, allowed: Any, what: str) -> None:
        seen.append((node.location, tuple(allowed), what))
        original(self, node, allowed, what)

    monkeypatch.setattr(Reader, "keys", recording)
    texts = {"everything.yaml": EVERYTHING}
    texts |= {f"doc{i}.yaml": t for i, (_, t) in enumerate(docs_snippets())}
    texts |= {p.name + str(i): p.read_text() for i, p in enumerate(example_files())}
    paths: dict[Location, tuple[str, ...]] = {}
    for name, text in texts.items():
        (tmp_path / "t.yaml").write_text(text)
        diags = Diagnostics()
        node = parse_yaml(text, "t.yaml", diags)
        assert node is not None
        _paths(node, (), paths)
        seen_before = len(seen)
        with contextlib.suppress(Exception):
            load(tmp_path / "t.yaml")
        # Locations are per file: re-key this file's calls to paths now.
        seen[seen_before:] = [
            (Location("t.yaml", loc.line, loc.col), allowed, what)
            for loc, allowed, what in seen[seen_before:]
        ]
        problems = []
        for loc, allowed, what in seen[seen_before:]:
            place = paths.get(loc)
            if place is None:
                continue
            sub = _resolve(SCHEMA, place)
            shown = ".".join(place) or "(top level)"
            function = (
                SCHEMA_FUNCTION.get(place[0], "topology_schema()")
                if place
                else ("topology_schema()")
            )
            if sub is None or "properties" not in sub:
                problems.append(f"{shown} ({what}) has no object schema; add it in {function}")
                continue
            listed = set(sub["properties"])
            for key in sorted(set(allowed) - listed):
                problems.append(
                    f"the loader reads '{key}' in {shown} ({what}) but the schema does not "
                    f"list it: add it to the properties in topology/schema.py {function}, "
                    "then run `zonegate schema > docs/topology.schema.json`"
                )
            for key in sorted(listed - set(allowed)):
                problems.append(
                    f"the schema lists '{key}' in {shown} ({what}) but the loader rejects it: "
                    f"remove it from topology/schema.py {function}, or read it in the loader"
                )
        paths.clear()
        assert not problems, f"{name}:\n" + "\n".join(problems)
    assert len({a for _, a, _ in seen}) >= 10  # every kind of mapping was visited


# Loader errors a schema can also express (by case id in test_errors.CASES). The others
# need names from other sections, address arithmetic or the model (overlaps, hashes).
SCHEMA_SAYS = {
    "unknown-top-key",
    "missing-version",
    "wrong-version",
    "bad-cidr",
    "level-range",
    "level-type",
    "slash-in-allow",
    "target-both",
    "bad-duration",
    "bad-day",
    "bad-hours",
    "no-overlay",
    "bad-kind",
    "bad-address",
    "bad-name",
    "zones-as-list",
    "test-expect",
    "both-approval-emergency",
    "empty-from",
    "builtin-service",
}


@pytest.mark.parametrize(
    ("old", "new"),
    [c[1:3] for c in CASES if c[0] in SCHEMA_SAYS],
    ids=[c[0] for c in CASES if c[0] in SCHEMA_SAYS],
)
def test_the_schema_rejects_what_the_loader_rejects(old: str, new: str) -> None:
    assert old in BASE
    assert schema_errors(BASE.replace(old, new)), "the schema accepts it, the loader does not"


def test_the_schema_accepts_the_base() -> None:
    assert schema_errors(BASE) == []


def test_the_published_schema_parses() -> None:
    assert json.loads((ROOT / "docs" / "topology.schema.json").read_text())["$id"]


def test_zonegate_schema_prints_it_without_jsonschema_installed() -> None:
    code = (
        "import io, sys, contextlib\n"
        "from zonegate.cli import main\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out):\n"
        "    main(['schema'])\n"
        "assert 'jsonschema' not in sys.modules, 'schema needs no jsonschema at run time'\n"
        "sys.stdout.write(out.getvalue())\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout == (ROOT / "docs" / "topology.schema.json").read_text()


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("    allow: [https]\n", "    allow: [https]\n    accept_risk: ''\n"),
        ("    allow: [https]\n", "    allow: [https]\n    record: yes\n"),
        ("    gateway: {underlay", "    tz: ''\n    gateway: {underlay"),
        ("    allow: [https]\n", "    allow: []\n"),
    ],
    ids=["empty-risk-reason", "yaml11-boolean", "empty-tz", "empty-allow"],
)
def test_the_schema_rejects_newer_mistakes_too(tmp_path: Path, old: str, new: str) -> None:
    text = BASE.replace(old, new, 1)
    (tmp_path / "t.yaml").write_text(text)
    with pytest.raises(TopologyError):
        load(tmp_path / "t.yaml")
    assert schema_errors(text)
