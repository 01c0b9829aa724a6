"""Mininet scenario fixtures: one running plant per test class, dumped when a test fails.

FAUCET-style: each scenario class brings its plant up once (a class-scoped fixture),
every test in it sends real traffic, and when a test fails the state of every gateway
(daemon logs, `nft list ruleset`, `wg show`, addresses, routes, tunnel status) is
written into that test's tmpdir before the plant is torn down.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from tests.conftest import require
from zonegate.lab.scenario import Scenario

ROOT = Path(__file__).resolve().parents[2]
REQUIRED = ("brctl", "ip", "nft", "wg", "wireguard-go", "mnexec")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.when == "call":
        item.stash[FAILED] = report.failed
    return report


FAILED = pytest.StashKey[bool]()


def bring_up(example: str, factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    require(*REQUIRED)
    scenario = Scenario(ROOT / "examples" / example, factory.mktemp(example), log=print)
    with scenario:
        yield scenario


@pytest.fixture(autouse=True)
def dump_on_failure(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[None]:
    """After a failed test in a scenario class, dump that scenario into the test's tmpdir."""
    yield
    scenario = getattr(request.instance, "scenario", None)
    if request.node.stash.get(FAILED, False) and isinstance(scenario, Scenario):
        scenario.dump(tmp_path / "dump")
        print(f"scenario state dumped into {tmp_path / 'dump'}")
