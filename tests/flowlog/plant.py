"""A three-namespace plant for real-kernel tests: client -- gateway -- server.

client (an identity's tunnel address, plus one unknown address) reaches the plant
LAN through the gateway namespace, which forwards, tracks connections and runs the
stand-in of policyd's ruleset (`standin_ruleset`, the one place to swap for the real
compiler). The server answers TCP and UDP with known byte counts.
Every name carries a random `zf` + 4 hex prefix; `close()` removes everything.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from policyd.conventions import NFLOG_DENY_PREFIX, NFLOG_GROUP, TABLE_FAMILY, TABLE_NAME
from tests import netns
from tests.netns import Namespaces, require, sh
from topology.model import Topology

HERE = Path(__file__).parent
TOPOLOGY = HERE / "topology.yaml"
CLIENT_IDENTITY = "100.64.1.1"  # eng-1 in topology.yaml
CLIENT_UNKNOWN = "100.64.1.99"  # no identity
GATEWAY_CLIENT_SIDE = "100.64.1.254"
GATEWAY_PLANT_SIDE = "10.1.1.1"
PLC = "10.1.1.5"  # site-a/plc-1
OTHER_HOST = "10.1.1.9"  # in zone site-a/control, not an asset
TOOLS = {"ip": "iproute2", "nft": "nftables", "conntrack": "conntrack"}


def require_tools() -> None:
    """A missing tool fails the test and says what to install (never a skip)."""
    require(TOOLS)


def run(*cmd: str, ns: str | None = None, input: str | None = None) -> str:
    return sh(*cmd, ns=ns, input=input, timeout=60)


def standin_ruleset(topo: Topology) -> str:
    """policyd's ruleset shape, by hand: table inet zonegate, forward chain, default deny.

    Accepted new flows get `ct mark set <conduit.mark>`; a Modbus write is dropped
    and logged as its own reason; everything else is logged to NFLOG group 7 with
    "zg deny default" and dropped. Hand-written on purpose: these tests pin the
    recorder's accounting (exact counts, bursts, overruns) independently of the
    compiler's layout; records from the real compiled rules are checked in
    tests/policyd/test_grants_ns.py, test_sessions_ns.py and the Mininet scenarios.
    """
    rules = []
    for conduit in topo.conduits.values():
        sources = sorted(
            str(i.overlay)
            for i in topo.identities.values()
            if i.overlay is not None
            and (i.name in conduit.sources.identities or set(i.roles) & set(conduit.sources.roles))
        )
        asset = topo.asset(conduit.target.ref)
        assert asset is not None, "the stand-in only handles asset targets"
        for ref in conduit.allow:
            svc = topo.services[ref.service]
            ports = ", ".join(str(p) for p in svc.ports)
            rules.append(
                f"ip saddr {{ {', '.join(sources)} }} ip daddr {asset.address} "
                f"{svc.transport} dport {{ {ports} }} ct state new "
                f"ct mark set 0x{conduit.mark:08x} accept"
            )
    deny = NFLOG_DENY_PREFIX
    body = "\n    ".join(rules)
    return f"""
table {TABLE_FAMILY} {TABLE_NAME} {{
  chain forward {{
    type filter hook forward priority 0; policy drop;
    tcp dport 502 @ih,56,8 {{ 5, 6, 15, 16 }} \
      log group {NFLOG_GROUP} prefix "{deny}modbus-write" drop
    ct state established,related accept
    {body}
    limit rate 10000/second log group {NFLOG_GROUP} prefix "{deny}default"
    drop
  }}
}}
"""


SERVER = r"""
import selectors, socket, sys
sel = selectors.DefaultSelector()
for port in (502, 22):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(4096); s.setblocking(False)
    sel.register(s, selectors.EVENT_READ, "tcp")
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("0.0.0.0", 34964))
sel.register(u, selectors.EVENT_READ, "udp")
print("ready", flush=True)
while True:
    for key, _ in sel.select():
        if key.data == "udp":
            data, peer = u.recvfrom(2048)
            u.sendto(b"r" * 50, peer)
        elif key.data == "tcp":
            c, _ = key.fileobj.accept(); c.setblocking(True); c.settimeout(2)
            sel.register(c, selectors.EVENT_READ, "conn")
        else:
            c = key.fileobj
            try:
                data = c.recv(4096)
            except OSError:
                data = b""
            if data:
                c.sendall(b"s" * 200)
            sel.unregister(c); c.close()
"""

CLIENT = r"""
import json, socket, sys, time
spec = json.loads(sys.stdin.read()); out = []
for item in spec:
    kind, src, dst, port = item["kind"], item["src"], item["dst"], item["port"]
    if kind == "udp":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((src, item.get("sport", 0))); s.settimeout(1)
        got = 0
        for _ in range(item.get("count", 1)):
            s.sendto(b"q" * item.get("size", 100), (dst, port))
            try:
                s.recv(2048); got += 1
            except OSError:
                pass
        out.append({"sport": s.getsockname()[1], "ok": got > 0, "replies": got}); s.close()
    else:
        base = item.get("base_port", 0)
        for i in range(item.get("repeat", 1)):
            s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((src, base + i if base else 0)); s.settimeout(item.get("timeout", 2))
            ok = True
            try:
                s.connect((dst, port)); s.sendall(bytes.fromhex(item.get("hex", "")) or b"hello")
                s.recv(4096)
            except OSError:
                ok = False
            out.append({"sport": s.getsockname()[1], "ok": ok}); s.close()
print(json.dumps(out))
"""


class Plant:
    """Build the namespaces; `close()` tears them down (call it in a finally)."""

    def __init__(self, topo: Topology) -> None:
        require_tools()
        self.nets = Namespaces("zf")
        self.tag = self.nets.tag
        self.client, self.gateway, self.server = (f"{self.tag}-{x}" for x in "cgs")
        try:
            self._build(topo)
        except BaseException:
            self.close()
            raise

    def _build(self, topo: Topology) -> None:
        t, nets = self.tag, self.nets
        for ns in (self.client, self.gateway, self.server):
            nets.add(ns)
        nets.veth(
            (self.client, f"{t}c"),
            (self.gateway, f"{t}gc"),
            [f"{CLIENT_IDENTITY}/24", f"{CLIENT_UNKNOWN}/24"],
            [f"{GATEWAY_CLIENT_SIDE}/24"],
        )
        nets.veth(
            (self.server, f"{t}s"),
            (self.gateway, f"{t}gs"),
            [f"{PLC}/24", f"{OTHER_HOST}/24"],
            [f"{GATEWAY_PLANT_SIDE}/24"],
        )
        run("ip", "-n", self.client, "route", "add", "default", "via", GATEWAY_CLIENT_SIDE)
        run("ip", "-n", self.server, "route", "add", "default", "via", GATEWAY_PLANT_SIDE)
        run("sysctl", "-qw", "net.ipv4.ip_forward=1", ns=self.gateway)
        run("nft", "-f", "-", ns=self.gateway, input=standin_ruleset(topo))
        server = nets.spawn(self.server, [sys.executable, "-c", SERVER], stderr=subprocess.PIPE)
        assert server.stdout is not None
        line = server.stdout.readline()
        if line.strip() != "ready":
            err = server.stderr.read() if server.stderr else ""
            raise RuntimeError(f"test server did not start: {err}")

    def connect(self, spec: list[dict[str, object]]) -> list[dict[str, object]]:
        """Make the connections in `spec` from the client; returns source ports and outcomes."""
        out = run(sys.executable, "-c", CLIENT, ns=self.client, input=json.dumps(spec))
        result: list[dict[str, object]] = json.loads(out)
        return result

    def conntrack_flush(self) -> None:
        """End every tracked flow now: each gets its DESTROY event with final counters."""
        run("conntrack", "-F", ns=self.gateway)

    def conntrack_list(self) -> str:
        return run("conntrack", "-L", "-o", "extended,id", ns=self.gateway)

    def close(self) -> None:
        self.nets.close()


def wait_for(predicate: Callable[[], bool], timeout: float = 15.0, what: str = "condition") -> None:
    """Poll until predicate() is true; fail naming `what` (a deadline, not a timing assert)."""
    netns.wait_for(predicate, timeout, what)
