"""Named crash points for fault tests: `ZONEGATE_FAILPOINT=name` kills the process there.

A test starts policyd with the variable set and checks that what survives (kernel,
state file, audit log) reconciles after a restart. Unset, `hit` costs one dict lookup.
"""

from __future__ import annotations

import os
import signal

_ACTIVE = frozenset(filter(None, os.environ.get("ZONEGATE_FAILPOINT", "").split(",")))


def hit(name: str) -> None:
    """SIGKILL this process if the failpoint `name` is armed (as `kill -9` would)."""
    if name in _ACTIVE:
        os.kill(os.getpid(), signal.SIGKILL)
