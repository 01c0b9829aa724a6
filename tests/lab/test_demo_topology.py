"""The demo tells the truth about the engineers' schedule at any time of day."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from topology.evaluate import Flow, evaluate
from zonegate.lab.demo import ENGINEER, PLC, choose_topology

PLANT = Path(__file__).resolve().parents[2] / "examples" / "plant"


def test_inside_working_hours_the_example_itself_is_used(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = choose_topology(PLANT, tmp_path, datetime(2026, 11, 25, 11, 0, tzinfo=UTC))
    assert path == PLANT
    assert "modbus/read: allow" in capsys.readouterr().out


def test_outside_working_hours_a_widened_copy_is_used_and_said(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    saturday_night = datetime(2026, 11, 28, 23, 0, tzinfo=UTC)
    path, topo = choose_topology(PLANT, tmp_path, saturday_night)
    out = capsys.readouterr().out
    assert path != PLANT and "modbus/read: deny" in out and "widened" in out
    assert "engineers-read-plcs" in out and str(path) in out
    assert evaluate(topo, Flow(ENGINEER, PLC, "modbus/read", at=saturday_night)).allowed
    # Only schedules change: the vendor still needs a grant in the copy.
    assert not evaluate(topo, Flow("vendor-tech", PLC, "modbus/write", at=saturday_night)).allowed
