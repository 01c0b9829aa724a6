"""Tunnel profiles: what a remote user's machine needs to join, and nothing secret.

`zonegate profile issue` (network team, from the topology) writes one for an identity:
its overlay address, the digest of its public key bundle, and per gateway it can reach
the endpoint, the gateway's pinned public bundle, the routes (exactly the zones and
assets its conduits reach there, plus the gateway's overlay address for the control
API) and an expiry, and signs it with the network team's profile-signing key
(tunneld/signing.py). `tunneld join PROFILE --keys DIR --signer FINGERPRINT` (the user)
checks the signature against the signer fingerprint given out of band, then turns it
into a node plan with one initiator peer per gateway. The user's private keys never
leave DIR; the profile names only public keys, so it holds no secret (0644), and the
signature is what makes mailing it in the clear safe: a swapped profile does not verify.

Profile expiry is enforced by the joining client only. What actually admits or refuses
a user is the gateway's topology (the identity, its pinned keys and validity window),
so cutting someone off means changing the topology, not the profile. Format:
docs/remote-access.md, section "Tunnel profiles".
"""

from __future__ import annotations

import argparse
import base64
import ipaddress
import json
import os
import socket
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any

from policyd.conventions import API_PORT
from topology.model import Identity, TargetKind, Topology
from tunneld.keys import KeyFileError, PublicBundle, load_public, parse_public
from tunneld.plan import NodePlan, PeerPlan, PlanError, site_bundle, user_suite
from tunneld.signing import (
    Signer,
    SignerPublic,
    SigningError,
    load_signer,
    normalise,
    signer_keygen,
)

FORMAT = "zonegate-profile"
VERSION = 1
DEFAULT_DAYS = 30
EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


class ProfileError(Exception):
    """A profile can not be issued or used; the message says why and what to do."""


@dataclass(frozen=True)
class GatewayEntry:
    site: str
    endpoint: str  # underlay host:port (udp: WireGuard, tcp: handshake)
    overlay: IPv4Address
    kem: str  # ephemeral KEM of the pair, as the gateway computes it
    bundle: PublicBundle  # the gateway's pinned public keys
    routes: tuple[IPv4Network, ...]  # allowed IPs and routes through this gateway
    api: str  # control API URL, reached through the tunnel

    def to_dict(self) -> dict[str, object]:
        return {
            "site": self.site,
            "endpoint": self.endpoint,
            "overlay": str(self.overlay),
            "kem": self.kem,
            "public_bundle": self.bundle.to_dict(),
            "routes": [str(r) for r in self.routes],
            "api": self.api,
        }


@dataclass(frozen=True)
class Profile:
    identity: str
    kind: str
    overlay: IPv4Address
    keys_digest: str  # PublicBundle.digest() of the identity's identity.pub
    issued: datetime
    expires: datetime
    gateways: tuple[GatewayEntry, ...]
    # Fingerprint of the key whose signature verified when parsed; None: unsigned.
    signed_by: str | None = field(default=None, compare=False)

    def to_json(self) -> str:
        """The unsigned body (what the signature covers, see `signed_json`)."""
        return json.dumps(self.body(), indent=2) + "\n"

    def signed_json(self, signer: Signer) -> str:
        body = self.body()
        ed, ml = signer.sign(canonical(body))
        doc = {
            **body,
            "signature": {
                "signer": signer.public.to_dict(),
                "ed25519": base64.b64encode(ed).decode(),
                "ml_dsa_65": base64.b64encode(ml).decode(),
            },
        }
        return json.dumps(doc, indent=2) + "\n"

    def body(self) -> dict[str, object]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "identity": self.identity,
            "kind": self.kind,
            "overlay": str(self.overlay),
            "keys_digest": self.keys_digest,
            "issued": _iso(self.issued),
            "expires": _iso(self.expires),
            "gateways": [g.to_dict() for g in self.gateways],
        }


def canonical(body: dict[str, object]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


# -- issuing (pure) ----------------------------------------------------------------


def reachable(topo: Topology, ident: Identity) -> dict[str, tuple[IPv4Network, ...]]:
    """Per site: the zone CIDRs (zone targets) and asset /32s (asset targets) that any
    conduit admitting `ident` leads to, collapsed. Terms (schedule, approval, emergency)
    do not matter here: policyd enforces them; a route only makes a grant usable."""
    nets: dict[str, list[IPv4Network]] = {}
    for c in topo.conduits.values():
        if not c.sources.admits(ident):
            continue
        if c.target.kind is TargetKind.ZONE:
            zone = topo.zone(c.target.ref)
            if zone is not None:
                nets.setdefault(c.target.site, []).append(zone.cidr)
        else:
            asset = topo.asset(c.target.ref)
            if asset is not None:
                nets.setdefault(c.target.site, []).append(IPv4Network(f"{asset.address}/32"))
    return {site: tuple(ipaddress.collapse_addresses(n)) for site, n in sorted(nets.items())}


def issue(
    topo: Topology, name: str, user_bundle: PublicBundle, now: datetime, days: int = DEFAULT_DAYS
) -> Profile:
    """The profile for identity `name`, whose machine made `user_bundle` (identity.pub)."""
    ident = topo.identities.get(name)
    if ident is None:
        users = sorted(n for n, i in topo.identities.items() if i.kind != "site")
        raise ProfileError(
            f"no identity {name!r} in the topology (users and services: {', '.join(users)})"
        )
    if ident.kind not in ("user", "service"):
        raise ProfileError(
            f"identity {name} is a {ident.kind} gateway; profiles are for user and service "
            f"identities (a gateway runs: tunneld --topology PATH --node SITE)"
        )
    if ident.valid_from is not None and now < ident.valid_from:
        raise ProfileError(f"identity {name} is not valid until {_iso(ident.valid_from)}")
    if ident.valid_until is not None and now >= ident.valid_until:
        raise ProfileError(
            f"identity {name} expired at {_iso(ident.valid_until)}; extend valid_until in "
            f"the topology first"
        )
    if days <= 0:
        raise ProfileError("--days must be at least 1")
    if not ident.keys:
        raise ProfileError(
            f"the topology pins no keys for {name}: commit the user's identity.pub next to "
            f"the topology and add 'keys: PATH/identity.pub' to identity {name}, then issue "
            f"the profile again"
        )
    try:
        pinned = load_public(ident.keys)
    except KeyFileError as exc:
        raise ProfileError(f"identity {name}: {exc}") from None
    if pinned != user_bundle:
        raise ProfileError(
            f"the public keys given are not the ones the topology pins for {name} "
            f"({ident.keys}); either the user made new keys (update keys: in the topology) "
            f"or this is the wrong file"
        )
    if ident.overlay is None:
        raise ProfileError(f"identity {name} has no overlay address")
    routes = reachable(topo, ident)
    if not routes:
        raise ProfileError(f"no conduit admits {name}: it could reach no gateway")
    gateways = []
    for site_name, nets in routes.items():
        site = topo.sites[site_name]
        try:
            gw_bundle = site_bundle(topo, site)
        except PlanError as exc:
            raise ProfileError(f"gateway of {site_name}: {exc}") from None
        overlay = IPv4Network(f"{site.gateway.overlay}/32")
        gateways.append(
            GatewayEntry(
                site=site_name,
                endpoint=f"{site.gateway.underlay}:{site.gateway.port}",
                overlay=site.gateway.overlay,
                kem=user_suite(topo, site, ident, user_bundle.kem),
                bundle=gw_bundle,
                routes=tuple(ipaddress.collapse_addresses([overlay, *nets])),
                api=f"http://{site.gateway.overlay}:{API_PORT}",
            )
        )
    now = now.astimezone(UTC).replace(microsecond=0)
    expires = now + timedelta(days=days)
    if ident.valid_until is not None:
        expires = min(expires, ident.valid_until)
    return Profile(
        identity=name,
        kind=ident.kind,
        overlay=ident.overlay,
        keys_digest=user_bundle.digest(),
        issued=now,
        expires=expires,
        gateways=tuple(gateways),
    )


# -- reading and using -------------------------------------------------------------


def parse(text: str, where: str) -> Profile:
    """Parse and check a profile's structure; ProfileError says what is wrong where."""
    try:
        doc = json.loads(text)
    except ValueError:
        raise ProfileError(f"{where}: not JSON; is this a tunnel profile?") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ProfileError(f"{where}: not a {FORMAT} file")
    if doc.get("version") != VERSION:
        raise ProfileError(
            f"{where}: profile version {doc.get('version')!r}; this tunneld reads version "
            f"{VERSION} (upgrade tunneld or ask for a new profile)"
        )
    signed_by = _verify(doc, where)
    try:
        gateways = tuple(_gateway(g, f"{where}: gateways[{i}]") for i, g in enumerate(_list(doc)))
        return Profile(
            identity=_str(doc, "identity", where),
            kind=_str(doc, "kind", where),
            overlay=_addr(doc, "overlay", where),
            keys_digest=_str(doc, "keys_digest", where),
            issued=_time(doc, "issued", where),
            expires=_time(doc, "expires", where),
            gateways=gateways,
            signed_by=signed_by,
        )
    except ValueError as exc:
        raise ProfileError(f"{where}: {exc}") from None


def _verify(doc: dict[str, Any], where: str) -> str | None:
    """The signer's fingerprint if the profile is signed and both signatures verify;
    None if unsigned; ProfileError if a signature is there and does not verify."""
    sig = doc.pop("signature", None)
    if sig is None:
        return None
    try:
        if not isinstance(sig, dict):
            raise SigningError("'signature' is not an object")
        signer = SignerPublic.from_dict(sig.get("signer"), "signature.signer")
        ed, ml = (
            base64.b64decode(str(sig.get(k)), validate=True) for k in ("ed25519", "ml_dsa_65")
        )
    except (SigningError, ValueError) as exc:
        raise ProfileError(f"{where}: malformed signature ({exc})") from None
    if not signer.verify(canonical(doc), ed, ml):
        raise ProfileError(
            f"{where}: the signature does not verify: the profile was changed after it was "
            f"issued (or damaged); do not use it, ask your network team for a new one"
        )
    return signer.fingerprint


def _list(doc: dict[str, Any]) -> list[Any]:
    gws = doc.get("gateways")
    if not isinstance(gws, list) or not gws:
        raise ValueError("'gateways' must be a non-empty list")
    return gws


def _str(doc: dict[str, Any], key: str, where: str) -> str:
    value = doc.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{where}: '{key}' missing or not a string")
    return value


def _addr(doc: dict[str, Any], key: str, where: str) -> IPv4Address:
    try:
        return IPv4Address(_str(doc, key, where))
    except ValueError:
        raise ValueError(f"{where}: '{key}' is not an IPv4 address") from None


def _net(text: str, where: str) -> IPv4Network:
    try:
        return IPv4Network(text)
    except ValueError:
        raise ValueError(f"{where}: route {text!r} is not an IPv4 network") from None


def _time(doc: dict[str, Any], key: str, where: str) -> datetime:
    try:
        t = datetime.fromisoformat(_str(doc, key, where).replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{where}: '{key}' is not an ISO 8601 time") from None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _gateway(g: object, where: str) -> GatewayEntry:
    if not isinstance(g, dict):
        raise ValueError(f"{where}: not an object")
    routes = g.get("routes")
    if not isinstance(routes, list) or not all(isinstance(r, str) for r in routes):
        raise ValueError(f"{where}: 'routes' must be a list of CIDRs")
    try:
        bundle = parse_public(g.get("public_bundle"), f"{where}: public_bundle")
    except KeyFileError as exc:
        raise ValueError(str(exc)) from None
    endpoint = _str(g, "endpoint", where)
    host, _, port = endpoint.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{where}: endpoint {endpoint!r} is not host:port")
    return GatewayEntry(
        site=_str(g, "site", where),
        endpoint=endpoint,
        overlay=_addr(g, "overlay", where),
        kem=_str(g, "kem", where),
        bundle=bundle,
        routes=tuple(_net(r, where) for r in routes),
        api=_str(g, "api", where),
    )


def load(path: Path | str, signer: str | None = None) -> Profile:
    """Read a profile; with `signer` (a fingerprint), refuse it unless that key signed it."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ProfileError(f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileError(f"{path}: {exc}") from None
    profile = parse(text, str(path))
    if signer is not None:
        if profile.signed_by is None:
            raise ProfileError(
                f"{path} is not signed; only signed profiles are used (ask your network "
                f"team for one issued with: zonegate profile issue ... --signing-key DIR)"
            )
        if normalise(profile.signed_by) != normalise(signer):
            raise ProfileError(
                f"{path} is signed by {profile.signed_by}, not by the signer you were given "
                f"({normalise(signer)}); it may have been swapped in transit: do not use it, "
                f"call your network team"
            )
    return profile


def check_usable(profile: Profile, own: PublicBundle, now: datetime, keys_dir: str) -> None:
    """Refuse an expired profile, or keys that are not the ones it was issued for."""
    if now >= profile.expires:
        raise ProfileError(
            f"profile for {profile.identity} expired at {_iso(profile.expires)}; ask your "
            f"network team for a new one (zonegate profile issue ... --identity "
            f"{profile.identity})"
        )
    if own.digest() != profile.keys_digest:
        raise ProfileError(
            f"the keys in {keys_dir} are not the ones this profile was issued for "
            f"(identity {profile.identity}); use the key directory whose identity.pub you "
            f"sent, or send this one's identity.pub and ask for a new profile"
        )


Resolver = Callable[[str, int], str]


def resolve_ipv4(host: str, port: int) -> str:
    """WireGuard's UAPI takes addresses, not names: resolve a gateway's host once."""
    try:
        return str(IPv4Address(host))
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_DGRAM)
    except OSError as exc:
        raise ProfileError(f"cannot resolve gateway host {host}: {exc}") from None
    return str(infos[0][4][0])


def join_plan(profile: Profile, own: PublicBundle, resolve: Resolver = resolve_ipv4) -> NodePlan:
    """The user node's plan: one initiator peer per gateway, no listener, fixed overlay."""
    peers = []
    for g in profile.gateways:
        host, _, port = g.endpoint.rpartition(":")
        peers.append(
            PeerPlan(
                name=g.site,
                bundle=g.bundle,
                endpoint=f"{resolve(host, int(port))}:{port}",
                allowed_ips=tuple(str(r) for r in g.routes),
                routes=g.routes,
                role="initiator",
                kem=g.kem,
                kind="site",
            )
        )
    return NodePlan(
        name=profile.identity,
        bundle=own,
        listen_port=None,
        address=IPv4Interface(f"{profile.overlay}/32"),
        peers=tuple(peers),
        expires=profile.expires,
    )


def describe(profile: Profile) -> str:
    signed = (
        f"signed by {profile.signed_by} (signature valid; compare this fingerprint with "
        f"the one your network team gave you)"
        if profile.signed_by
        else "NOT SIGNED: tunneld join will refuse it"
    )
    lines = [
        f"profile for {profile.kind} {profile.identity}, overlay {profile.overlay}",
        f"issued {_iso(profile.issued)}, expires {_iso(profile.expires)}",
        signed,
        f"keys {profile.keys_digest}",
    ]
    for g in profile.gateways:
        lines.append(
            f"gateway {g.site} at {g.endpoint} ({g.kem}), API {g.api}, "
            f"routes {', '.join(str(r) for r in g.routes)}, key fingerprint {g.bundle.fingerprint}"
        )
    return "\n".join(lines)


def write(profile: Profile, out: Path, signer: Signer) -> None:
    """Signed, atomic replace, 0644: a profile holds no secret (see the module docstring)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(profile.signed_json(signer))
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# -- command line: zonegate profile issue | show ---------------------------------------


def add_profile_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="profile_action", required=True, metavar="ACTION")
    p = sub.add_parser(
        "issue",
        help="write a tunnel profile for a user or service identity",
        description="Write the tunnel profile for one identity: gateways it can reach, "
        "their pinned keys, its overlay address, routes, expiry. No secrets in it.",
    )
    p.add_argument("path", help="a topology file or a directory of them")
    p.add_argument("--identity", required=True, help="the user or service identity")
    p.add_argument(
        "--pubkeys",
        required=True,
        type=Path,
        help="the identity.pub the user's 'tunneld keygen DIR' made (checked against keys:)",
    )
    p.add_argument("--out", required=True, type=Path, help="where to write the profile")
    p.add_argument(
        "--signing-key",
        required=True,
        type=Path,
        help="the network team's profile-signing key directory (zonegate profile "
        "signer-keygen DIR); users check its fingerprint when they join",
    )
    p.add_argument(
        "--days",
        type=int,
        default=DEFAULT_DAYS,
        help=f"expire after N days, or at the identity's valid_until if earlier "
        f"(default {DEFAULT_DAYS})",
    )
    p = sub.add_parser("show", help="print what a profile contains, and who signed it")
    p.add_argument("profile", type=Path)
    p = sub.add_parser(
        "signer-keygen",
        help="create the network team's profile-signing key (Ed25519 + ML-DSA-65)",
        description="Create DIR/signer.key (0600) and DIR/signer.pub and print the signer "
        "fingerprint. Give that fingerprint to users out of band (phone, paper): "
        "tunneld join --signer FINGERPRINT refuses profiles signed by any other key.",
    )
    p.add_argument("dir", type=Path)


def profile_command(args: argparse.Namespace) -> int:
    if args.profile_action == "signer-keygen":
        try:
            pub = signer_keygen(args.dir)
        except SigningError as exc:
            print(f"zonegate profile signer-keygen: {exc}", file=sys.stderr)
            return EXIT_FAIL
        print(f"wrote {args.dir}/ (private, 0700)\nsigner fingerprint {pub.fingerprint}")
        print("give this fingerprint to every user out of band (tunneld join --signer ...)")
        return EXIT_OK
    if args.profile_action == "show":
        try:
            print(describe(load(args.profile)))
        except ProfileError as exc:
            print(f"zonegate profile: {exc}", file=sys.stderr)
            return EXIT_FAIL
        return EXIT_OK
    import topology

    try:
        loaded = topology.load(args.path)
    except topology.TopologyError as exc:
        for d in exc.diagnostics:
            print(d, file=sys.stderr)
        return EXIT_FAIL
    try:
        signer = load_signer(args.signing_key)
        bundle = load_public(args.pubkeys)
        prof = issue(loaded.topology, args.identity, bundle, datetime.now(UTC), args.days)
        write(prof, args.out, signer)
        prof = load(args.out, signer.public.fingerprint)
    except (KeyFileError, ProfileError, SigningError) as exc:
        print(f"zonegate profile issue: {exc}", file=sys.stderr)
        return EXIT_FAIL
    print(f"wrote {args.out}\n{describe(prof)}")
    return EXIT_OK
