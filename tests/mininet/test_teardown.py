"""Nothing outlives a scenario: after a normal end, an error inside, or Ctrl-C.

Leftovers checked (topology.leftovers): Mininet host shells, any process in the
scenario's network namespaces (wireguard-go, tunneld, policyd, asset simulators),
veth interfaces and bridges named with the run's prefix, named namespaces, a zonegate
nft table or daemon socket in the root namespace.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import require
from tests.mininet.conftest import REQUIRED, ROOT
from topology.leftovers import capture, leftovers
from topology.scenario import Scenario, random_prefix

pytestmark = [pytest.mark.root, pytest.mark.mininet]
PLANT = ROOT / "examples" / "plant"


class Boom(Exception):
    pass


class TestTeardown:
    def test_nothing_left_after_an_error_inside_a_running_scenario(self, tmp_path: Path) -> None:
        require(*REQUIRED)
        prefix = random_prefix()
        with pytest.raises(Boom), Scenario(PLANT, tmp_path, prefix=prefix) as scenario:
            running = leftovers(capture(prefix))
            # The check sees a running plant: shells, wireguard-go, daemons, bridges.
            assert any("wireguard-go" in item for item in running), running
            assert any(item.startswith("bridge ") for item in running), running
            assert scenario.footprint is not None and len(scenario.footprint.netns) > 3
            raise Boom
        assert scenario.leftovers() == []

    def test_nothing_left_after_ctrl_c(self, tmp_path: Path) -> None:
        require(*REQUIRED)
        prefix = random_prefix()
        argv = [sys.executable, "-m", "topology.scenario", str(PLANT), "--keep"]
        argv += ["--prefix", prefix, "--workdir", str(tmp_path)]
        env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
        log = tmp_path / "scenario.out"
        with log.open("wb") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        try:
            deadline = time.monotonic() + 120
            while "Ctrl-C tears everything down" not in log.read_text():
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
            fp = capture(prefix)
            assert len(fp.netns) > 3 and leftovers(fp), "the running plant is not visible"
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=60) == 130, log.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert "interrupted; torn down" in log.read_text()
        assert leftovers(fp) == [], log.read_text()
