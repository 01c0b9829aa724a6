"""The grant state machine (book == kernel == audit after every step) on real nftables,
in a network namespace of its own."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.netns import Namespaces
from tests.policyd.nsnet import ENV, require_tools

pytestmark = pytest.mark.root
ROOT = Path(__file__).resolve().parents[2]


def test_grant_state_machine_on_the_real_kernel() -> None:
    require_tools()
    with Namespaces("zm") as nets:
        ns = nets.add(nets.tag)
        out = subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                ns,
                sys.executable,
                "-m",
                "tests.policyd.grant_machine_kernel",
                "25",
            ],
            capture_output=True,
            text=True,
            env=ENV,
            cwd=ROOT,
            timeout=600,
            check=False,
        )
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-6000:]
