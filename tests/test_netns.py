"""tests.netns cleans up what it made, also when the test fails half-way."""

from __future__ import annotations

import subprocess

import pytest

from tests.netns import Namespaces, ping, run

pytestmark = pytest.mark.root


def namespaces() -> set[str]:
    return {line.split()[0] for line in run("ip", "netns", "list").stdout.splitlines() if line}


def test_veth_ping_and_cleanup_after_a_failure() -> None:
    with pytest.raises(RuntimeError, match="half-way"), Namespaces("zn") as nets:
        a, b = nets.add(nets.tag + "a"), nets.add(nets.tag + "b")
        nets.veth((a, nets.tag + "x"), (b, nets.tag + "y"), ["10.77.0.1/24"], ["10.77.0.2/24"])
        assert ping(a, "10.77.0.2", timeout=5)
        ours = nets.spawn(b, ["sleep", "300"])
        # A forked child the test never saw (as wireguard-go leaves): ended by close() too.
        nets.run(b, "sh", "-c", "sleep 301 >/dev/null 2>&1 &")
        assert {a, b} <= namespaces()
        raise RuntimeError("half-way")
    assert ours.poll() is not None
    assert not {a, b} & namespaces()
    assert "sleep 301" not in subprocess.run(["ps", "ax"], capture_output=True, text=True).stdout


def test_a_failing_command_names_itself() -> None:
    with pytest.raises(AssertionError, match="ip netns exec zz-none true failed"):
        run("true", ns="zz-none")
