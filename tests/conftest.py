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
