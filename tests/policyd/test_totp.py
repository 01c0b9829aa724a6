"""TOTP second factor: RFC 6238 vectors, drift window, replay, lockout, file hygiene."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

from policyd.totp import LOCKOUT, MAX_FAILURES, STEP, TotpError, TotpStore, code_at, otpauth_uri

RFC_SECRET = base64.b32encode(b"12345678901234567890").decode()


@pytest.mark.parametrize(
    ("t", "code"), [(59, "287082"), (1111111109, "081804"), (1234567890, "005924")]
)
def test_rfc6238_sha1_vectors(t: int, code: str) -> None:
    # RFC 6238 appendix B (8 digits: 94287082, 07081804, 89005924), last six digits.
    assert code_at(RFC_SECRET, t) == code


def secret_of(store: TotpStore, identity: str) -> str:
    return (store.directory / f"{identity}.totp").read_text().strip()


@pytest.fixture
def store(tmp_path: Path) -> TotpStore:
    s = TotpStore(tmp_path / "totp")
    s.enrol("shift-lead-1", "Zonegate plant-a")
    return s


def test_enrolment_files_are_private_and_uri_is_for_apps(tmp_path: Path) -> None:
    s = TotpStore(tmp_path / "totp")
    e = s.enrol("shift-lead-1", "Zonegate plant-a")
    assert (s.directory.stat().st_mode & 0o777) == 0o700
    assert (s.directory / "shift-lead-1.totp").stat().st_mode & 0o777 == 0o600
    uri = urlparse(e.uri)
    q = parse_qs(uri.query)
    assert uri.scheme == "otpauth" and uri.netloc == "totp"
    assert q["digits"] == ["6"] and q["period"] == ["30"] and q["issuer"] == ["Zonegate plant-a"]
    assert q["secret"][0] not in repr(e) and "otpauth" not in repr(e)
    with pytest.raises(TotpError, match="already enrolled"):
        s.enrol("shift-lead-1", "Zonegate plant-a")


def test_current_and_adjacent_steps_pass_others_fail(store: TotpStore) -> None:
    secret = secret_of(store, "shift-lead-1")
    now = 1_800_000_000.0
    store.verify("shift-lead-1", code_at(secret, now - STEP), now)  # one step late: ok
    store.verify("shift-lead-1", code_at(secret, now + STEP), now)  # one step early: ok
    with pytest.raises(TotpError, match="wrong"):
        store.verify("shift-lead-1", code_at(secret, now + 3 * STEP), now)


def test_a_code_works_once(store: TotpStore) -> None:
    secret = secret_of(store, "shift-lead-1")
    now = 1_800_000_000.0
    code = code_at(secret, now)
    store.verify("shift-lead-1", code, now)
    with pytest.raises(TotpError, match="already used"):
        store.verify("shift-lead-1", code, now + 1)
    # an older step than the last accepted is refused too
    with pytest.raises(TotpError, match="already used"):
        store.verify("shift-lead-1", code_at(secret, now - STEP), now + 2)


def test_a_used_code_stays_used_after_a_restart(store: TotpStore) -> None:
    secret = secret_of(store, "shift-lead-1")
    now = 1_800_000_000.0
    code = code_at(secret, now)
    store.verify("shift-lead-1", code, now)
    restarted = TotpStore(store.directory)  # policyd restarted: no memory of its own
    with pytest.raises(TotpError, match="already used"):
        restarted.verify("shift-lead-1", code, now + 5)
    restarted.verify("shift-lead-1", code_at(secret, now + STEP), now + STEP)


def test_failures_lock_out_then_release(store: TotpStore) -> None:
    secret = secret_of(store, "shift-lead-1")
    now = 1_800_000_000.0
    for i in range(MAX_FAILURES):
        with pytest.raises(TotpError, match=r"wrong|digit"):
            store.verify("shift-lead-1", "000000" if i else "12ab", now + i)
    with pytest.raises(TotpError, match="locked"):  # even the right code
        store.verify("shift-lead-1", code_at(secret, now + 10), now + 10)
    later = now + LOCKOUT + 60
    store.verify("shift-lead-1", code_at(secret, later), later)


def test_unenrolled_and_unsafe_files_are_refused(store: TotpStore) -> None:
    with pytest.raises(TotpError, match="no second factor enrolled"):
        store.verify("vendor-tech", "123456", 0.0)
    os.chmod(store.directory / "shift-lead-1.totp", 0o644)
    with pytest.raises(TotpError, match="readable by others"):
        store.verify("shift-lead-1", "123456", 0.0)
    with pytest.raises(TotpError, match="not an identity name"):
        store.verify("../etc/passwd", "123456", 0.0)


def test_uri_label_and_secret_encoding() -> None:
    uri = otpauth_uri(b"\x00" * 20, "vendor tech", "Zonegate")
    assert uri.startswith("otpauth://totp/Zonegate%3Avendor%20tech?secret=AAAAAAAA")
