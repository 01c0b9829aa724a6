from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import topology
from tests.flowlog.plant import TOPOLOGY, Plant
from topology.model import Topology


@pytest.fixture(scope="session")
def plant_topology() -> Topology:
    return topology.load(TOPOLOGY).topology


@pytest.fixture
def plant(plant_topology: Topology) -> Iterator[Plant]:
    """client -- gateway (stand-in ruleset) -- server namespaces, removed afterwards."""
    p = Plant(plant_topology)
    try:
        yield p
    finally:
        p.close()


async def until(predicate: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    """Yield to the recorder until predicate() holds; fail naming `what` at the deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    return tmp_path / "flows.jsonl"
