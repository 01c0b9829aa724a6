"""The grant service: one owner of book, kernel, audit and state, and what it promises.

Each test names the finding it guards. The kernel is the in-memory fake (the namespace
tests run the same service on nftables); the state file is real, on disk.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Coroutine
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest

from policyd.flowlog.records import AuditEvent
from policyd.grant_service import GrantService
from policyd.grant_store import GrantStore, StateError
from policyd.grants import GrantBook, GrantError, GrantState, Refusal
from tests.policyd.fake_kernel import FakeKernel
from topology import load
from topology.model import Topology, frozen_map

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "plant"
NOW = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
H = timedelta(hours=1)
VT = ("vendor-maintenance", "100.64.2.10")
T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


class Gateway:
    """One policyd's grant side; `restart()` keeps the kernel and the state file."""

    def __init__(self, state_dir: Path | None, kernel: FakeKernel | None = None) -> None:
        self.now = NOW
        self.topology = load(EXAMPLE).topology
        self.audits: list[AuditEvent] = []
        self.kernel = kernel or FakeKernel(lambda: self.topology, lambda: self.now)
        self.state_dir = state_dir
        self.service = self._service()

    def _service(self) -> GrantService:
        store = GrantStore(self.state_dir / "grants.json") if self.state_dir else None
        return GrantService(
            GrantBook(self.topology), self.kernel, self.audits.append, store, lambda: self.now
        )

    def restart(self) -> None:
        self.service = self._service()
        run(self.service.start())

    # what the state machine (test_grant_machine.py) needs of any kernel
    def kernel_view(self) -> dict[tuple[str, str], str | None]:
        return {key: tag for key, (tag, _until) in self.kernel.table.items()}

    def set_topology(self, topology: Topology) -> None:
        self.topology = topology

    def foreign_change(self, add: bool) -> None:
        """`nft add element` or `nft delete element` by someone else."""
        if add:
            self.kernel.put("safety-emergency", "100.64.1.30", None, 600)
        elif self.kernel.table:
            del self.kernel.table[sorted(self.kernel.table)[0]]
            self.kernel.gen += 1

    def actions(self) -> list[str]:
        return [a.action for a in self.audits]

    def approved(self, identity: str = "vendor-tech", conduit: str = "vendor-maintenance") -> str:
        g = run(self.service.request(identity, conduit, 2 * H, "work", identity))
        return run(self.service.approve(g.id, "shift-lead-1", "shift-lead-1")).id


@pytest.fixture
def gw(tmp_path: Path) -> Gateway:
    g = Gateway(tmp_path)
    run(g.service.start())
    return g


def test_each_grant_is_one_tagged_element_and_revoke_closes_only_it(gw: Gateway) -> None:
    gid = gw.approved()
    assert gw.kernel.table == {VT: (gid, NOW + 2 * H)}
    other = run(gw.service.emergency("safety-engineer-1", "safety-emergency", H, "trip", "x"))
    run(gw.service.revoke(gid, "shift-lead-1", "shift-lead-1", admin=False))
    assert list(gw.kernel.table) == [("safety-emergency", "100.64.1.30")]
    assert gw.kernel.table[("safety-emergency", "100.64.1.30")][0] == other.id


def test_revoke_is_refused_when_the_kernel_does_not_confirm(gw: Gateway) -> None:
    """Finding: revoke answered "revoked" while the element stayed."""
    gid = gw.approved()
    gw.kernel.deaf_delete = True
    with pytest.raises(GrantError, match="did not confirm") as info:
        run(gw.service.revoke(gid, "shift-lead-1", "shift-lead-1", admin=False))
    assert info.value.kind is Refusal.UNAVAILABLE
    assert gw.service.book.get(gid).state is GrantState.ACTIVE and VT in gw.kernel.table
    assert "grant_revoked" not in gw.actions()


def test_topology_change_ends_the_grant_in_kernel_sessions_and_audit(gw: Gateway) -> None:
    """Finding: an identity removed from the topology kept its kernel element."""
    gid = gw.approved()
    topo = gw.topology
    vt = dataclasses.replace(topo.identities["vendor-tech"], roles=())
    gw.topology = dataclasses.replace(
        topo, identities=frozen_map({**topo.identities, "vendor-tech": vt})
    )
    # the kernel element survives a membership-only reload; the service must remove it
    ended = run(gw.service.topology_changed(gw.topology))
    assert [g.id for g in ended] == [gid] and gw.kernel.table == {}
    assert gw.kernel.sessions_ended == [VT]
    assert gw.service.book.get(gid).state is GrantState.REVOKED
    assert gw.actions()[-1] == "grant_ended" and "no longer admits" in str(gw.audits[-1].details)


def test_each_expiry_is_audited_once_and_reads_change_nothing(gw: Gateway) -> None:
    """Finding: GETs expired grants as a side effect, so expiries went unaudited."""
    gid = gw.approved()
    gw.now += 3 * H
    assert gw.service.counts()["active"] == 1  # a read: nothing moves
    assert gw.service.book.get(gid).state is GrantState.ACTIVE
    assert [g.id for g in run(gw.service.tick())] == [gid]
    assert run(gw.service.tick()) == []
    assert gw.actions().count("grant_expired") == 1


def test_approve_fails_closed_when_the_state_cannot_be_written(
    gw: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Finding: the kernel was opened before the state file was written."""
    import errno
    import os

    g = run(gw.service.request("vendor-tech", "vendor-maintenance", H, "x", "vendor-tech"))

    def full(_fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    monkeypatch.setattr(os, "fdatasync", full)
    with pytest.raises(GrantError, match="nothing changed") as info:
        run(gw.service.approve(g.id, "shift-lead-1", "shift-lead-1"))
    monkeypatch.undo()
    assert info.value.kind is Refusal.UNAVAILABLE
    assert gw.kernel.table == {} and gw.service.book.get(g.id).state is GrantState.REQUESTED
    assert "grant_approved" not in gw.actions()
    gw.restart()  # and the disk holds exactly what was acknowledged
    assert gw.service.book.get(g.id).state is GrantState.REQUESTED


def test_crash_after_intent_before_kernel_rolls_back(gw: Gateway) -> None:
    """kill -9 between the intent and the kernel: the restart rolls the grant back."""
    g = run(gw.service.request("vendor-tech", "vendor-maintenance", H, "x", "vendor-tech"))
    gw.kernel.refuse_add = True  # the step that never happens
    svc = gw.service
    svc.book.approve(g.id, "shift-lead-1", NOW)
    svc._intend(g.id, "open", g)  # what approve writes first, then "dies"
    gw.kernel.refuse_add = False
    gw.restart()
    assert gw.service.book.get(g.id).state is GrantState.REQUESTED and gw.kernel.table == {}
    assert gw.service.intents == {}


def test_crash_after_kernel_before_audit_completes_at_restart(gw: Gateway) -> None:
    """kill -9 between the kernel and the audit: the restart audits what the kernel shows."""
    g = run(gw.service.request("vendor-tech", "vendor-maintenance", H, "x", "vendor-tech"))
    svc = gw.service
    active = svc.book.approve(g.id, "shift-lead-1", NOW)
    svc._intend(g.id, "open", g)
    svc._open(active)  # ... and dies before the audit
    gw.restart()
    assert gw.service.book.get(g.id).state is GrantState.ACTIVE and VT in gw.kernel.table
    last = gw.audits[-1]
    assert last.action == "grant_approved" and last.details["recovered"] is True


def test_crash_during_revoke_finishes_the_close(gw: Gateway) -> None:
    gid = gw.approved()
    svc = gw.service
    before = svc.book.get(gid)
    svc.book.revoke(gid, "shift-lead-1", NOW)
    svc._intend(gid, "close", before)  # dies before the kernel delete
    gw.restart()
    assert gw.kernel.table == {} and gw.service.book.get(gid).state is GrantState.REVOKED
    assert gw.actions()[-1] == "grant_revoked"


def test_reconcile_removes_unknown_elements_and_ends_vanished_grants(gw: Gateway) -> None:
    gid = gw.approved()
    gw.kernel.put("safety-emergency", "100.64.1.30", "g999-ffffff", 600)  # nobody's
    del gw.kernel.table[VT]  # someone ran `nft delete element`
    report = run(gw.service.reconcile())
    assert report == {"removed": 1, "ended": 1, "recovered": 0}
    assert gw.kernel.table == {} and gw.service.book.get(gid).state is GrantState.REVOKED
    assert {"grant_element_removed", "grant_ended"} <= set(gw.actions())


@pytest.mark.parametrize("content", [b"", b"{", b'{"version": 2}', b"\xff\xfe", b"[]"])
def test_a_corrupt_state_file_is_moved_aside_and_the_book_rebuilt(
    gw: Gateway, content: bytes
) -> None:
    """Finding: a corrupt or empty state file crashed policyd or forgot kernel grants."""
    gid = gw.approved()
    assert gw.state_dir is not None
    (gw.state_dir / "grants.json").write_bytes(content)
    gw.restart()
    assert gw.service.book.get(gid).state is GrantState.ACTIVE  # from the kernel's tag
    assert gw.kernel.table[VT][0] == gid
    assert "grant_state_corrupt" in gw.actions() and "grant_recovered" in gw.actions()
    assert list(gw.state_dir.glob("grants.json.corrupt-*"))
    new = run(gw.service.request("vendor-tech", "vendor-maintenance", H, "x", "vendor-tech"))
    assert new.id != gid and int(new.id[1:].split("-")[0]) > int(gid[1:].split("-")[0])


def test_state_is_atomic_with_the_previous_version_kept(gw: Gateway) -> None:
    assert gw.state_dir is not None
    gid = gw.approved()
    gw.service._save()  # a snapshot (what a long journal or a prune triggers)
    data = json.loads((gw.state_dir / "grants.json").read_text())
    prev = json.loads((gw.state_dir / "grants.json.prev").read_text())
    assert data["version"] == 2 and data["intents"] == {} and data["next_id"] == 2
    assert [g["id"] for g in data["grants"]] == [gid] and prev["grants"] == []
    assert not list(gw.state_dir.glob("*.tmp"))
    journal = (gw.state_dir / "grants.journal").read_bytes()
    assert journal.strip(b"\0") == b""  # folded into the snapshot; room preallocated


def test_store_refuses_to_report_success_on_a_failed_write(tmp_path: Path) -> None:
    store = GrantStore(tmp_path / "ro" / "grants.json")
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o500)
    try:
        book = GrantBook(load(EXAMPLE).topology)
        if (tmp_path / "ro").stat().st_uid == 0:
            (tmp_path / "ro" / "grants.json.tmp").mkdir()  # root ignores modes
        with pytest.raises(StateError):
            store.save(book, {})
    finally:
        (tmp_path / "ro").chmod(0o700)


def test_lone_surrogates_in_a_reason_cannot_break_the_state_file(gw: Gateway) -> None:
    g = run(gw.service.request("vendor-tech", "vendor-maintenance", H, "x\ud800", "vendor-tech"))
    gw.restart()
    assert gw.service.book.get(g.id).reason == "x\ud800"


def _without(topo: Topology, identity: str) -> Topology:
    return dataclasses.replace(
        topo, identities=frozen_map({k: v for k, v in topo.identities.items() if k != identity})
    )


def test_restart_with_an_identity_removed_meanwhile(gw: Gateway) -> None:
    gid = gw.approved()
    gw.topology = _without(gw.topology, "vendor-tech")
    gw.restart()
    run(gw.service.topology_changed(gw.topology))
    assert gw.kernel.table == {} and gw.service.book.get(gid).state is GrantState.REVOKED


def test_the_journal_replays_onto_the_snapshot_and_a_torn_line_is_ignored(gw: Gateway) -> None:
    assert gw.state_dir is not None
    gid = gw.approved()
    journal = gw.state_dir / "grants.journal"
    assert journal.stat().st_size > 0  # changes went to the journal, not a new snapshot
    data = journal.read_bytes()
    assert data.endswith(b"\0")  # preallocated room
    with open(journal, "r+b") as fh:
        fh.seek(data.index(b"\0"))
        fh.write(b'{"put": [{"id": "g9')  # a crash mid-append
    gw.restart()
    assert gw.service.book.get(gid).state is GrantState.ACTIVE
    assert "grant_state_corrupt" not in gw.actions()


def test_a_snapshot_is_written_every_journal_max_lines(
    gw: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    import policyd.grant_store as grant_store

    assert gw.state_dir is not None
    monkeypatch.setattr(grant_store, "JOURNAL_MAX", 3)
    for _ in range(5):
        run(gw.service.request("vendor-tech", "vendor-maintenance", H, "x", "vendor-tech"))
    run(gw.service.tick())  # the timer folds a long journal into a snapshot
    journal = (gw.state_dir / "grants.journal").read_bytes().rstrip(b"\0")
    assert (
        journal == b""
        and len(json.loads((gw.state_dir / "grants.json").read_text())["grants"]) == 5
    )
    gw.restart()
    assert len(gw.service.book.grants) == 5


def test_an_unversioned_state_file_and_untagged_elements_are_adopted(gw: Gateway) -> None:
    """An upgrade: the old file format, and elements policyd wrote before tags."""
    assert gw.state_dir is not None
    gid = gw.approved()
    grant = gw.service.book.get(gid)
    (gw.state_dir / "grants.json").write_text(json.dumps({"grants": [grant.as_dict()]}))
    (gw.state_dir / "grants.journal").unlink()
    gw.kernel.table[VT] = (None, NOW + 2 * H)  # untagged
    gw.restart()
    assert gw.service.book.get(gid).state is GrantState.ACTIVE
    assert VT in gw.kernel.table and "grant_state_corrupt" not in gw.actions()


@pytest.mark.root
def test_a_full_state_disk_refuses_changes_and_loses_nothing_acknowledged(
    tmp_path: Path,
) -> None:
    """Finding: a full state disk left the kernel open with no state (a real tmpfs here)."""
    import shutil
    import subprocess
    import sys

    if shutil.which("unshare") is None:
        pytest.fail("unshare not found: apt-get install util-linux")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    out = subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            sys.executable,
            "-m",
            "tests.policyd.fullstate",
            str(mnt),
        ],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["refused"] > 0 and "nothing changed" in r["reason"], r
    assert r["all_acknowledged_reloaded"] and r["unacknowledged_reloaded"] == 0, r


def test_a_periodic_reconcile_lists_nothing_while_nobody_else_changed_the_kernel(
    gw: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    gid = gw.approved()
    listed: list[int] = []
    real = gw.kernel.elements

    def counting(conduit: str | None = None) -> Any:
        if conduit is None:
            listed.append(1)
        return real(conduit)

    monkeypatch.setattr(gw.kernel, "elements", counting)
    run(gw.service.reconcile(full=True))
    run(gw.service.revoke(gid, "shift-lead-1", "shift-lead-1", admin=False))  # our own change
    assert run(gw.service.reconcile()) == {"removed": 0, "ended": 0, "recovered": 0}
    assert len(listed) == 1  # the periodic pass trusted the generation
    gw.kernel.put("vendor-maintenance", "100.64.2.10", None, 600)  # someone else's change
    assert run(gw.service.reconcile())["removed"] == 1 and len(listed) == 2


def test_denying_a_request_never_touches_another_grants_untagged_element(gw: Gateway) -> None:
    gid = gw.approved()
    gw.kernel.table[VT] = (None, NOW + 2 * H)  # the active grant's element, from before tags
    g = run(gw.service.request("vendor-tech", "vendor-maintenance", H, "more", "vendor-tech"))
    run(gw.service.deny(g.id, "shift-lead-1", "shift-lead-1"))
    assert VT in gw.kernel.table and gw.service.book.get(gid).state is GrantState.ACTIVE
