"""Network namespaces for root tests: names, links, processes and cleanup, written once.

Every root test builds a small network of namespaces (policyd's identity -- gateway --
zone net, the remote plant, the flow recorder's gateway, tunneld's pairs). This module
holds what they all need, so each of those keeps only its own topology and the cleanup
is the same everywhere: `Namespaces` names everything `<prefix><4 random hex digits>...`
(parallel runs do not collide), and `close()` kills the processes it started and any
left in its namespaces (wireguard-go forks), then deletes the namespaces, also after a
failure half-way through building.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import suppress
from types import TracebackType
from typing import IO, Any


def need(binary: str, package: str) -> str:
    """A missing tool fails the test and says what to install (never a silent skip)."""
    path = shutil.which(binary)
    if path is None:
        raise AssertionError(f"{binary} not found: install the Debian package {package}")
    return path


def require(tools: Mapping[str, str]) -> None:
    """Fail naming every missing tool ({binary: Debian package}) at once."""
    missing = [
        f"{tool} (apt-get install {pkg})" for tool, pkg in tools.items() if not shutil.which(tool)
    ]
    if missing:
        raise AssertionError("namespace tests need: " + ", ".join(missing))


def run(
    *argv: str,
    ns: str | None = None,
    check: bool = True,
    input: str | None = None,
    timeout: float = 30,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `argv` (in namespace `ns` if given); with `check`, a failure raises
    AssertionError naming the command and its stderr."""
    full = ["ip", "netns", "exec", ns, *argv] if ns else list(argv)
    res = subprocess.run(
        full,
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=dict(env) if env is not None else None,
    )
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(full)} failed ({res.returncode}): {res.stderr.strip()}")
    return res


def sh(
    *argv: str,
    ns: str | None = None,
    check: bool = True,
    input: str | None = None,
    timeout: float = 30,
) -> str:
    """`run` for its standard output."""
    return run(*argv, ns=ns, check=check, input=input, timeout=timeout).stdout


def ping(ns: str, addr: str, timeout: float = 8.0) -> bool:
    """True as soon as one echo reply comes back within `timeout` seconds."""
    need("ping", "iputils-ping")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if run("ping", "-c1", "-W1", addr, ns=ns, check=False, timeout=10).returncode == 0:
            return True
        time.sleep(0.1)
    return False


def stop(p: subprocess.Popen[Any], sig: int = signal.SIGTERM, timeout: float = 10) -> int | None:
    """End a daemon as an operator would (SIGTERM), killing it if it does not go in time."""
    if p.poll() is None:
        p.send_signal(sig)
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=5)
    return p.returncode


def wait_for(
    cond: Callable[[], bool],
    timeout: float,
    what: str,
    procs: Iterable[subprocess.Popen[Any]] = (),
    logs: Callable[[], str] = str,
    poll: float = 0.05,
) -> None:
    """Poll `cond` until `timeout` (a deadline, not a timing assert); fail naming `what`
    with `logs()`, at once if one of `procs` dies."""
    procs = list(procs)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        if any(p.poll() is not None for p in procs):
            break
        time.sleep(poll)
    details = logs()
    raise AssertionError(f"timed out waiting for {what}" + (f"\n{details}" if details else ""))


def _end_all(ns: str) -> None:
    """End every process left in `ns`: SIGTERM (wireguard-go removes its socket), then
    SIGKILL whatever is still there after two seconds."""

    def pids() -> list[int]:
        return [int(p) for p in run("ip", "netns", "pids", ns, check=False).stdout.split()]

    for sig in (signal.SIGTERM, signal.SIGKILL):
        left = pids()
        for pid in left:
            with suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 2
        while left and time.monotonic() < deadline:
            time.sleep(0.05)
            left = pids()
        if not left:
            return


class Namespaces:
    """Namespaces named `tag + suffix`, the links between them and the processes in them."""

    def __init__(self, prefix: str, env: Mapping[str, str] | None = None) -> None:
        need("ip", "iproute2")
        self.tag = prefix + secrets.token_hex(2)
        self.env = dict(env) if env is not None else None
        self.made: list[str] = []
        self.procs: list[subprocess.Popen[Any]] = []

    def add(self, name: str) -> str:
        """A new namespace `name` (loopback up), deleted by `close()`."""
        run("ip", "netns", "add", name)
        self.made.append(name)
        run("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def run(
        self,
        ns: str | None,
        *argv: str,
        check: bool = True,
        input: str | None = None,
        timeout: float = 30,
    ) -> subprocess.CompletedProcess[str]:
        return run(*argv, ns=ns, check=check, input=input, timeout=timeout, env=self.env)

    def veth(
        self,
        a: tuple[str, str],
        b: tuple[str, str],
        a_addrs: Iterable[str] = (),
        b_addrs: Iterable[str] = (),
        up: bool = True,
    ) -> None:
        """A veth between (namespace, ifname) `a` and `b`; addresses are CIDRs."""
        (a_ns, a_if), (b_ns, b_if) = a, b
        run("ip", "link", "add", a_if, "netns", a_ns, "type", "veth", "peer", b_if, "netns", b_ns)
        for ns, dev, addrs in ((a_ns, a_if, a_addrs), (b_ns, b_if, b_addrs)):
            for cidr in addrs:
                run("ip", "-n", ns, "addr", "add", cidr, "dev", dev)
            if up:
                run("ip", "-n", ns, "link", "set", dev, "up")

    def spawn(
        self,
        ns: str,
        argv: Sequence[str],
        stdin: int | IO[Any] | None = None,
        stdout: int | IO[Any] | None = subprocess.PIPE,
        stderr: int | IO[Any] | None = subprocess.STDOUT,
        cwd: str | os.PathLike[str] | None = None,
    ) -> subprocess.Popen[str]:
        """A background process in `ns` (text mode), killed by `close()`."""
        p = subprocess.Popen(
            ["ip", "netns", "exec", ns, *argv],
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            text=True,
            env=self.env,
            cwd=cwd,
        )
        self.procs.append(p)
        return p

    def close(self) -> None:
        """Kill our processes and any left in our namespaces, then delete the namespaces."""
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            with suppress(subprocess.TimeoutExpired):
                p.wait(timeout=5)
            for stream in (p.stdin, p.stdout, p.stderr):
                if stream is not None:
                    with suppress(OSError):
                        stream.close()
        self.procs.clear()
        for ns in reversed(self.made):
            _end_all(ns)
            run("ip", "netns", "del", ns, check=False)
        self.made.clear()

    def __enter__(self) -> Namespaces:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
