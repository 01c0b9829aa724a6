"""tunneld under attack, at the daemon level: real daemons, real wireguard-go (issue 14).

Each test is one finding of the review: a keyless flood, a forged far-future InitHello,
WireGuard errors at PSK expiry and install, a reload that changes a peer, a reload with
an invalid key, SIGKILL and leftovers. Failures are injected the way they happen: the
UAPI socket disappears (moved away), the daemon is killed, a bare wireguard-go is left.
"""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from aiohttp import ClientSession, UnixConnector

from tests.tunneld.netns_daemons import (
    INTERVAL,
    ROOT,
    Sites,
    both_up,
    rotations,
    send_raw,
    wait_for,
)
from tests.tunneld.nsutil import in_ns, ns_pair, ping
from tunneld.handshake import Endpoint
from tunneld.handshake_types import LocalIdentity, PeerConfig, Send
from tunneld.kem import get_backend
from tunneld.keys import load_keyset, load_public
from tunneld.wg import UAPI_DIR, uapi_request

pytestmark = pytest.mark.root


def metrics(node_sock: Path) -> str:
    async def get() -> str:
        async with (
            ClientSession(connector=UnixConnector(path=str(node_sock))) as s,
            s.get("http://tunneld/metrics") as r,
        ):
            return await r.text()

    return asyncio.run(get())


def metric(text: str, name: str) -> float:
    return sum(float(ln.split()[-1]) for ln in text.splitlines() if ln.startswith(name))


def uapi_psk(sock: Path) -> str | None:
    """The first peer's PSK as wireguard-go holds it (hex), None if nothing answers."""
    try:
        reply = uapi_request(sock, b"get=1\n\n", timeout=2.0).decode()
    except OSError:
        return None
    for line in reply.splitlines():
        if line.startswith("preshared_key="):
            return line.split("=", 1)[1]
    return None


# -- keyless denial of service -----------------------------------------------------

FLOOD = """
import asyncio, sys, time
host, src, dur = sys.argv[1], sys.argv[2], float(sys.argv[3])
end = time.monotonic() + dur
async def junk():
    while time.monotonic() < end:
        try:
            r, w = await asyncio.open_connection(host, 51820, local_addr=(src, 0))
        except OSError:
            await asyncio.sleep(0.05)
            continue
        try:
            while time.monotonic() < end:
                w.write(b"\\x00\\x00")  # an empty frame: no key needed to send it
                await w.drain()
                try:
                    if not await asyncio.wait_for(r.read(100), 1.0):
                        break
                except asyncio.TimeoutError:
                    pass
        except OSError:
            pass
        w.close()
        await asyncio.sleep(0.02)
async def hold():
    while time.monotonic() < end:
        try:
            r, w = await asyncio.open_connection(host, 51820, local_addr=(src, 0))
            await asyncio.wait_for(r.read(100), max(0.1, end - time.monotonic()))
            w.close()
        except (OSError, asyncio.TimeoutError):
            pass
        await asyncio.sleep(0.02)
async def main():
    await asyncio.gather(*[junk() for _ in range(20)], *[hold() for _ in range(100)])
asyncio.run(main())
"""


def test_keyless_flood_cannot_stop_genuine_handshakes(sites: Sites) -> None:
    """Before: 64 global slots, each held open by an empty frame every second, so every
    new genuine handshake connection was refused and all tunnels failed closed. Here the
    flood runs before site-a even starts: its first handshake needs a new connection."""
    topo = sites.topology("shared")
    sites.b.start(topo, sites.keys["site-b"])
    wait_for(lambda: sites.b.status() is not None, 20, "site-b up", sites.b)
    attacker = "10.99.0.3"
    in_ns(sites.pair.a, "ip", "addr", "add", f"{attacker}/24", "dev", f"zt{sites.pair.tag}va")
    duration = 8 * INTERVAL
    argv = ["ip", "netns", "exec", sites.pair.a, sys.executable, "-c", FLOOD]
    flood = subprocess.Popen([*argv, sites.pair.ip_b, attacker, str(duration)])
    try:
        time.sleep(1.5)  # the flood holds what it can before site-a starts
        sites.a.start(topo, sites.keys["site-a"])
        wait_for(lambda: rotations(sites.b) >= 3, duration, "handshakes under flood", sites.b)
        assert ping(sites.pair.a, "100.64.0.2", timeout=3.0)
        assert flood.poll() is None, "the flood ended before the handshakes were counted"
    finally:
        flood.wait(timeout=duration + 20)
    text = metrics(sites.b.sock)
    assert metric(text, 'tunneld_rejected_frames_total{message="frame"}') > 20
    assert metric(text, 'tunneld_connections_total{outcome="evicted"}') > 100
    # Rate-limited warnings (burst 10, then 1/s), every rejection counted, gap reported.
    lines = sites.b.log_tail(10**7).count("rejected message from")
    assert lines <= 10 + duration + 5
    assert metric(text, "tunneld_suppressed_log_lines_total") > 0
    assert "similar warnings suppressed" in sites.b.log_tail(10**7)


def test_one_connection_carries_one_attempt(sites: Sites) -> None:
    """Before: rejected frames did not end the connection, so one connection could
    carry an endless stream of junk (and each frame cost a log line)."""
    both_up(sites)
    before = metric(metrics(sites.b.sock), "tunneld_rejected_frames_total")
    code = (
        "import socket,time\n"
        f"s=socket.create_connection(('{sites.pair.ip_b}',51820),timeout=5)\n"
        "s.sendall(b'\\x00\\x00')\n"
        "time.sleep(0.5)\n"
        "try:\n"
        "    for _ in range(5):\n"
        "        s.sendall(b'\\x00\\x00')\n"
        "        time.sleep(0.1)\n"
        "    print('closed' if s.recv(10) == b'' else 'open')\n"
        "except OSError:\n"
        "    print('closed')\n"
    )
    out = in_ns(sites.pair.a, sys.executable, "-c", code)
    assert out.strip() == "closed"
    time.sleep(0.5)
    assert metric(metrics(sites.b.sock), "tunneld_rejected_frames_total") == before + 1


# -- lock-out by one forged message ------------------------------------------------


def forged_far_future_hello(sites: Sites) -> bytes:
    """An InitHello to site-b with a valid MAC1 (site-a's static X25519 key, which this
    attacker holds) and timestamp 2^64-1."""

    class FarFuture:
        def monotonic(self) -> float:
            return time.monotonic()

        def time_ns(self) -> int:
            return 2**64 - 1

    backend = get_backend()
    keys = load_keyset(sites.keys["site-a"], backend)
    b = load_public(sites.keys["site-b"] / "identity.pub")
    ep = Endpoint(
        LocalIdentity("site-a", keys.static, keys.public.wireguard),
        [PeerConfig("site-b", b.hybrid(backend), b.wireguard, "initiator", b.kem)],
        backend=backend,
        clock=FarFuture(),
        rng=secrets.token_bytes,
    )
    ep.rekey_now("site-b")
    (hello,) = [e.data for e in ep.poll() if isinstance(e, Send)]
    return hello


def test_forged_far_future_hello_does_not_lock_out(sites: Sites) -> None:
    """Before: the responder stored 2^64-1 as the newest timestamp and rejected every
    genuine InitHello until it restarted."""
    both_up(sites)
    send_raw(sites.pair.a, sites.pair.ip_b, [forged_far_future_hello(sites)])
    n = rotations(sites.b)
    wait_for(lambda: rotations(sites.b) >= n + 2, 6 * INTERVAL, "rotations after forgery", sites.b)
    assert "ahead of our clock" in sites.b.log_tail(10**6)


# -- never fail open ---------------------------------------------------------------


def _moved(sites: Sites) -> tuple[Path, Path]:
    sock = UAPI_DIR / f"{sites.a.ifname}.sock"
    return sock, sock.with_name(sock.name + ".moved")


def _assert_old_psk_unusable(sites: Sites, moved: Path, old: str | None) -> None:
    """The daemon removed the interface and stopped; nothing holds the old PSK."""
    assert sites.a.proc is not None
    wait_for(lambda: sites.a.proc is not None and sites.a.proc.poll() is not None, 30,
             "tunneld to remove its interface and stop", sites.a)  # fmt: skip
    held = uapi_psk(moved)
    assert held is None or held != old, "WireGuard still holds the PSK of the last handshake"
    assert "no old PSK stays usable" in sites.a.log_tail(10**6)
    assert in_ns(sites.pair.a, "ip", "link", "show", "dev", sites.a.ifname, check=False) == ""


def test_wireguard_error_at_expiry_leaves_no_old_psk(sites: Sites) -> None:
    """Before: the WgError from expire_psk ended the timer loop; WireGuard kept the
    expired PSK and no PSK ever expired again."""
    both_up(sites)
    sites.b.stop()  # no more handshakes: a's PSK will expire
    sock, moved = _moved(sites)
    old = uapi_psk(sock)
    os.rename(sock, moved)  # every WireGuard operation of a now fails
    try:
        _assert_old_psk_unusable(sites, moved, old)
    finally:
        if uapi_psk(moved) is not None:
            os.rename(moved, sock)
        moved.unlink(missing_ok=True)


def test_wireguard_error_at_install_leaves_no_old_psk(sites: Sites) -> None:
    """Before: a failed install was logged and WireGuard kept the previous PSK while the
    state machine counted the new one as installed."""
    both_up(sites)
    sock, moved = _moved(sites)
    old = uapi_psk(sock)
    os.rename(sock, moved)
    try:
        sites.a.wait_log("PSK install failed", 6 * INTERVAL)
        _assert_old_psk_unusable(sites, moved, old)
    finally:
        if uapi_psk(moved) is not None:
            os.rename(moved, sock)
        moved.unlink(missing_ok=True)


def test_reload_that_changes_a_peer_sets_a_random_psk(sites: Sites) -> None:
    """Before: the state machine forgot the peer's PSK (and its expiry) while WireGuard
    kept it; with the peer unreachable after the change it stayed forever."""
    topo = sites.topology("shared")
    sites.a.start(topo, sites.keys["site-a"], interval=20.0)
    sites.b.start(topo, sites.keys["site-b"], interval=20.0)
    wait_for(lambda: rotations(sites.a) >= 1, 20, "first PSK", sites.a, sites.b)
    old = sites.a.psk_digest()
    text = (topo / "plant.yaml").read_text()
    (topo / "plant.yaml").write_text(text.replace(f"{sites.pair.ip_b}, port: 51820",
                                                  f"{sites.pair.ip_b}, port: 51821"))  # fmt: skip
    sites.a.signal(signal.SIGHUP)
    sites.a.wait_log("reloaded", 10)
    assert sites.a.psk_digest() != old
    assert not ping(sites.pair.a, "100.64.0.2", timeout=2.0)


def test_reload_with_an_invalid_key_changes_nothing(sites: Sites) -> None:
    """Before: an all-zero X25519 key passed loading; the reload removed the peer from the
    state machine, then failed adding it back (half applied, tunnel gone)."""
    both_up(sites)
    bad = sites.base / "keys" / "bad"
    bad.mkdir()
    doc = (sites.keys["site-b"] / "identity.pub").read_text()
    good_x = load_public(sites.keys["site-b"] / "identity.pub")
    zero = base64.b64encode(bytes(32)).decode()
    (bad / "identity.pub").write_text(doc.replace(base64.b64encode(good_x.x25519).decode(), zero))
    topo = sites.topology("shared", pin_b=bad)
    assert topo.name == "topo-shared"
    sites.a.signal(signal.SIGHUP)
    sites.a.wait_log("reload failed, keeping the running configuration", 10)
    assert "low-order" in sites.a.log_tail()
    n = rotations(sites.a)
    wait_for(lambda: rotations(sites.a) >= n + 2, 6 * INTERVAL, "rotations", sites.a)
    assert ping(sites.pair.a, "100.64.0.2")


# -- SIGKILL, leftovers, stop hook -------------------------------------------------


def _bare_wireguard_go(sites: Sites) -> None:
    """What a killed daemon of old left: wireguard-go with a peer and a PSK."""
    env = dict(os.environ, WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD="1")
    subprocess.run(
        ["ip", "netns", "exec", sites.pair.a, "wireguard-go", sites.a.ifname],
        env=env,
        check=True,
        capture_output=True,
        timeout=10,
    )
    peer = load_public(sites.keys["site-b"] / "identity.pub").wireguard.hex()
    reply = uapi_request(
        UAPI_DIR / f"{sites.a.ifname}.sock",
        f"set=1\npublic_key={peer}\npreshared_key={secrets.token_hex(32)}\n\n".encode(),
    )
    assert b"errno=0" in reply


def test_sigkill_takes_the_interface_along_and_restart_is_clean(sites: Sites) -> None:
    """Before: after SIGKILL wireguard-go kept running with the last PSK forever, and a
    restart failed on the leftover UAPI socket."""
    both_up(sites)
    sock = UAPI_DIR / f"{sites.a.ifname}.sock"
    sites.a.signal(signal.SIGKILL)
    wait_for(lambda: uapi_psk(sock) is None, 5, "wireguard-go to die with tunneld")
    sites.a.proc = None
    # A leftover that did survive (an older tunneld, the kernel backend): start over it.
    _bare_wireguard_go(sites)
    sites.a.start(sites.topology("shared"), sites.keys["site-a"])
    wait_for(lambda: rotations(sites.a) >= 1, 20, "PSK after restart", sites.a, sites.b)
    assert "removed a leftover interface" in sites.a.log_tail(10**6)
    assert ping(sites.pair.a, "100.64.0.2")


def test_scrub_removes_a_leftover_interface_and_its_psk() -> None:
    with ns_pair() as pair:
        ifname = pair.ifname("sc")
        env = dict(os.environ, WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD="1")
        subprocess.run(["ip", "netns", "exec", pair.a, "wireguard-go", ifname], env=env,
                       check=True, capture_output=True, timeout=10)  # fmt: skip
        sock = UAPI_DIR / f"{ifname}.sock"
        reply = uapi_request(
            sock,
            f"set=1\npublic_key={secrets.token_hex(32)}\n"
            f"preshared_key={secrets.token_hex(32)}\n\n".encode(),
        )
        assert b"errno=0" in reply
        out = subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                pair.a,
                sys.executable,
                "-m",
                "tunneld.cli",
                "scrub",
                "--ifname",
                ifname,
            ],
            capture_output=True,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
            timeout=30,
            check=True,
        ).stdout.decode()
        assert "removed" in out
        assert uapi_psk(sock) is None and not sock.exists()
        assert in_ns(pair.a, "ip", "link", "show", "dev", ifname, check=False) == ""


def test_systemd_unit_scrubs_after_every_stop() -> None:
    unit = (ROOT / "deploy" / "systemd" / "zonegate-tunneld.service").read_text()
    start = next(ln for ln in unit.splitlines() if ln.startswith("ExecStart="))
    post = next(ln for ln in unit.splitlines() if ln.startswith("ExecStopPost="))
    ifname = start.split("--ifname", 1)[1].split()[0]
    assert post.endswith(f"tunneld scrub --ifname {ifname}")
    assert "Restart=on-failure" in unit and "KillMode=control-group" in unit
