"""The second factor asked by conduits with `second_factor: totp` (SR 1.1 RE2).

One check for every path that acts on such a conduit: approving and revoking its grants
(the approver's or revoker's code), opening its emergency access (the requester's code).
The gateway's root administrator on the local socket is exempt: it already holds the
machine. Every refusal is audited, so a guessing attempt is visible, and the store
locks an identity after repeated failures.
"""

from __future__ import annotations

from policyd.api.context import Caller, ControlState
from policyd.api.errors import ApiError
from policyd.flowlog.records import AuditEvent
from policyd.totp import TotpError


def require_second_factor(
    state: ControlState, caller: Caller, conduit: str, code: str | None, action: str
) -> None:
    c = state.service.book.topology.conduits.get(conduit)
    if c is None or c.second_factor is None or caller.admin:
        return
    try:
        if state.totp is None:
            raise TotpError("this gateway has no second-factor store (policyd --state-dir)")
        state.totp.verify(caller.identity, code, state.clock().timestamp())
    except TotpError as exc:
        state.audit(
            AuditEvent(
                "second_factor_failed",
                "failure",
                f"{caller.identity}: {exc.reason}",
                actor=caller.label(),
                details={"conduit": conduit, "action": action, "identity": caller.identity},
            )
        )
        raise ApiError(401, f"second factor: {exc.reason}") from None
