"""Checks for access: identification (SR 1.1), remote access (SR 1.13), authorization
(SR 2.1) and session termination (SR 2.6). Each reads the model only; the rule it
applies is stated in its evidence and gap texts."""

from __future__ import annotations

from topology.iec62443 import features
from topology.iec62443.view import (
    FLOWLOG_DOC,
    POLICYD_DOC,
    REMOTE_DOC,
    TUNNELD_DOC,
    Found,
    ZoneView,
    describe,
    where,
)
from topology.model import format_duration
from topology.report import conduit_sources

# -- SR 1.1 identification and authentication ------------------------------------------


def sr_1_1(v: ZoneView, f: Found) -> None:
    f.ev(
        "Nothing reaches the zone except through a conduit; a person's packets count as "
        "that person only when they arrive through their own authenticated tunnel "
        "(WireGuard keyed by the hybrid post-quantum handshake)",
        TUNNELD_DOC,
        tested=True,
    )
    for c in v.remote():
        for person in v.people(c):
            if person.keys:
                f.ev(
                    f"{person.name} authenticates with the pinned key {person.keys}", where(person)
                )
            else:
                f.gap(
                    "configuration",
                    f"{person.name} (admitted by {c.name}) has no pinned keys: the topology "
                    "does not show how they authenticate, and tunneld will not admit them",
                    where(person),
                    "pin the identity's key bundle: `keys: keys/NAME.pub` (docs/tunneld.md)",
                )


def sr_1_1_re1(v: ZoneView, f: Found) -> None:
    for c in v.remote():
        people = v.people(c)
        if people:
            names = ", ".join(p.name for p in people)
            f.ev(f"{c.name} admits named people, each with their own address: {names}", where(c))
    shared = [i for i in v.topo.identities.values() if i.kind == "service" and i.roles]
    for s in shared:
        f.gap(
            "configuration",
            f"service identity {s.name} holds roles {', '.join(s.roles)} meant for people: "
            "it could be used as a shared account",
            where(s),
            "give people their own user identities",
        )
    if not f.evidence:
        f.ev("No conduit into the zone admits people")


def _second_factor(v: ZoneView, f: Found, which: str) -> None:
    """Every conduit that lets people in asks for a second factor on its grant actions
    (the tunnel key is the first); an always-open conduit for people cannot."""
    human = [c for c in v.remote() if v.people(c)]
    if not human:
        f.ev(f"No conduit into the zone admits people ({which})")
        return
    for c in human:
        factor = features.second_factor_of(c)
        if factor:
            f.ev(f"{c.name}: people get in only after a second factor ({factor})", where(c))
        elif c.needs_grant:
            f.conduit_gap(
                c,
                f"{c.name} lets people in on a tunnel key and an approval without a second factor",
                "add `second_factor: totp` to its approval or emergency clause",
            )
        else:
            f.conduit_gap(
                c,
                f"{c.name} admits people on their tunnel key alone (always open: no grant "
                "action could ask a second factor)",
                "make it an approval or emergency conduit with `second_factor: totp`",
            )


def sr_1_1_re2(v: ZoneView, f: Found) -> None:
    _second_factor(v, f, "over untrusted networks")


def sr_1_1_re3(v: ZoneView, f: Found) -> None:
    _second_factor(v, f, "on any network")


# -- SR 1.13 access via untrusted networks --------------------------------------------


def sr_1_13(v: ZoneView, f: Found) -> None:
    f.ev(
        "Remote access ends at the site gateway: the tunnel admits known identities only, "
        "the gateway's nftables rules admit only what a conduit allows, and every "
        "accepted flow and denied attempt is logged",
        FLOWLOG_DOC,
        tested=True,
    )
    for c in v.remote():
        f.ev(describe(c), where(c))


def sr_1_13_re1(v: ZoneView, f: Found) -> None:
    remote = [c for c in v.remote() if v.people(c)]
    if not remote:
        f.ev("No conduit into the zone admits people from remote")
    for c in remote:
        if c.approval is not None:
            who = ", ".join(p.name for p in v.approvers(c)) or "nobody"
            f.ev(
                f"{c.name}: closed until {c.approval.describe()} (approvers: {who}); the "
                "grant is enforced and expires in the kernel",
                where(c),
                tested=True,
            )
        elif c.emergency is not None:
            f.ev(
                f"{c.name}: break-glass without approval by design, at most "
                f"{format_duration(c.emergency.max_duration)}, audited as emergency_opened",
                where(c),
                tested=True,
            )
        else:
            f.conduit_gap(
                c,
                f"{c.name} admits people into this level-{v.zone.security_level} zone "
                "without approval",
                "add `approval: {by: [ROLE], max: 4h}` to the conduit",
            )


# -- SR 2.1 authorization -------------------------------------------------------------


def sr_2_1(v: ZoneView, f: Found) -> None:
    f.ev(
        "Default deny: the gateway accepts a flow only when a conduit names its source, "
        "its target and its service (Modbus narrowed to function classes)",
        POLICYD_DOC,
        tested=True,
    )
    for c in v.conduits:
        f.ev(describe(c), where(c))
    passed = [r for r in v.tests if r.passed]
    if passed:
        first = where(passed[0].test)
        f.ev(f"{len(passed)} declared policy test(s) into the zone pass", first)
    for r in v.tests:
        if not r.passed:
            f.gap(
                "configuration",
                f"policy test {r.test.describe()} expects {r.test.expect}, "
                f"the topology gives {r.verdict.word}",
                where(r.test),
                "run `zonegate check -v`",
            )


def sr_2_1_re1(v: ZoneView, f: Found) -> None:
    f.ev(
        "The same check applies to people, services and site-to-site flows: there is no "
        "path into a zone that bypasses the conduits",
        POLICYD_DOC,
        tested=True,
    )
    for c in v.conduits:
        for ref in c.allow:
            svc = v.topo.services.get(ref.service)
            if svc and svc.classes and not ref.classes and v.zone.security_level >= 3:
                f.conduit_gap(
                    c,
                    f"{c.name} allows every {ref.service} function (writes included) into "
                    f"a level-{v.zone.security_level} zone",
                    f"narrow it, e.g. `{{{ref.service}: read}}`",
                )
            if ref.classes and "write" in ref.classes:
                ranges = features.register_ranges_of(c)
                if ranges is None:
                    f.conduit_gap(
                        c,
                        f"{c.name}: {ref} allowed with writes to any register",
                        "limit writes to ranges: `{modbus: {write: {holding_registers: [0-9]}}}`",
                    )
                else:
                    f.ev(f"{c.name}: writes limited to {ranges}", where(c))


def sr_2_1_re2(v: ZoneView, f: Found) -> None:
    for c in v.remote():
        if c.sources.roles:
            f.ev(f"{c.name} admits roles {', '.join(c.sources.roles)}", where(c))
        direct = [
            i
            for i in c.sources.identities
            if (ident := v.topo.identities.get(i)) is not None and ident.kind == "user"
        ]
        if direct:
            f.conduit_gap(
                c,
                f"{c.name} admits people by name ({', '.join(direct)}) rather than by role",
                "give them a role and name the role in `from`",
            )
    if not f.evidence and not f.gaps:
        f.ev("No conduit into the zone admits people")


def sr_2_1_re3(v: ZoneView, f: Found) -> None:
    emergency = [c for c in v.conduits if c.emergency is not None]
    for c in emergency:
        assert c.emergency is not None
        f.ev(
            f"{c.name}: break-glass for {conduit_sources(c)}, at most "
            f"{format_duration(c.emergency.max_duration)}, audited as emergency_opened"
            + (", recorded" if c.record else ""),
            where(c),
            tested=True,
        )
    if not emergency:
        f.gap(
            "configuration",
            f"no emergency (break-glass) conduit into {v.zone.ref}: no supervised override path",
            where(v.zone),
            "add a conduit with `emergency: {max: 1h}` and `record: true`",
        )


def sr_2_1_re4(v: ZoneView, f: Found) -> None:
    gated = [c for c in v.conduits if c.needs_grant]
    for c in v.conduits:
        dual = features.dual_approval_of(c)
        if dual:
            f.ev(f"{c.name}: {dual}", where(c))
        elif c.approval is not None:
            f.conduit_gap(
                c,
                f"{c.name} opens on one person's decision",
                "require two approvers: `approval: {count: 2}`",
            )
        elif c.emergency is not None:
            f.conduit_gap(
                c,
                f"{c.name} is break-glass access opened by one person (by design: audited "
                "loudly and short)",
                "keep it short, recorded and reviewed after each use",
            )
    if not gated and v.conduits:
        names = ", ".join(c.name for c in v.conduits)
        f.gap(
            "configuration",
            f"conduits into this level-{v.zone.security_level} zone open without any "
            f"approval: {names}",
            where(v.conduits[0]),
            "add approvals",
        )
    if not v.conduits:
        f.ev("No conduit reaches the zone: nothing to approve")


# -- SR 2.6 remote session termination -------------------------------------------------


def sr_2_6(v: ZoneView, f: Found) -> None:
    f.ev(
        "Revoking a grant or an identity, or a grant or validity expiring, stops the "
        "person's established sessions at their next packet (continuous verification in "
        "the kernel)",
        REMOTE_DOC,
        tested=True,
    )
    for c in v.remote():
        bounds = []
        if c.approval is not None:
            bounds.append(f"grants last at most {format_duration(c.approval.max_duration)}")
        if c.emergency is not None:
            bounds.append(f"emergency lasts at most {format_duration(c.emergency.max_duration)}")
        if c.schedule is not None:
            bounds.append(f"closes outside {c.schedule.describe()}")
        if bounds:
            f.ev(f"{c.name}: {'; '.join(bounds)}", where(c))
        else:
            f.conduit_gap(
                c,
                f"{c.name} lets remote sessions into this level-{v.zone.security_level} zone "
                "run without a time limit (no approval, emergency or schedule)",
                "add an approval with `max`, or a schedule",
            )
    f.gap(
        "feature",
        "sessions are not ended after a period of inactivity by Zonegate itself "
        "(only conntrack's idle timeouts)",
        POLICYD_DOC,
    )
