from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

BASE = """\
version: 1
sites:
  site-a:
    gateway: {underlay: 192.0.2.1, overlay: 100.64.0.1}
    zones:
      control: {cidr: 10.1.1.0/24, security_level: 2}
      office: {cidr: 10.1.9.0/24, security_level: 1}
    assets:
      plc-1: {zone: control, address: 10.1.1.5}
      pc-1: {zone: office, address: 10.1.9.7}
roles:
  engineer: {}
  lead: {}
  auditor: {}
identities:
  eng-1: {kind: user, roles: [engineer], overlay: 100.64.1.1}
  lead-1: {kind: user, roles: [lead], overlay: 100.64.1.2}
conduits:
  eng-read:
    from: {roles: [engineer]}
    to: {asset: site-a/plc-1}
    allow: [{modbus: read}, ssh]
  lead-office:
    from: {roles: [lead, auditor]}
    to: {zone: site-a/office}
    allow: [https]
tests:
  - {from: eng-1, to: site-a/plc-1, service: modbus/read, expect: allow}
"""


@pytest.fixture
def write_topology(tmp_path: Path) -> Callable[[str], Path]:
    """Write YAML text to a file and return its path."""

    def write(text: str, name: str = "topo.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write
