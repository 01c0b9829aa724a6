"""Checks for the audit trail (SR 2.8, 3.9), segmentation and boundaries (SR 5.1, 5.2),
monitoring (SR 6.1, 6.2) and configuration (SR 7.6). Several can only be partly shown
from the topology; the rest is stated as `outside` or left to the gateway evidence."""

from __future__ import annotations

from topology.iec62443.view import FLOWLOG_DOC, POLICYD_DOC, Found, ZoneView, where

# -- SR 2.8 auditable events, SR 3.9 protection of audit information --------------------


def sr_2_8(v: ZoneView, f: Found) -> None:
    f.ev(
        "The gateway logs every accepted flow (start and end, with identity and conduit), "
        "every denied attempt and every decision (policy, grants, emergency, revocation); "
        "lost records are counted, never silent",
        FLOWLOG_DOC,
        tested=True,
    )
    for c in v.conduits:
        if c.record:
            f.ev(f"{c.name}: every session is recorded (pcap per flow)", where(c))


def sr_2_8_re1(v: ZoneView, f: Found) -> None:
    f.ev("Each gateway can send every record to a central syslog (RFC 5424)", FLOWLOG_DOC)
    f.gap(
        "outside",
        "the topology does not show that each gateway sends its log to a central "
        "collector: show policyd's --syslog setting and the collector",
        "deploy/zonegate.env",
    )


def sr_3_9(v: ZoneView, f: Found) -> None:
    f.ev(
        "every audit record carries a hash chain (seq, prev, hash) across restarts and "
        "rotations; `zonegate audit verify LOG...` detects an edited, deleted or reordered "
        "record (run it with --logs for this gateway's verdict)",
        FLOWLOG_DOC,
        tested=True,
    )


def sr_3_9_re1(v: ZoneView, f: Found) -> None:
    f.gap(
        "outside",
        "write-once storage of the audit log is the collector's job: show it",
    )


# -- SR 5.1 segmentation, SR 5.2 boundary protection ------------------------------------


def sr_5_1(v: ZoneView, f: Found) -> None:
    z = v.zone
    f.ev(
        f"{z.ref} is its own network {z.cidr} behind the {z.site} gateway; flows into it "
        "cross the gateway and are accepted only through conduits",
        where(z),
    )


def sr_5_1_re1(v: ZoneView, f: Found) -> None:
    f.gap(
        "outside",
        f"that {v.zone.ref} ({v.zone.cidr}) is physically separate (its own switches or "
        "links, reachable only through the gateway) must be shown on the plant's drawings",
        where(v.zone),
    )


def sr_5_1_re2(v: ZoneView, f: Found) -> None:
    lower = [
        (c, src)
        for c in v.conduits
        for src in c.sources.zones
        if (sz := v.topo.zone(src)) is not None and sz.security_level < v.zone.security_level
    ]
    for c, src in lower:
        sz = v.topo.zone(src)
        assert sz is not None
        f.conduit_gap(
            c,
            f"{c.name} connects level-{sz.security_level} zone {src} into this "
            f"level-{v.zone.security_level} zone: justify that {v.zone.ref} keeps working "
            "without it",
            "document the dependency, or have the higher zone pull instead",
        )
    if not lower:
        f.ev(
            f"No conduit from a lower-level zone into {v.zone.ref}; remote people reach it "
            "only through conduits that the zone does not depend on",
            where(v.zone),
        )


def sr_5_1_re3(v: ZoneView, f: Found) -> None:
    always_open = [c for c in v.conduits if not c.needs_grant]
    for c in always_open:
        f.conduit_gap(
            c,
            f"{c.name} keeps a path into this level-{v.zone.security_level} zone open "
            "without approval or emergency",
            "make it `approval:` or `emergency:`",
        )
    if not always_open:
        f.ev(
            "Logically isolated: every conduit into the zone is closed until granted", where(v.zone)
        )
    sr_5_1_re1(v, f)


def sr_5_2(v: ZoneView, f: Found) -> None:
    f.ev(
        f"The {v.zone.site} gateway enforces the boundary in the kernel (one nftables table "
        "compiled from the topology); accepted flows and denied attempts are logged",
        POLICYD_DOC,
        tested=True,
    )


def sr_5_2_re1(v: ZoneView, f: Found) -> None:
    f.ev(
        "Default deny: conduits are the only exceptions; unknown sources, functions and "
        "spoofed addresses are dropped and logged",
        POLICYD_DOC,
        tested=True,
    )


def sr_5_2_re2(v: ZoneView, f: Found) -> None:
    f.gap(
        "feature",
        "no single command cuts all traffic through a gateway at once; today: remove the "
        "conduits into the zone and reload, or stop the tunnels",
    )


def sr_5_2_re3(v: ZoneView, f: Found) -> None:
    f.ev(
        "Fail closed: the ruleset stays in the kernel when policyd stops; grants expire in "
        "the kernel; a topology with errors is rejected and the last good policy stays in "
        "force; a protocol proxy that is down closes its conduit",
        POLICYD_DOC,
        tested=True,
    )


# -- SR 6 monitoring, SR 7.6 configuration ---------------------------------------------


def sr_6_1(v: ZoneView, f: Found) -> None:
    f.ev(
        "`zonegate flows` reads and filters the log (identity, conduit, asset, time)",
        FLOWLOG_DOC,
        tested=True,
    )


def sr_6_1_re1(v: ZoneView, f: Found) -> None:
    f.ev(
        "Programs read the log as JSON Lines with Zeek/ECS field names, from the file, "
        "syslog, or the control API's live `flows` stream",
        FLOWLOG_DOC,
        tested=True,
    )


def sr_6_2(v: ZoneView, f: Found) -> None:
    f.ev("Live record stream and syslog feed a SIEM as events happen", FLOWLOG_DOC, tested=True)
    f.gap("outside", "show that someone watches the stream: the SIEM and its alerts")


def sr_7_6(v: ZoneView, f: Found) -> None:
    files = ", ".join(v.topo.files)
    f.ev(
        f"The zone's conduits are code under review ({files}); `zonegate check` validates "
        "it and runs the declared policy tests; each gateway's ruleset is compiled from it",
        where(v.zone),
        tested=True,
    )


def sr_7_6_re1(v: ZoneView, f: Found) -> None:
    f.ev(
        "Machine-readable: `zonegate report --json`, `zonegate render --json` (the "
        "compiled ruleset) and `zonegate diff` (running vs compiled)",
        POLICYD_DOC,
        tested=True,
    )
