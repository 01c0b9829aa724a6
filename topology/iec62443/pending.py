"""Features other engineers are adding, looked up in one place.

Until a feature lands its function returns None and the checks list a `feature` gap;
the issue that adds it changes only its function here (docs/iec62443.md lists them).
"""

from __future__ import annotations

from topology.model import Conduit, Identity


def second_factor_of(identity: Identity) -> str | None:
    """The approver's or user's second factor; none exists until issue 15 lands."""
    return None


def dual_approval_of(conduit: Conduit) -> str | None:
    """How many approvers a conduit's grant needs beyond one; issue 15 adds it."""
    return None


def register_ranges_of(conduit: Conduit) -> str | None:
    """Modbus register ranges a conduit narrows writes to; issue 12 adds them.

    With issue 12's model: the `describe()` of each `ref.modbus` (a ModbusScope) whose
    `write` is set, among the conduit's `allow`.
    """
    return None
