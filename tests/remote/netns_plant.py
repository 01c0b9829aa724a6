"""Plant-a's gateway, the LAN behind it and remote users, as network namespaces.

Reusable by any root test that needs a real user tunnel (remote access, grants through
the tunnel, revocation): build `PlantNet`, start the gateway, join users.

    users (zrTAGu1, zrTAGu2, ...)       gateway (zrTAGg)                plant LAN (zrTAGz)
    10.98.0.11, .12, ... ---- bridge 10.98.0.1            10.10.1.1 ---- 10.10.1.5 plc-1
                              (plant-a's underlay)        10.10.2.1      10.10.1.6 plc-2
                              tunneld --node plant-a      10.10.9.1      10.10.1.20 hmi-1
                              WireGuard zrTAGwg                          10.10.2.5 sis-1
                              ip_forward=1, no firewall                  10.10.9.10 historian

The topology is `examples/plant` with keys made for every identity (tunneld.keyring)
and plant-a's underlay set to 10.98.0.1 (plant-b's to an address nobody has, so its
peer simply never answers). Everything is named `zr` + 4 random hex digits, so runs in
parallel do not collide, and `close()` removes every namespace, process and socket it
made, also after a failure. A test that wants policyd on the gateway runs it with
`plant.in_gw(...)`/`plant.spawn_gw(...)` and names the tunnel `plant.gw_ifname`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import netns
from tests.netns import Namespaces, need, sh, stop
from tunneld import profile as prof
from tunneld.keyring import Materialized, materialize_keys
from tunneld.keys import load_public
from tunneld.signing import Signer, load_signer, signer_keygen
from tunneld.wg import UAPI_DIR

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "plant"
GW_UNDERLAY = "10.98.0.1"
NOBODY = "10.98.0.254"  # plant-b's underlay: no host, its handshakes time out
LAN_GATEWAY = ("10.10.1.1/24", "10.10.2.1/24", "10.10.9.1/24")
LAN_HOSTS = {
    "plc-1": "10.10.1.5",
    "plc-2": "10.10.1.6",
    "hmi-1": "10.10.1.20",
    "sis-1": "10.10.2.5",
    "historian": "10.10.9.10",
}
REKEY_INTERVAL = 3.0  # seconds between PSK rotations in these tests


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT))


class Proc:
    """A daemon in a namespace, with its output in a log file for failure messages."""

    def __init__(self, nets: Namespaces, ns: str, argv: list[str], log: Path) -> None:
        self.ns, self.argv, self.log = ns, argv, log
        with log.open("ab") as f:
            self.p = nets.spawn(ns, argv, stdout=f, stderr=f, cwd=ROOT)

    def running(self) -> bool:
        return self.p.poll() is None

    def signal(self, sig: int) -> None:
        if self.running():
            self.p.send_signal(sig)

    def stop(self) -> int | None:
        return stop(self.p)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def log_tail(self, n: int = 3000) -> str:
        return f"--- {self.log.name}\n{self.log_text()[-n:]}"


def tunneld(*args: str) -> list[str]:
    return [sys.executable, "-m", "tunneld.cli", *args]


def status(sock: Path) -> dict[str, Any] | None:
    res = subprocess.run(
        tunneld("status", "--socket", str(sock), "--json"),
        capture_output=True,
        timeout=20,
        env=_env(),
        check=False,
    )
    return json.loads(res.stdout) if res.returncode == 0 else None


def wait_for(cond: Callable[[], bool], timeout: float, what: str, *procs: Proc) -> None:
    """Poll `cond`; on timeout (or a daemon dying) fail with the daemons' log tails."""
    netns.wait_for(
        cond,
        timeout,
        what,
        [p.p for p in procs],
        lambda: "\n".join(p.log_tail() for p in procs),
        poll=0.2,
    )


def psk_digest(ns: str, ifname: str, wg_public_b64: str) -> str | None:
    """Hash of the PSK WireGuard holds for one peer: tests compare digests, never keys."""
    for line in sh("wg", "show", ifname, "dump", ns=ns).splitlines()[1:]:
        cols = line.split("\t")
        if cols[0] == wg_public_b64:
            return None if cols[1] == "(none)" else hashlib.sha256(cols[1].encode()).hexdigest()
    return None


@dataclass
class User:
    """A joined (or joining) user: its namespace, tunnel interface and daemon."""

    identity: str
    ns: str
    address: str  # underlay
    ifname: str
    sock: Path
    proc: Proc | None = None

    def status(self) -> dict[str, Any] | None:
        return status(self.sock)

    def gateway(self, site: str = "plant-a") -> dict[str, Any]:
        st = self.status()
        assert st is not None, f"no status from {self.identity}\n{self.log_tail()}"
        peer: dict[str, Any] = st["peers"][site]
        return peer

    def rotations(self, site: str = "plant-a") -> int:
        st = self.status()
        return -1 if st is None else int(st["peers"][site]["rotations"])

    def log_text(self) -> str:
        return self.proc.log_text() if self.proc else ""

    def log_tail(self) -> str:
        return self.proc.log_tail() if self.proc else "(not started)"


@dataclass
class PlantNet:
    base: Path
    tag: str = field(init=False)  # 4 hex digits: every name is zr<tag>...
    keys: Materialized | None = None
    gateway: Proc | None = None
    users: dict[str, User] = field(default_factory=dict)
    _procs: list[Proc] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.nets = Namespaces("zr", env=_env())
        self.tag = self.nets.tag[2:]

    # -- names ----------------------------------------------------------------------

    @property
    def gw_ns(self) -> str:
        return f"zr{self.tag}g"

    @property
    def lan_ns(self) -> str:
        return f"zr{self.tag}z"

    @property
    def gw_ifname(self) -> str:
        return f"zr{self.tag}wg"

    @property
    def gw_sock(self) -> Path:
        return self.base / "gw.sock"

    @property
    def topology(self) -> Path:
        assert self.keys is not None
        return self.keys.topology

    @property
    def signer(self) -> Signer:
        """The network team's profile-signing key (made once per plant)."""
        d = self.base / "signer"
        if not d.exists():
            signer_keygen(d)
        return load_signer(d)

    def key_dir(self, identity: str) -> Path:
        assert self.keys is not None
        return self.keys.keys[identity]

    # -- building -------------------------------------------------------------------

    def build(self) -> None:
        """Namespaces, links, addresses and a keyed topology copy; nothing running yet."""
        need("ip", "iproute2")
        need("wireguard-go", "wireguard-go")
        need("wg", "wireguard-tools")
        need("ping", "iputils-ping")
        names = sorted(
            n for n, i in _example_identities().items() if i in ("user", "service", "site")
        )
        self.keys = materialize_keys(EXAMPLE, self.base / "plant", names)
        self.edit_topology(_underlays)
        t = self.tag
        self.nets.add(self.gw_ns)
        self.nets.add(self.lan_ns)
        self.gw("sysctl", "-qw", "net.ipv4.ip_forward=1")
        self.gw("ip", "link", "add", f"zr{t}br", "type", "bridge")
        self.gw("ip", "addr", "add", f"{GW_UNDERLAY}/24", "dev", f"zr{t}br")
        self.gw("ip", "link", "set", f"zr{t}br", "up")
        self.nets.veth(
            (self.gw_ns, f"zr{t}zg"),
            (self.lan_ns, f"zr{t}zh"),
            LAN_GATEWAY,
            [f"{addr}/24" for addr in LAN_HOSTS.values()],
        )
        self.in_ns(self.lan_ns, "ip", "route", "add", "default", "via", "10.10.1.1")

    def add_user_ns(self, identity: str) -> User:
        """A namespace for `identity` on the 'internet' bridge; no route but the bridge."""
        i = len(self.users) + 1
        t = self.tag
        ns = self.nets.add(f"zr{t}u{i}")
        uside, gside = f"zr{t}u{i}", f"zr{t}u{i}g"
        address = f"10.98.0.{10 + i}"
        self.nets.veth((ns, uside), (self.gw_ns, gside), [f"{address}/24"], up=False)
        self.gw("ip", "link", "set", gside, "master", f"zr{t}br")
        self.gw("ip", "link", "set", gside, "up")
        self.in_ns(ns, "ip", "link", "set", uside, "up")
        user = User(identity, ns, address, f"zr{t}w{i}", self.base / f"user-{identity}.sock")
        self.users[identity] = user
        return user

    # -- topology -------------------------------------------------------------------

    def edit_topology(self, edit: Callable[[dict[str, Any]], None]) -> None:
        """Apply `edit` to the merged sections of the topology copy and write it back.

        `edit` gets {"sites": ..., "identities": ..., "conduits": ..., "tests": ...} (the
        parsed YAML, by section) and changes them in place.
        """
        files = {p: yaml.safe_load(p.read_text()) for p in sorted(self.topology.glob("*.yaml"))}
        sections: dict[str, Any] = {}
        for doc in files.values():
            for key in ("sites", "identities", "roles", "conduits", "tests"):
                if isinstance(doc, dict) and key in doc:
                    sections[key] = doc[key]
        edit(sections)
        for path, doc in files.items():
            path.write_text(yaml.safe_dump(doc, sort_keys=False, default_flow_style=None))

    def set_identity(self, name: str, **fields: Any) -> None:
        def edit(s: dict[str, Any]) -> None:
            s["identities"][name].update(fields)

        self.edit_topology(edit)

    def remove_identity(self, name: str) -> None:
        """Revoke `name` the hard way: gone from identities (and from policy tests)."""

        def edit(s: dict[str, Any]) -> None:
            del s["identities"][name]
            s["tests"][:] = [t for t in s["tests"] if name not in (t.get("from"), t.get("to"))]

        self.edit_topology(edit)

    def reload_gateway(self) -> None:
        assert self.gateway is not None
        self.gateway.signal(signal.SIGHUP)

    # -- running --------------------------------------------------------------------

    def start_gateway(self, rekey_interval: float = REKEY_INTERVAL) -> Proc:
        argv = tunneld(
            "--topology",
            str(self.topology),
            "--node",
            "plant-a",
            "--keys",
            str(self.key_dir("plant-a")),
            "--ifname",
            self.gw_ifname,
            "--status-socket",
            str(self.gw_sock),
            "--rekey-interval",
            str(rekey_interval),
        )
        self.gateway = self._spawn(self.gw_ns, argv, "gateway.log")
        wait_for(lambda: self.gw_status() is not None, 20, "gateway status socket", self.gateway)
        return self.gateway

    def gw_status(self) -> dict[str, Any] | None:
        return status(self.gw_sock)

    def issue_profile(
        self, identity: str, days: int = prof.DEFAULT_DAYS, topology: Path | None = None
    ) -> Path:
        """What `zonegate profile issue` writes, issued now from the current topology."""
        import topology as topo_mod

        loaded = topo_mod.load(topology or self.topology)
        bundle = load_public(self.key_dir(identity) / "identity.pub")
        profile = prof.issue(loaded.topology, identity, bundle, datetime.now(UTC), days)
        out = self.base / f"{identity}.profile.json"
        prof.write(profile, out, self.signer)
        return out

    def join(
        self,
        identity: str,
        profile: Path | None = None,
        keys: Path | None = None,
        rekey_interval: float = REKEY_INTERVAL,
    ) -> User:
        """Start `tunneld join` for `identity` in a new user namespace (does not wait)."""
        user = self.users.get(identity) or self.add_user_ns(identity)
        argv = tunneld(
            "join",
            str(profile or self.issue_profile(identity)),
            "--keys",
            str(keys or self.key_dir(identity)),
            "--ifname",
            user.ifname,
            "--status-socket",
            str(user.sock),
            "--rekey-interval",
            str(rekey_interval),
            "--signer",
            self.signer.public.fingerprint,
        )
        user.proc = self._spawn(user.ns, argv, f"join-{identity}.log")
        return user

    def wait_joined(self, user: User, timeout: float = 20) -> None:
        """Until the user has a PQ PSK with plant-a and the gateway holds the same one."""
        assert user.proc is not None and self.gateway is not None
        wait_for(
            lambda: user.rotations() >= 1,
            timeout,
            f"{user.identity}'s first PSK",
            user.proc,
            self.gateway,
        )
        wait_for(
            lambda: self.same_psk(user), 10, "the same PSK on both ends", user.proc, self.gateway
        )

    def same_psk(self, user: User) -> bool:
        """The user's PSK for plant-a is the gateway's PSK for the user (as digests)."""
        ours = psk_digest(user.ns, user.ifname, self.wg_key("plant-a"))
        theirs = psk_digest(self.gw_ns, self.gw_ifname, self.wg_key(user.identity))
        return ours is not None and ours == theirs

    def wg_key(self, identity: str) -> str:
        bundle = load_public(self.key_dir(identity) / "identity.pub")
        return base64.b64encode(bundle.wireguard).decode()

    def gw(self, *args: str, check: bool = True) -> str:
        return self.in_ns(self.gw_ns, *args, check=check)

    def in_ns(self, ns: str, *args: str, check: bool = True) -> str:
        return sh(*args, ns=ns, check=check)

    def spawn_gw(self, argv: list[str], log_name: str) -> Proc:
        """Run another daemon (policyd, a server) in the gateway namespace; stopped at close."""
        return self._spawn(self.gw_ns, argv, log_name)

    def spawn_lan(self, argv: list[str], log_name: str) -> Proc:
        return self._spawn(self.lan_ns, argv, log_name)

    def _spawn(self, ns: str, argv: list[str], log_name: str) -> Proc:
        p = Proc(self.nets, ns, argv, self.base / log_name)
        self._procs.append(p)
        return p

    def logs(self) -> str:
        return "\n".join(p.log_tail() for p in self._procs)

    # -- teardown -------------------------------------------------------------------

    def close(self) -> None:
        for p in reversed(self._procs):
            with suppress(Exception):
                p.stop()
        self.nets.close()
        for ifname in [self.gw_ifname, *(u.ifname for u in self.users.values())]:
            (UAPI_DIR / f"{ifname}.sock").unlink(missing_ok=True)


def _example_identities() -> dict[str, str]:
    import topology

    return {n: i.kind for n, i in topology.load(EXAMPLE).topology.identities.items()}


def _underlays(s: dict[str, Any]) -> None:
    s["sites"]["plant-a"]["gateway"]["underlay"] = GW_UNDERLAY
    s["sites"]["plant-b"]["gateway"]["underlay"] = NOBODY


@contextmanager
def plant_network(base: Path) -> Iterator[PlantNet]:
    """A built `PlantNet` (nothing running), removed on exit whatever happened."""
    if os.geteuid() != 0:
        pytest.fail("this test needs root (network namespaces); run scripts/test as root")
    net = PlantNet(base)
    try:
        net.build()
        yield net
    finally:
        net.close()


@pytest.fixture
def plant(tmp_path: Path) -> Iterator[PlantNet]:
    """Gateway, plant LAN and keys; start the gateway and join users in the test."""
    with plant_network(tmp_path) as net:
        yield net


@pytest.fixture
def joined_plant(plant: PlantNet) -> PlantNet:
    """`plant` with the gateway running and vendor-tech joined (PQ PSK on both ends)."""
    plant.start_gateway()
    plant.wait_joined(plant.join("vendor-tech"))
    return plant
