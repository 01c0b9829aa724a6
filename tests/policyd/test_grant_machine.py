"""A Hypothesis state machine over the grant service: after every step of random
request / approve / deny / revoke / emergency / time passing / topology change /
restart / lost state file sequences, the book, the kernel and the audit trail agree.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from datetime import timedelta
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from policyd.grants import GrantError, GrantState
from tests.policyd.test_grant_service import Gateway, run
from topology.model import frozen_map

REQUESTERS = ["vendor-tech", "engineer-1"]
APPROVERS = ["shift-lead-1", "vendor-tech", "engineer-1"]
# the audit event that leaves a grant in each state
LAST_EVENT = {
    GrantState.REQUESTED: {"grant_requested", "grant_open_rolled_back"},
    GrantState.ACTIVE: {"grant_approved", "emergency_opened", "grant_recovered"},
    GrantState.DENIED: {"grant_denied"},
    GrantState.REVOKED: {"grant_revoked", "grant_ended"},
    GrantState.EXPIRED: {"grant_expired"},
}
TERMINAL = {"grant_denied", "grant_revoked", "grant_ended", "grant_expired"}


class GrantMachine(RuleBasedStateMachine):
    """The in-memory kernel; tests/policyd/grant_machine_kernel.py runs it on nftables."""

    make_gateway: type[Gateway] = Gateway

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="zg-grants-"))
        self.gw = self.make_gateway(self.dir)
        run(self.gw.service.start())
        self.original = self.gw.topology
        self.ids: list[str] = []

    def teardown(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def _try(self, coro: object) -> None:
        try:
            grant = run(coro)  # type: ignore[arg-type]
        except GrantError:
            return
        if grant.id not in self.ids:
            self.ids.append(grant.id)

    def _pick(self, i: int) -> str:
        return self.ids[i % len(self.ids)] if self.ids else "g0-none"

    @rule(who=st.sampled_from(REQUESTERS), minutes=st.integers(1, 240))
    def request(self, who: str, minutes: int) -> None:
        self._try(
            self.gw.service.request(
                who, "vendor-maintenance", timedelta(minutes=minutes), "work", who
            )
        )

    @rule(minutes=st.integers(1, 90))
    def emergency(self, minutes: int) -> None:
        self._try(
            self.gw.service.emergency(
                "safety-engineer-1", "safety-emergency", timedelta(minutes=minutes), "trip", "s"
            )
        )

    @rule(i=st.integers(0, 50), who=st.sampled_from(APPROVERS), note=st.text(max_size=5))
    def approve(self, i: int, who: str, note: str) -> None:
        self._try(self.gw.service.approve(self._pick(i), who, who, note))

    @rule(i=st.integers(0, 50), who=st.sampled_from(APPROVERS))
    def deny(self, i: int, who: str) -> None:
        self._try(self.gw.service.deny(self._pick(i), who, who, "no"))

    @rule(i=st.integers(0, 50), who=st.sampled_from([*APPROVERS, "safety-engineer-1"]))
    def revoke(self, i: int, who: str) -> None:
        self._try(self.gw.service.revoke(self._pick(i), who, who, admin=False))

    @rule(minutes=st.integers(1, 180))
    def time_passes(self, minutes: int) -> None:
        self.gw.now += timedelta(minutes=minutes)
        run(self.gw.service.tick())

    @rule(drop_role=st.booleans())
    def topology_change(self, drop_role: bool) -> None:
        topo = self.original
        if drop_role:
            vt = dataclasses.replace(topo.identities["vendor-tech"], roles=())
            topo = dataclasses.replace(
                topo, identities=frozen_map({**topo.identities, "vendor-tech": vt})
            )
        self.gw.set_topology(topo)
        run(self.gw.service.topology_changed(topo))

    @rule(lose_state=st.booleans())
    def restart(self, lose_state: bool) -> None:
        if lose_state:
            (self.dir / "grants.json").write_text("{corrupt")
        self.gw.restart()
        run(self.gw.service.topology_changed(self.gw.topology))
        self.ids.extend(g for g in self.gw.service.book.grants if g not in self.ids)

    @rule(add=st.booleans())
    def someone_else_changes_the_kernel(self, add: bool) -> None:
        """`nft add/delete element` by hand; the periodic (not full) pass must notice."""
        self.gw.foreign_change(add)
        run(self.gw.service.reconcile())

    @rule()
    def periodic_reconcile(self) -> None:
        run(self.gw.service.reconcile())

    @invariant()
    def book_equals_kernel(self) -> None:
        book = self.gw.service.book
        active = {
            (g.conduit, self.gw.kernel.address_of(g.conduit, g.identity)): g.id
            for g in book.active()
        }
        kernel = self.gw.kernel_view()
        assert kernel == active, (kernel, active)
        for g in book.active():
            assert g.expires_at is not None and g.expires_at > self.gw.now

    @invariant()
    def book_equals_audit(self) -> None:
        last: dict[str, str] = {}
        terminal: dict[str, int] = {}
        for a in self.gw.audits:
            gid = a.details.get("id")
            if isinstance(gid, str):
                last[gid] = a.action
                if a.action in TERMINAL:
                    terminal[gid] = terminal.get(gid, 0) + 1
        for g in self.gw.service.book.grants.values():
            assert last.get(g.id) in LAST_EVENT[g.state], (g.id, g.state, last.get(g.id))
        assert all(n == 1 for n in terminal.values()), terminal


TestGrantMachine = GrantMachine.TestCase
TestGrantMachine.settings = settings(max_examples=60, stateful_step_count=25, deadline=None)
