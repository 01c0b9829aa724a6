"""WireGuard adapter: kernel module when present, else wireguard-go; same code above.

Configuration is desired state: `reconcile()` reads `wg show IF dump`, diffs it against
the wanted interface and peers, and changes only what differs, so a reload keeps live
sessions. Secrets go through wireguard-go's UAPI socket or `wg set ... /dev/stdin`,
never argv, logs or exception texts. Preshared keys are not part of reconcile: a new
peer starts with a random PSK (no traffic until the PQ handshake), `set_psk()` installs
handshake results and `expire_psk()` puts a random one back and drops the peer's
sessions, so a failed PQ handshake stops traffic instead of falling back to classical.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tunneld.keys import wg_public_key

log = logging.getLogger("tunneld.wg")
UAPI_DIR = Path("/var/run/wireguard")
PR_SET_PDEATHSIG = 1


class WgError(Exception):
    """A WireGuard operation failed (never carries key material)."""


@dataclass(frozen=True)
class PeerSpec:
    public_key: bytes
    allowed_ips: tuple[str, ...]
    endpoint: str | None = None  # "host:port"
    keepalive: int = 0


@dataclass(frozen=True)
class InterfaceSpec:
    private_key: bytes = field(repr=False)
    listen_port: int | None  # None: any port (a user node), WireGuard picks one
    peers: tuple[PeerSpec, ...]


@dataclass(frozen=True)
class ObservedPeer:
    public_key: bytes
    psk: bytes | None = field(repr=False)
    endpoint: str | None
    allowed_ips: tuple[str, ...]
    latest_handshake: int
    rx: int
    tx: int
    keepalive: int


@dataclass(frozen=True)
class Observed:
    public_key: bytes | None
    listen_port: int
    peers: dict[bytes, ObservedPeer] = field(default_factory=dict)


@dataclass(frozen=True)
class Change:
    kind: str  # interface | add | update | remove
    peer: str  # base64 public key, or "" for the interface
    detail: str

    def __str__(self) -> str:
        return f"{self.kind} {self.peer} {self.detail}".strip()


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def parse_dump(text: str) -> Observed:
    """Parse `wg show IF dump` (tab separated; first line is the interface)."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise WgError("empty wg dump")
    head = lines[0].split("\t")
    if len(head) != 4:
        raise WgError("unexpected wg dump interface line")
    peers = {}
    for line in lines[1:]:
        cols = line.split("\t")
        if len(cols) != 8:
            raise WgError("unexpected wg dump peer line")
        pk = base64.b64decode(cols[0])
        ips = () if cols[3] == "(none)" else tuple(sorted(cols[3].split(",")))
        peers[pk] = ObservedPeer(
            public_key=pk,
            psk=None if cols[1] == "(none)" else base64.b64decode(cols[1]),
            endpoint=None if cols[2] == "(none)" else cols[2],
            allowed_ips=ips,
            latest_handshake=int(cols[4]),
            rx=int(cols[5]),
            tx=int(cols[6]),
            keepalive=0 if cols[7] == "off" else int(cols[7]),
        )
    return Observed(
        public_key=None if head[1] == "(none)" else base64.b64decode(head[1]),
        listen_port=int(head[2]),
        peers=peers,
    )


def diff(want: InterfaceSpec, have: Observed) -> list[Change]:
    """What must change to turn `have` into `want` (PSKs excluded, see module doc)."""
    out: list[Change] = []
    # Compare public keys: WireGuard stores the private key clamped, so its bytes differ.
    port_differs = want.listen_port is not None and want.listen_port != have.listen_port
    if wg_public_key(want.private_key) != have.public_key or port_differs:
        out.append(Change("interface", "", f"listen-port {want.listen_port or 'any'}"))
    wanted = {p.public_key: p for p in want.peers}
    for pk in have.peers:
        if pk not in wanted:
            out.append(Change("remove", b64(pk), ""))
    for pk, p in wanted.items():
        cur = have.peers.get(pk)
        if cur is None:
            out.append(Change("add", b64(pk), f"allowed-ips {','.join(p.allowed_ips)}"))
            continue
        why = []
        if tuple(sorted(p.allowed_ips)) != cur.allowed_ips:
            why.append(f"allowed-ips {','.join(p.allowed_ips)}")
        if p.endpoint is not None and p.endpoint != cur.endpoint:
            why.append(f"endpoint {p.endpoint}")
        if p.keepalive != cur.keepalive:
            why.append(f"keepalive {p.keepalive}")
        if why:
            out.append(Change("update", b64(pk), " ".join(why)))
    return out


def uapi_request(path: Path, request: bytes, timeout: float = 5.0) -> bytes:
    """One UAPI exchange with wireguard-go (raises OSError, TimeoutError included)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        s.sendall(request)
        reply = b""
        while not reply.endswith(b"\n\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            reply += chunk
    return reply


def _die_with_parent() -> None:
    """In the wireguard-go child: SIGTERM when tunneld dies, even by SIGKILL, so a killed
    daemon takes its interface (and the last PSK) with it instead of leaving it up."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def require_binary(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise WgError(f"{name} not found; install the Debian package {package}")
    return path


class WireGuard:
    """One WireGuard interface, optionally inside a network namespace."""

    def __init__(self, ifname: str, netns: str | None = None, backend: str = "auto") -> None:
        if len(ifname) > 15:
            raise WgError(f"interface name {ifname!r} longer than 15 characters")
        self.ifname = ifname
        self.netns = netns
        self.requested = backend
        self.backend = ""
        self.use_uapi: bool | None = None  # None: UAPI socket when it exists, else `wg set`
        self.uapi_timeout = 5.0  # seconds; a hung wireguard-go is a WgError, not a hang
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def uapi_path(self) -> Path:
        return UAPI_DIR / f"{self.ifname}.sock"

    def _argv(self, *args: str) -> list[str]:
        pre = ["ip", "netns", "exec", self.netns] if self.netns else []
        return [*pre, *args]

    def _run(self, args: Sequence[str], stdin: bytes | None = None) -> str:
        argv = self._argv(*args)
        log.debug("[#] %s", " ".join(argv))  # argv never holds secrets
        try:
            res = subprocess.run(argv, input=stdin, capture_output=True, timeout=10, check=False)
        except subprocess.TimeoutExpired:
            raise WgError(f"{args[0]} {args[1] if len(args) > 1 else ''} timed out") from None
        except OSError as exc:
            raise WgError(f"{args[0]} could not run: {exc.strerror}") from None
        if res.returncode != 0:
            raise WgError(
                f"{args[0]} {args[1] if len(args) > 1 else ''} failed: "
                f"{res.stderr.decode(errors='replace').strip()[:200]}"
            )
        return res.stdout.decode()

    # -- lifecycle ----------------------------------------------------------------

    def create(self) -> str:
        """Create the interface; returns the backend used ("kernel" or "wireguard-go")."""
        require_binary("wg", "wireguard-tools")
        found = self.scrub()
        if found:
            log.warning("removed a leftover interface %s: %s", self.ifname, ", ".join(found))
        if self.requested in ("auto", "kernel"):
            try:
                self._run(["ip", "link", "add", "dev", self.ifname, "type", "wireguard"])
                self.backend = "kernel"
                return self.backend
            except WgError:
                if self.requested == "kernel":
                    raise
        exe = require_binary("wireguard-go", "wireguard-go")
        env = dict(os.environ, WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD="1")
        if self.uapi_path.exists():
            raise WgError(f"{self.uapi_path} exists: interface name in use")
        self._proc = subprocess.Popen(
            self._argv(exe, "-f", self.ifname),
            env=env,
            preexec_fn=_die_with_parent,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 5.0
        while not self.uapi_path.exists():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.destroy()
                raise WgError(f"wireguard-go did not create {self.uapi_path}")
            time.sleep(0.01)
        self.backend = "wireguard-go"
        return self.backend

    def scrub(self) -> list[str]:
        """Remove what a killed daemon left behind under our name: every peer first (so no
        PSK survives even if removing the link fails), then the link, then a stale UAPI
        socket. Returns what was found; `tunneld scrub` runs this as a stop hook."""
        found: list[str] = []
        if self.uapi_path.exists():
            try:
                reply = uapi_request(self.uapi_path, b"set=1\nreplace_peers=true\n\n")
                found.append("wireguard-go (peers removed)" if b"errno=0" in reply else "")
            except OSError:
                found.append("stale UAPI socket")
        try:
            self._run(["ip", "link", "show", "dev", self.ifname])
            exists = True
        except WgError:
            exists = False
        if exists:
            if not found:
                try:  # only ever delete a WireGuard interface
                    self._run(["wg", "show", self.ifname, "dump"])
                except WgError:
                    raise WgError(
                        f"interface {self.ifname} exists and is not WireGuard; "
                        f"choose another --ifname"
                    ) from None
                with contextlib.suppress(WgError):  # kernel backend: peers out first
                    self._run(["wg", "setconf", self.ifname, "/dev/null"])
            self._run(["ip", "link", "del", "dev", self.ifname])
            found.append("link")
        deadline = time.monotonic() + 2.0
        while self.uapi_path.exists() and time.monotonic() < deadline:
            try:  # wireguard-go exits once its TUN device is gone and removes its socket
                uapi_request(self.uapi_path, b"get=1\n\n", timeout=0.2)
            except OSError:
                self.uapi_path.unlink(missing_ok=True)
                break
            time.sleep(0.05)
        return [f for f in found if f]

    def destroy(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=5)
            self._proc = None
        subprocess.run(
            self._argv("ip", "link", "del", "dev", self.ifname), capture_output=True, check=False
        )
        if self.uapi_path.exists() and self.backend == "wireguard-go":
            self.uapi_path.unlink(missing_ok=True)

    # -- configuration ------------------------------------------------------------

    def show_dump(self) -> Observed:
        return parse_dump(self._run(["wg", "show", self.ifname, "dump"]))

    def reconcile(self, want: InterfaceSpec) -> list[Change]:
        """Apply only the differences between `want` and the running interface."""
        changes = diff(want, self.show_dump())
        if not changes:
            return []
        lines: list[str] = []
        specs = {b64(p.public_key): p for p in want.peers}
        for ch in changes:
            if ch.kind == "interface":
                lines.append(f"private_key={want.private_key.hex()}")
                if want.listen_port is not None:
                    lines.append(f"listen_port={want.listen_port}")
            elif ch.kind == "remove":
                lines += [f"public_key={base64.b64decode(ch.peer).hex()}", "remove=true"]
            else:
                lines += self._peer_lines(specs[ch.peer], new=ch.kind == "add")
        self._set(lines)
        for ch in changes:
            log.info("wg %s: %s", self.ifname, ch)
        return changes

    @staticmethod
    def _peer_lines(p: PeerSpec, new: bool, psk: bytes | None = None) -> list[str]:
        lines = [f"public_key={p.public_key.hex()}"]
        if new or psk is not None:
            lines.append(f"preshared_key={(psk or secrets.token_bytes(32)).hex()}")
        if p.endpoint:
            lines.append(f"endpoint={p.endpoint}")
        lines.append(f"persistent_keepalive_interval={p.keepalive}")
        lines.append("replace_allowed_ips=true")
        lines += [f"allowed_ip={ip}" for ip in p.allowed_ips]
        return lines

    def set_psk(self, peer: bytes, psk: bytes) -> None:
        """Install a PSK for an existing peer (from the handshake)."""
        if len(psk) != 32:
            raise WgError("PSK must be 32 bytes")
        self._set([f"public_key={peer.hex()}", "update_only=true", f"preshared_key={psk.hex()}"])

    def remove_peer(self, peer: bytes) -> None:
        self._set([f"public_key={peer.hex()}", "remove=true"])

    def expire_psk(self, spec: PeerSpec) -> None:
        """Random PSK and no sessions: remove the peer and add it back, in one transaction."""
        self.reset_peer(spec, None)

    def reset_peer(self, spec: PeerSpec, psk: bytes | None) -> None:
        """Re-create the peer with `psk` (random if None): drops its sessions and handshake
        backoff, so the first PSK after a random one is used by the very next packet."""
        lines = self._peer_lines(spec, new=True, psk=psk)
        self._set([f"public_key={spec.public_key.hex()}", "remove=true", *lines])

    # -- transports for secrets ---------------------------------------------------

    def _set(self, lines: list[str]) -> None:
        uapi = self.uapi_path.exists() if self.use_uapi is None else self.use_uapi
        if uapi:
            self._uapi_set(lines)
        else:
            self._wg_set(lines)

    def _uapi_set(self, lines: list[str]) -> None:
        request = ("set=1\n" + "\n".join(lines) + "\n\n").encode()
        try:
            reply = uapi_request(self.uapi_path, request, self.uapi_timeout)
        except OSError as exc:  # refused, gone, timed out: never a secret in the text
            raise WgError(f"UAPI set on {self.ifname} failed: {exc.__class__.__name__}") from None
        if b"errno=0\n" not in reply:
            errno = reply.decode(errors="replace").strip().replace("\n", " ")[:80]
            raise WgError(f"UAPI set on {self.ifname} failed: {errno}")

    def _wg_set(self, lines: list[str]) -> None:
        """Kernel backend: translate UAPI lines to `wg set`, secrets via /dev/stdin."""
        args: list[str] = []
        secret: bytes | None = None
        ops: list[tuple[list[str], bytes | None]] = []
        for line in lines:
            key, _, value = line.partition("=")
            if key == "private_key":
                ops.append((["private-key", "/dev/stdin"], b64(bytes.fromhex(value)).encode()))
            elif key == "listen_port":
                ops.append((["listen-port", value], None))
            elif key == "public_key":
                if args:
                    ops.append((args, secret))
                args, secret = ["peer", b64(bytes.fromhex(value))], None
            elif key == "remove":
                ops.append(([*args, "remove"], None))
                args = []
            elif key == "preshared_key":
                args += ["preshared-key", "/dev/stdin"]
                secret = b64(bytes.fromhex(value)).encode()
            elif key == "endpoint":
                args += ["endpoint", value]
            elif key == "persistent_keepalive_interval":
                args += ["persistent-keepalive", value]
            elif key == "allowed_ip":
                if "allowed-ips" in args:
                    args[args.index("allowed-ips") + 1] += f",{value}"
                else:
                    args += ["allowed-ips", value]
        if args:
            ops.append((args, secret))
        for op_args, stdin in ops:
            if op_args and op_args[0] == "peer" and len(op_args) == 2:
                op_args = [*op_args, "allowed-ips", ""]
            self._run(["wg", "set", self.ifname, *op_args], stdin=stdin)
