"""The sans-I/O handshake state machine: bytes in, bytes out plus events.

One `Endpoint` serves one node and all its peers. It never touches sockets, clocks or
the OS random generator: the caller feeds received messages to `receive()`, calls
`poll()` when `next_deadline()` has passed, and acts on the returned events (send these
bytes, install this PSK, replace that PSK by a random one). Two endpoints wired
together in memory therefore run the full protocol in a unit test.

Every check that can reject a message runs before any state is written, so a rejected
message (malformed, replayed, reflected, tampered, rate limited) leaves the endpoint
exactly as it was; `fingerprint()` exposes the state so tests can prove it.

A responder also knows identities it must refuse (a user outside its validity window,
or without a conduit into this site). It answers their InitHello with an authenticated
`Refused`, and any InitHello it can not attribute with an unauthenticated one that is
the same for every sender, so the initiator can say why it gets no tunnel while a
prober learns nothing about who is known here (docs/handshake.md section 9a).
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from tunneld import messages as m
from tunneld import transcript as t
from tunneld.handshake_types import (
    Clock,
    Event,
    LocalIdentity,
    PeerConfig,
    PskExpired,
    PskReady,
    Random,
    Refusal,
    RefusedIdentity,
    Rejected,
    Role,
    Send,
    Timeout,
)
from tunneld.hybrid import HybridCiphertext, HybridPrivateKey, HybridPublicKey
from tunneld.kem import PARAMS, KemBackend, KemError
from tunneld.timers import Timers, TokenBucket, backoff


@dataclass
class _Initiating:
    index: int
    eph: HybridPrivateKey = field(repr=False)
    k_static_resp: bytes = field(repr=False)
    h1: bytes
    msg1: bytes
    attempts: int
    retransmit_at: float
    started: float
    stage: Literal["hello", "conf"] = "hello"
    peer_index: int = 0
    keys: t.SessionKeys | None = field(default=None, repr=False)
    h3: bytes = b""
    msg3: bytes = b""
    conf_sends: int = 0


@dataclass
class _Responding:
    index: int
    peer_index: int
    keys: t.SessionKeys = field(repr=False)
    h3: bytes
    created: float
    timestamp: int  # the InitHello's: becomes last_init_ts only once confirmed
    hello: bytes  # the InitHello as received: an identical copy gets `answer` again
    answer: bytes


MAX_PENDING = 16  # answered, unconfirmed InitHellos kept per peer (bounded by the bucket)


@dataclass
class _Completed:
    index: int
    msg3: bytes
    msg4: bytes


@dataclass(frozen=True)
class _RefusedPeer:
    name: str
    code: int
    mac_in: bytes
    mac_out: bytes


@dataclass
class _Peer:
    cfg: PeerConfig
    mac_in: bytes
    mac_out: bytes
    h0: bytes
    bucket: TokenBucket
    next_rekey_at: float = 0.0
    psk_installed_at: float | None = None
    psk_expired: bool = True
    initiating: _Initiating | None = None
    # responder: answered InitHellos awaiting InitConf, by our index. Several may wait:
    # a forged or replayed hello then never displaces the genuine one.
    responding: dict[int, _Responding] = field(default_factory=dict)
    completed: _Completed | None = None
    last_init_ts: int = 0  # responder: timestamp of the newest *confirmed* handshake
    last_sent_ts: int = 0  # our newest timestamp sent (InitHello or RekeyRequest)
    last_nudge_ts: int = 0  # initiator: newest accepted RekeyRequest timestamp
    nudge_at: float = 0.0
    nudges: int = 0
    nudge_honored: float = float("-inf")


class Endpoint:
    """All handshakes of one node (see module docstring)."""

    def __init__(
        self,
        local: LocalIdentity,
        peers: Iterable[PeerConfig],
        *,
        backend: KemBackend,
        clock: Clock,
        rng: Random,
        timers: Timers | None = None,
    ) -> None:
        self.local = local
        self.backend = backend
        self.clock = clock
        self.rng = rng
        self.timers = timers or Timers()
        self._local_id = local.id
        self._peers: dict[str, _Peer] = {}
        self._by_id: dict[bytes, str] = {}
        self._sessions: dict[int, str] = {}
        self._refused: dict[bytes, _RefusedPeer] = {}
        # MAC1 key for senders we can not attribute: the check costs the same either way.
        self._no_key = t.sha3(t.PROTOCOL, b" no peer", self._local_id)
        now = clock.monotonic()
        for cfg in peers:
            self.add_peer(cfg, now)

    # -- configuration ------------------------------------------------------------

    def add_peer(self, cfg: PeerConfig, now: float | None = None) -> None:
        now = self.clock.monotonic() if now is None else now
        pid = cfg.id
        if pid == self._local_id:
            raise ValueError(f"peer {cfg.name} has our own identity key")
        dh = self.local.static.static_dh(cfg.static.x_public)
        if cfg.role == "initiator":
            ids = (self._local_id, pid, self.local.wg_public, cfg.wg_public)
            statics = (self.local.static.digest, cfg.static.digest)
        else:
            ids = (pid, self._local_id, cfg.wg_public, self.local.wg_public)
            statics = (cfg.static.digest, self.local.static.digest)
        h0 = t.prologue(cfg.kem, *ids, *statics)
        tm = self.timers
        start = now + tm.start_jitter * self._unit()
        self._peers[cfg.name] = _Peer(
            cfg=cfg,
            mac_in=t.mac1_key(dh, pid, self._local_id),
            mac_out=t.mac1_key(dh, self._local_id, pid),
            h0=h0,
            bucket=TokenBucket(tm.init_burst, tm.init_rate, float(tm.init_burst), now),
            next_rekey_at=start,
            nudge_at=start,
        )
        self._by_id[pid] = cfg.name

    def set_refused(self, identities: Iterable[RefusedIdentity]) -> None:
        """Replace the table of known-but-refused identities (one static DH each)."""
        table: dict[bytes, _RefusedPeer] = {}
        for r in identities:
            rid = r.id
            if rid == self._local_id or rid in self._by_id:
                continue
            dh = self.local.static.static_dh(r.static.x_public)
            table[rid] = _RefusedPeer(
                r.name,
                r.code,
                mac_in=t.mac1_key(dh, rid, self._local_id),
                mac_out=t.mac1_key(dh, self._local_id, rid),
            )
        self._refused = table

    def refused(self) -> dict[str, int]:
        return {r.name: r.code for r in self._refused.values()}

    def remove_peer(self, name: str) -> None:
        p = self._peers.pop(name)
        self._by_id.pop(p.cfg.id, None)
        self._sessions = {i: n for i, n in self._sessions.items() if n != name}

    def peers(self) -> list[str]:
        return list(self._peers)

    # -- public API ---------------------------------------------------------------

    def receive(self, data: bytes) -> list[Event]:
        """Process one received message; never raises for bad input."""
        try:
            msg = m.decode(data)
        except m.DecodeError as exc:
            return [Rejected(None, exc.reason)]
        try:
            if isinstance(msg, m.InitHello):
                return self._on_init_hello(msg, data)
            if isinstance(msg, m.RespHello):
                return self._on_resp_hello(msg, data)
            if isinstance(msg, m.InitConf):
                return self._on_init_conf(msg, data)
            if isinstance(msg, m.RespConf):
                return self._on_resp_conf(msg, data)
            if isinstance(msg, m.Refused):
                return self._on_refused(msg, data)
            return self._on_rekey_request(msg, data)
        except _Reject as r:
            out: list[Event] = [Rejected(r.peer, r.reason)]
            if r.reply is not None:
                out.append(Send(r.peer or "", r.reply, reply=True))
            return out

    def poll(self) -> list[Event]:
        """Run every timer that is due."""
        now = self.clock.monotonic()
        out: list[Event] = []
        for p in self._peers.values():
            out.extend(self._poll_peer(p, now))
        return out

    def next_deadline(self) -> float:
        deadlines: list[float] = []
        tm = self.timers
        for p in self._peers.values():
            if p.psk_installed_at is not None and not p.psk_expired:
                deadlines.append(p.psk_installed_at + tm.psk_lifetime)
            if p.cfg.role == "initiator":
                if p.initiating is not None:
                    deadlines.append(p.initiating.retransmit_at)
                else:
                    deadlines.append(p.next_rekey_at)
            else:
                for r in p.responding.values():
                    deadlines.append(r.created + tm.responder_timeout)
                if self._wants_nudge(p, None):
                    deadlines.append(p.nudge_at)
        return min(deadlines, default=self.clock.monotonic() + 3600.0)

    def rekey_now(self, name: str) -> None:
        """Start a new handshake at the next poll (initiator side only)."""
        p = self._peers[name]
        if p.cfg.role == "initiator":
            self._abort(p)
            p.next_rekey_at = self.clock.monotonic()

    def psk_age(self, name: str) -> float | None:
        p = self._peers[name]
        if p.psk_installed_at is None or p.psk_expired:
            return None
        return self.clock.monotonic() - p.psk_installed_at

    def role(self, name: str) -> Role:
        return self._peers[name].cfg.role

    def fingerprint(self) -> tuple[object, ...]:
        """Every mutable field, as plain values: equal before and after a rejected input."""
        rows: list[object] = [tuple(sorted(self._sessions.items()))]
        for name in sorted(self._peers):
            p = self._peers[name]
            i, c = p.initiating, p.completed
            rows.append(
                (
                    name,
                    p.next_rekey_at,
                    p.psk_installed_at,
                    p.psk_expired,
                    p.last_init_ts,
                    p.last_sent_ts,
                    p.last_nudge_ts,
                    p.nudge_at,
                    p.nudges,
                    p.nudge_honored,
                    (p.bucket.tokens, p.bucket.updated),
                    None
                    if i is None
                    else (i.index, i.stage, i.attempts, i.retransmit_at, i.peer_index, i.msg3),
                    tuple(
                        (r.index, r.peer_index, r.h3, r.created, r.timestamp)
                        for r in p.responding.values()
                    ),
                    None if c is None else (c.index, c.msg3, c.msg4),
                )
            )
        return tuple(rows)

    # -- helpers ------------------------------------------------------------------

    def _unit(self) -> float:
        return int.from_bytes(self.rng(4), "big") / 2**32

    def _new_index(self) -> int:
        while True:
            idx = int.from_bytes(self.rng(4), "big")
            if idx and idx not in self._sessions:
                return idx

    def _timestamp(self, p: _Peer) -> int:
        return max(self.clock.time_ns(), p.last_sent_ts + 1)

    def _session_peer(self, index: int, what: str) -> _Peer:
        name = self._sessions.get(index)
        if name is None:
            raise _Reject(None, f"{what}: unknown session index (stale, replayed or forged)")
        return self._peers[name]

    @staticmethod
    def _check_mac(p: _Peer, msg: m.Message, what: str) -> None:
        if not t.mac1_ok(p.mac_in, m.body(msg), msg.mac1):
            raise _Reject(p.cfg.name, f"{what}: bad MAC1 (tampered, reflected or wrong key)")

    def _check_clock(self, name: str, what: str, timestamp: int) -> None:
        skew = (timestamp - self.clock.time_ns()) / 1e9
        if abs(skew) > self.timers.clock_skew:
            side = "ahead of" if skew > 0 else "behind"
            raise _Reject(
                name,
                f"{what}: timestamp {abs(skew):.0f} s {side} our clock (more than "
                f"{self.timers.clock_skew:.0f} s: replayed, forged, or a clock needs NTP)",
            )

    def _abort(self, p: _Peer) -> None:
        if p.initiating is not None:
            self._sessions.pop(p.initiating.index, None)
            p.initiating = None

    # -- initiator ----------------------------------------------------------------

    def _start(self, p: _Peer, now: float, attempts: int) -> list[Event]:
        self._abort(p)
        cfg = p.cfg
        eph = HybridPrivateKey.generate(self.backend, cfg.kem, self.rng)
        k_sr, sct = cfg.static.encapsulate(self.rng)
        index = self._new_index()
        ts = self._timestamp(p)
        hello = m.InitHello(
            eph_kem=PARAMS[cfg.kem].wire_id,
            static_kem=PARAMS[cfg.static.kem].wire_id,
            sender=index,
            initiator=self._local_id,
            responder=cfg.id,
            timestamp=ts,
            epk_x=eph.x_public,
            epk_m=eph.kem_public,
            sct_x=sct.x,
            sct_m=sct.m,
        )
        body = m.body(hello)
        data = body + t.mac1(p.mac_out, body)
        p.last_sent_ts = ts
        p.initiating = _Initiating(
            index=index,
            eph=eph,
            k_static_resp=k_sr,
            h1=t.mix(p.h0, body),
            msg1=data,
            attempts=attempts,
            retransmit_at=now + backoff(self.timers, attempts, self._unit()),
            started=now,
        )
        self._sessions[index] = cfg.name
        return [Send(cfg.name, data, reply=False)]

    def _on_resp_hello(self, msg: m.RespHello, data: bytes) -> list[Event]:
        p = self._session_peer(msg.receiver, "RespHello")
        name = p.cfg.name
        st = p.initiating
        if st is None or st.index != msg.receiver:
            raise _Reject(name, "RespHello: session is not ours to initiate (reflected?)")
        if st.stage != "hello":
            raise _Reject(name, "RespHello: already answered (duplicate or replayed)")
        if msg.eph_kem != PARAMS[p.cfg.kem].wire_id:
            raise _Reject(name, "RespHello: ephemeral KEM differs from the one offered")
        if msg.static_kem != PARAMS[self.local.static.kem].wire_id:
            raise _Reject(name, "RespHello: static KEM is not our identity's KEM")
        self._check_mac(p, msg, "RespHello")
        try:
            k_e = st.eph.decapsulate(HybridCiphertext(msg.ect_x, msg.ect_m))
            k_si = self.local.static.decapsulate(HybridCiphertext(msg.sct_x, msg.sct_m))
        except KemError as exc:
            raise _Reject(name, f"RespHello: {exc}") from None
        h2 = t.mix(st.h1, data[: -m.TAG_SIZE - m.MAC_SIZE])
        keys = t.derive(h2, st.k_static_resp, k_e, k_si)
        if not hmac.compare_digest(t.confirm_tag(keys.resp_confirm, h2), msg.confirm):
            raise _Reject(name, "RespHello: key confirmation failed (wrong responder key?)")
        h3 = t.mix(h2, msg.confirm)
        conf = m.InitConf(st.index, msg.sender, t.confirm_tag(keys.init_confirm, h3))
        body = m.body(conf)
        out = body + t.mac1(p.mac_out, body)
        st.stage, st.peer_index, st.keys, st.h3, st.msg3 = "conf", msg.sender, keys, h3, out
        st.conf_sends = 1
        st.retransmit_at = self.clock.monotonic() + backoff(self.timers, 0, self._unit())
        return [Send(name, out, reply=True)]

    def _on_resp_conf(self, msg: m.RespConf, data: bytes) -> list[Event]:
        p = self._session_peer(msg.receiver, "RespConf")
        name = p.cfg.name
        st = p.initiating
        if st is None or st.index != msg.receiver or st.stage != "conf" or st.keys is None:
            raise _Reject(name, "RespConf: no confirmation outstanding (replayed or reflected)")
        if msg.sender != st.peer_index:
            raise _Reject(name, "RespConf: sender index does not match the session")
        self._check_mac(p, msg, "RespConf")
        h4 = t.mix(st.h3, st.msg3[-m.MAC_SIZE - m.TAG_SIZE : -m.MAC_SIZE])
        if not hmac.compare_digest(t.confirm_tag(st.keys.resp_installed, h4), msg.confirm):
            raise _Reject(name, "RespConf: confirmation tag invalid (tampered)")
        now = self.clock.monotonic()
        psk = st.keys.psk
        self._abort(p)
        p.psk_installed_at, p.psk_expired = now, False
        tm = self.timers
        p.next_rekey_at = now + tm.rekey_interval - tm.rekey_jitter * self._unit()
        return [PskReady(name, psk, "initiator")]

    def _on_refused(self, msg: m.Refused, data: bytes) -> list[Event]:
        """A refusal changes nothing: the retransmit timer retries with backoff."""
        p = self._session_peer(msg.receiver, "Refused")
        name = p.cfg.name
        st = p.initiating
        if st is None or st.index != msg.receiver or st.stage != "hello":
            raise _Reject(name, "Refused: no InitHello of ours is waiting for an answer")
        if not hmac.compare_digest(msg.echo, t.refusal_echo(st.msg1)):
            raise _Reject(name, "Refused: does not answer our InitHello (stale or forged)")
        authenticated = m.refusal_authenticated(msg.code)
        if authenticated:
            self._check_mac(p, msg, "Refused")
        return [Refusal(name, msg.code, authenticated)]

    def _on_rekey_request(self, msg: m.RekeyRequest, data: bytes) -> list[Event]:
        if msg.responder == self._local_id:
            raise _Reject(None, "RekeyRequest: sent by our own identity (reflected)")
        if msg.initiator != self._local_id:
            claimed = self._by_id.get(msg.responder)
            raise _Reject(claimed, "RekeyRequest: not addressed to this node (our key not pinned?)")
        name = self._by_id.get(msg.responder)
        if name is None:
            raise _Reject(None, "RekeyRequest: from an identity not pinned here")
        p = self._peers[name]
        if p.cfg.role != "initiator":
            raise _Reject(name, "RekeyRequest: we are the responder for this peer")
        self._check_mac(p, msg, "RekeyRequest")
        if msg.timestamp <= p.last_nudge_ts:
            raise _Reject(name, "RekeyRequest: replayed (timestamp not newer)")
        # MAC1 is classical only: without this bound one forged far-future request
        # would make us ignore every later genuine one.
        self._check_clock(name, "RekeyRequest", msg.timestamp)
        p.last_nudge_ts = msg.timestamp
        now = self.clock.monotonic()
        st = p.initiating
        # A hello that just left will be answered anyway; and at most one nudge per
        # retransmit interval starts a handshake, so nudges cannot drive our CPU.
        hold = self.timers.retransmit_initial
        busy = st is not None and st.stage == "hello" and now - st.started < hold / 2
        if not busy and now - p.nudge_honored >= hold:
            self._abort(p)
            p.next_rekey_at = now
            p.nudge_honored = now
        return []

    # -- responder ----------------------------------------------------------------

    @staticmethod
    def _refusal(code: int, msg: m.InitHello, data: bytes, mac_key: bytes | None) -> bytes:
        body = m.body(m.Refused(code, msg.sender, t.refusal_echo(data)))
        return body + (t.mac1(mac_key, body) if mac_key is not None else bytes(m.MAC_SIZE))

    def _on_init_hello(self, msg: m.InitHello, data: bytes) -> list[Event]:
        if msg.initiator == self._local_id:
            raise _Reject(None, "InitHello: sent by our own identity (reflected)")
        # Until MAC1 has proven the sender, every answer depends only on the message and
        # on our own keys, never on whom we know: an unattributed hello gets the same
        # unauthenticated refusal whether its id is pinned, refused or unknown here.
        # Nothing is charged to the claimed sender before MAC1: anyone can claim anyone.
        claimed = self._by_id.get(msg.initiator)
        said = f" (claims to be {claimed})" if claimed is not None else ""
        if msg.responder != self._local_id:
            not_us = self._refusal(m.REFUSED_NOT_FOR_US, msg, data, None)
            raise _Reject(
                None, f"InitHello: not addressed to this node (our key not pinned?){said}", not_us
            )
        if msg.static_kem != PARAMS[self.local.static.kem].wire_id:
            not_us = self._refusal(m.REFUSED_NOT_FOR_US, msg, data, None)
            raise _Reject(None, f"InitHello: static KEM is not our identity's KEM{said}", not_us)
        refused = self._refused.get(msg.initiator) if claimed is None else None
        if claimed is not None:
            mac_in = self._peers[claimed].mac_in
        elif refused is not None:
            mac_in = refused.mac_in
        else:
            mac_in = self._no_key
        mac_ok = t.mac1_ok(mac_in, m.body(msg), msg.mac1)
        unknown = self._refusal(m.REFUSED_UNKNOWN, msg, data, None)
        if claimed is None and refused is None:
            raise _Reject(None, "InitHello: from an identity not pinned here", unknown)
        if not mac_ok:
            who = claimed or (refused.name if refused else "")
            raise _Reject(
                None,
                f"InitHello: bad MAC1 (tampered, reflected or wrong key; claims {who})",
                unknown,
            )
        if refused is not None:
            why = m.REFUSAL_CODES[refused.code]
            answer = self._refusal(refused.code, msg, data, refused.mac_out)
            raise _Reject(
                refused.name, f"InitHello: identity {refused.name} refused ({why})", answer
            )
        assert claimed is not None
        name = claimed
        p = self._peers[name]
        if p.cfg.role != "responder":
            raise _Reject(name, "InitHello: we are the initiator for this peer")
        if msg.eph_kem != PARAMS[p.cfg.kem].wire_id:
            raise _Reject(name, f"InitHello: ephemeral KEM is not {p.cfg.kem}")
        if msg.timestamp <= p.last_init_ts:
            raise _Reject(name, "InitHello: replayed (timestamp not newer than last confirmed)")
        self._check_clock(name, "InitHello", msg.timestamp)
        for r in p.responding.values():
            if r.hello == data:  # our RespHello was lost or this is a replay: same answer
                return [Send(name, r.answer, reply=True, cached=True)]
        now = self.clock.monotonic()
        tokens = p.bucket.available(now)
        if tokens < 1.0:
            raise _Reject(name, "InitHello: rate limited")
        # Expensive part: only for a MAC-authenticated, fresh, in-budget message.
        try:
            k_sr = self.local.static.decapsulate(HybridCiphertext(msg.sct_x, msg.sct_m))
            eph_pub = HybridPublicKey(self.backend, p.cfg.kem, msg.epk_x, msg.epk_m)
            k_e, ect = eph_pub.encapsulate(self.rng)
            k_si, sct = p.cfg.static.encapsulate(self.rng)
        except KemError as exc:
            raise _Reject(name, f"InitHello: {exc}") from None
        index = self._new_index()
        h1 = t.mix(p.h0, data[: -m.MAC_SIZE])
        hello = m.RespHello(
            eph_kem=msg.eph_kem,
            static_kem=PARAMS[p.cfg.static.kem].wire_id,
            sender=index,
            receiver=msg.sender,
            ect_x=ect.x,
            ect_m=ect.m,
            sct_x=sct.x,
            sct_m=sct.m,
            confirm=b"",
        )
        h2 = t.mix(h1, m.body(hello))
        keys = t.derive(h2, k_sr, k_e, k_si)
        confirm = t.confirm_tag(keys.resp_confirm, h2)
        body = m.body(hello) + confirm
        out = body + t.mac1(p.mac_out, body)
        # Commit.
        p.bucket.take(now, tokens)
        if len(p.responding) >= MAX_PENDING:
            oldest = min(p.responding.values(), key=lambda r: r.created)
            self._drop_responding(p, oldest.index)
        h3 = t.mix(h2, confirm)
        p.responding[index] = _Responding(
            index, msg.sender, keys, h3, now, msg.timestamp, data, out
        )
        self._sessions[index] = name
        return [Send(name, out, reply=True)]

    def _drop_responding(self, p: _Peer, index: int) -> None:
        del p.responding[index]
        self._sessions.pop(index, None)

    def _on_init_conf(self, msg: m.InitConf, data: bytes) -> list[Event]:
        name = self._sessions.get(msg.receiver)
        p = self._peers[name] if name is not None else None
        if p is not None and p.completed is not None and p.completed.index == msg.receiver:
            if hmac.compare_digest(data, p.completed.msg3):
                # Our RespConf was lost: answer again, nothing changes.
                return [Send(p.cfg.name, p.completed.msg4, reply=True, cached=True)]
            raise _Reject(name, "InitConf: session already confirmed (replayed or tampered)")
        p = self._session_peer(msg.receiver, "InitConf")
        name = p.cfg.name
        st = p.responding.get(msg.receiver)
        if st is None:
            raise _Reject(name, "InitConf: session is not one we answered (reflected?)")
        if msg.sender != st.peer_index:
            raise _Reject(name, "InitConf: sender index does not match the session")
        self._check_mac(p, msg, "InitConf")
        if not hmac.compare_digest(t.confirm_tag(st.keys.init_confirm, st.h3), msg.confirm):
            raise _Reject(name, "InitConf: key confirmation failed (wrong initiator key?)")
        h4 = t.mix(st.h3, msg.confirm)
        conf = m.RespConf(st.index, st.peer_index, t.confirm_tag(st.keys.resp_installed, h4))
        body = m.body(conf)
        out = body + t.mac1(p.mac_out, body)
        now = self.clock.monotonic()
        if p.completed is not None:
            self._sessions.pop(p.completed.index, None)
        p.completed = _Completed(st.index, data, out)
        # Confirmed: only now does the timestamp become the replay floor, and every
        # answered hello not newer than it is dead.
        p.last_init_ts = st.timestamp
        del p.responding[st.index]
        for r in list(p.responding.values()):
            if r.timestamp <= st.timestamp:
                self._drop_responding(p, r.index)
        p.psk_installed_at, p.psk_expired = now, False
        p.nudges = 0
        return [PskReady(name, st.keys.psk, "responder"), Send(name, out, reply=True)]

    # -- timers -------------------------------------------------------------------

    def _wants_nudge(self, p: _Peer, now: float | None) -> bool:
        """Responder: ask the initiator for a handshake when we have no fresh PSK."""
        if p.cfg.role != "responder" or not p.cfg.nudge or p.responding:
            return False
        if p.psk_installed_at is None or p.psk_expired:
            return True
        age = (self.clock.monotonic() if now is None else now) - p.psk_installed_at
        return age > self.timers.rekey_interval + self.timers.nudge_grace

    def _poll_peer(self, p: _Peer, now: float) -> list[Event]:
        out: list[Event] = []
        tm = self.timers
        name = p.cfg.name
        if (
            p.psk_installed_at is not None
            and not p.psk_expired
            and now >= p.psk_installed_at + tm.psk_lifetime
        ):
            p.psk_expired = True
            out.append(PskExpired(name))
        if p.cfg.role == "initiator":
            st = p.initiating
            if st is None:
                if now >= p.next_rekey_at:
                    out.extend(self._start(p, now, 0))
            elif now >= st.retransmit_at:
                if st.stage == "conf" and st.conf_sends < tm.conf_retries:
                    st.conf_sends += 1
                    st.retransmit_at = now + backoff(tm, st.conf_sends, self._unit())
                    out.append(Timeout(name, "no RespConf; InitConf re-sent"))
                    out.append(Send(name, st.msg3, reply=False))
                else:
                    out.append(Timeout(name, f"no answer to {st.stage}; new InitHello"))
                    out.extend(self._start(p, now, st.attempts + 1))
        else:
            for r in list(p.responding.values()):
                if now >= r.created + tm.responder_timeout:
                    self._drop_responding(p, r.index)
                    out.append(Timeout(name, "no InitConf; handshake state dropped"))
            if self._wants_nudge(p, now) and now >= p.nudge_at:
                ts = self._timestamp(p)
                req = m.RekeyRequest(p.cfg.id, self._local_id, ts)
                body = m.body(req)
                p.last_sent_ts = ts
                p.nudge_at = now + backoff(tm, p.nudges, self._unit())
                p.nudges += 1
                out.append(Send(name, body + t.mac1(p.mac_out, body), reply=False))
        return out


class _Reject(Exception):
    def __init__(self, peer: str | None, reason: str, reply: bytes | None = None) -> None:
        super().__init__(reason)
        self.peer = peer
        self.reason = reason
        self.reply = reply  # a Refused to send back on the same connection
