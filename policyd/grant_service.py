"""The one owner of grants: book, kernel elements, audit trail and state file.

Every change runs in one order: the intent is written to the state file (fsynced),
then the kernel is changed and read back, then the audit record is written, then the
intent is cleared. A failure at any step rolls the book back (the caller gets a
refusal, never a success the kernel does not show); a crash between steps leaves an
intent that `start` completes or rolls back against the kernel.

Each active grant is exactly one kernel element: in its conduit's grant set, keyed by
the identity's overlay address, with the grant id as the element's comment (the
book allows one active grant per identity and conduit, see policyd/grants.py). So
the kernel itself says which grant an element is, and `reconcile` can compare:

- an element no active grant accounts for is deleted and audited;
- an active grant whose element is gone is ended (expired if due) and audited;
- with the state file lost or corrupt, tagged elements rebuild the book.

Reads (listing, status, metrics) never change anything; expiry is the timer's job
(`tick`), so each expiry is audited exactly once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from policyd import failpoints
from policyd.flowlog.records import AuditEvent
from policyd.grant_store import GrantStore, Intent, Loaded, StateError
from policyd.grants import Grant, GrantBook, GrantError, GrantState, Refusal
from topology.model import Topology

log = logging.getLogger("policyd")

# An element this close to its end counts as expired when the book and kernel disagree.
SLACK = timedelta(seconds=2)


@dataclass(frozen=True)
class KernelGrant:
    """One element of a grant set as the kernel lists it."""

    conduit: str
    address: str
    tag: str | None  # the grant id in the element's comment
    expires_in: int  # seconds left


class KernelRefused(Exception):
    """The kernel did not accept (or could not be asked about) a grant element."""


class GrantKernel(Protocol):
    """The kernel side of grants (policyd/enforcer.py on nftables; a fake in tests)."""

    def ready(self) -> bool: ...

    def generation(self) -> int | None: ...

    def elements(self, conduit: str | None = None) -> list[KernelGrant]: ...

    def address_of(self, conduit: str, identity: str) -> str | None: ...

    def element_at(self, conduit: str, address: str) -> KernelGrant | None: ...

    def add(self, grant: Grant, timeout: timedelta) -> None: ...

    def delete(self, conduit: str, address: str) -> None: ...

    async def end_sessions(self, conduit: str, address: str, reason: str = "revoked") -> int: ...


Audit = Callable[[AuditEvent], None]


@dataclass
class Counters:
    """What the service did, for metrics (monotonic counts)."""

    reconciled_removed: int = 0
    reconciled_ended: int = 0
    recovered: int = 0
    state_write_failures: int = 0
    kernel_failures: int = 0
    by_event: dict[str, int] = field(default_factory=dict)


class GrantService:
    def __init__(
        self,
        book: GrantBook,
        kernel: GrantKernel,
        audit: Audit,
        store: GrantStore | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.book = book
        self.kernel = kernel
        self._audit = audit
        self.store = store
        self.clock = clock
        self.intents: dict[str, Intent] = {}
        # The kernel's ruleset generation as of the last full reconciliation, carried
        # forward over our own changes; None when something else may have changed it.
        self._clean_gen: int | None = None
        self.lock = asyncio.Lock()
        self.counters = Counters()

    # -- audit and state ------------------------------------------------------------------

    def audit(
        self, action: str, grant: Grant, by: str | None, message: str = "", **extra: Any
    ) -> None:
        self.counters.by_event[action] = self.counters.by_event.get(action, 0) + 1
        details = {**grant.as_dict(), **extra}
        text = message or f"{grant.identity} on {grant.conduit}"
        self._audit(AuditEvent(action, actor=by, message=text, details=details))

    def _save(self, *changed: str, sync: bool = True) -> None:
        """Durably record the grants `changed` (a journal append), or everything."""
        if self.store is None:
            return
        try:
            self.store.save(self.book, self.intents, changed or None, sync)
        except StateError:
            self.counters.state_write_failures += 1
            raise

    def _save_quietly(self, *changed: str, sync: bool = True) -> None:
        try:
            self._save(*changed, sync=sync)
        except StateError as exc:
            log.error("%s (the intent stays on disk; the next save or start completes it)", exc)

    def _restore(self, gid: str, before: Grant | None) -> None:
        if before is None:
            self.book.grants.pop(gid, None)
        else:
            self.book.grants[gid] = before

    def _intend(self, gid: str, op: str, before: Grant | None) -> None:
        """Write the intent durably or undo the book change and refuse."""
        self.intents[gid] = Intent(op, before)
        try:
            self._save(gid)
        except StateError as exc:
            self.intents.pop(gid, None)
            self._restore(gid, before)
            raise GrantError(Refusal.UNAVAILABLE, f"nothing changed: {exc}") from None
        failpoints.hit(f"after-intent-{op}")

    def _commit(self, gid: str, rolled_back: bool = False) -> None:
        """Clear the intent. After success the next synced append carries the line (a
        crash before it only repeats the step's audit, marked recovered); a rollback is
        synced at once, so a restart never completes what the caller was told failed."""
        self.intents.pop(gid, None)
        self._save_quietly(gid, sync=rolled_back)

    # -- the kernel element of a grant -------------------------------------------------------

    def _element(self, grant: Grant, untagged: bool = True) -> KernelGrant | None:
        """The kernel element that is this grant: tagged with its id, or (from before
        tags, for a grant that was active) untagged at the identity's address."""
        address = self.kernel.address_of(grant.conduit, grant.identity)
        if address is not None:  # the usual case: one lookup, whatever the set's size
            el = self.kernel.element_at(grant.conduit, address)
            ours = el is not None and (el.tag == grant.id or (untagged and el.tag is None))
            return el if ours else None
        for el in self.kernel.elements(grant.conduit):  # the identity left the conduit
            if el.tag == grant.id:
                return el
        return None

    def _changing(self) -> int | None:
        return self.kernel.generation() if self._clean_gen is not None else None

    def _changed(self, before: int | None) -> None:
        """After one change of ours: still clean only if it was the one commit since."""
        after = self.kernel.generation()
        if before is None or before != self._clean_gen or after != before + 1:
            self._clean_gen = None
        else:
            self._clean_gen = after

    def _open(self, grant: Grant) -> None:
        if not self.kernel.ready():
            raise KernelRefused("no policy is applied yet")
        assert grant.expires_at is not None
        left = grant.expires_at - self.clock()
        before = self._changing()
        try:
            self.kernel.add(grant, max(left, timedelta(seconds=1)))
        finally:
            self._changed(before)
        el = self._element(grant)
        if el is None or el.tag != grant.id:
            raise KernelRefused("the element is not in the kernel after adding it")

    async def _close(self, grant: Grant, was_active: bool = True) -> int:
        """Delete the grant's element, confirm it is gone, end its live sessions. A
        grant that never was active can only own an element tagged with its id."""
        el = self._element(grant, untagged=was_active)
        if el is None:
            return 0
        before = self._changing()
        try:
            self.kernel.delete(el.conduit, el.address)
        finally:
            self._changed(before)
        if self._element(grant, untagged=was_active) is not None:
            raise KernelRefused("the element is still in the kernel after deleting it")
        failpoints.hit("after-kernel-close")
        try:
            # the flows' end records say why: "grant_expired" or "revoked" (docs/policyd.md)
            reason = "grant_expired" if grant.state.value == "expired" else "revoked"
            return await self.kernel.end_sessions(el.conduit, el.address, reason)
        except OSError as exc:  # cleanup only: the element is gone, new packets are refused
            log.warning("ending live sessions of %s on %s: %s", el.address, el.conduit, exc)
            return 0

    # -- commands ---------------------------------------------------------------------------

    async def request(
        self, identity: str, conduit: str, duration: timedelta, reason: str, by: str
    ) -> Grant:
        async with self.lock:
            grant = self.book.request(identity, conduit, duration, reason, self.clock())
            try:
                self._save(grant.id)
            except StateError as exc:
                self.book.grants.pop(grant.id, None)
                raise GrantError(Refusal.UNAVAILABLE, f"nothing changed: {exc}") from None
            self.audit("grant_requested", grant, by)
            return grant

    async def emergency(
        self, identity: str, conduit: str, duration: timedelta, reason: str, by: str
    ) -> Grant:
        async with self.lock:
            grant = self.book.emergency(identity, conduit, duration, reason, self.clock())
            return self._activate(grant, None, "emergency_opened", by)

    async def approve(self, grant_id: str, approver: str, by: str, note: str = "") -> Grant:
        async with self.lock:
            before = self.book.get(grant_id)
            grant = self.book.approve(grant_id, approver, self.clock(), note)
            if grant.state is GrantState.REQUESTED:  # dual approval: more to come
                try:
                    self._save()
                except StateError as exc:
                    self._restore(grant_id, before)
                    raise GrantError(Refusal.UNAVAILABLE, f"nothing changed: {exc}") from None
                missing = self.book.needed(grant)
                self.audit(
                    "grant_approval_recorded",
                    grant,
                    by,
                    f"{approver} approved {grant.identity} on {grant.conduit}; "
                    f"{missing} more approval(s) needed",
                    approvals_missing=missing,
                )
                return grant
            return self._activate(grant, before, "grant_approved", by)

    def _activate(self, grant: Grant, before: Grant | None, event: str, by: str) -> Grant:
        self._intend(grant.id, "open", before)
        try:
            self._open(grant)
        except (KernelRefused, OSError) as exc:
            self.counters.kernel_failures += 1
            self._remove_quietly(grant)
            self._restore(grant.id, before)
            self._commit(grant.id, rolled_back=True)
            raise GrantError(
                Refusal.UNAVAILABLE, f"the kernel did not open the grant: {exc}"
            ) from None
        failpoints.hit("after-kernel-open")
        self.audit(event, grant, by)
        self._commit(grant.id)
        return grant

    def _remove_quietly(self, grant: Grant) -> None:
        try:
            el = self._element(grant)
            if el is not None and el.tag == grant.id:
                self._clean_gen = None
                self.kernel.delete(el.conduit, el.address)
        except (KernelRefused, OSError) as exc:
            log.error("rolling back grant %s in the kernel: %s (reconcile retries)", grant.id, exc)

    async def deny(self, grant_id: str, approver: str, by: str, note: str = "") -> Grant:
        async with self.lock:
            before = self.book.get(grant_id)
            grant = self.book.deny(grant_id, approver, self.clock(), note)
            return await self._end(grant, before, "grant_denied", by)

    async def revoke(
        self, grant_id: str, by_identity: str, by: str, admin: bool, note: str = ""
    ) -> Grant:
        async with self.lock:
            before = self.book.get(grant_id)
            grant = self.book.revoke(grant_id, by_identity, self.clock(), admin=admin, note=note)
            return await self._end(grant, before, "grant_revoked", by)

    async def _end(
        self, grant: Grant, before: Grant, event: str, by: str | None, **extra: Any
    ) -> Grant:
        """Intent, kernel (element gone, confirmed; sessions ended), audit, commit."""
        self._intend(grant.id, "close", before)
        try:
            ended = await self._close(grant, was_active=before.state is GrantState.ACTIVE)
        except (KernelRefused, OSError) as exc:
            self.counters.kernel_failures += 1
            self._restore(grant.id, before)
            self._commit(grant.id, rolled_back=True)
            raise GrantError(
                Refusal.UNAVAILABLE,
                f"the kernel did not confirm that grant '{grant.id}' is closed ({exc}); "
                f"it is still {before.state.value}",
            ) from None
        self.audit(event, grant, by, sessions_ended=ended, **extra)
        self._commit(grant.id)
        return grant

    # -- the timer ------------------------------------------------------------------------------

    async def tick(self) -> list[Grant]:
        """Expire due grants (each audited once, when the book moves it), prune old ones."""
        done = []
        async with self.lock:
            now = self.clock()
            for g in self.book.due(now):
                ended = self.book.end(g.id, GrantState.EXPIRED, "kernel", now, "")
                try:
                    done.append(await self._end(ended, g, "grant_expired", None))
                except GrantError as exc:
                    log.error("expiring %s: %s (retried at the next tick)", g.id, exc.reason)
            if self.book.prune(now) or (self.store is not None and self.store.needs_snapshot()):
                self._save_quietly()
        return done

    async def topology_changed(self, topology: Topology) -> list[Grant]:
        """End every open grant the new topology no longer allows (kernel, sessions,
        audit), then reconcile the rest."""
        ended = []
        async with self.lock:
            self.book.topology = topology
            now = self.clock()
            for g, why in self.book.invalidated(now):
                after = self.book.end(g.id, GrantState.REVOKED, "topology", now, why)
                try:
                    ended.append(await self._end(after, g, "grant_ended", "topology", why=why))
                except GrantError as exc:
                    log.error("ending %s after a topology change: %s", g.id, exc.reason)
        await self.reconcile(full=True)
        return ended

    # -- start and reconciliation -------------------------------------------------------------

    async def start(self) -> None:
        """Load the state file (or survive its loss), finish intents, reconcile."""
        loaded = self.store.load() if self.store else Loaded(missing=True)
        async with self.lock:
            self.book.grants.update(loaded.grants)
            self.book.next_id = max(self.book.next_id, loaded.next_id)
            for gid in loaded.grants:
                self.book.note_id(gid)
            self.intents = dict(loaded.intents)
            if loaded.problem:
                self._audit(
                    AuditEvent(
                        "grant_state_corrupt",
                        "failure",
                        f"grant state file unusable ({loaded.problem}); rebuilt from the kernel",
                        details={"moved_to": str(loaded.moved_to) if loaded.moved_to else None},
                    )
                )
            await self._finish_intents()
        await self.reconcile(rebuild=loaded.missing or bool(loaded.problem), full=True)

    async def _finish_intents(self) -> None:
        for gid, intent in list(self.intents.items()):
            grant = self.book.grants.get(gid)
            if grant is None:
                self.intents.pop(gid)
                continue
            if intent.op == "open":
                el = self._element(grant)
                if el is not None and el.tag == gid:
                    event = "emergency_opened" if grant.emergency else "grant_approved"
                    self.audit(event, grant, grant.decided_by, recovered=True)
                else:
                    self._restore(gid, intent.before)
                    if intent.before is not None:
                        self.audit("grant_open_rolled_back", intent.before, "start", recovered=True)
                self.intents.pop(gid)
            else:
                was_active = intent.before is not None and intent.before.state is GrantState.ACTIVE
                try:
                    ended = await self._close(grant, was_active)
                except (KernelRefused, OSError) as exc:
                    log.error("finishing the close of %s: %s (retried at reconcile)", gid, exc)
                    continue
                event = {"expired": "grant_expired", "denied": "grant_denied"}.get(
                    grant.state.value, "grant_revoked"
                )
                self.audit(event, grant, grant.ended_by, recovered=True, sessions_ended=ended)
                self.intents.pop(gid)
        self._save_quietly()

    async def reconcile(self, rebuild: bool = False, full: bool = False) -> dict[str, int]:
        """Make book and kernel agree (see the module docstring); returns what changed.

        Unless `full`, a kernel whose ruleset generation is the one the last full pass
        saw (plus our own changes) is known to hold what the book says: nothing else
        committed anything, and expiries are the timer's. Then nothing is listed.
        """
        report = {"removed": 0, "ended": 0, "recovered": 0}
        async with self.lock:
            if not self.kernel.ready():
                return report
            gen = self.kernel.generation()
            if not (rebuild or full) and gen is not None and gen == self._clean_gen:
                return report
            now = self.clock()
            # a worker thread: dumping a large set costs the kernel O(n^2/535) steps
            elements = await asyncio.to_thread(self.kernel.elements)
            listed_gen = self.kernel.generation()
            self._clean_gen = gen if gen is not None and listed_gen == gen else None
            by_tag = {el.tag: el for el in elements if el.tag}
            by_key = {(el.conduit, el.address): el for el in elements}
            claimed: set[tuple[str, str]] = set()
            if rebuild:
                report["recovered"] = self._rebuild(elements, now)
            for g in list(self.book.grants.values()):
                if g.state is not GrantState.ACTIVE or g.id in self.intents:
                    continue
                el = by_tag.get(g.id)
                if el is None or el.conduit != g.conduit:
                    address = self.kernel.address_of(g.conduit, g.identity)
                    untagged = by_key.get((g.conduit, address or ""))
                    el = untagged if untagged is not None and untagged.tag is None else None
                if el is None:  # a listing can miss elements while the kernel resizes the
                    el = self._element(g)  # set's hash table: ask for this one directly
                if el is not None and el.tag is None and g.expires_at is not None:
                    try:  # adopt it: the grant's own expiry and tag (an upgrade, a hand edit)
                        self._open(g)
                    except (KernelRefused, OSError) as exc:
                        log.error("reconcile: tagging %s: %s", g.id, exc)
                if el is not None:
                    claimed.add((el.conduit, el.address))
                    continue
                due = g.expires_at is not None and g.expires_at <= now + SLACK
                state = GrantState.EXPIRED if due else GrantState.REVOKED
                why = "" if due else "its kernel element is gone (reconciliation)"
                after = self.book.end(g.id, state, "kernel", now, why)
                self.audit("grant_expired" if due else "grant_ended", after, "reconcile", why=why)
                report["ended"] += 1
            for el in elements:
                if (el.conduit, el.address) in claimed:
                    continue
                owner = self.book.grants.get(el.tag) if el.tag else None
                if owner is not None and owner.id in self.intents:
                    continue
                try:
                    before = self._changing()
                    try:
                        self.kernel.delete(el.conduit, el.address)
                    finally:
                        self._changed(before)
                except (KernelRefused, OSError) as exc:
                    log.error("reconcile: removing %s on %s: %s", el.address, el.conduit, exc)
                    continue
                await self._end_sessions_quietly(el)
                self.counters.reconciled_removed += 1
                report["removed"] += 1
                self._audit(
                    AuditEvent(
                        "grant_element_removed",
                        actor="reconcile",
                        message=f"{el.address} on {el.conduit}: no active grant accounts for it",
                        details={"conduit": el.conduit, "address": el.address, "tag": el.tag},
                    )
                )
            self.counters.reconciled_ended += report["ended"]
            if any(report.values()):
                self._save_quietly()
        return report

    async def _end_sessions_quietly(self, el: KernelGrant) -> None:
        try:
            await self.kernel.end_sessions(el.conduit, el.address)
        except OSError as exc:
            log.warning("ending live sessions of %s on %s: %s", el.address, el.conduit, exc)

    def _rebuild(self, elements: list[KernelGrant], now: datetime) -> int:
        """Give each tagged element the book does not know back its grant."""
        n = 0
        for el in elements:
            if not el.tag or el.tag in self.book.grants:
                continue
            identity = next(
                (
                    name
                    for name in self.book.topology.identities
                    if self.kernel.address_of(el.conduit, name) == el.address
                ),
                None,
            )
            if identity is None:
                continue  # reconciliation removes it
            left = timedelta(seconds=el.expires_in)
            grant = Grant(
                el.tag,
                el.conduit,
                identity,
                "recovered from the kernel (grant state file lost)",
                left,
                now,
                state=GrantState.ACTIVE,
                decided_by="kernel",
                decided_at=now,
                expires_at=now + left,
            )
            self.book.grants[grant.id] = grant
            self.book.note_id(grant.id)
            self.counters.recovered += 1
            self.audit("grant_recovered", grant, "reconcile")
            n += 1
        return n

    # -- reads (no side effects) ------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        out = {s.value: 0 for s in GrantState}
        for g in self.book.grants.values():
            out[g.state.value] += 1
        return out
