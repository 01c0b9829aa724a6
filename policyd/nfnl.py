"""A minimal nfnetlink client: just enough to send nf_tables batches and read one set.

Why it exists: libnftables re-reads its whole cache of the table (tables, every chain,
set, object and flowtable, plus the elements of constant sets) before each command,
because the generation id changes with every commit. For a one-element change that is
~95 KB from the kernel at 100k identities (407 chains, 204 sets) and the cost grows
with the ruleset. The kernel itself needs one NEWSETELEM/DELSETELEM message in a batch,
so this module sends exactly that (see `policyd.setelems` for the element encoding).

Only what the element path needs: attribute packing, a batch (BEGIN, messages, END)
with an ack requested per message, and a single non-dump request (GETSET).
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFNL_MSG_BATCH_BEGIN = 0x10
NFNL_MSG_BATCH_END = 0x11
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_DUMP = 0x300
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_CREATE = 0x400
NLA_F_NESTED = 0x8000
NLA_TYPE_MASK = 0x3FFF

NFT_MSG_GETSET = 10
NFT_MSG_NEWSETELEM = 12
NFT_MSG_DELSETELEM = 14
NFT_MSG_GETGEN = 16

FAMILIES = {"ip": 2, "ip6": 10, "inet": 1, "arp": 3, "bridge": 7, "netdev": 5}

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid (host order)
_NFGENMSG = struct.Struct("=BBH")  # family, version, res_id (big-endian value)
_NLATTR = struct.Struct("=HH")


class NfnlError(OSError):
    """The kernel refused a message; `errno` is its error, `what` says which request."""

    def __init__(self, err: int, what: str) -> None:
        super().__init__(err, f"{os.strerror(err)}: {what}")
        self.what = what


@dataclass(frozen=True)
class Message:
    """One nf_tables message: NFT_MSG_* type, address family, extra NLM_F_* flags."""

    kind: int
    family: int
    flags: int
    attrs: bytes


def attr(kind: int, payload: bytes) -> bytes:
    """One netlink attribute, padded to 4 bytes."""
    size = _NLATTR.size + len(payload)
    return _NLATTR.pack(size, kind) + payload + b"\0" * (-size % 4)


def nest(kind: int, *children: bytes) -> bytes:
    return attr(kind | NLA_F_NESTED, b"".join(children))


def strz(kind: int, text: str) -> bytes:
    return attr(kind, text.encode() + b"\0")


def be32(kind: int, value: int) -> bytes:
    return attr(kind, struct.pack(">I", value))


def be64(kind: int, value: int) -> bytes:
    return attr(kind, struct.pack(">Q", value))


def parse_attrs(data: bytes) -> dict[int, bytes]:
    """Top-level attributes of a message body (type without flag bits -> payload)."""
    out: dict[int, bytes] = {}
    pos = 0
    while pos + _NLATTR.size <= len(data):
        size, kind = _NLATTR.unpack_from(data, pos)
        if size < _NLATTR.size:
            break
        out[kind & NLA_TYPE_MASK] = data[pos + _NLATTR.size : pos + size]
        pos += (size + 3) & ~3
    return out


def iter_attrs(data: bytes) -> Iterator[tuple[int, bytes]]:
    """Every attribute in order (repeated types included, unlike `parse_attrs`)."""
    pos = 0
    while pos + _NLATTR.size <= len(data):
        size, kind = _NLATTR.unpack_from(data, pos)
        if size < _NLATTR.size:
            break
        yield kind & NLA_TYPE_MASK, data[pos + _NLATTR.size : pos + size]
        pos += (size + 3) & ~3


def _messages(data: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(type, seq, payload) of each netlink message in one datagram."""
    pos = 0
    while pos + _NLMSGHDR.size <= len(data):
        size, kind, _flags, seq, _pid = _NLMSGHDR.unpack_from(data, pos)
        if size < _NLMSGHDR.size:
            break
        yield kind, seq, data[pos + _NLMSGHDR.size : pos + size]
        pos += (size + 3) & ~3


class NfnlSocket:
    """A NETLINK_NETFILTER socket in the caller's network namespace (made at first use)."""

    def __init__(self, timeout: float = 5.0) -> None:
        self._sock: socket.socket | None = None
        self._seq = 0
        self._timeout = timeout

    def _socket(self) -> socket.socket:
        if self._sock is None:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
            sock.bind((0, 0))
            sock.setblocking(False)
            self._sock = sock
        return self._sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF or 1
        return self._seq

    def _header(self, kind: int, flags: int, family: int, res_id: int, body: bytes) -> bytes:
        size = _NLMSGHDR.size + _NFGENMSG.size + len(body)
        return (
            _NLMSGHDR.pack(size, kind, flags, self._next_seq(), 0)
            + _NFGENMSG.pack(family, 0, socket.htons(res_id))
            + body
        )

    def batch(self, messages: Sequence[Message], what: str) -> None:
        """Send `messages` as one transaction; returns when the kernel acked all of them.

        The kernel commits the batch or none of it; the first error is raised (and the
        replies that remain are drained so the next call starts clean).
        """
        sock = self._socket()
        parts = [self._header(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, 0, NFNL_SUBSYS_NFTABLES, b"")]
        for m in messages:
            flags = NLM_F_REQUEST | NLM_F_ACK | m.flags
            parts.append(
                self._header((NFNL_SUBSYS_NFTABLES << 8) | m.kind, flags, m.family, 0, m.attrs)
            )
        last = self._seq
        parts.append(self._header(NFNL_MSG_BATCH_END, NLM_F_REQUEST, 0, NFNL_SUBSYS_NFTABLES, b""))
        sock.send(b"".join(parts))
        self._await_ack(sock, last, what)

    def get(self, message: Message, what: str) -> bytes:
        """A non-dump request (e.g. GETSET of one set): the reply's attributes."""
        sock = self._socket()
        flags = NLM_F_REQUEST | NLM_F_ACK | message.flags
        kind = (NFNL_SUBSYS_NFTABLES << 8) | message.kind
        sock.send(self._header(kind, flags, message.family, 0, message.attrs))
        return self._await_ack(sock, self._seq, what)

    def dump(self, message: Message, what: str) -> Iterator[bytes]:
        """A dump request: the attributes of every reply message until NLMSG_DONE."""
        sock = self._socket()
        kind = (NFNL_SUBSYS_NFTABLES << 8) | message.kind
        sock.send(self._header(kind, NLM_F_REQUEST | NLM_F_DUMP, message.family, 0, message.attrs))
        seq = self._seq
        while True:
            if not select.select([sock], [], [], self._timeout)[0]:
                raise NfnlError(errno.ETIMEDOUT, what)
            data = sock.recv(1 << 20)
            for mtype, mseq, payload in _messages(data):
                if mseq != seq:
                    continue
                if mtype == NLMSG_DONE:
                    return
                if mtype == NLMSG_ERROR:
                    (code,) = struct.unpack_from("=i", payload)
                    if code:
                        raise NfnlError(-code, what)
                    continue
                yield payload[_NFGENMSG.size :]

    def _await_ack(self, sock: socket.socket, last: int, what: str) -> bytes:
        """Read replies up to the ack of sequence `last`; raise the first error seen.

        nfnetlink handles a batch inside send(), so every reply is queued by now; the
        timeout only guards against a kernel that never answers.
        """
        reply = b""
        error = 0
        while True:
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                if error:
                    break  # drained what followed the error
                if not select.select([sock], [], [], self._timeout)[0]:
                    raise NfnlError(errno.ETIMEDOUT, what) from None
                continue
            for kind, seq, payload in _messages(data):
                if kind != NLMSG_ERROR:
                    reply = payload[_NFGENMSG.size :]
                    continue
                (code,) = struct.unpack_from("=i", payload)
                if code and not error:
                    error = -code
                if seq == last and not error:
                    return reply
        raise NfnlError(error, what)
