"""What a conduit's configuration says about features the checks ask for, in one place:
a second factor (issue 15), dual approval (issue 15), Modbus write ranges (issue 12).
None means the conduit does not use the feature: a `configuration` gap the file can fix.
"""

from __future__ import annotations

from topology.model import Conduit


def second_factor_of(conduit: Conduit) -> str | None:
    """The second factor the conduit's grant actions ask for (approve, revoke, open)."""
    if conduit.second_factor is None:
        return None
    who = "approvers and revokers" if conduit.approval is not None else "whoever opens it"
    return f"{conduit.second_factor.upper()} from {who}"


def dual_approval_of(conduit: Conduit) -> str | None:
    """How many distinct approvers the conduit's grants need, when more than one."""
    a = conduit.approval
    if a is None or a.count < 2:
        return None
    return f"{a.count} distinct approvers, never the requester ({a.describe()})"


def register_ranges_of(conduit: Conduit) -> str | None:
    """The Modbus register ranges writes through the conduit are limited to."""
    ranges = [
        ref.modbus.describe()
        for ref in conduit.allow
        if ref.modbus is not None and ref.modbus.write is not None
    ]
    return "; ".join(ranges) if ranges else None
