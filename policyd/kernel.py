"""The kernel adapter: one persistent libnftables handle, no policy logic.

- `apply_ruleset` replaces table `inet zonegate` in one transaction (add-if-missing,
  delete, re-create: the kernel commits all of it or none, so there is no instant with
  no rules and no partial state). It is checked first (a dry run the kernel validates);
  a failure raises `ApplyError` with libnftables' message and the running ruleset stays.
  Active grants (elements of `grant_*`/`zgrant_*` sets) are carried over with their
  remaining time when the conduit still exists and still names the source.
- Membership changes are set-element adds and deletes, never a reload: `add_grant`/
  `remove_grant`, and `sync_members` for identity validity. They go straight to the
  kernel over nfnetlink (`policyd.setelems`): through libnftables each one would first
  refetch the whole table's chains and sets, a cost that grows with the ruleset.
  Elements that encoder does not cover fall back to libnftables.
- `running_objects` and `diff_text` read the table back (`nft -j list table`).

libnftables parses `meta hour` in the local time zone of the process; the compiler
emits UTC, so the handle is created with TZ=UTC (see docs/policyd.md).
Every command is logged before it runs; nftables commands carry no secrets.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from policyd.compiler import ConduitPlan, Ruleset
from policyd.conventions import TABLE_FAMILY, TABLE_NAME
from policyd.nfnetlink import Message, NfnlError
from policyd.nftjson import Json, network, table, table_ref
from policyd.render import canonical, render_text
from policyd.setelems import ElementWriter

log = logging.getLogger("policyd.kernel")


class NftError(Exception):
    """libnftables refused a command; `str()` is its message."""


class ApplyError(NftError):
    """The new ruleset was rejected; the running ruleset is unchanged."""


class ElementRefused(ValueError):
    """A grant element names a conduit or source the compiled policy does not allow
    (the grant book's own refusals are policyd.grants.GrantError)."""


@dataclass(frozen=True)
class GrantElement:
    """A grant as the kernel holds it: one element with a timeout in a grant set."""

    conduit: str
    source: str  # identity name or "site/zone"
    set_name: str
    element: Any
    expires: datetime


def _utc_process() -> None:
    if os.environ.get("TZ") != "UTC":
        os.environ["TZ"] = "UTC"
        time.tzset()


class NftHandle:
    """A persistent libnftables context for table `inet zonegate`.

    `direct_elements=False` sends element changes through libnftables too (for
    comparison in tests and benchmarks; the default is the nfnetlink path).
    """

    def __init__(self, direct_elements: bool = True) -> None:
        _utc_process()
        import nftables  # Debian's python3-nftables; imported here so pure code never needs it

        self._nft = nftables.Nftables()
        self._nft.set_json_output(True)
        self._nft.set_handle_output(False)
        self._direct = direct_elements
        self._writer = ElementWriter(TABLE_FAMILY, TABLE_NAME)
        # identity set -> membership this handle last put in the kernel (see sync_members)
        self._in_kernel: dict[str, _Membership] = {}
        self._own_generation: int | None = None  # the ruleset generation after our commit

    # -- who changed the ruleset last -----------------------------------------------------
    def generation(self) -> int:
        """The netns' nf_tables generation id: every commit, by anyone, moves it."""
        return self._writer.generation()

    def _committed(self) -> None:
        try:
            self._own_generation = self.generation()
        except (NfnlError, OSError):
            self._own_generation = None

    def changed_by_others(self) -> bool:
        """True when some commit happened since our last one (or we cannot tell): only
        then can the table have drifted, so the full comparison is needed."""
        if self._own_generation is None:
            return True
        try:
            return self.generation() != self._own_generation
        except (NfnlError, OSError):
            return True

    # -- raw commands -------------------------------------------------------------------
    def run(self, commands: list[Json] | str, what: str, check: bool = False) -> Any:
        """Run a JSON batch (a list of commands, or already serialized) in one transaction."""
        log.info("[#] nft -j%s -f - (%s)", " -c" if check else "", what)
        text = commands if isinstance(commands, str) else json.dumps({"nftables": commands})
        self._nft.set_dry_run(check)
        try:
            rc, out, err = self._nft.cmd(text)
        finally:
            self._nft.set_dry_run(False)
        if rc != 0:
            raise NftError((err or "").strip() or f"libnftables returned {rc}")
        if not check and '"list"' not in text:
            self._committed()
        return json.loads(out) if out else {}

    def list_table(self) -> list[Json] | None:
        """The running table as JSON objects, or None when it does not exist."""
        cmd = [{"list": {"table": table()}}]
        try:
            out = self.run(cmd, f"list table {TABLE_FAMILY} {TABLE_NAME}")
        except NftError as e:
            if "No such file" in str(e):
                return None
            raise
        return [o for o in out.get("nftables", []) if "metainfo" not in o]

    # -- whole-table apply ----------------------------------------------------------------
    def apply_ruleset(self, ruleset: Ruleset, check: bool = True) -> int:
        """Replace the table atomically; returns how many grants were carried over.

        With `check` (the default) the batch is first run as a dry run (`nft -c`). The
        commit itself is also all-or-nothing: libnftables evaluates the whole batch
        before sending it and the kernel aborts the transaction on any error, so
        `check=False` halves the cost without giving up atomicity.
        """
        kept = self._surviving_grants(ruleset)
        objects = [_with_elements(o, kept) for o in ruleset.objects]
        commands: list[Json] = [
            {"add": {"table": table()}},
            {"delete": {"table": table()}},
            *({"add": o} for o in objects),
        ]
        what = f"replace table {TABLE_FAMILY} {TABLE_NAME}: {len(objects)} objects"
        text = json.dumps({"nftables": commands})
        self._writer.forget()
        try:
            if check:
                self.run(text, what, check=True)
            self._in_kernel.clear()
            self.run(text, what)
        except NftError as e:
            raise ApplyError(f"ruleset for {ruleset.gateway} rejected, nothing changed: {e}") from e
        for plan in ruleset.conduits.values():
            if not plan.needs_grant and plan.identity_set:
                self._in_kernel[plan.identity_set] = _membership(plan)
        return sum(len(v) for v in kept.values())

    def _surviving_grants(self, ruleset: Ruleset) -> dict[str, list[Any]]:
        """Grant elements running now that the new ruleset still allows (grant sets only:
        listing the whole table would cost as much as the apply at 100k identities)."""
        allowed: dict[str, set[str]] = {}
        for plan in ruleset.conduits.values():
            if plan.needs_grant and plan.identity_set:
                allowed[plan.identity_set] = {str(a) for a in plan.identities.values()}
            if plan.needs_grant and plan.zone_set:
                allowed[plan.zone_set] = {json.dumps(network(n)) for n in plan.zones.values()}
        kept: dict[str, list[Any]] = {}
        if not allowed or not self._table_exists():
            return kept
        for name in sorted(allowed):
            try:
                elements = self.set_elements(name)
            except NftError:
                continue  # a conduit that is new in this ruleset
            for el in elements:
                if not isinstance(el, dict) or "elem" not in el:
                    continue
                val, left = el["elem"]["val"], int(el["elem"].get("expires", 0))
                key = val if isinstance(val, str) else json.dumps(val)
                if left > 0 and key in allowed[name]:
                    carried = {"val": val, "timeout": left}
                    if "comment" in el["elem"]:  # the grant id tag (policyd/grant_service.py)
                        carried["comment"] = el["elem"]["comment"]
                    kept.setdefault(name, []).append({"elem": carried})
        return kept

    def _table_exists(self) -> bool:
        out = self.run([{"list": {"tables": None}}], "list tables")
        return any(
            o.get("table", {}).get("name") == TABLE_NAME
            and o["table"].get("family") == TABLE_FAMILY
            for o in out.get("nftables", [])
        )

    # -- elements ---------------------------------------------------------------------
    def _direct_batch(self, changes: list[tuple[str, list[Any], bool]], what: str) -> bool:
        """Send (set, elements, delete?) changes as one nfnetlink transaction.

        False (nothing sent) when one of them is not encodable and libnftables must run
        the batch instead; kernel errors are raised as `NftError` like libnftables'.
        """
        if not self._direct:
            return False
        try:
            messages: list[Message] = []
            for name, elements, delete in changes:
                m = self._writer.message(name, elements, delete)
                if m is None:
                    return False
                messages.append(m)
            log.info("[#] nfnetlink batch (%s)", what)
            self._writer.send(messages, what)
            self._committed()
        except NfnlError as e:
            raise NftError(e.strerror or str(e)) from e
        return True

    def add_elements(self, set_name: str, elements: list[Any]) -> None:
        what = f"add element {set_name} ({len(elements)})"
        if not self._direct_batch([(set_name, elements, False)], what):
            body = {**table_ref(), "name": set_name, "elem": elements}
            self.run([{"add": {"element": body}}], what)

    def delete_elements(self, set_name: str, elements: list[Any]) -> None:
        what = f"delete element {set_name} ({len(elements)})"
        if not self._direct_batch([(set_name, elements, True)], what):
            body = {**table_ref(), "name": set_name, "elem": elements}
            self.run([{"delete": {"element": body}}], what)

    def element(self, set_name: str, address: str) -> tuple[str | None, int] | None:
        """One element of an IPv4 set read back over nfnetlink: (comment, seconds left),
        None when absent. Its cost does not depend on the set's size."""
        try:
            return self._writer.lookup(set_name, address)
        except NfnlError as e:
            raise NftError(e.strerror or str(e)) from e

    def set_elements(self, set_name: str) -> list[Any]:
        out = self.run(
            [{"list": {"set": {**table_ref(), "name": set_name}}}], f"list set {set_name}"
        )
        for o in out.get("nftables", []):
            if "set" in o:
                return list(o["set"].get("elem", []))
        return []

    def add_grant(
        self,
        ruleset: Ruleset,
        conduit: str,
        source: str,
        duration: timedelta,
        now: datetime | None = None,
        tag: str | None = None,
    ) -> GrantElement:
        """Open `conduit` for `source` (identity name or zone ref) for `duration`.

        Capped at the conduit's approval/emergency maximum and the identity's validity;
        the kernel expires the element even if policyd is not running. `tag` (a grant
        id) is stored as the element's comment, so the kernel says which grant it is.
        """
        now = now or datetime.now(UTC)
        plan = _grant_plan(ruleset, conduit)
        until = now + min(duration, plan.max_grant or duration)
        value: Any
        if source in plan.identities and plan.identity_set:
            set_name, value = plan.identity_set, str(plan.identities[source])
            if source in plan.expiry:
                until = min(until, plan.expiry[source])
        elif source in plan.zones and plan.zone_set:
            set_name, value = plan.zone_set, network(plan.zones[source])
        else:
            raise ElementRefused(
                f"conduit {conduit} does not admit {source} (or it is not valid now)"
            )
        seconds = int((until - now).total_seconds())
        if seconds < 1:
            raise ElementRefused(f"grant for {source} on {conduit} would expire immediately")
        # Re-granting replaces the old expiry: delete (if present) and add in one batch.
        # Look first: a transaction the kernel aborts (deleting an absent element) costs
        # ~15 ms of RCU grace period, a lookup 0.03 ms.
        el = {"elem": {"val": value, "timeout": seconds, **({"comment": tag} if tag else {})}}
        what = f"grant {conduit} to {source} for {seconds}s"
        present = not isinstance(value, str) or self.element(set_name, value) is not None
        if present:
            try:
                self._replace_element(set_name, value, el, what)
            except NftError:
                self.add_elements(set_name, [el])  # there was none to delete
        else:
            self.add_elements(set_name, [el])
        return GrantElement(conduit, source, set_name, value, now + timedelta(seconds=seconds))

    def _replace_element(self, set_name: str, value: Any, el: Any, what: str) -> None:
        """Delete `value` and add `el` in one transaction (fails if `value` is absent)."""
        if self._direct_batch([(set_name, [value], True), (set_name, [el], False)], what):
            return
        body = {**table_ref(), "name": set_name, "elem": [el]}
        self.run(
            [{"delete": {"element": {**body, "elem": [value]}}}, {"add": {"element": body}}], what
        )

    def remove_grant(self, ruleset: Ruleset, conduit: str, source: str) -> bool:
        """Close a grant now; False if there was none."""
        plan = _grant_plan(ruleset, conduit)
        if source in plan.identities and plan.identity_set:
            set_name, value = plan.identity_set, str(plan.identities[source])
        elif source in plan.zones and plan.zone_set:
            set_name, value = plan.zone_set, network(plan.zones[source])
        else:
            raise ElementRefused(f"conduit {conduit} does not admit {source}")
        try:
            self.delete_elements(set_name, [value])
        except NftError as e:
            if "No such file" in str(e):
                return False
            raise
        return True

    def sync_members(self, ruleset: Ruleset) -> tuple[int, int]:
        """Make the identity sets match `ruleset` by element adds/deletes (no reload).

        Returns (added, deleted). Elements whose expiry moved are deleted and re-added.
        A set whose membership (addresses and expiry) is what this handle last put in
        the kernel is not read back: one identity's change costs the sets it is in, not
        a listing of every identity set (~0.5 s for 200 sets at 100k identities).
        """
        added = deleted = 0
        for plan in ruleset.conduits.values():
            if plan.needs_grant or not plan.identity_set:
                continue
            membership = _membership(plan)
            if self._in_kernel.get(plan.identity_set) == membership:
                continue
            self._in_kernel.pop(plan.identity_set, None)
            want = _member_elements(ruleset, plan)
            have: dict[str, int | None] = {}
            for el in self.set_elements(plan.identity_set):
                if isinstance(el, dict):
                    have[el["elem"]["val"]] = int(el["elem"].get("expires", 0))
                else:
                    have[el] = None
            stale = [a for a in have if a not in want]
            moved = [
                a
                for a, t in want.items()
                if (a in have and (t is None) != (have[a] is None))
                or (a in have and t is not None and abs((have[a] or 0) - t) > 2)
            ]
            new = [a for a in want if a not in have or a in moved]
            if stale or moved:
                self.delete_elements(plan.identity_set, stale + moved)
            if new:
                self.add_elements(
                    plan.identity_set,
                    [
                        a if want[a] is None else {"elem": {"val": a, "timeout": want[a]}}
                        for a in new
                    ],
                )
            added, deleted = added + len(new), deleted + len(stale) + len(moved)
            self._in_kernel[plan.identity_set] = membership
        return added, deleted

    # -- reading back -------------------------------------------------------------------
    def diff_text(self, ruleset: Ruleset) -> str:
        """Unified diff from the running table to `ruleset` ('' when they agree)."""
        running = self.list_table()
        old = render_text(canonical(running)) if running else ""
        new = render_text(canonical(ruleset.objects))
        lines = difflib.unified_diff(
            old.splitlines(keepends=True),
            new.splitlines(keepends=True),
            fromfile="running",
            tofile=f"compiled ({ruleset.gateway})",
        )
        return "".join(lines)

    def drift(self, ruleset: Ruleset) -> str:
        """What differs between the running table and `ruleset` ('' when nothing does).

        Chains, rules, maps and set definitions are compared, and the elements of sets
        without timeouts; elements of timeout sets (identities, grants) change at run
        time by design and are reconciled by `sync_members` and the grant service.
        """
        running = self.list_table()
        if running is None:
            return f"table {TABLE_FAMILY} {TABLE_NAME} is missing"
        old = render_text(_without_timed_elements(canonical(running)))
        new = render_text(_without_timed_elements(canonical(ruleset.objects)))
        lines = difflib.unified_diff(
            old.splitlines(keepends=True),
            new.splitlines(keepends=True),
            fromfile="running",
            tofile=f"compiled ({ruleset.gateway})",
        )
        return "".join(lines)

    def flush_table(self) -> None:
        """Delete our table (only for --flush-on-exit); other tables are never touched."""
        self._writer.forget()
        self._in_kernel.clear()
        self.run([{"add": {"table": table()}}, {"delete": {"table": table()}}], "delete table")


def _without_timed_elements(objects: list[Json]) -> list[Json]:
    out = []
    for o in objects:
        body = o.get("set")
        flags = body.get("flags", []) if body else []
        if body and "timeout" in ([flags] if isinstance(flags, str) else flags):
            o = {"set": {k: v for k, v in body.items() if k != "elem"}}
        out.append(o)
    return out


def _grant_plan(ruleset: Ruleset, conduit: str) -> ConduitPlan:
    plan = ruleset.conduits.get(conduit)
    if plan is None:
        raise ElementRefused(f"conduit {conduit} is not enforced on gateway {ruleset.gateway}")
    if not plan.needs_grant:
        raise ElementRefused(f"conduit {conduit} needs no grant (it has no approval or emergency)")
    return plan


_Membership = tuple[Mapping[str, IPv4Address], Mapping[str, datetime]]


def _membership(plan: ConduitPlan) -> _Membership:
    """What an identity set should hold, independent of when it was compiled."""
    return plan.identities, plan.expiry


def _member_elements(ruleset: Ruleset, plan: ConduitPlan) -> dict[str, int | None]:
    now = ruleset.compiled_at
    out: dict[str, int | None] = {}
    for name, addr in plan.identities.items():
        exp = plan.expiry.get(name)
        out[str(addr)] = None if exp is None else max(1, int((exp - now).total_seconds()))
    return out


def _with_elements(obj: Json, extra: dict[str, list[Any]]) -> Json:
    body = obj.get("set")
    if not body or body["name"] not in extra:
        return obj
    return {"set": {**body, "elem": [*body.get("elem", []), *extra[body["name"]]]}}


def addresses(elements: Iterable[Any]) -> set[IPv4Address | IPv4Network]:
    """Set elements (as listed) as addresses or networks, for tests and status output."""
    out: set[IPv4Address | IPv4Network] = set()
    for el in elements:
        val = el["elem"]["val"] if isinstance(el, dict) and "elem" in el else el
        if isinstance(val, dict) and "prefix" in val:
            out.add(IPv4Network(f"{val['prefix']['addr']}/{val['prefix']['len']}"))
        elif isinstance(val, dict) and "range" in val:
            out.add(IPv4Network(f"{val['range'][0]}/32"))
        else:
            out.add(IPv4Address(val))
    return out
