"""Signed profiles (issue 14): a swapped or altered profile is refused by `tunneld join`,
which checks the signature against a signer fingerprint given out of band; keygen,
`profile show` and `tunneld status` print fingerprints a person can compare."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.tunneld.test_profile import EXAMPLE, KEYED
from topology import load as load_topology
from tunneld import profile as prof
from tunneld.cli import main as tunneld_main
from tunneld.daemon import Daemon, Options
from tunneld.keyring import Materialized, materialize_keys
from tunneld.keys import load_public
from tunneld.signing import Signer, fingerprint, load_signer, normalise, signer_keygen


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Materialized:
    return materialize_keys(EXAMPLE, tmp_path_factory.mktemp("plant"), KEYED)


@pytest.fixture(scope="module")
def team(tmp_path_factory: pytest.TempPathFactory) -> Signer:
    d = tmp_path_factory.mktemp("team") / "signer"
    signer_keygen(d)
    return load_signer(d)


@pytest.fixture(scope="module")
def mallory(tmp_path_factory: pytest.TempPathFactory) -> Signer:
    d = tmp_path_factory.mktemp("mallory") / "signer"
    signer_keygen(d)
    return load_signer(d)


def issued(keyed: Materialized) -> prof.Profile:
    topo = load_topology(keyed.topology).topology
    bundle = load_public(keyed.pub("vendor-tech"))
    return prof.issue(topo, "vendor-tech", bundle, datetime.now(UTC))


def join_refusal(path: Path, keyed: Materialized, signer: str) -> str:
    with pytest.raises(prof.ProfileError) as info:
        Daemon(Options(profile=path, keys=keyed.keys["vendor-tech"], signer=signer))
    return str(info.value)


def test_fingerprints_are_short_readable_and_typo_tolerant(team: Signer) -> None:
    fp = team.public.fingerprint
    assert len(fp) == 29 and fp.count("-") == 5
    assert normalise(fp.lower().replace("-", " ")) == fp
    assert fingerprint("a", b"x") != fingerprint("b", b"x")


def test_signed_profile_is_accepted_with_the_right_fingerprint(
    keyed: Materialized, team: Signer, tmp_path: Path
) -> None:
    out = tmp_path / "p.json"
    prof.write(issued(keyed), out, team)
    assert prof.load(out, team.public.fingerprint).signed_by == team.public.fingerprint


def test_profile_signed_by_another_key_is_refused(
    keyed: Materialized, team: Signer, mallory: Signer, tmp_path: Path
) -> None:
    """The man in the middle re-signs his swapped profile with his own key."""
    out = tmp_path / "p.json"
    prof.write(issued(keyed), out, mallory)
    why = join_refusal(out, keyed, team.public.fingerprint)
    assert "not by the signer you were given" in why and "swapped" in why


def test_altered_profile_is_refused(keyed: Materialized, team: Signer, tmp_path: Path) -> None:
    """The man in the middle keeps the signature and swaps a gateway's pinned key."""
    out = tmp_path / "p.json"
    prof.write(issued(keyed), out, team)
    doc = json.loads(out.read_text())
    other = load_public(keyed.pub("engineer-1")).to_dict()
    doc["gateways"][0]["public_bundle"] = other
    out.write_text(json.dumps(doc))
    assert "the signature does not verify" in join_refusal(out, keyed, team.public.fingerprint)
    doc["signature"]["ml_dsa_65"] = doc["signature"]["ed25519"]  # hybrid: both must verify
    out.write_text(json.dumps(doc))
    assert "signature" in join_refusal(out, keyed, team.public.fingerprint)


def test_unsigned_profile_is_refused(keyed: Materialized, team: Signer, tmp_path: Path) -> None:
    out = tmp_path / "p.json"
    out.write_text(issued(keyed).to_json())
    assert "is not signed" in join_refusal(out, keyed, team.public.fingerprint)


def test_one_signature_is_not_enough(keyed: Materialized, team: Signer) -> None:
    body = issued(keyed).body()
    ed, ml = team.sign(prof.canonical(body))
    assert team.public.verify(prof.canonical(body), ed, ml)
    assert not team.public.verify(prof.canonical(body), ed, bytes(len(ml)))
    assert not team.public.verify(prof.canonical(body), bytes(len(ed)), ml)


def test_join_requires_a_signer_on_the_command_line(
    keyed: Materialized, team: Signer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "p.json"
    prof.write(issued(keyed), out, team)
    with pytest.raises(SystemExit):
        tunneld_main(["join", str(out), "--keys", str(keyed.keys["vendor-tech"])])
    assert "--signer" in capsys.readouterr().err


def test_signer_key_is_private_and_never_printed(team: Signer, tmp_path: Path) -> None:
    d = tmp_path / "s"
    pub = signer_keygen(d)
    assert (d / "signer.key").stat().st_mode & 0o077 == 0
    secret = json.loads((d / "signer.key").read_text())
    assert secret["ed25519_seed"] not in repr(load_signer(d))
    assert "seed" not in repr(load_signer(d))
    assert pub.fingerprint == load_signer(d).public.fingerprint
    (d / "signer.key").chmod(0o644)
    with pytest.raises(Exception, match="readable by others"):
        load_signer(d)


def test_keygen_prints_the_identity_fingerprint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert tunneld_main(["keygen", str(tmp_path / "k")]) == 0
    fp = load_public(tmp_path / "k" / "identity.pub").fingerprint
    assert f"identity fingerprint {fp}" in capsys.readouterr().out
