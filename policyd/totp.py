"""A second factor for approvers and emergency access: TOTP (RFC 6238).

IEC 62443-3-3 SR 1.1 RE2 asks for multi-factor authentication on untrusted networks.
An approver's first factor is its tunnel key (the tunnel says who calls); the second is
a six-digit code from an authenticator app, enrolled per identity by the network team
on the gateway. Secrets live on the gateway only (`STATE_DIR/totp/IDENTITY.totp`, 0600
in a 0700 directory), never in the topology or a log.

Checks, in order: the identity is enrolled; it is not locked out (too many recent
failures: MAX_FAILURES within LOCKOUT, counted per identity); the code matches the
current 30 s step or one step either side (clock drift); the step is newer than the
last one accepted (a code works once). Every failure is counted and returned with its
reason, so the caller can audit it. Time is an argument: the clock stays at the edge.
"""

from __future__ import annotations

import base64
import os
import re
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from cryptography.hazmat.primitives.hashes import SHA1
from cryptography.hazmat.primitives.twofactor import InvalidToken
from cryptography.hazmat.primitives.twofactor.totp import TOTP

STEP = 30  # seconds, RFC 6238's default and every authenticator app's
DIGITS = 6
WINDOW = 1  # steps accepted either side of now
MAX_FAILURES = 5
LOCKOUT = 300.0  # seconds during which MAX_FAILURES lock an identity out
SECRET_BYTES = 20  # 160 bits, RFC 4226's recommendation for HMAC-SHA1
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


class TotpError(Exception):
    """A refused second factor; `reason` is safe to show and to audit (no secret)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Enrolment:
    identity: str
    uri: str  # otpauth://totp/... for authenticator apps; contains the secret

    def __repr__(self) -> str:  # the URI holds the secret: keep it out of reprs and logs
        return f"Enrolment(identity={self.identity!r}, uri=<secret>)"


@dataclass
class _Attempts:
    failures: list[float] = field(default_factory=list)
    last_step: int = -1


class TotpStore:
    """Enrolled secrets on disk plus, in memory, failures and the last accepted step."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._attempts: dict[str, _Attempts] = {}

    def _path(self, identity: str) -> Path:
        if not _NAME.match(identity):
            raise TotpError(f"'{identity}' is not an identity name")
        return self.directory / f"{identity}.totp"

    def enrolled(self, identity: str) -> bool:
        return self._path(identity).exists()

    def enrol(self, identity: str, issuer: str, replace: bool = False) -> Enrolment:
        """Make and store a new secret; refuse to overwrite one unless `replace`."""
        path = self._path(identity)
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        if path.exists() and not replace:
            raise TotpError(f"{identity} is already enrolled (re-enrol with --replace)")
        secret = secrets.token_bytes(SECRET_BYTES)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(base64.b32encode(secret).decode() + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        self._attempts.pop(identity, None)
        return Enrolment(identity, otpauth_uri(secret, identity, issuer))

    def remove(self, identity: str) -> bool:
        path = self._path(identity)
        self._attempts.pop(identity, None)
        path.with_suffix(".used").unlink(missing_ok=True)
        if path.exists():
            path.unlink()
            return True
        return False

    def _secret(self, identity: str) -> bytes:
        path = self._path(identity)
        try:
            mode = path.stat().st_mode
            text = path.read_text().strip()
        except FileNotFoundError:
            raise TotpError(f"{identity} has no second factor enrolled") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise TotpError(f"{path} is readable by others: refusing to use it (chmod 600)")
        try:
            return base64.b32decode(text)
        except ValueError:
            raise TotpError(f"{path} is not a TOTP secret") from None

    def _used_step(self, identity: str) -> int:
        """The last step accepted for this identity, kept on disk so that a code stays
        used across a policyd restart (it would otherwise be valid again for ~60 s)."""
        try:
            return int(self._path(identity).with_suffix(".used").read_text())
        except (OSError, ValueError):
            return -1

    def _remember_step(self, identity: str, step: int) -> None:
        path = self._path(identity).with_suffix(".used")
        tmp = path.with_suffix(".used-tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(str(step))
        os.replace(tmp, path)

    def verify(self, identity: str, code: str | None, now: float) -> None:
        """Accept the code or raise TotpError saying why (and count the failure)."""
        attempts = self._attempts.setdefault(identity, _Attempts())
        attempts.failures = [t for t in attempts.failures if now - t < LOCKOUT]
        if len(attempts.failures) >= MAX_FAILURES:
            raise TotpError(
                f"{identity}: second factor locked after {MAX_FAILURES} failures; "
                f"try again in {int(LOCKOUT - (now - attempts.failures[0])) + 1} s"
            )
        if not code or not re.fullmatch(rf"\d{{{DIGITS}}}", code):
            attempts.failures.append(now)
            raise TotpError(f"a {DIGITS}-digit second-factor code is required")
        totp = _totp(self._secret(identity))
        step = int(now // STEP)
        for candidate in range(step - WINDOW, step + WINDOW + 1):
            try:
                totp.verify(code.encode(), candidate * STEP)
            except InvalidToken:
                continue
            if candidate <= max(attempts.last_step, self._used_step(identity)):
                attempts.failures.append(now)
                raise TotpError("that second-factor code was already used; wait for the next")
            attempts.last_step = candidate
            self._remember_step(identity, candidate)
            attempts.failures.clear()
            return
        attempts.failures.append(now)
        raise TotpError("wrong second-factor code")


def _totp(secret: bytes) -> TOTP:
    return TOTP(secret, DIGITS, SHA1(), STEP, enforce_key_length=False)


def code_at(secret_b32: str, now: float) -> str:
    """The code an authenticator app shows at `now` (tests and the demo use it)."""
    return _totp(base64.b32decode(secret_b32)).generate(now).decode()


def otpauth_uri(secret: bytes, identity: str, issuer: str) -> str:
    """The Key URI Format authenticator apps read from a QR code."""
    label = quote(f"{issuer}:{identity}")
    b32 = base64.b32encode(secret).decode().rstrip("=")
    return (
        f"otpauth://totp/{label}?secret={b32}&issuer={quote(issuer)}"
        f"&algorithm=SHA1&digits={DIGITS}&period={STEP}"
    )
