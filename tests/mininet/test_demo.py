"""scripts/demo's story (zonegate.lab.demo) runs to the end and leaves nothing behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import require
from tests.mininet.conftest import REQUIRED, ROOT

pytestmark = [pytest.mark.root, pytest.mark.mininet]


class TestDemo:
    def test_story_runs_with_real_traffic_and_tears_down(self, tmp_path: Path) -> None:
        require(*REQUIRED)
        argv = [sys.executable, "-m", "zonegate.lab.demo", "--grant-seconds", "6"]
        argv += ["--workdir", str(tmp_path)]
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        res = subprocess.run(
            argv, capture_output=True, text=True, env=env, cwd=ROOT, timeout=240, check=False
        )
        out = res.stdout + res.stderr
        print(out)
        assert res.returncode == 0, out
        table = out[out.index("== 9. What happened") :]
        assert "MISMATCH" not in table and table.count(" ok") >= 6
        assert "PSK AGE" in out  # tunneld status, with post-quantum PSK ages
        assert "grant_expired" in out  # the flow log recorded the expiry
        evidence = out[out.index("== 10. IEC 62443 evidence") :]
        assert "requirement checks over 5 zones" in evidence
        assert "Approvals: 1" in evidence  # the lead's approval, read from the run's log
        assert "torn down: nothing left behind" in out
