"""Give an example topology real keys: copy it, run keygen per identity, pin the bundles.

The examples in `examples/` pin no keys (a key is made where its identity lives, and an
example has no such place). Tests, the Mininet scenario and the demo need runnable
copies: `materialize_keys(src, dst, identities)` copies the topology's YAML files to
`dst/topology/`, makes `dst/keys/NAME/` with `tunneld keygen` for each identity (the
site's KEM for gateways) and adds `keys: ../keys/NAME/identity.pub` to each of them.

The copy is written back with PyYAML, so comments are not kept; values are. The
private keys land under `dst/keys/` (0700/0600): a test or demo fixture, never a way to
hand out keys to people.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

import topology
from tunneld.keys import keygen


@dataclass(frozen=True)
class Materialized:
    topology: Path  # directory of YAML files with keys: pinned
    keys: dict[str, Path]  # identity name -> its key directory (for --keys)

    def pub(self, name: str) -> Path:
        return self.keys[name] / "identity.pub"


def _yaml_files(src: Path) -> list[Path]:
    if src.is_file():
        return [src]
    return sorted(p for p in src.iterdir() if p.suffix in (".yaml", ".yml"))


def materialize_keys(
    src_dir: Path | str, dst_dir: Path | str, identities: Iterable[str]
) -> Materialized:
    """Copy topology `src_dir` to `dst_dir/topology` with fresh keys pinned for `identities`.

    Raises KeyError for an identity the topology does not define, and TopologyError if
    the source (or the result) does not load.
    """
    src, dst = Path(src_dir), Path(dst_dir)
    topo = topology.load(src).topology
    wanted = list(dict.fromkeys(identities))
    unknown = [n for n in wanted if n not in topo.identities]
    if unknown:
        raise KeyError(f"identities not in {src}: {', '.join(unknown)}")
    out = dst / "topology"
    out.mkdir(parents=True, exist_ok=True)
    keys: dict[str, Path] = {}
    for name in wanted:
        ident = topo.identities[name]
        kem = topo.sites[ident.site].kem if ident.kind == "site" and ident.site else "ml-kem-768"
        keys[name] = dst / "keys" / name
        keygen(keys[name], kem)
    pinned: set[str] = set()
    for path in _yaml_files(src):
        target = out / path.name
        doc: Any = yaml.safe_load(path.read_text())
        idents = doc.get("identities") if isinstance(doc, dict) else None
        if not isinstance(idents, dict) or not set(idents) & set(wanted):
            shutil.copyfile(path, target)
            continue
        for name in wanted:
            if name in idents:
                entry = idents[name] if isinstance(idents[name], dict) else {}
                entry["keys"] = f"../keys/{name}/identity.pub"
                idents[name] = entry
                pinned.add(name)
        target.write_text(yaml.safe_dump(doc, sort_keys=False, default_flow_style=None))
    missing = set(wanted) - pinned
    if missing:
        raise KeyError(f"no identities: entry found for {', '.join(sorted(missing))} in {src}")
    topology.load(out)  # the copy must still be a valid topology
    return Materialized(out, keys)
