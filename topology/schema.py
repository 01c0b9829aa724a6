"""The JSON Schema (2020-12) of the topology format, for editors and CI.

`zonegate schema` prints it and docs/topology.schema.json is its published copy (a test
keeps both equal). It is built here and only here: one small function per section, each
listing the keys the loader accepts, so a new field is one line in the function of its
section. tests/topology/test_schema.py checks every mapping the loader reads against
this schema and names the function to edit when a key is missing. The schema catches
what a schema can say (keys, types, ranges, patterns); references between sections,
overlaps and the risk rule stay with `zonegate check`.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from topology.fields import NAME_RE
from topology.model import CODE_KEMS
from topology.read_context import FORMAT_VERSION
from topology.services import BUILTIN_SERVICES

Schema = dict[str, Any]

CODE_KEM: Schema = {
    "enum": sorted(CODE_KEMS),
    "description": "a code-based KEM added to X25519 + ML-KEM in these tunnels",
}

SCHEMA_ID = "urn:zonegate:schema:topology:1"  # a name, not a download location
OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
IPV4 = rf"{OCTET}(?:\.{OCTET}){{3}}"
DATE = r"[0-9]{4}-[0-9]{2}-[0-9]{2}"
TIME = r"[0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]+)?)?(?:Z|[+-][0-9]{2}:?[0-9]{2})?"


def ref(name: str) -> Schema:
    return {"$ref": f"#/$defs/{name}"}


def obj(
    description: str, properties: Schema, required: tuple[str, ...] = (), nullable: bool = False
) -> Schema:
    """A mapping with exactly these keys (unknown keys are errors, as in the loader)."""
    out: Schema = {
        "type": ["object", "null"] if nullable else "object",
        "description": description,
        "properties": properties,
        "additionalProperties": False,
    }
    if required:
        out["required"] = list(required)
    return out


def named(description: str, entry: Schema) -> Schema:
    """A section of named entries: `NAME: entry`."""
    return {
        "type": ["object", "null"],
        "description": description,
        "propertyNames": ref("name"),
        "additionalProperties": entry,
    }


def text(description: str) -> Schema:
    return {"type": "string", "minLength": 1, "description": description}


def integer(description: str, lo: int, hi: int) -> Schema:
    return {"type": "integer", "minimum": lo, "maximum": hi, "description": description}


def one_or_many(item: Schema, description: str) -> Schema:
    """The loader accepts a single value where a list is expected."""
    return {"description": description, "anyOf": [item, {"type": "array", "items": item}]}


def definitions() -> Schema:
    return {
        "name": {
            "type": "string",
            "pattern": NAME_RE.pattern,
            "description": "lower-case letters, digits, '-' and '_'; at most 63 characters",
        },
        "names": one_or_many(ref("name"), "a name or a list of names"),
        "ipv4": {"type": "string", "pattern": f"^{IPV4}$", "description": "an IPv4 address"},
        "cidr": {
            "type": "string",
            "pattern": rf"^{IPV4}/(?:3[0-2]|[12]?[0-9])$",
            "description": "an IPv4 network without host bits, e.g. 10.1.2.0/24",
        },
        "zone_ref": {"type": "string", "pattern": r"^[^/\s]+/[^/\s]+$", "description": "SITE/ZONE"},
        "asset_ref": {
            "type": "string",
            "pattern": r"^[^/\s]+/[^/\s]+$",
            "description": "SITE/ASSET",
        },
        "duration": {
            "type": "string",
            "pattern": r"^(?=[0-9])(?:[0-9]+d)?(?:[0-9]+h)?(?:[0-9]+m)?(?:[0-9]+s)?$",
            "description": "a duration: 30m, 4h, 1h30m, 2d",
        },
        "moment": {
            "type": "string",
            "pattern": rf"^{DATE}(?:[T ]{TIME})?$",
            "description": "a date (a whole day, see docs) or an ISO 8601 date-time; "
            "without an offset, UTC",
        },
        "description": text("free text for people and reports"),
    }


def site() -> Schema:
    gateway = obj(
        "where this site's gateway terminates tunnels, and its own tunnel address",
        {
            "underlay": text("host or IP address peers reach the gateway at"),
            "port": integer("UDP port of the tunnel (default 51820)", 1, 65535),
            "overlay": ref("ipv4"),
            "management": {
                "type": "array",
                "description": "who may reach the gateway's own services (its input chain)",
                "items": obj(
                    "sources allowed to reach services of the gateway itself",
                    {
                        "from": one_or_many(
                            text("a zone (SITE/ZONE), an identity or a CIDR"),
                            "zones, identities or CIDRs",
                        ),
                        "allow": one_or_many(
                            text("a service name, or api (the control API)"), "services"
                        ),
                    },
                    ("from", "allow"),
                ),
            },
        },
        ("underlay", "overlay"),
    )
    zone = obj(
        "an IEC 62443 zone: an address range with a target security level",
        {
            "cidr": ref("cidr"),
            "security_level": integer("IEC 62443 target security level", 1, 4),
            "description": ref("description"),
            "interface": {
                "type": "string",
                "pattern": r"^[^\s/:*]{1,15}$",
                "description": "the gateway interface (or VLAN interface) the zone lives behind",
            },
        },
        ("cidr", "security_level"),
    )
    asset = obj(
        "a device in a zone of this site",
        {
            "zone": ref("name"),
            "address": ref("ipv4"),
            "services": ref("names"),
            "description": ref("description"),
        },
        ("zone", "address"),
    )
    return obj(
        "a site: a gateway, its zones and their assets",
        {
            "gateway": gateway,
            "zones": named("the site's zones", zone),
            "assets": named("the site's assets", asset),
            "kem": {"enum": ["ml-kem-768", "ml-kem-1024"], "description": "post-quantum KEM"},
            "code_kem": CODE_KEM,
            "tz": text("IANA time zone of the site (default UTC): dates are days here"),
            "description": ref("description"),
        },
        ("gateway",),
    )


def role() -> Schema:
    return obj(
        "a role; its members are the identities that list it",
        {"description": ref("description")},
        nullable=True,
    )


def identity() -> Schema:
    out = obj(
        "a user, a service, or a site's gateway, with one fixed overlay address",
        {
            "kind": {"enum": ["user", "service", "site"], "description": "what it is"},
            "roles": ref("names"),
            "overlay": ref("ipv4"),
            "keys": text("public key bundle from `tunneld keygen`, relative to this file"),
            "valid_from": ref("moment"),
            "valid_until": ref("moment"),
            "site": ref("name"),
            "description": ref("description"),
        },
        ("kind",),
    )
    out["if"] = {"properties": {"kind": {"enum": ["user", "service"]}}}
    out["then"] = {"required": ["overlay"], "not": {"required": ["site"]}}
    return out


def service() -> Schema:
    codes = one_or_many(integer("a function code", 0, 255), "function codes")
    out = obj(
        "a custom service (built-in names cannot be redefined)",
        {
            "transport": {"enum": ["tcp", "udp"]},
            "ports": one_or_many(integer("a port", 1, 65535), "ports"),
            "description": ref("description"),
            "classes": {
                "type": "object",
                "description": "function classes: name to function codes",
                "propertyNames": ref("name"),
                "additionalProperties": codes,
            },
            "payload_offset": integer("bit offset of the function code in the payload", 0, 11200),
        },
        ("transport", "ports"),
    )
    out["dependentRequired"] = {"classes": ["payload_offset"]}
    return out


def modbus_scope() -> Schema:
    """The long form of a Modbus allow entry (topology/read_modbus.py)."""
    span = {
        "anyOf": [
            {"type": "integer", "minimum": 0, "maximum": 65535},
            {"type": "string", "pattern": r"^\s*\d+\s*-\s*\d+\s*$"},
        ],
        "description": "N or N-M",
    }
    ranges = {"anyOf": [{"const": "all"}, one_or_many(span, "address ranges")]}
    bounded = obj(
        "addresses with value bounds", {"addresses": span, "values": span}, ("addresses",)
    )
    entry = {"anyOf": [span, bounded]}
    write_ranges = {  # the list first: the schema tests resolve paths through the first match
        "anyOf": [{"const": "all"}, {"type": "array", "items": entry}, entry],
        "description": "'all', or address ranges (with value bounds)",
    }
    read_tables = obj(
        "tables -> address ranges",
        {t: ranges for t in ("coils", "discrete_inputs", "input_registers", "holding_registers")},
    )
    write_tables = obj(
        "writable tables -> address ranges (optionally with value bounds)",
        {t: write_ranges for t in ("coils", "holding_registers")},
    )
    return obj(
        "units, read/write ranges per table, diagnostics, on_deny",
        {
            "units": one_or_many(span, "unit ids, N or N-M (0-255)"),
            "read": {"anyOf": [{"const": "all"}, read_tables]},
            "write": {"anyOf": [{"const": "all"}, write_tables]},
            "diagnostics": {"type": "boolean"},
            "on_deny": {"enum": ["exception", "reset"]},
        },
    )


def conduit() -> Schema:
    sources = obj(
        "who may use the conduit: identities, roles and/or zones (SITE/ZONE)",
        {
            "identities": ref("names"),
            "roles": ref("names"),
            "zones": one_or_many(ref("zone_ref"), "source zones"),
        },
    )
    sources["minProperties"] = 1
    target = obj(
        "exactly one of zone or asset",
        {"zone": ref("zone_ref"), "asset": ref("asset_ref")},
    )
    target["minProperties"] = target["maxProperties"] = 1
    allow_entry = {
        "anyOf": [
            {"type": "string", "pattern": "^[^/]+$", "description": "a service name"},
            {
                "type": "object",
                "description": "{service: class} or {service: [classes]}",
                "minProperties": 1,
                "maxProperties": 1,
                "additionalProperties": ref("names"),
            },
            obj("modbus with units, address ranges and value bounds", {"modbus": modbus_scope()}),
        ]
    }
    allow = {
        "description": "services; a service with function classes may be narrowed",
        "anyOf": [{"type": "array", "items": allow_entry, "minItems": 1}, allow_entry],
    }
    day = "(?:mon|tue|wed|thu|fri|sat|sun)[a-z]*"
    span = rf"{day}(?:\s*-\s*{day})?"
    days = one_or_many(
        {"type": "string", "pattern": rf"^\s*{span}(?:\s*,\s*{span})*\s*$"},
        "days: mon-fri, sat,sun or a list",
    )
    schedule = obj(
        "open only on these days and hours (local time in tz)",
        {
            "days": days,
            "hours": {
                "type": "string",
                "pattern": r"^\s*[0-9]{1,2}:[0-9]{2}\s*-\s*[0-9]{1,2}:[0-9]{2}\s*$",
                "description": "HH:MM-HH:MM; 24:00 ends at midnight",
            },
            "tz": text("IANA time zone, default UTC"),
        },
    )
    factor = {"enum": ["totp"], "description": "a second factor for these actions (TOTP)"}
    approval = obj(
        "closed until a grant is approved",
        {
            "by": ref("names"),
            "max": ref("duration"),
            "count": integer("distinct approvers needed (dual approval: 2)", 1, 9),
            "second_factor": factor,
        },
        ("by", "max"),
    )
    emergency = obj(
        "break-glass: opened without approval",
        {"max": ref("duration"), "second_factor": factor},
        ("max",),
    )
    out = obj(
        "a conduit: the only way anything is allowed",
        {
            "from": sources,
            "to": target,
            "allow": allow,
            "schedule": schedule,
            "approval": approval,
            "emergency": emergency,
            "record": {"type": "boolean", "description": "record the conduit's sessions"},
            "notify": ref("names"),
            "description": ref("description"),
            "accept_risk": text("why the IEC 62443 risk warning is accepted for this conduit"),
            "code_kem": CODE_KEM,
        },
        ("from", "to", "allow"),
    )
    out["not"] = {"required": ["approval", "emergency"]}
    return out


def webhook() -> Schema:
    out = obj(
        "where grant events are posted: exactly one of url or url_file",
        {
            "url": {"type": "string", "pattern": "^https?://", "description": "the URL"},
            "url_file": text("a file on the gateway holding the URL (keeps tokens out of git)"),
            "format": {"enum": ["json", "slack"], "description": "body: the event, or {text}"},
        },
    )
    out["oneOf"] = [{"required": ["url"]}, {"required": ["url_file"]}]
    return out


def policy_test() -> Schema:
    return obj(
        "a declared expectation, run by `zonegate check`",
        {
            "from": text("identity, SITE/ZONE, SITE/ASSET or IPv4 address"),
            "to": text("SITE/ASSET, SITE/ZONE or IPv4 address"),
            "service": text("service, service/class or tcp/PORT"),
            "expect": {"enum": ["allow", "deny"]},
            "at": ref("moment"),
            "granted": {"type": "boolean", "description": "as if a grant were active"},
            "modbus": obj(
                "the Modbus request the test makes (checked against units and ranges)",
                {
                    "unit": integer("unit id", 0, 255),
                    "table": {
                        "enum": ["coils", "discrete_inputs", "input_registers", "holding_registers"]
                    },
                    "address": integer("first address", 0, 65535),
                    "count": integer("addresses read", 1, 2000),
                    "values": one_or_many(
                        {"type": "integer", "minimum": 0, "maximum": 65535}, "written values"
                    ),
                },
            ),
        },
        ("from", "to", "service", "expect"),
    )


def topology_schema() -> Schema:
    """The whole schema: one topology file."""
    services = named("custom services", service())
    services["propertyNames"] = {
        "allOf": [ref("name"), {"not": {"enum": sorted(BUILTIN_SERVICES)}}]
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "Zonegate topology file",
        "description": "Zones and conduits (IEC 62443) as code; see docs/topology.md",
        "type": "object",
        "required": ["version"],
        "additionalProperties": False,
        "properties": {
            "version": {"const": FORMAT_VERSION, "description": "format version"},
            "sites": named("sites, each with a gateway, zones and assets", site()),
            "roles": named("roles", role()),
            "identities": named("identities", identity()),
            "services": services,
            "conduits": named("conduits", conduit()),
            "webhooks": named("webhooks for grant notifications", webhook()),
            "tests": {"type": ["array", "null"], "items": policy_test()},
        },
        "$defs": definitions(),
    }


@functools.cache
def entry_keys(section: str) -> frozenset[str]:
    """The keys an entry of a named section may have (e.g. a conduit's `allow`)."""
    entry = topology_schema()["properties"][section]["additionalProperties"]
    return frozenset(entry.get("properties", {}))


def schema_text() -> str:
    return json.dumps(topology_schema(), indent=2) + "\n"
