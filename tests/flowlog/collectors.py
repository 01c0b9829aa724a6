"""Collectors nobody here wrote, started by the tests: nfcapd/nfdump, rsyslogd, tshark.

Each runs in a namespace of its own (`CollectorNet`: loopback only, random name) so
ports never collide with other test runs; the exporter's socket is opened inside
that namespace (`in_netns`). Everything is stopped and removed in `close()`.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.flowlog.plant import run, wait_for
from tests.netns import Namespaces, stop

TOOLS = {
    "nfcapd": "nfdump",
    "nfdump": "nfdump",
    "rsyslogd": "rsyslog rsyslog-gnutls",
    "tshark": "tshark",
    "tcpdump": "tcpdump",
}


def require(*tools: str) -> None:
    """A missing collector fails the test and says what to install (never a skip)."""
    missing = [f"{t} (apt-get install {TOOLS[t]})" for t in tools if not shutil.which(t)]
    if missing:
        raise AssertionError("collector tests need: " + ", ".join(missing))


class CollectorNet:
    """One namespace with loopback up, and the collector processes started in it."""

    def __init__(self, tag: str) -> None:
        self.nets = Namespaces(tag)
        self.ns = self.nets.add(f"{tag}-col")

    def start(self, *cmd: str, log: Path) -> subprocess.Popen[str]:
        with open(log, "wb") as fh:
            return self.nets.spawn(self.ns, cmd, stdout=fh)

    def stop(self, proc: subprocess.Popen[str], sig: int = signal.SIGTERM) -> None:
        stop(proc, sig)

    def close(self) -> None:
        for proc in self.nets.procs:
            stop(proc)
        self.nets.close()

    def listening(self, port: int, udp: bool) -> bool:
        out = run("ss", "-Hlnu" if udp else "-Hlnt", ns=self.ns)
        return f":{port} " in out


# -- nfdump ----------------------------------------------------------------------


def start_nfcapd(net: CollectorNet, port: int, flowdir: Path) -> subprocess.Popen[str]:
    flowdir.mkdir(parents=True, exist_ok=True)
    proc = net.start(
        "nfcapd", "-p", str(port), "-b", "127.0.0.1", "-w", str(flowdir), "-t", "3600",
        "-B", str(16 * 1024 * 1024), log=flowdir / "nfcapd.log",
    )  # fmt: skip
    wait_for(lambda: net.listening(port, udp=True), what=f"nfcapd on udp {port}")
    return proc


def nfdump_flows(flowdir: Path) -> list[dict[str, Any]]:
    """Every flow nfcapd stored under flowdir, as nfdump's JSON objects."""
    files = sorted(p for p in flowdir.glob("nfcapd.*") if p.name[7:].isdigit())
    assert files, f"nfcapd wrote no file in {flowdir}: {(flowdir / 'nfcapd.log').read_text()}"
    out: list[dict[str, Any]] = []
    for f in files:
        text = subprocess.run(
            ["nfdump", "-r", str(f), "-o", "json", "-q"],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout.strip()
        if text:
            out.extend(json.loads(text if text.startswith("[") else f"[{text}]"))
    return out


# -- tshark ------------------------------------------------------------------------


class Capture:
    """tcpdump on the collector namespace's loopback, decoded afterwards by tshark."""

    def __init__(self, net: CollectorNet, bpf: str, path: Path) -> None:
        self.net, self.path = net, path
        self.proc = net.start(
            "tcpdump", "-i", "lo", "--immediate-mode", "-U", "-s", "0", "-w", str(path), bpf,
            log=path.with_suffix(".log"),
        )  # fmt: skip
        wait_for(
            lambda: b"listening" in path.with_suffix(".log").read_bytes(), what="tcpdump start"
        )

    def stop(self) -> None:
        time.sleep(0.3)
        self.net.stop(self.proc, signal.SIGINT)

    def ipfix(self, decode_as: str) -> list[dict[str, Any]]:
        """Every IPFIX data record in the capture, as tshark's `cflow` fields."""
        proc = subprocess.run(
            ["tshark", "-r", str(self.path), "-d", decode_as, "-T", "json", "-Y", "cflow"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, f"tshark failed: {proc.stderr}"
        flows: list[dict[str, Any]] = []
        for pkt in json.loads(proc.stdout or "[]", object_pairs_hook=_keep_repeats):
            layers = pkt["_source"]["layers"]
            cflows = layers["cflow"] if isinstance(layers["cflow"], list) else [layers["cflow"]]
            for cflow in cflows:
                for key, value in cflow.items():
                    if key.startswith("Set ") and "Data" not in key and "Template" not in key:
                        flows.extend(_flows_of_set(value))
        return flows


def _keep_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """tshark's JSON repeats a key for repeated fields: keep them all, as a list."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            prev = out[key]
            out[key] = [*prev, value] if isinstance(prev, list) else [prev, value]
        else:
            out[key] = value
    return out


def _flows_of_set(set_tree: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for key, value in set_tree.items():
        if key.startswith("Flow "):
            flow = dict(value)
            flow["_template"] = int(set_tree.get("cflow.flowset_id", 0))
            out.append(flow)
    return out


def enterprise_values(flow: dict[str, Any]) -> list[bytes]:
    """The raw values of a tshark-decoded flow's enterprise elements, in template order
    (tshark leaves out empty variable-length ones)."""
    values = flow.get("cflow.enterprise_private_entry", [])
    if isinstance(values, str):
        values = [values]
    return [bytes.fromhex(v.replace(":", "")) for v in values]


def enterprise_strings(flow: dict[str, Any]) -> list[str]:
    return [v.decode() for v in enterprise_values(flow)]


# -- rsyslog with TLS ----------------------------------------------------------------


def make_pki(directory: Path, server_name: str) -> dict[str, Path]:
    """A test CA and a server certificate for `server_name` (and 127.0.0.1), as PEM files."""
    now = datetime.datetime.now(datetime.UTC)

    def cert(
        subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name, signer: Any, ca: bool
    ) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if ca:
            builder = builder.add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), True
            )
        else:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName(server_name),
                        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    ]
                ),
                critical=False,
            ).add_extension(x509.ExtendedKeyUsage([x509.OID_SERVER_AUTH]), critical=False)
        return builder.sign(signer, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "zonegate test CA")])
    ca = cert("zonegate test CA", ca_key, ca_name, ca_key, ca=True)
    key = ec.generate_private_key(ec.SECP256R1())
    server = cert(server_name, key, ca_name, ca_key, ca=False)
    paths = {n: directory / f"{n}.pem" for n in ("ca", "cert", "key")}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    paths["key"].chmod(0o600)
    return paths


RSYSLOG_CONF = """\
global(
  workDirectory="{work}"
  DefaultNetstreamDriver="gtls"
  DefaultNetstreamDriverCAFile="{ca}"
  DefaultNetstreamDriverCertFile="{cert}"
  DefaultNetstreamDriverKeyFile="{key}"
)
module(load="imtcp" StreamDriver.Name="{driver}" StreamDriver.Mode="{mode}"
       StreamDriver.AuthMode="anon" MaxSessions="10")
input(type="imtcp" address="127.0.0.1" port="{port}")
template(name="zgtest" type="list") {{
  property(name="app-name") constant(value=" ")
  property(name="msgid") constant(value=" ")
  property(name="pri") constant(value=" ")
  property(name="msg" droplastlf="on") constant(value="\\n")
}}
action(type="omfile" file="{out}" template="zgtest")
"""


def start_rsyslogd(
    net: CollectorNet, port: int, directory: Path, pki: dict[str, Path] | None
) -> tuple[subprocess.Popen[str], Path]:
    """rsyslogd in the foreground, TLS (gtls) when `pki` is given, else plain TCP."""
    work = directory / "rsyslog-work"
    work.mkdir(parents=True, exist_ok=True)
    out = directory / "received.log"
    conf = directory / "rsyslog.conf"
    p = pki or {"ca": Path("/dev/null"), "cert": Path("/dev/null"), "key": Path("/dev/null")}
    text = RSYSLOG_CONF.format(
        work=work, ca=p["ca"], cert=p["cert"], key=p["key"], port=port, out=out,
        driver="gtls" if pki else "ptcp", mode=1 if pki else 0,
    )  # fmt: skip
    if pki is None:
        text = "\n".join(line for line in text.splitlines() if "DefaultNetstream" not in line)
    conf.write_text(text)
    proc = net.start(
        "rsyslogd", "-n", "-f", str(conf), "-i", str(directory / "rsyslogd.pid"),
        log=directory / "rsyslogd.log",
    )  # fmt: skip
    wait_for(
        lambda: net.listening(port, udp=False) or proc.poll() is not None,
        what=f"rsyslogd on tcp {port}",
    )
    assert proc.poll() is None, (directory / "rsyslogd.log").read_text()
    return proc, out


def received_lines(out: Path) -> list[tuple[str, str, str, str]]:
    """(app-name, msgid, pri, msg) of every message rsyslogd wrote."""
    if not out.exists():
        return []
    lines = []
    for line in out.read_text(encoding="utf-8").splitlines():
        app, msgid, pri, msg = line.split(" ", 3)
        lines.append((app, msgid, pri, msg))
    return lines
