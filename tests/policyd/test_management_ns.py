"""Management access on the real kernel: the topology says who may reach the gateway
itself; starting policyd cuts neither the session that started it nor new sessions from
there. Before, the input chain dropped every new SSH session to the gateway."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.policyd.nsnet import IDENTITIES, PLC1, PY, Net, require_tools, topology_yaml
from tests.policyd.test_daemon_ns import Policyd

pytestmark = pytest.mark.root

ECHO = """
import socket, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 22)); s.listen(8); print("ready", flush=True)
def serve(c):
    while (d := c.recv(100)):
        c.sendall(d)
while True:
    threading.Thread(target=serve, args=(s.accept()[0],), daemon=True).start()
"""

# One long session over stdin: each line is echoed through the connection -> "ok"/"cut".
CLIENT = """
import socket, sys
src, dst = sys.argv[1], sys.argv[2]
c = socket.socket(); c.bind((src, 0)); c.settimeout(1.5)
try:
    c.connect((dst, 22)); print("ok", flush=True)
except OSError:
    print("cut", flush=True); sys.exit()
for line in sys.stdin:
    try:
        c.sendall(b"x"); print("ok" if c.recv(10) == b"x" else "cut", flush=True)
    except OSError:
        print("cut", flush=True)
"""


@pytest.fixture
def net() -> Iterator[Net]:
    require_tools()
    n = Net(prefix="zm")
    try:
        n.up()
        n.wait_ready(n.spawn(n.gw, PY, "-c", ECHO), "gateway ssh stand-in")
        yield n
    finally:
        n.down()


def connect(net: Net, ns: str, src: str, dst: str) -> subprocess.Popen[str]:
    p = subprocess.Popen(
        ["ip", "netns", "exec", ns, PY, "-c", CLIENT, src, dst],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    net.procs.append(p)
    return p


def alive(p: subprocess.Popen[str]) -> bool:
    assert p.stdin is not None and p.stdout is not None
    p.stdin.write("x\n")
    p.stdin.flush()
    return p.stdout.readline().strip() == "ok"


def opened(p: subprocess.Popen[str]) -> bool:
    assert p.stdout is not None
    return p.stdout.readline().strip() == "ok"


def test_management_access_and_the_starting_session(net: Net, tmp_path: Path) -> None:
    text = topology_yaml().replace(
        "overlay: 100.64.0.1}",
        "overlay: 100.64.0.1, management: [{from: [plant-a/control], allow: [ssh]}]}",
        1,
    )
    topo = tmp_path / "topo.yaml"
    topo.write_text(text)
    admin = connect(net, net.zone, PLC1, "10.10.1.1")  # the session that starts policyd
    assert opened(admin)
    d = Policyd(net, topo)
    d.wait_for("applied ruleset for plant-a")
    assert alive(admin)
    assert opened(connect(net, net.zone, PLC1, "10.10.1.1"))  # new session, same source
    # not declared: an identity through the tunnel, to the gateway's overlay address
    assert not opened(connect(net, net.ident, IDENTITIES["engineer-1"], "100.64.0.1"))
    assert "management access 0" in net.table_text()
