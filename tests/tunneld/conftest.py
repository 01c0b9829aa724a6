"""Fixtures for tunneld's namespace tests (see netns_daemons.py)."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.tunneld.netns_daemons import Sites, sites_fixture


@pytest.fixture
def sites(tmp_path: Path) -> Iterator[Sites]:
    yield from sites_fixture(tmp_path)
