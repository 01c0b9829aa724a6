"""The validated topology: immutable, typed, and the only input every other part reads.

Everything downstream (the evaluator, policyd's compiler, tunneld's peer list, the
Mininet builder) is a pure function of a `Topology`. Objects here are frozen and hold
no I/O; `topology.load()` is the only way to make one from files.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from enum import Enum
from ipaddress import IPv4Address, IPv4Network
from types import MappingProxyType
from typing import Literal, TypeVar
from zoneinfo import ZoneInfo

from topology.diagnostics import Location

IdentityKind = Literal["user", "site", "service"]
Transport = Literal["tcp", "udp"]

DAY_NAMES = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


K = TypeVar("K")
V = TypeVar("V")


def frozen_map(items: Mapping[K, V] | None = None) -> Mapping[K, V]:
    """A read-only view, so a validated model cannot be changed by accident."""
    return MappingProxyType(dict(items or {}))


# The optional code-based third component of tunnels (a site's or a conduit's
# `code_kem`; tunneld adds HQC ephemeral keys to X25519 and ML-KEM, weakest first).
CODE_KEMS = ("hqc-128", "hqc-192", "hqc-256")


@dataclass(frozen=True)
class FunctionClass:
    """A named group of protocol function codes matched in the packet payload."""

    name: str
    codes: tuple[int, ...]


@dataclass(frozen=True)
class Service:
    """An application protocol: transport, ports and optional function-code classes.

    `payload_offset` is the bit offset of the function code inside the transport
    payload (nftables `@ih,OFFSET,8`); it is set only for services with classes.
    """

    name: str
    transport: Transport
    ports: tuple[int, ...]
    description: str = ""
    classes: Mapping[str, FunctionClass] = field(default_factory=frozen_map)
    payload_offset: int | None = None
    builtin: bool = True
    location: Location | None = None


MODBUS_TABLES = ("coils", "discrete_inputs", "input_registers", "holding_registers")
OnDeny = Literal["exception", "reset"]


@dataclass(frozen=True)
class AddressRange:
    """Addresses `first`..`last` of one Modbus table; for writes, optional value bounds."""

    first: int
    last: int
    values: tuple[int, int] | None = None  # lowest, highest value a write may carry

    def __str__(self) -> str:
        span = str(self.first) if self.first == self.last else f"{self.first}-{self.last}"
        if self.values is None:
            return span
        return f"{span} values {self.values[0]}-{self.values[1]}"


TableRanges = Mapping[str, tuple[AddressRange, ...]]


@dataclass(frozen=True)
class ModbusScope:
    """The long form of `{modbus: ...}`: which units, tables, addresses and values.

    `read`/`write` None means that kind of access is not allowed at all; an empty
    mapping never occurs (the reader turns `read: all` into `ALL_TABLES`).
    A request passes when its unit is listed (or `units` is empty = any unit) and every
    address it touches lies inside a listed range of its table (containment).
    """

    units: tuple[tuple[int, int], ...] = ()  # inclusive ranges; empty: any unit
    read: TableRanges | None = None
    write: TableRanges | None = None
    diagnostics: bool = False
    on_deny: OnDeny = "exception"

    @property
    def classes(self) -> tuple[str, ...]:
        """The function classes the kernel's first-filter match must let through."""
        out = []
        if self.read is not None:
            out.append("read")
        if self.write is not None:
            out.append("write")
        if self.diagnostics:
            out.append("diagnostics")
        return tuple(out)

    def describe(self) -> str:
        parts = []
        if self.units:
            parts.append(
                "units " + ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in self.units)
            )
        for kind, tables in (("read", self.read), ("write", self.write)):
            if tables is None:
                continue
            if tables is ALL_TABLES:
                parts.append(f"{kind} all")
                continue
            for table, ranges in tables.items():
                parts.append(f"{kind} {table} {', '.join(str(r) for r in ranges)}")
        if self.diagnostics:
            parts.append("diagnostics")
        if self.on_deny == "reset":
            parts.append("reset on deny")
        return "; ".join(parts)


ALL_TABLES: TableRanges = MappingProxyType({t: (AddressRange(0, 0xFFFF),) for t in MODBUS_TABLES})


@dataclass(frozen=True)
class ServiceRef:
    """One entry of a conduit's `allow`: a service, narrowed to some classes or not."""

    service: str
    classes: tuple[str, ...] = ()  # empty: every function of the service
    modbus: ModbusScope | None = None  # the long form; classes then follow from it

    def __str__(self) -> str:
        if self.modbus is not None:
            return f"{self.service} ({self.modbus.describe()})"
        if not self.classes:
            return self.service
        return f"{self.service}/{'+'.join(self.classes)}"


@dataclass(frozen=True)
class Gateway:
    """A site's gateway: where tunnels terminate (underlay) and its tunnel address."""

    underlay: str  # host or IP address reachable by peers
    port: int
    overlay: IPv4Address
    management: tuple[ManagementAccess, ...] = ()  # who may reach the gateway itself


@dataclass(frozen=True)
class ManagementAccess:
    """Sources (zone refs, identity names, CIDRs) allowed to reach services of the gateway
    itself (service names; `api` is the control API)."""

    sources: tuple[str, ...]
    services: tuple[str, ...]


@dataclass(frozen=True)
class Zone:
    site: str
    name: str
    cidr: IPv4Network
    security_level: int
    description: str = ""
    location: Location | None = None
    interface: str | None = None  # the gateway interface (or VLAN) the zone lives behind

    @property
    def ref(self) -> str:
        return f"{self.site}/{self.name}"


@dataclass(frozen=True)
class Asset:
    site: str
    name: str
    zone: str  # zone name within the same site
    address: IPv4Address
    services: tuple[str, ...] = ()  # what the asset serves (for emulation and docs)
    description: str = ""
    location: Location | None = None

    @property
    def ref(self) -> str:
        return f"{self.site}/{self.name}"

    @property
    def zone_ref(self) -> str:
        return f"{self.site}/{self.zone}"


@dataclass(frozen=True)
class Site:
    name: str
    gateway: Gateway
    zones: Mapping[str, Zone]
    assets: Mapping[str, Asset]
    kem: str = "ml-kem-768"
    location: Location | None = None
    tz: str = "UTC"  # IANA time zone: a date alone in valid_from/valid_until is a day here
    # A code-based KEM (hqc-128/192/256) every tunnel of this site must add to X25519 and
    # ML-KEM; a pair of sites uses the stronger of the two sides' (None: two components).
    code_kem: str | None = None


@dataclass(frozen=True)
class Role:
    name: str
    description: str = ""
    location: Location | None = None


@dataclass(frozen=True)
class Identity:
    """A user, a site gateway or a service, with one fixed overlay address.

    On a gateway, `iifname <tunnel> ip saddr <overlay>` is this identity: WireGuard
    admits a packet from a peer only with that peer's allowed source address.
    `keys` is the path of the identity's public key bundle (written by
    `tunneld keygen`), resolved relative to the file that names it.
    """

    name: str
    kind: IdentityKind
    roles: tuple[str, ...] = ()
    overlay: IPv4Address | None = None
    keys: str | None = None
    valid_from: datetime | None = None
    valid_until: datetime | None = None
    site: str | None = None  # for kind "site": the site whose gateway this is
    description: str = ""
    location: Location | None = None

    def valid_at(self, at: datetime) -> bool:
        if self.valid_from is not None and at < self.valid_from:
            return False
        return not (self.valid_until is not None and at >= self.valid_until)


@dataclass(frozen=True)
class Schedule:
    """Open on `days` between `start` and `end` (local time in `tz`).

    `end` before `start` means the window crosses midnight (22:00-06:00).
    """

    days: frozenset[int]  # 0 = Monday
    start: time
    end: time
    tz: str = "UTC"

    def is_open(self, at: datetime) -> bool:
        local = at.astimezone(ZoneInfo(self.tz))
        t = local.time().replace(tzinfo=None)
        day = local.weekday()
        if self.start < self.end:
            return day in self.days and self.start <= t < self.end
        # Overnight window: the part after midnight belongs to the previous day's window.
        if t >= self.start:
            return day in self.days
        if t < self.end:
            return (day - 1) % 7 in self.days
        return False

    def describe(self) -> str:
        end = "24:00" if self.end == time.max else f"{self.end:%H:%M}"
        return f"{describe_days(self.days)} {self.start:%H:%M}-{end} {self.tz}"


def describe_days(days: frozenset[int]) -> str:
    """Mon-Fri rather than Mon,Tue,Wed,Thu,Fri."""
    runs: list[list[int]] = []
    for d in sorted(days):
        if runs and runs[-1][-1] == d - 1:
            runs[-1].append(d)
        else:
            runs.append([d])
    parts = []
    for run in runs:
        first, last = DAY_NAMES[run[0]][:3], DAY_NAMES[run[-1]][:3]
        parts.append(first if len(run) == 1 else f"{first}-{last}")
    return ",".join(parts)


@dataclass(frozen=True)
class Approval:
    """Who may approve a just-in-time grant (roles or identities) and for how long."""

    by_roles: tuple[str, ...]
    by_identities: tuple[str, ...]
    max_duration: timedelta
    count: int = 1  # distinct approvers needed (none of them the requester): dual approval
    second_factor: SecondFactor | None = None  # asked of every approver and revoker

    def names(self, identity: Identity) -> bool:
        """Whether the identity is one this approval names (by name or role); the
        requester-is-never-approver rule is the grant book's, on top of this."""
        return identity.name in self.by_identities or any(
            r in self.by_roles for r in identity.roles
        )

    def describe(self) -> str:
        who = ", ".join([*self.by_roles, *self.by_identities])
        n = f"{self.count} approvals" if self.count > 1 else "approval"
        factor = f" with {self.second_factor}" if self.second_factor else ""
        return f"{n} by {who}{factor}, at most {format_duration(self.max_duration)}"


@dataclass(frozen=True)
class Emergency:
    """A break-glass conduit: opened without approval, for a short time, loudly."""

    max_duration: timedelta
    second_factor: SecondFactor | None = None  # asked of whoever opens it


SecondFactor = Literal["totp"]
WebhookFormat = Literal["json", "slack"]


@dataclass(frozen=True)
class Webhook:
    """Where grant events are posted (policyd/notify.py): a generic JSON body or a
    Slack/Teams-style `{"text": ...}`. The URL is the topology's; keep tokens out of
    git with `url_file:` (read on the gateway)."""

    name: str
    url: str | None
    url_file: str | None = None
    format: WebhookFormat = "json"
    location: Location | None = None

    def __repr__(self) -> str:  # a URL may carry a token
        return f"Webhook({self.name!r}, format={self.format!r})"


@dataclass(frozen=True)
class Sources:
    identities: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()
    zones: tuple[str, ...] = ()  # "site/zone"

    def admits(self, identity: Identity) -> bool:
        """Whether this `from` names the identity, directly or by one of its roles.

        The one admission rule: the evaluator, grants, tunnel planning, profiles and the
        compiler's role index all ask it (or build on it), so they cannot disagree.
        """
        return identity.name in self.identities or any(r in self.roles for r in identity.roles)


class TargetKind(Enum):
    ZONE = "zone"
    ASSET = "asset"


@dataclass(frozen=True)
class Target:
    kind: TargetKind
    site: str
    name: str

    @property
    def ref(self) -> str:
        return f"{self.site}/{self.name}"

    def __str__(self) -> str:
        return f"{self.kind.value} {self.ref}"


@dataclass(frozen=True)
class Conduit:
    name: str
    sources: Sources
    target: Target
    allow: tuple[ServiceRef, ...]
    schedule: Schedule | None = None
    approval: Approval | None = None
    emergency: Emergency | None = None
    record: bool = False
    notify: tuple[str, ...] = ()  # webhooks told of this conduit's grant events
    description: str = ""
    location: Location | None = None
    accept_risk: str = ""  # why the IEC 62443 risk warning is accepted for this conduit
    # A code-based KEM (hqc-128/192/256) the tunnels carrying this conduit must add to
    # X25519 and ML-KEM: the site pair of a zone-to-zone conduit, or each admitted user's
    # tunnel into the target site (None: as the sites say).
    code_kem: str | None = None

    @property
    def second_factor(self) -> SecondFactor | None:
        """What grant actions on this conduit ask beyond the tunnel key."""
        if self.approval is not None:
            return self.approval.second_factor
        return self.emergency.second_factor if self.emergency is not None else None

    @property
    def mark(self) -> int:
        """The conntrack mark that attributes flows to this conduit.

        Derived from the name, so it stays the same across reloads and file edits;
        validation rejects the (unlikely) collision of two names.
        """
        return conduit_mark(self.name)

    @property
    def needs_grant(self) -> bool:
        return self.approval is not None or self.emergency is not None


# ct mark layout: 0x5A in the top byte says "set by zonegate", the low 24 bits are a
# hash of the conduit name.
MARK_TAG = 0x5A000000
MARK_TAG_MASK = 0xFF000000


def conduit_mark(name: str) -> int:
    """The conduit's id in the kernel (ct mark): stable across reloads and gateways."""
    return MARK_TAG | (zlib.crc32(name.encode()) & ~MARK_TAG_MASK & 0xFFFFFFFF)


Expect = Literal["allow", "deny"]


@dataclass(frozen=True)
class ModbusProbe:
    """The Modbus request a declared test makes (`modbus:` in a test)."""

    unit: int = 1
    table: str = "holding_registers"
    address: int = 0
    count: int | None = None
    values: tuple[int, ...] = ()

    def describe(self) -> str:
        text = f"unit {self.unit} {self.table} {self.address}"
        if self.count:
            text += f"+{self.count}"
        if self.values:
            text += " values " + ",".join(str(v) for v in self.values)
        return text


@dataclass(frozen=True)
class PolicyTest:
    """A declared expectation, run by `zonegate check` and as real traffic in Mininet."""

    source: str  # identity, "site/zone" or "site/asset"
    target: str  # "site/asset", "site/zone" or an IPv4 address
    service: str  # "ssh", "modbus/write", "tcp/502"
    expect: Expect
    at: datetime | None = None
    granted: bool = False  # evaluate as if an approved grant / emergency were active
    location: Location | None = None
    modbus: ModbusProbe | None = None  # a Modbus request checked against units and ranges

    def describe(self) -> str:
        when = f" at {self.at.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ}" if self.at else ""
        grant = " (granted)" if self.granted else ""
        req = f" [{self.modbus.describe()}]" if self.modbus else ""
        return f"{self.source} -> {self.target} {self.service}{req}{when}{grant}"


@dataclass(frozen=True)
class Topology:
    sites: Mapping[str, Site]
    roles: Mapping[str, Role]
    identities: Mapping[str, Identity]
    services: Mapping[str, Service]
    conduits: Mapping[str, Conduit]
    tests: tuple[PolicyTest, ...]
    files: tuple[str, ...]
    webhooks: Mapping[str, Webhook] = field(default_factory=lambda: frozen_map({}))

    def zone(self, ref: str) -> Zone | None:
        site, _, name = ref.partition("/")
        s = self.sites.get(site)
        return s.zones.get(name) if s else None

    def asset(self, ref: str) -> Asset | None:
        site, _, name = ref.partition("/")
        s = self.sites.get(site)
        return s.assets.get(name) if s else None

    def members(self, role: str) -> tuple[Identity, ...]:
        return tuple(i for i in self.identities.values() if role in i.roles)

    def site_identity(self, site: str) -> Identity | None:
        for ident in self.identities.values():
            if ident.kind == "site" and ident.site == site:
                return ident
        return None


def format_duration(d: timedelta) -> str:
    secs = int(d.total_seconds())
    if secs % 3600 == 0:
        return f"{secs // 3600}h"
    if secs % 60 == 0:
        return f"{secs // 60}m"
    return f"{secs}s"
