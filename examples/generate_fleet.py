"""Generate examples/fleet/: three sites and two dozen users, to show scale.

Run `python examples/generate_fleet.py` to rewrite the files; the output is
committed so `zonegate check examples/fleet` needs nothing else.
"""

from __future__ import annotations

from pathlib import Path

import yaml

OUT = Path(__file__).parent / "fleet"
SITES = {"north": 31, "south": 32, "east": 33}  # site -> second octet of its ranges
OPERATORS_PER_SITE = 6


def sites() -> dict[str, object]:
    out: dict[str, object] = {}
    for n, (site, octet) in enumerate(SITES.items(), start=1):
        out[site] = {
            "gateway": {
                "underlay": f"192.0.2.{30 + n}",
                "overlay": f"100.64.0.{30 + n}",
                "management": [{"from": [f"{site}/ops"], "allow": ["ssh"]}],
            },
            "zones": {
                "control": {"cidr": f"10.{octet}.1.0/24", "security_level": 3},
                "ops": {"cidr": f"10.{octet}.5.0/24", "security_level": 2},
            },
            "assets": {
                **{
                    f"plc-{i}": {
                        "zone": "control",
                        "address": f"10.{octet}.1.{10 + i}",
                        "services": ["modbus"],
                    }
                    for i in (1, 2, 3)
                },
                "hmi": {
                    "zone": "control",
                    "address": f"10.{octet}.1.50",
                    "services": ["vnc", "https"],
                },
                "scada": {
                    "zone": "ops",
                    "address": f"10.{octet}.5.10",
                    "services": ["https", "modbus"],
                },
            },
        }
    return out


def identities() -> tuple[dict[str, object], dict[str, object]]:
    roles: dict[str, object] = {f"operator-{s}": {} for s in SITES}
    roles |= {"plc-engineer": {}, "shift-lead": {}, "vendor-acme": {}}
    idents: dict[str, object] = {}
    for n, site in enumerate(SITES, start=1):
        for i in range(1, OPERATORS_PER_SITE + 1):
            idents[f"operator-{site}-{i}"] = {
                "kind": "user",
                "roles": [f"operator-{site}"],
                "overlay": f"100.64.{n}.{10 + i}",
            }
    for i in range(1, 4):
        idents[f"engineer-{i}"] = {
            "kind": "user",
            "roles": ["plc-engineer"],
            "overlay": f"100.64.8.{10 + i}",
        }
    for i in range(1, 3):
        idents[f"shift-lead-{i}"] = {
            "kind": "user",
            "roles": ["shift-lead"],
            "overlay": f"100.64.8.{20 + i}",
        }
    idents["vendor-tech"] = {"kind": "user", "roles": ["vendor-acme"], "overlay": "100.64.9.10"}
    for site in SITES:
        idents[site] = {"kind": "site"}
    return roles, idents


def conduits() -> dict[str, object]:
    out: dict[str, object] = {}
    for site in SITES:
        out[f"operators-{site}-hmi"] = {
            "from": {"roles": [f"operator-{site}"]},
            "to": {"asset": f"{site}/hmi"},
            "allow": ["vnc", "https"],
            "record": True,
        }
        out[f"operators-{site}-scada"] = {
            "from": {"roles": [f"operator-{site}"]},
            "to": {"asset": f"{site}/scada"},
            "allow": ["https", {"modbus": "read"}],
        }
        out[f"engineers-{site}"] = {
            "from": {"roles": ["plc-engineer"]},
            "to": {"zone": f"{site}/control"},
            "allow": [{"modbus": ["read"]}, "ssh"],
            "record": True,
        }
    out["vendor-north-plc-1"] = {
        "from": {"roles": ["vendor-acme"]},
        "to": {"asset": "north/plc-1"},
        "allow": [{"modbus": ["read", "write"]}],
        "approval": {"by": ["shift-lead"], "max": "2h"},
        "record": True,
    }
    out["scada-south-reads-north"] = {
        "from": {"zones": ["south/ops"]},
        "to": {"zone": "north/control"},
        "allow": [{"modbus": "read"}],
        "record": True,
    }
    return out


def tests() -> list[dict[str, object]]:
    t: list[dict[str, object]] = []
    for site in SITES:
        t.append(
            {"from": f"operator-{site}-1", "to": f"{site}/hmi", "service": "vnc", "expect": "allow"}
        )
        t.append(
            {
                "from": f"operator-{site}-2",
                "to": f"{site}/scada",
                "service": "modbus/read",
                "expect": "allow",
            }
        )
        t.append(
            {
                "from": f"operator-{site}-3",
                "to": f"{site}/scada",
                "service": "modbus/write",
                "expect": "deny",
            }
        )
        t.append(
            {
                "from": f"operator-{site}-4",
                "to": f"{site}/plc-1",
                "service": "modbus/read",
                "expect": "deny",
            }
        )
        t.append(
            {
                "from": "engineer-1",
                "to": f"{site}/plc-2",
                "service": "modbus/read",
                "expect": "allow",
            }
        )
        t.append(
            {
                "from": "engineer-2",
                "to": f"{site}/plc-3",
                "service": "modbus/write",
                "expect": "deny",
            }
        )
    other = {"north": "south", "south": "east", "east": "north"}
    for site, there in other.items():
        t.append(
            {"from": f"operator-{site}-5", "to": f"{there}/hmi", "service": "vnc", "expect": "deny"}
        )
    t += [
        {"from": "vendor-tech", "to": "north/plc-1", "service": "modbus/write", "expect": "deny"},
        {
            "from": "vendor-tech",
            "to": "north/plc-1",
            "service": "modbus/write",
            "granted": True,
            "expect": "allow",
        },
        {
            "from": "vendor-tech",
            "to": "south/plc-1",
            "service": "modbus/write",
            "granted": True,
            "expect": "deny",
        },
        {"from": "shift-lead-1", "to": "north/hmi", "service": "vnc", "expect": "deny"},
        {"from": "south/scada", "to": "north/plc-1", "service": "modbus/read", "expect": "allow"},
        {"from": "south/scada", "to": "north/plc-1", "service": "modbus/write", "expect": "deny"},
        {"from": "east/scada", "to": "north/plc-1", "service": "modbus/read", "expect": "deny"},
    ]
    return t


def main() -> None:
    OUT.mkdir(exist_ok=True)
    roles, idents = identities()
    files = {
        "sites.yaml": {"version": 1, "sites": sites()},
        "identities.yaml": {"version": 1, "roles": roles, "identities": idents},
        "conduits.yaml": {"version": 1, "conduits": conduits()},
        "tests.yaml": {"version": 1, "tests": tests()},
    }
    header = "# Generated by examples/generate_fleet.py; edit that, not this.\n"
    for name, doc in files.items():
        text = yaml.safe_dump(doc, sort_keys=False, default_flow_style=None, width=120)
        (OUT / name).write_text(header + text)


if __name__ == "__main__":
    main()
