"""Reading conduits (sources, targets, services, schedules, approval) and tests."""

from __future__ import annotations

from collections.abc import Callable
from datetime import time
from ipaddress import IPv4Address
from typing import cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from topology.diagnostics import Location
from topology.fields import suggest
from topology.model import (
    CODE_KEMS,
    Approval,
    Conduit,
    Emergency,
    Expect,
    PolicyTest,
    Schedule,
    SecondFactor,
    ServiceRef,
    Sources,
    Target,
    TargetKind,
    Webhook,
)
from topology.read_context import Entry, ReadContext
from topology.refs import parse_service_spec
from topology.yamlnodes import YMap, YNode, YScalar, YSeq, describe

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class ConduitReader(ReadContext):
    """Builds conduits and policy tests, checking every reference where it is written."""

    def _build_conduit(self, e: Entry) -> Conduit | None:
        allowed = (
            "from",
            "to",
            "allow",
            "schedule",
            "approval",
            "emergency",
            "record",
            "notify",
            "code_kem",
            "description",
            "accept_risk",
        )
        node = self._named_map(e, "conduit", allowed)
        if node is None:
            return None
        what = f"conduit '{e.name}'"
        ok = True
        sources = self._sources(self.r.required(node, "from", what), what)
        target = self._target(self.r.required(node, "to", what), what)
        allow = self._allow(self.r.required(node, "allow", what), what)
        schedule = self._schedule(node.get("schedule"))
        approval = self._approval(node.get("approval"), what)
        emergency = None
        em_node = self.r.mapping(node.get("emergency"), "emergency")
        if em_node is not None:
            self.r.keys(em_node, ("max", "second_factor"), "emergency")
            em_max = self.r.duration(self.r.required(em_node, "max", "emergency"), "max")
            factor = self._second_factor(em_node)
            emergency = Emergency(em_max, factor) if em_max else None
            ok = ok and emergency is not None
            if node.get("approval") is not None:
                self.diags.error(
                    node.key_location("emergency"),
                    f"{what} has both approval and emergency",
                    "emergency access opens without approval; make two conduits",
                )
                ok = False
        record = self.r.boolean(node.get("record"), "record") or False
        code_kem = self.r.string(node.get("code_kem"), "code_kem")
        if code_kem is not None and code_kem not in CODE_KEMS:
            self.diags.error(
                node.key_location("code_kem"),
                f"unknown code_kem '{code_kem}'",
                suggest(code_kem, CODE_KEMS),
            )
            ok = False
        if node.get("schedule") is not None and schedule is None:
            ok = False
        if node.get("approval") is not None and approval is None:
            ok = False
        accept_risk = self.r.string(node.get("accept_risk"), "accept_risk (the reason)")
        if node.get("accept_risk") is not None and accept_risk is None:
            ok = False
        if sources is None or target is None or allow is None or not ok:
            return None
        return Conduit(
            name=e.name,
            sources=sources,
            target=target,
            allow=allow,
            schedule=schedule,
            approval=approval,
            emergency=emergency,
            record=record,
            notify=tuple(self._refs(node, "notify", self.entries["webhooks"], "webhook")),
            description=self.r.string(node.get("description"), "description") or "",
            location=e.location,
            accept_risk=accept_risk or "",
            code_kem=code_kem,
        )

    def _sources(self, node: YNode | None, what: str) -> Sources | None:
        m = self.r.mapping(node, f"{what} from")
        if m is None:
            return None
        self.r.keys(m, ("identities", "roles", "zones"), f"{what} from")
        idents = self._refs(m, "identities", self.entries["identities"], "identity")
        roles = self._refs(m, "roles", self.entries["roles"], "role")
        zones = [
            z for z, zloc in self.r.string_list(m.get("zones"), "zones") if self._zone_ref(z, zloc)
        ]
        if not (m.get("identities") or m.get("roles") or m.get("zones")):
            self.diags.error(
                m.location, f"{what} 'from' names nobody", "list identities, roles or zones"
            )
            return None
        return Sources(tuple(idents), tuple(roles), tuple(zones))

    def _target(self, node: YNode | None, what: str) -> Target | None:
        m = self.r.mapping(node, f"{what} to")
        if m is None:
            return None
        self.r.keys(m, ("zone", "asset"), f"{what} to")
        if (m.get("zone") is None) == (m.get("asset") is None):
            self.diags.error(m.location, f"{what} 'to' needs exactly one of 'zone' or 'asset'")
            return None
        kind = TargetKind.ZONE if m.get("zone") is not None else TargetKind.ASSET
        ref = self.r.string(m.get(kind.value), kind.value)
        if ref is None:
            return None
        check: Callable[[str, Location], bool] = (
            self._zone_ref if kind is TargetKind.ZONE else self._asset_ref
        )
        if not check(ref, m.key_location(kind.value)):
            return None
        site, _, name = ref.partition("/")
        return Target(kind, site, name)

    def _allow(self, node: YNode | None, what: str) -> tuple[ServiceRef, ...] | None:
        if node is None:
            return None
        items = node.items if isinstance(node, YSeq) else [node]
        if not items:
            self.diags.error(node.location, f"{what} allows nothing", "list at least one service")
            return None
        refs: list[ServiceRef] = []
        ok = True
        for item in items:
            ref = self._service_ref(item)
            if ref is None:
                ok = False
            else:
                refs.append(ref)
        return tuple(refs) if ok else None

    def _service_ref(self, item: YNode) -> ServiceRef | None:
        if isinstance(item, YScalar) and isinstance(item.value, str):
            name, wanted = item.value, []
            if "/" in name:
                base, _, cls = name.partition("/")
                self.diags.error(
                    item.location,
                    f"write '{{{base}: {cls}}}' in allow, not '{name}'",
                )
                return None
        elif isinstance(item, YMap) and len(item.entries) == 1:
            name, (_, cnode) = next(iter(item.entries.items()))
            wanted = self.r.string_list(cnode, f"{name} classes")
        else:
            self.diags.error(
                item.location,
                f"each allow entry is a service name or {{service: classes}}, "
                f"found {describe(item)}",
            )
            return None
        service = self.services.get(name)
        if service is None:
            self.diags.error(
                item.location,
                f"unknown service '{name}'",
                suggest(name, self.services) or "define it under 'services:'",
            )
            return None
        classes = []
        for cls, cloc in wanted:
            if cls not in service.classes:
                hint = suggest(cls, service.classes) if service.classes else ""
                msg = (
                    f"service '{name}' has no function class '{cls}'"
                    if service.classes
                    else f"service '{name}' has no function classes"
                )
                self.diags.error(cloc, msg, hint)
                return None
            classes.append(cls)
        return ServiceRef(name, tuple(dict.fromkeys(classes)))

    def _schedule(self, node: YNode | None) -> Schedule | None:
        m = self.r.mapping(node, "schedule")
        if m is None:
            return None
        self.r.keys(m, ("days", "hours", "tz"), "schedule")
        days = self._days(m.get("days"))
        hours_node = m.get("hours")
        start, end = time(0, 0), time.max
        if hours_node is not None:
            text = self.r.string(hours_node, "hours")
            if text is None:
                return None
            a, sep, b = text.partition("-")
            if not sep:
                self.diags.error(hours_node.location, f"hours '{text}' must be HH:MM-HH:MM")
                return None
            s = self.r.clock(a.strip(), hours_node.location, "start")
            t = self.r.clock(b.strip(), hours_node.location, "end")
            if s is None or t is None:
                return None
            start, end = s, t
        tz = self.r.string(m.get("tz"), "tz") or "UTC"
        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            self.diags.error(
                m.key_location("tz"),
                f"unknown time zone '{tz}'",
                "use an IANA name such as Europe/Berlin or UTC",
            )
            return None
        if days is None:
            return None
        return Schedule(frozenset(days), start, end, tz)

    def _days(self, node: YNode | None) -> set[int] | None:
        if node is None:
            return set(range(7))
        parts: list[tuple[str, Location]]
        if isinstance(node, YScalar) and isinstance(node.value, str):
            parts = [(p.strip(), node.location) for p in node.value.split(",")]
        else:
            parts = self.r.string_list(node, "days")
        days: set[int] = set()
        for part, loc in parts:
            lo, sep, hi = part.lower().partition("-")
            names = [lo, hi] if sep else [lo]
            bad = [n for n in names if n[:3] not in DAYS or len(n) < 3]
            if bad:
                self.diags.error(loc, f"unknown day '{bad[0]}'", "use mon, tue, ... sun or mon-fri")
                return None
            a, b = DAYS.index(names[0][:3]), DAYS.index(names[-1][:3])
            span = range(a, b + 1) if a <= b else [*range(a, 7), *range(0, b + 1)]
            days.update(span)
        return days

    def _approval(self, node: YNode | None, what: str) -> Approval | None:
        m = self.r.mapping(node, "approval")
        if m is None:
            return None
        self.r.keys(m, ("by", "max", "count", "second_factor"), "approval")
        roles, idents = [], []
        for ref, loc in self.r.string_list(self.r.required(m, "by", "approval"), "by"):
            if ref in self.entries["roles"]:
                roles.append(ref)
            elif ref in self.entries["identities"]:
                idents.append(ref)
            else:
                names = [*self.entries["roles"], *self.entries["identities"]]
                self.diags.error(
                    loc,
                    f"{what} approver '{ref}' is neither a role nor an identity",
                    suggest(ref, names),
                )
                return None
        max_duration = self.r.duration(self.r.required(m, "max", "approval"), "max")
        count = 1 if m.get("count") is None else self.r.integer(m.get("count"), "count", 1, 9)
        if max_duration is None or not (roles or idents) or count is None:
            return None
        factor = self._second_factor(m)
        return Approval(tuple(roles), tuple(idents), max_duration, count, factor)

    def _second_factor(self, m: YMap) -> SecondFactor | None:
        node = m.get("second_factor")
        value = self.r.string(node, "second_factor")
        if value is None:
            return None
        if value != "totp":
            assert node is not None
            self.diags.error(
                node.location,
                f"unknown second factor '{value}'",
                "the one second factor is 'totp' (enrol with policyd totp enroll)",
            )
            return None
        return "totp"

    def _build_webhook(self, e: Entry) -> Webhook | None:
        node = self._named_map(e, "webhook", ("url", "url_file", "format"))
        if node is None:
            return None
        what = f"webhook '{e.name}'"
        url = self.r.string(node.get("url"), "url")
        url_file = self.r.string(node.get("url_file"), "url_file")
        if (url is None) == (url_file is None):
            self.diags.error(
                e.location,
                f"{what} needs exactly one of url or url_file",
                "url_file: a file on the gateway holding the URL (keeps tokens out of git)",
            )
            return None
        if url is not None and not url.startswith(("https://", "http://")):
            loc = node.get("url")
            assert loc is not None
            self.diags.error(loc.location, f"{what} url must start with https:// or http://")
            return None
        fmt = self.r.string(node.get("format"), "format") or "json"
        if fmt not in ("json", "slack"):
            loc = node.get("format")
            assert loc is not None
            self.diags.error(loc.location, f"{what} format '{fmt}' is not json or slack")
            return None
        return Webhook(e.name, url, url_file, "slack" if fmt == "slack" else "json", e.location)

    def _build_test(self, node: YNode) -> PolicyTest | None:
        m = self.r.mapping(node, "a test")
        if m is None:
            return None
        self.r.keys(m, ("from", "to", "service", "expect", "at", "granted"), "a test")
        source = self.r.string(self.r.required(m, "from", "a test"), "from")
        target = self.r.string(self.r.required(m, "to", "a test"), "to")
        service = self.r.string(self.r.required(m, "service", "a test"), "service")
        expect = self.r.string(self.r.required(m, "expect", "a test"), "expect")
        at = self.r.moment(m.get("at"), "at")
        granted = self.r.boolean(m.get("granted"), "granted") or False
        ok = True
        if source is not None and not self._endpoint(source, m.key_location("from"), True):
            ok = False
        if target is not None and not self._endpoint(target, m.key_location("to"), False):
            ok = False
        if service is not None:
            problem = parse_service_spec(service, self.services)
            if isinstance(problem, tuple):
                self.diags.error(m.key_location("service"), problem[0], problem[1])
                ok = False
        if expect is not None and expect not in ("allow", "deny"):
            self.diags.error(
                m.key_location("expect"), f"expect must be allow or deny, not '{expect}'"
            )
            ok = False
        if not (ok and source and target and service and expect):
            return None
        return PolicyTest(source, target, service, cast(Expect, expect), at, granted, m.location)

    def _endpoint(self, ref: str, loc: Location, is_source: bool) -> bool:
        if is_source and ref in self.entries["identities"]:
            return ref in self.identities  # else: reported where the identity is defined
        if "/" in ref:
            site, _, name = ref.partition("/")
            s = self.sites.get(site)
            if s is not None and (name in s.zones or name in s.assets):
                return True
            written = {
                **(self._declared(site, "zones") or {}),
                **(self._declared(site, "assets") or {}),
            }
            if name in written or (s is None and site in self.entries["sites"]):
                return False  # reported where the site, zone or asset is defined
            if s is None:
                self.diags.error(
                    loc, f"unknown site '{site}' in '{ref}'", suggest(site, self.sites)
                )
            else:
                names = [*s.zones, *s.assets]
                self.diags.error(
                    loc, f"site '{site}' has no zone or asset '{name}'", suggest(name, names)
                )
            return False
        try:
            IPv4Address(ref)
            return True
        except ValueError:
            pass
        what = (
            "identity, SITE/ZONE, SITE/ASSET or address"
            if is_source
            else "SITE/ASSET, SITE/ZONE or address"
        )
        hint = suggest(ref, self.identities) if is_source else ""
        self.diags.error(
            loc, f"unknown {what.split(',')[0]} '{ref}'", hint or f"expected an {what}"
        )
        return False
