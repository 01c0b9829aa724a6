"""A network team's laptop: `pip install` into a plain venv (no Debian site packages,
no nftables module, no root needed) gives working `zonegate` commands."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tunneld.keyring import materialize_keys

ROOT = Path(__file__).resolve().parents[2]
PLANT = ROOT / "examples" / "plant"


@pytest.fixture(scope="module")
def plain_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("plain") / "venv"
    subprocess.run(["/usr/bin/python3", "-m", "venv", str(venv)], check=True)
    res = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", str(ROOT)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0, f"pip install of the repo failed:\n{res.stderr[-3000:]}"
    return venv / "bin"


def run(bin_dir: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(bin_dir / argv[0]), *argv[1:]], capture_output=True, text=True, check=False, cwd="/"
    )


def test_plain_venv_has_no_gateway_modules(plain_venv: Path) -> None:
    probe = "import importlib.util as u; print([m for m in ('nftables', 'pyroute2', 'mininet', "
    probe += "'pymodbus') if u.find_spec(m)])"
    res = run(plain_venv, "python", "-c", probe)
    assert res.stdout.strip() == "[]", res


def test_network_team_commands_work(plain_venv: Path, tmp_path: Path) -> None:
    assert run(plain_venv, "zonegate", "--version").stdout.startswith("zonegate ")
    res = run(plain_venv, "zonegate", "check", str(PLANT))
    assert res.returncode == 0 and "21/21 policy tests pass" in res.stdout, res
    res = run(
        plain_venv,
        "zonegate",
        "explain",
        str(PLANT),
        "--from",
        "vendor-tech",
        "--to",
        "plant-a/plc-1",
        "--service",
        "modbus/write",
        "--compiled",
    )
    assert "verdict:    deny" in res.stdout and "agrees with" in res.stdout, res
    for argv in (
        ("report", str(PLANT)),
        ("diagram", str(PLANT)),
        ("render", str(PLANT), "--gateway", "plant-a"),
    ):
        res = run(plain_venv, "zonegate", *argv)
        assert res.returncode == 0 and res.stdout, res
    # the IEC 62443 report finds its levels table in the installed package; exit 1 (no
    # test results given) is the report's loud "evidence missing"
    res = run(plain_venv, "zonegate", "report", "--iec62443", str(PLANT), "--summary")
    assert res.returncode == 1 and "requirement checks over 5 zones" in res.stdout, res
    # A remote user's profile, from a topology with pinned keys.
    made = materialize_keys(PLANT, tmp_path / "keyed", ["plant-a", "plant-b", "vendor-tech"])
    out = tmp_path / "vendor.profile.json"
    signer = tmp_path / "signer"  # the network team's profile-signing key (issue 14)
    res = run(plain_venv, "zonegate", "profile", "signer-keygen", str(signer))
    assert res.returncode == 0 and "signer fingerprint" in res.stdout, res
    res = run(
        plain_venv,
        "zonegate",
        "profile",
        "issue",
        str(made.topology),
        "--identity",
        "vendor-tech",
        "--pubkeys",
        str(made.pub("vendor-tech")),
        "--signing-key",
        str(signer),
        "--out",
        str(out),
    )
    assert res.returncode == 0 and out.exists(), res
    assert run(plain_venv, "zonegate", "profile", "show", str(out)).returncode == 0
    assert run(plain_venv, "tunneld", "--version").returncode == 0
