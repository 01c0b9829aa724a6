"""Grant rules: who may request, approve, open emergency access; durations; expiry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from policyd.grants import GrantBook, GrantError, GrantState, Refusal
from topology import load

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "plant"
NOW = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
H = timedelta(hours=1)


@pytest.fixture
def book() -> GrantBook:
    return GrantBook(load(EXAMPLE).topology)


@pytest.mark.sr("SR 1.13 RE1")
def test_request_approve_expire(book: GrantBook) -> None:
    g = book.request("vendor-tech", "vendor-maintenance", 2 * H, "replace pump firmware", NOW)
    assert g.state is GrantState.REQUESTED and g.expires_at is None
    a = book.approve(g.id, "shift-lead-1", NOW + timedelta(minutes=5))
    assert a.state is GrantState.ACTIVE and a.decided_by == "shift-lead-1"
    assert a.expires_at == NOW + timedelta(minutes=5) + 2 * H
    assert book.active() == [a]
    assert book.due(NOW + H) == []
    assert [g.id for g in book.due(NOW + 3 * H)] == [a.id]
    book.end(a.id, GrantState.EXPIRED, "kernel", NOW + 3 * H, "")
    assert book.get(a.id).state is GrantState.EXPIRED and book.active() == []


@pytest.mark.parametrize(
    ("identity", "conduit", "duration", "reason", "kind", "message"),
    [
        ("vendor-tech", "vendor-maintenance", 5 * H, "x", Refusal.INVALID, "exceeds"),
        ("vendor-tech", "vendor-maintenance", H, "  ", Refusal.INVALID, "reason is required"),
        ("engineer-1", "vendor-maintenance", H, "x", Refusal.FORBIDDEN, "does not admit"),
        ("nobody", "vendor-maintenance", H, "x", Refusal.FORBIDDEN, "unknown identity"),
        ("vendor-tech", "no-such", H, "x", Refusal.NOT_FOUND, "no conduit"),
        ("engineer-1", "engineers-read-plcs", H, "x", Refusal.CONFLICT, "takes no approval"),
        ("safety-engineer-1", "safety-emergency", H, "x", Refusal.CONFLICT, "emergency conduit"),
    ],
)
def test_bad_requests_are_refused_with_reason(
    book: GrantBook,
    identity: str,
    conduit: str,
    duration: timedelta,
    reason: str,
    kind: Refusal,
    message: str,
) -> None:
    with pytest.raises(GrantError) as info:
        book.request(identity, conduit, duration, reason, NOW)
    assert info.value.kind is kind and message in info.value.reason
    assert book.grants == {}


@pytest.mark.sr("SR 1.13 RE1", "SR 2.1 RE2")
def test_requester_cannot_approve_itself_and_only_named_approvers_can(book: GrantBook) -> None:
    g = book.request("vendor-tech", "vendor-maintenance", H, "firmware", NOW)
    for who, message in [
        ("vendor-tech", "cannot approve"),
        ("engineer-1", "may not decide"),
        ("ghost", "unknown identity"),
    ]:
        with pytest.raises(GrantError, match=message):
            book.approve(g.id, who, NOW)
    assert book.get(g.id).state is GrantState.REQUESTED
    denied = book.deny(g.id, "shift-lead-1", NOW, "not during the batch run")
    assert denied.state is GrantState.DENIED
    with pytest.raises(GrantError, match="is denied, not requested"):
        book.approve(g.id, "shift-lead-1", NOW)


def test_grant_never_outlives_the_identity(book: GrantBook) -> None:
    end = datetime(2027, 6, 30, tzinfo=UTC)
    g = book.request("vendor-tech", "vendor-maintenance", 4 * H, "x", end - H)
    assert book.approve(g.id, "shift-lead-1", end - H).expires_at == end
    with pytest.raises(GrantError, match="not valid now"):
        book.request("vendor-tech", "vendor-maintenance", H, "x", end + H)


@pytest.mark.sr("SR 2.1 RE3")
def test_emergency_is_immediate_capped_and_only_on_emergency_conduits(book: GrantBook) -> None:
    g = book.emergency("safety-engineer-1", "safety-emergency", H, "SIS trip loop", NOW)
    assert g.state is GrantState.ACTIVE and g.emergency and g.expires_at == NOW + H
    with pytest.raises(GrantError, match="capped at 1h"):
        book.emergency("safety-engineer-1", "safety-emergency", 2 * H, "x", NOW)
    with pytest.raises(GrantError, match="not declared for emergency"):
        book.emergency("vendor-tech", "vendor-maintenance", H, "x", NOW)
    with pytest.raises(GrantError, match="does not admit"):
        book.emergency("engineer-1", "safety-emergency", H, "x", NOW)


@pytest.mark.sr("SR 2.6")
def test_revoke_by_holder_approver_or_administrator_only(book: GrantBook) -> None:
    g = book.emergency("safety-engineer-1", "safety-emergency", H, "x", NOW)
    with pytest.raises(GrantError, match="may not revoke") as info:
        book.revoke(g.id, "shift-lead-1", NOW)  # no approver on an emergency conduit
    assert info.value.kind is Refusal.FORBIDDEN and book.get(g.id).state is GrantState.ACTIVE
    r = book.revoke(g.id, "safety-engineer-1", NOW)
    assert r.state is GrantState.REVOKED and book.active() == []
    with pytest.raises(GrantError, match="already revoked"):
        book.revoke(g.id, "safety-engineer-1", NOW)
    with pytest.raises(GrantError, match="no grant"):
        book.revoke("g999", "safety-engineer-1", NOW)

    v = book.request("vendor-tech", "vendor-maintenance", H, "x", NOW)
    book.approve(v.id, "shift-lead-1", NOW)
    with pytest.raises(GrantError, match="may not revoke"):
        book.revoke(v.id, "engineer-1", NOW)
    assert book.revoke(v.id, "shift-lead-1", NOW).state is GrantState.REVOKED

    w = book.request("vendor-tech", "vendor-maintenance", H, "x", NOW)
    done = book.revoke(w.id, "engineer-1", NOW, admin=True)
    assert done.state is GrantState.REVOKED and done.ended_by == "local:engineer-1"


def test_visible_to_holder_and_approvers(book: GrantBook) -> None:
    g = book.request("vendor-tech", "vendor-maintenance", H, "x", NOW)
    assert book.visible_to("vendor-tech") == [g] and book.visible_to("shift-lead-1") == [g]
    assert book.visible_to("engineer-1") == []


@pytest.mark.sr("SR 2.6")
def test_grants_of_removed_conduits_or_identities_are_invalidated(book: GrantBook) -> None:
    import dataclasses

    from topology.model import frozen_map

    g = book.request("vendor-tech", "vendor-maintenance", H, "x", NOW)
    book.emergency("safety-engineer-1", "safety-emergency", H, "x", NOW)
    topo = book.topology
    book.topology = dataclasses.replace(
        topo,
        conduits=frozen_map({k: v for k, v in topo.conduits.items() if k != "vendor-maintenance"}),
    )
    [(bad, why)] = book.invalidated(NOW)
    assert bad.id == g.id and "was removed" in why


def test_one_active_grant_per_identity_and_conduit(book: GrantBook) -> None:
    """Finding: two grants of one identity on one conduit shared one kernel element."""
    a = book.request("vendor-tech", "vendor-maintenance", 2 * H, "x", NOW)
    b = book.request("vendor-tech", "vendor-maintenance", H, "y", NOW)
    book.approve(a.id, "shift-lead-1", NOW)
    with pytest.raises(GrantError, match="already holds active grant") as info:
        book.approve(b.id, "shift-lead-1", NOW)
    assert info.value.kind is Refusal.CONFLICT and book.get(b.id).state is GrantState.REQUESTED
    book.revoke(a.id, "shift-lead-1", NOW)
    assert book.approve(b.id, "shift-lead-1", NOW).state is GrantState.ACTIVE


def test_pending_requests_are_capped_per_identity(book: GrantBook) -> None:
    from policyd.grants import MAX_PENDING_PER_IDENTITY

    for _ in range(MAX_PENDING_PER_IDENTITY):
        book.request("vendor-tech", "vendor-maintenance", H, "x", NOW)
    with pytest.raises(GrantError, match="waiting for a decision") as info:
        book.request("vendor-tech", "vendor-maintenance", H, "x", NOW)
    assert info.value.kind is Refusal.TOO_MANY


def test_ended_grants_are_pruned_after_retention(book: GrantBook) -> None:
    from policyd.grants import RETENTION

    g = book.request("vendor-tech", "vendor-maintenance", H, "x", NOW)
    book.deny(g.id, "shift-lead-1", NOW)
    assert book.prune(NOW + RETENTION / 2) == []
    assert book.prune(NOW + RETENTION + H) == [g.id] and book.grants == {}


def test_ids_continue_after_a_restart(book: GrantBook) -> None:
    """Finding: grant ids restarted at g1."""
    book.note_id("g41-abcdef")
    assert book.request("vendor-tech", "vendor-maintenance", H, "x", NOW).id.startswith("g42-")


def test_a_role_change_invalidates_the_grant(book: GrantBook) -> None:
    """Finding: an identity no longer admitted kept its grant."""
    import dataclasses

    from topology.model import frozen_map

    g = book.request("vendor-tech", "vendor-maintenance", H, "x", NOW)
    book.approve(g.id, "shift-lead-1", NOW)
    topo = book.topology
    vt = dataclasses.replace(topo.identities["vendor-tech"], roles=())
    book.topology = dataclasses.replace(
        topo, identities=frozen_map({**topo.identities, "vendor-tech": vt})
    )
    [(bad, why)] = book.invalidated(NOW)
    assert bad.id == g.id and "no longer admits" in why
