"""Shared test helpers: tests that need root or binaries fail loudly, never skip."""

from __future__ import annotations

import os
import shutil

import pytest


def require(*binaries: str) -> None:
    """Fail (not skip) with what to install when the machine lacks something."""
    if os.geteuid() != 0:
        pytest.fail("this test needs root (network namespaces); run scripts/test as root")
    missing = [b for b in binaries if shutil.which(b) is None]
    if missing:
        pytest.fail(
            f"missing {', '.join(missing)}: run scripts/bootstrap (it installs the Debian "
            "packages wireguard-tools wireguard-go nftables mininet bridge-utils conntrack)"
        )


def sr_properties(nodeid: str, ids: tuple[str, ...], known: set[str]) -> list[tuple[str, str]]:
    """The JUnit properties for a test's `@pytest.mark.sr(...)`; unknown ids are an error."""
    from topology.iec62443.junit import SR_PROPERTY

    for req in ids:
        if req not in known:
            raise pytest.UsageError(
                f"{nodeid}: @pytest.mark.sr({req!r}) is not a requirement in "
                "topology/iec62443/levels.yaml (write e.g. 'SR 2.1 RE3')"
            )
    return [(SR_PROPERTY, req) for req in ids]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Carry `@pytest.mark.sr(...)` into the JUnit XML as `<property name="sr">`.

    `zonegate report --iec62443 --tests FILE` reads these properties; an id that is not
    in the levels table stops the run here, rather than evidence going missing later.
    """
    from topology.iec62443.catalogue import load_catalogue

    known = {r.id for r in load_catalogue().requirements}
    for item in items:
        for marker in item.iter_markers("sr"):
            item.user_properties.extend(sr_properties(item.nodeid, marker.args, known))
