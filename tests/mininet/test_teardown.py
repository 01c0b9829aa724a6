"""Nothing outlives a scenario: after a normal end, an error inside, or Ctrl-C.

Leftovers checked (zonegate.lab.leftovers): Mininet host shells, any process in the
scenario's network namespaces (wireguard-go, tunneld, policyd, asset simulators),
veth interfaces and bridges named with the run's prefix, named namespaces, a zonegate
nft table or daemon socket in the root namespace.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import require
from tests.mininet.conftest import REQUIRED, ROOT
from zonegate.lab.leftovers import capture, leftovers
from zonegate.lab.scenario import Scenario, random_prefix

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

    def test_nothing_left_after_ctrl_c_in_the_middle_of_the_demo(self, tmp_path: Path) -> None:
        require(*REQUIRED)
        argv = [sys.executable, "-m", "zonegate.lab.demo", "--grant-seconds", "120"]
        argv += ["--workdir", str(tmp_path)]
        env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
        log = tmp_path / "demo.out"
        with log.open("wb") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        try:
            deadline = time.monotonic() + 180
            # The vendor's grant is active and the demo waits for it to run out.
            while "for the grant to run out" not in log.read_text():
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
            match = re.search(r"\(prefix (zm[0-9a-f]+)\)", log.read_text())
            assert match, log.read_text()
            fp = capture(match.group(1))
            running = leftovers(fp)
            assert len(fp.netns) > 3 and any("wireguard-go" in r for r in running), running
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=60) == 130, log.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        text = log.read_text()
        assert "interrupted" in text and "torn down: nothing left behind" in text, text
        assert leftovers(fp) == [], text
