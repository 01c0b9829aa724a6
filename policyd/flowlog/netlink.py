"""A small nfnetlink socket: big receive buffer, exact drop counts, attribute walking.

Why not pyroute2 here: the flow recorder's hot path is "read one event, pick six
attributes, write one line" tens of thousands of times a second. pyroute2 0.9 builds
a full message object per event and has no NFLOG family at all; a struct-based walk
over the bytes is several times cheaper and lets us own the two things that make loss
visible: the receive buffer size (SO_RCVBUFFORCE) and the kernel's per-socket drop
counter (SO_MEMINFO, `sk_drops`), which counts every message the kernel could not
queue. ENOBUFS only says "something was lost"; the drop counter says how much.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import socket
import struct
from collections.abc import Iterator

NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
NETLINK_NO_ENOBUFS = 5
SO_RCVBUFFORCE = 33
SO_MEMINFO = 55
SK_MEMINFO_DROPS = 8  # index in the u32 array SO_MEMINFO returns

NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
NLA_F_NESTED = 0x8000
NLA_TYPE_MASK = 0x3FFF  # strips NLA_F_NESTED and NLA_F_NET_BYTEORDER

NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, portid (host order)
NFGENMSG = struct.Struct("!BBH")  # family, version, res_id (network order)
NLATTR = struct.Struct("=HH")
NLMSG_HDRLEN = NLMSGHDR.size
NFNL_HDRLEN = NLMSG_HDRLEN + NFGENMSG.size

CLONE_NEWNET = 0x40000000
Buffer = bytes | bytearray | memoryview
DEFAULT_RCVBUF = 32 * 1024 * 1024  # design.md section 8: 8 MiB or more; 32 MiB ~ 40k events


class NetlinkError(OSError):
    """The kernel answered a request with an error (errno in `.errno`)."""


def align4(n: int) -> int:
    return (n + 3) & ~3


def attrs(buf: Buffer, start: int, end: int) -> dict[int, tuple[int, int]]:
    """Map attribute type -> (payload offset, payload end) for one nesting level.

    Offsets instead of slices: the caller decodes only what it needs, without copies.
    """
    out: dict[int, tuple[int, int]] = {}
    unpack = NLATTR.unpack_from
    off = start
    while off + 4 <= end:
        length, kind = unpack(buf, off)
        if length < 4:
            break
        out[kind & NLA_TYPE_MASK] = (off + 4, off + length)
        off += (length + 3) & ~3
    return out


def pack_attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return NLATTR.pack(length, kind) + payload + b"\0" * (align4(length) - length)


def nfnl_message(
    subsys: int, msg: int, flags: int, family: int, res_id: int, payload: bytes, seq: int = 1
) -> bytes:
    body = NFGENMSG.pack(family, 0, res_id) + payload
    return NLMSGHDR.pack(NLMSG_HDRLEN + len(body), (subsys << 8) | msg, flags, seq, 0) + body


def messages(buf: Buffer, size: int) -> Iterator[tuple[int, int, int, int]]:
    """Yield (type, flags, start, end) of each netlink message in a received datagram."""
    off = 0
    unpack = NLMSGHDR.unpack_from
    while off + NLMSG_HDRLEN <= size:
        length, kind, flags, _seq, _pid = unpack(buf, off)
        if length < NLMSG_HDRLEN or off + length > size:
            return
        yield kind, flags, off, off + length
        off += align4(length)


def error_code(buf: Buffer, start: int) -> int:
    """The (positive) errno of an NLMSG_ERROR message; 0 is an ACK."""
    (code,) = struct.unpack_from("=i", buf, start + NLMSG_HDRLEN)
    return -int(code)


class NfnlSocket:
    """One non-blocking NETLINK_NETFILTER socket with a large buffer and drop accounting."""

    def __init__(self, groups: tuple[int, ...] = (), rcvbuf: int = DEFAULT_RCVBUF) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        try:
            self.rcvbuf = set_rcvbuf(self.sock, rcvbuf)
            self.sock.bind((0, 0))
            for group in groups:
                self.sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group)
            self.sock.setblocking(False)
        except BaseException:
            self.sock.close()
            raise
        self._drops_seen = self.kernel_drops()
        self._seq = 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    def kernel_drops(self) -> int:
        """Messages the kernel dropped for this socket since it was opened (sk_drops)."""
        raw = self.sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 9 * 4)
        return int(struct.unpack_from("=9I", raw)[SK_MEMINFO_DROPS])

    def new_drops(self) -> int:
        """Drops since the last call: exact, so every lost message is accounted for."""
        now = self.kernel_drops()
        delta, self._drops_seen = now - self._drops_seen, now
        return delta

    def recv_into(self, buf: bytearray) -> int:
        """One datagram into buf; 0 when nothing is queued. Raises OSError(ENOBUFS)."""
        try:
            return self.sock.recv_into(buf)
        except BlockingIOError:
            return 0

    def request(self, message: bytes) -> int:
        """Send a request; returns its sequence number."""
        self._seq += 1
        seq = self._seq
        patched = bytearray(message)
        struct.pack_into("=I", patched, 8, seq)
        self.sock.send(bytes(patched))
        return seq

    def transact(self, message: bytes, timeout: float = 2.0) -> None:
        """Send a request with NLM_F_ACK and wait for the ACK; raise NetlinkError on error."""
        seq = self.request(message)
        buf = bytearray(65536)
        self.sock.settimeout(timeout)
        try:
            while True:
                n = self.sock.recv_into(buf)
                for kind, _flags, start, _end in messages(buf, n):
                    (msg_seq,) = struct.unpack_from("=I", buf, start + 8)
                    if kind == NLMSG_ERROR and msg_seq == seq:
                        code = error_code(buf, start)
                        if code:
                            raise NetlinkError(code, os.strerror(code))
                        return
        finally:
            self.sock.setblocking(False)


def set_rcvbuf(sock: socket.socket, size: int) -> int:
    """Ask for `size` bytes of receive buffer, past rmem_max when we may; return what we got.

    SO_RCVBUFFORCE needs CAP_NET_ADMIN; without it SO_RCVBUF is capped by
    net.core.rmem_max. The kernel doubles the value for bookkeeping; we report
    the kernel's figure so status shows what is really there.
    """
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    return int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))


def is_enobufs(exc: OSError) -> bool:
    return exc.errno == errno.ENOBUFS


_libc: ctypes.CDLL | None = None


def _setns(fd: int) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def in_netns(name: str | None) -> Iterator[None]:
    """Run the body in network namespace `name` (from `ip netns add`), then come back.

    Sockets opened inside stay in that namespace after we return, which is all the
    recorder needs: the gateway's conntrack and NFLOG are per namespace. setns only
    moves the calling thread, so the rest of the process is untouched. None: stay.
    """
    if name is None:
        yield
        return
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(f"/run/netns/{name}", os.O_RDONLY)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(home)


def write_sysctl(path: str, value: str) -> bool:
    """Write /proc/sys/PATH (in the current thread's namespace); False if it is not there."""
    try:
        with open(f"/proc/sys/{path}", "w") as fh:
            fh.write(value)
    except (FileNotFoundError, PermissionError):
        return False
    return True


def read_sysctl(path: str) -> str | None:
    try:
        with open(f"/proc/sys/{path}") as fh:
            return fh.read().strip()
    except FileNotFoundError:
        return None
