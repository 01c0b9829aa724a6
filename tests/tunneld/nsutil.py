"""Network namespaces for tunneld's root tests: unique names, always cleaned up."""

from __future__ import annotations

import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest


def need(binary: str, package: str) -> str:
    """A missing tool fails the test and says what to install (never a silent skip)."""
    path = shutil.which(binary)
    if path is None:
        pytest.fail(f"{binary} not found: install the Debian package {package}")
    return path


def sh(*args: str, check: bool = True, stdin: bytes | None = None) -> str:
    res = subprocess.run(list(args), input=stdin, capture_output=True, timeout=30, check=False)
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed: {res.stderr.decode().strip()}")
    return res.stdout.decode()


def in_ns(ns: str, *args: str, check: bool = True) -> str:
    return sh("ip", "netns", "exec", ns, *args, check=check)


@dataclass(frozen=True)
class Pair:
    """Two namespaces joined by a veth: a at 10.99.0.1, b at 10.99.0.2."""

    tag: str
    a: str
    b: str
    ip_a: str = "10.99.0.1"
    ip_b: str = "10.99.0.2"

    def ifname(self, suffix: str) -> str:
        name = f"zt{self.tag}{suffix}"
        assert len(name) <= 15
        return name


@contextmanager
def ns_pair() -> Iterator[Pair]:
    need("ip", "iproute2")
    tag = secrets.token_hex(2)
    pair = Pair(tag, f"zt{tag}a", f"zt{tag}b")
    made: list[str] = []
    try:
        for ns in (pair.a, pair.b):
            sh("ip", "netns", "add", ns)
            made.append(ns)
        va, vb = f"zt{tag}va", f"zt{tag}vb"
        sh("ip", "link", "add", va, "netns", pair.a, "type", "veth", "peer", vb, "netns", pair.b)
        for ns, dev, ip in ((pair.a, va, pair.ip_a), (pair.b, vb, pair.ip_b)):
            in_ns(ns, "ip", "addr", "add", f"{ip}/24", "dev", dev)
            in_ns(ns, "ip", "link", "set", dev, "up")
            in_ns(ns, "ip", "link", "set", "lo", "up")
        yield pair
    finally:
        for ns in made:
            # Processes left in the namespace (wireguard-go, daemons) are ours: end them.
            pids = sh("ip", "netns", "pids", ns, check=False).split()
            for pid in pids:
                sh("kill", pid, check=False)
            sh("ip", "netns", "del", ns, check=False)


def ping(ns: str, addr: str, timeout: float = 8.0) -> bool:
    """True as soon as one echo reply comes back within `timeout` seconds."""
    need("ping", "iputils-ping")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        res = subprocess.run(
            ["ip", "netns", "exec", ns, "ping", "-c1", "-W1", addr],
            capture_output=True,
            timeout=10,
            check=False,
        )
        if res.returncode == 0:
            return True
        time.sleep(0.1)
    return False
