"""Wire format of the handshake: six fixed-layout messages, strictly decoded.

Every message starts with a 4-byte header (type, version, two KEM ids) and ends with a
16-byte MAC1 (all zero in an unauthenticated `Refused`). Each field has a fixed size
given by the header's KEM ids, so a message is accepted only at its exact length:
anything shorter, longer or with unknown type/version/KEM is rejected before any
cryptography runs. The decoder checks layout only; MACs, replay and state are the
state machine's job.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from tunneld.kem import IDENTITY_KEMS, PARAMS, PARAMS_BY_WIRE_ID, KemParams

VERSION = 1
MAC_SIZE = 16
TAG_SIZE = 32
ID_SIZE = 16
X_SIZE = 32
HEADER_SIZE = 4
FRAME_LIMIT = 65535  # the transport frames messages with a 2-byte length

INIT_HELLO = 1
RESP_HELLO = 2
INIT_CONF = 3
RESP_CONF = 4
REKEY_REQUEST = 5
REFUSED = 6

# Refusal codes (header byte a of a Refused message). The first two are answers a
# responder can give without knowing who sent the InitHello, so they are
# unauthenticated and the same for every sender; the others are only sent to an
# identity that proved its key with MAC1, and carry a MAC1 under that pair's key.
REFUSED_UNKNOWN = 1  # initiator id not known here, or MAC1 wrong        (unauthenticated)
REFUSED_NOT_FOR_US = 2  # responder id / static KEM is not this node's   (unauthenticated)
REFUSED_NOT_YET_VALID = 3  # identity's validity window has not begun     (authenticated)
REFUSED_EXPIRED = 4  # identity's validity window has ended               (authenticated)
REFUSED_NO_CONDUIT = 5  # identity has no conduit into this site          (authenticated)
REFUSAL_CODES = {
    REFUSED_UNKNOWN: "unknown",
    REFUSED_NOT_FOR_US: "not-for-us",
    REFUSED_NOT_YET_VALID: "not-yet-valid",
    REFUSED_EXPIRED: "expired",
    REFUSED_NO_CONDUIT: "no-conduit",
}
ECHO_SIZE = 16


def refusal_authenticated(code: int) -> bool:
    return code >= REFUSED_NOT_YET_VALID


TYPE_NAMES = {
    INIT_HELLO: "InitHello",
    RESP_HELLO: "RespHello",
    INIT_CONF: "InitConf",
    RESP_CONF: "RespConf",
    REKEY_REQUEST: "RekeyRequest",
    REFUSED: "Refused",
}


class DecodeError(ValueError):
    """The bytes are not a well-formed message; `reason` says what is wrong."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class InitHello:
    """Initiator -> responder: ephemeral hybrid public key + encapsulation to R's static key."""

    eph_kem: int  # wire id of the ephemeral KEM
    static_kem: int  # wire id of the responder's static KEM
    sender: int  # initiator's session index
    initiator: bytes  # identity id (16)
    responder: bytes  # identity id (16)
    timestamp: int  # initiator wall clock, ns; strictly increasing per initiator
    epk_x: bytes
    epk_m: bytes
    sct_x: bytes
    sct_m: bytes
    mac1: bytes = b""


@dataclass(frozen=True)
class RespHello:
    """Responder -> initiator: encapsulations to the ephemeral and to I's static key."""

    eph_kem: int
    static_kem: int  # wire id of the initiator's static KEM
    sender: int
    receiver: int
    ect_x: bytes
    ect_m: bytes
    sct_x: bytes
    sct_m: bytes
    confirm: bytes  # responder's key confirmation
    mac1: bytes = b""


@dataclass(frozen=True)
class InitConf:
    """Initiator -> responder: initiator's key confirmation; R installs the PSK on it."""

    sender: int
    receiver: int
    confirm: bytes
    mac1: bytes = b""


@dataclass(frozen=True)
class RespConf:
    """Responder -> initiator: R has installed the PSK; I installs it on this."""

    sender: int
    receiver: int
    confirm: bytes
    mac1: bytes = b""


@dataclass(frozen=True)
class RekeyRequest:
    """Responder -> initiator: 'I (re)started or my PSK is ageing; handshake now, please'."""

    initiator: bytes
    responder: bytes
    timestamp: int
    mac1: bytes = b""


@dataclass(frozen=True)
class Refused:
    """Responder -> initiator: this InitHello will not be answered, and why.

    `receiver` is the InitHello's sender index and `echo` a hash of the whole InitHello
    (`transcript.refusal_echo`), so a refusal answers exactly one attempt and can not be
    replayed against another. Authenticated codes carry MAC1 under the pair's key;
    unauthenticated ones carry 16 zero bytes and are only a hint to the initiator.
    """

    code: int
    receiver: int
    echo: bytes
    mac1: bytes = b""


Message = InitHello | RespHello | InitConf | RespConf | RekeyRequest | Refused

_IDX = struct.Struct(">I")
_TS = struct.Struct(">Q")


def _header(msg_type: int, a: int = 0, b: int = 0) -> bytes:
    return bytes((msg_type, VERSION, a, b))


def body(msg: Message) -> bytes:
    """The encoded message without its MAC1 (what MAC1 is computed over)."""
    if isinstance(msg, InitHello):
        return b"".join(
            (
                _header(INIT_HELLO, msg.eph_kem, msg.static_kem),
                _IDX.pack(msg.sender),
                msg.initiator,
                msg.responder,
                _TS.pack(msg.timestamp),
                msg.epk_x,
                msg.epk_m,
                msg.sct_x,
                msg.sct_m,
            )
        )
    if isinstance(msg, RespHello):
        return b"".join(
            (
                _header(RESP_HELLO, msg.eph_kem, msg.static_kem),
                _IDX.pack(msg.sender),
                _IDX.pack(msg.receiver),
                msg.ect_x,
                msg.ect_m,
                msg.sct_x,
                msg.sct_m,
                msg.confirm,
            )
        )
    if isinstance(msg, InitConf | RespConf):
        t = INIT_CONF if isinstance(msg, InitConf) else RESP_CONF
        return _header(t) + _IDX.pack(msg.sender) + _IDX.pack(msg.receiver) + msg.confirm
    if isinstance(msg, Refused):
        return _header(REFUSED, msg.code) + _IDX.pack(msg.receiver) + msg.echo
    return _header(REKEY_REQUEST) + msg.initiator + msg.responder + _TS.pack(msg.timestamp)


def encode(msg: Message) -> bytes:
    if len(msg.mac1) != MAC_SIZE:
        raise ValueError("message has no MAC1")
    return body(msg) + msg.mac1


def layout(msg_type: int, a: KemParams | None, b: KemParams | None) -> list[tuple[str, int]]:
    """Field names and sizes after the header, MAC1 last."""
    if msg_type == INIT_HELLO:
        assert a is not None and b is not None
        return [
            ("sender", 4),
            ("initiator", ID_SIZE),
            ("responder", ID_SIZE),
            ("timestamp", 8),
            ("epk_x", X_SIZE),
            ("epk_m", a.public_key_size),
            ("sct_x", X_SIZE),
            ("sct_m", b.ciphertext_size),
            ("mac1", MAC_SIZE),
        ]
    if msg_type == RESP_HELLO:
        assert a is not None and b is not None
        return [
            ("sender", 4),
            ("receiver", 4),
            ("ect_x", X_SIZE),
            ("ect_m", a.ciphertext_size),
            ("sct_x", X_SIZE),
            ("sct_m", b.ciphertext_size),
            ("confirm", TAG_SIZE),
            ("mac1", MAC_SIZE),
        ]
    if msg_type in (INIT_CONF, RESP_CONF):
        return [("sender", 4), ("receiver", 4), ("confirm", TAG_SIZE), ("mac1", MAC_SIZE)]
    if msg_type == REFUSED:
        return [("receiver", 4), ("echo", ECHO_SIZE), ("mac1", MAC_SIZE)]
    return [("initiator", ID_SIZE), ("responder", ID_SIZE), ("timestamp", 8), ("mac1", MAC_SIZE)]


def message_size(msg_type: int, a: KemParams | None = None, b: KemParams | None = None) -> int:
    return HEADER_SIZE + sum(size for _, size in layout(msg_type, a, b))


# The largest valid message: RespHello of ML-KEM-1024 + HQC-256 (17681 bytes). Anything
# larger is rejected before it is read in full.
MAX_MESSAGE_SIZE = max(
    message_size(t, a, PARAMS[b])
    for t in (INIT_HELLO, RESP_HELLO)
    for a in PARAMS.values()
    for b in IDENTITY_KEMS
)
assert MAX_MESSAGE_SIZE <= FRAME_LIMIT


def decode(data: bytes) -> Message:
    """Parse one message; DecodeError with a reason for anything not exactly well-formed."""
    if len(data) > MAX_MESSAGE_SIZE:
        raise DecodeError(f"oversized message: {len(data)} bytes > {MAX_MESSAGE_SIZE}")
    if len(data) < HEADER_SIZE:
        raise DecodeError(f"truncated header: {len(data)} bytes")
    msg_type, version, a_id, b_id = data[0], data[1], data[2], data[3]
    if msg_type not in TYPE_NAMES:
        raise DecodeError(f"unknown message type {msg_type}")
    name = TYPE_NAMES[msg_type]
    if version != VERSION:
        raise DecodeError(f"{name}: unsupported version {version}")
    a = b = None
    if msg_type in (INIT_HELLO, RESP_HELLO):
        a, b = PARAMS_BY_WIRE_ID.get(a_id), PARAMS_BY_WIRE_ID.get(b_id)
        if a is None or b is None:
            raise DecodeError(f"{name}: unknown KEM id {a_id if a is None else b_id}")
        if b.name not in IDENTITY_KEMS:
            raise DecodeError(f"{name}: static KEM id {b_id} is not an identity KEM")
    elif msg_type == REFUSED:
        if a_id not in REFUSAL_CODES:
            raise DecodeError(f"{name}: unknown refusal code {a_id}")
        if b_id:
            raise DecodeError(f"{name}: reserved header byte is not zero")
    elif a_id or b_id:
        raise DecodeError(f"{name}: reserved header bytes are not zero")
    fields = layout(msg_type, a, b)
    expected = HEADER_SIZE + sum(size for _, size in fields)
    if len(data) < expected:
        raise DecodeError(f"{name}: truncated, {len(data)} bytes, expected {expected}")
    if len(data) > expected:
        raise DecodeError(f"{name}: trailing data, {len(data)} bytes, expected {expected}")
    values: dict[str, bytes | int] = {}
    pos = HEADER_SIZE
    for field, size in fields:
        chunk = data[pos : pos + size]
        pos += size
        if field in ("sender", "receiver"):
            values[field] = _IDX.unpack(chunk)[0]
        elif field == "timestamp":
            values[field] = _TS.unpack(chunk)[0]
        else:
            values[field] = bytes(chunk)
    if msg_type == INIT_HELLO:
        return InitHello(eph_kem=a_id, static_kem=b_id, **values)  # type: ignore[arg-type]
    if msg_type == RESP_HELLO:
        return RespHello(eph_kem=a_id, static_kem=b_id, **values)  # type: ignore[arg-type]
    if msg_type == INIT_CONF:
        return InitConf(**values)  # type: ignore[arg-type]
    if msg_type == RESP_CONF:
        return RespConf(**values)  # type: ignore[arg-type]
    if msg_type == REFUSED:
        if not refusal_authenticated(a_id) and values["mac1"] != bytes(MAC_SIZE):
            raise DecodeError(f"{name}: unauthenticated refusal with a non-zero MAC1")
        return Refused(code=a_id, **values)  # type: ignore[arg-type]
    return RekeyRequest(**values)  # type: ignore[arg-type]
