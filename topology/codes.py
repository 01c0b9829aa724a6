"""Stable codes for every diagnostic: `ZG-E...` errors, `ZG-W...` warnings.

A code names a kind of mistake, not a message: messages may be reworded, codes stay,
so CI annotations, suppressions and docs can rely on them. Most call sites pass only a
message; `classify` finds the code from the first row of `CODES` whose pattern matches
(most specific rows first). A call site may pass `code=` instead. A message no row
matches gets ZG-E999 / ZG-W999, and tests/topology/test_codes.py names the message so
the engineer who added it can add a row here (and to docs/topology.md, which a test
keeps equal to this table).
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Code:
    code: str
    pattern: str  # regular expression searched in the message ("" = only passed explicitly)
    title: str  # what the code means, for the docs table


CODES: tuple[Code, ...] = (
    # Files and YAML: these are root causes; what cannot be read is not checked further.
    Code("ZG-E001", r"^YAML", "YAML syntax error (unclosed bracket, stray character)"),
    Code("ZG-E002", r"^tab character", "a tab in the indentation (YAML indents with spaces)"),
    Code("ZG-E003", r"^indentation error", "a line does not line up with its siblings"),
    Code(
        "ZG-E004", r"is an ambiguous number", "an integer with a leading zero (octal in YAML 1.1)"
    ),
    Code("ZG-E005", r"^duplicate key", "the same key twice in one mapping"),
    Code("ZG-E006", r"^mapping keys must be plain names", "a list or mapping used as a key"),
    Code("ZG-E010", r"no such file or directory|no \.yaml or \.yml files", "wrong path"),
    Code("ZG-E011", r"^cannot read file", "unreadable file (permissions, encoding)"),
    Code("ZG-E012", r"^file is empty", "a file with nothing in it"),
    Code(
        "ZG-E013",
        r"missing 'version'|unsupported format version",
        "every file starts with `version: 1`",
    ),
    # Shape of the data.
    Code("ZG-E020", r"^unknown key", "a misspelt or unsupported key"),
    Code("ZG-E021", r" needs '[a-z_]+'", "a required key is missing"),
    Code(
        "ZG-E022",
        r"must be (?:a mapping|a list|a non-empty string|an integer|true or false|a string)",
        "a value of the wrong type",
    ),
    Code("ZG-E023", r"is not a valid name", "a name with upper case, spaces or other characters"),
    Code("ZG-E024", r"must be between", "a number out of range"),
    Code("ZG-E025", r"is not an IPv4|has host bits set", "a bad address or CIDR"),
    Code(
        "ZG-E026",
        r"is not a duration|must be longer than zero",
        "a bad duration (write 30m, 4h, 1h30m, 2d)",
    ),
    Code(
        "ZG-E027",
        r"is not a time of day|must be HH:MM-HH:MM|^unknown day|^unknown time zone",
        "schedule syntax",
    ),
    Code("ZG-E028", r"must be a date or date-time|means a whole day", "a bad date or date-time"),
    Code("ZG-E029", r"^unknown code_kem", "an unknown code-based KEM (hqc-128/192/256)"),
    # Names and references.
    Code("ZG-E030", r"is defined twice", "the same name defined in two places"),
    Code(
        "ZG-E031",
        r"^unknown (?:role|identity|site|service|zone|asset|webhook)|has unknown role"
        r"|has no (?:zone|asset)|must be SITE/|is neither a role nor an identity"
        r"|site identity for unknown site",
        "a reference to a name that does not exist",
    ),
    # Places and addresses.
    Code(
        "ZG-E040",
        r"which site '.*' does not define|is outside its zone",
        "an asset's zone is missing or does not hold its address",
    ),
    Code("ZG-E041", r"has the same address as", "two assets with one address"),
    Code("ZG-E042", r"overlaps zone", "two zones with overlapping ranges"),
    Code(
        "ZG-E043",
        r"is already used by|falls inside zone",
        "an overlay address used twice or inside a zone",
    ),
    Code(
        "ZG-E044",
        r"management",
        "a management access entry names no zone, identity or CIDR, or an unknown service",
    ),
    Code("ZG-E045", r"is not an interface name", "a zone's `interface` is not an interface name"),
    # Identities.
    Code("ZG-E050", r"has unknown kind", "identity kind is user, service or site"),
    Code("ZG-E051", r"needs 'overlay'", "users and services need a fixed overlay address"),
    Code(
        "ZG-E052",
        r"differs from site|only identities of kind site",
        "site identity problems",
    ),
    Code("ZG-E053", r"key file '.*' does not exist", "`keys:` points nowhere"),
    Code("ZG-E054", r"is never valid", "an empty validity window"),
    # Conduits and services.
    Code("ZG-E080", r"^webhook '", "a webhook needs one of url or url_file, and a known format"),
    Code(
        "ZG-E090",
        r"^only modbus takes|modbus allow entry allows nothing|^unit \d+-\d+ is outside"
        r"|address \d+-\d+ is outside|^values \d+-\d+ is outside|is not a number or a range"
        r"|must be a number or a range|ends before it starts|^units is empty|lists no addresses"
        r"|names no table|^unknown Modbus table|are read-only in Modbus"
        r"|^value bounds apply|must be 'all' or a mapping of tables|^on_deny must be"
        r"|^only modbus tests take",
        "Modbus units, address ranges and value bounds (the long form of `modbus` in `allow`)",
    ),
    Code(
        "ZG-E060",
        r"'from' names nobody|allows nothing|needs exactly one of",
        "an incomplete conduit",
    ),
    Code(
        "ZG-E061", r"in allow, not|function class|each allow entry", "function classes in `allow`"
    ),
    Code(
        "ZG-E062",
        r"is built in and cannot be redefined|has classes but no payload_offset|^transport must be",
        "custom service problems",
    ),
    Code("ZG-E063", r"which has no members", "approval by a role nobody has"),
    Code(
        "ZG-E064",
        r"has both approval and emergency",
        "a conduit is approval or emergency, not both",
    ),
    Code("ZG-E065", r"schedule that is never open", "a schedule whose start equals its end"),
    Code("ZG-E066", r"hash to the same flow mark", "two conduit names with one flow mark"),
    Code("ZG-E067", r"accept_risk", "`accept_risk` needs a reason"),
    Code("ZG-E068", r"distinct approvers", "dual approval that can never complete"),
    Code("ZG-E069", r"^unknown second factor", "`second_factor` is `totp`"),
    # Tests.
    Code("ZG-E070", r"^expect must be", "a test's expectation is allow or deny"),
    Code("ZG-E999", r"", "an error without a code yet (please report it)"),
    # Warnings.
    Code(
        "ZG-W001",
        r"without approval, schedule or recording",
        "IEC 62443: a conduit into an SL 3-4 zone without a compensating control",
    ),
    Code(
        "ZG-W002",
        r"has no role",
        "an identity with no role that no conduit names: it can reach nothing",
    ),
    Code("ZG-W003", r"^role '.*' is not used", "a role no conduit or approval uses"),
    Code("ZG-W004", r"^service '.*' is not used", "a custom service no conduit or asset uses"),
    Code(
        "ZG-W005", r"^zone '.*' is not used", "a zone with no assets and no conduit to or from it"
    ),
    Code("ZG-W006", r"no policy tests", "a topology without declared tests"),
    Code("ZG-W007", r"is not read", "a file that looks like topology but is not read"),
    Code(
        "ZG-W008",
        r"accepts a risk it does not have",
        "`accept_risk` on a conduit the risk rule does not flag",
    ),
    Code(
        "ZG-W009",
        r"declares no management access",
        "a gateway without management access: policyd drops new SSH/API sessions to it",
    ),
    Code("ZG-W999", r"", "a warning without a code yet (please report it)"),
)

BY_CODE = {c.code: c for c in CODES}
_COMPILED = [(c.code, re.compile(c.pattern)) for c in CODES if c.pattern]


def classify(severity: str, message: str) -> str:
    """The code for a message: the first matching row of its severity, else the catch-all."""
    prefix = "ZG-E" if severity == "error" else "ZG-W"
    for code, pattern in _COMPILED:
        if code.startswith(prefix) and pattern.search(message):
            return code
    return prefix + "999"
