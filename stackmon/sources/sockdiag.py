"""Listening sockets straight from the kernel, through netlink sock_diag (what `ss -l` uses).

Why netlink and not /proc/net/tcp: /proc/net/tcp gives a listener's current accept queue but not
its backlog, and /proc/net/unix gives neither. sock_diag gives both, for TCP (IPv4 and IPv6)
and UNIX stream listeners, in one dump per family. uWSGI's stats server reports 0 for the queue
of a unix socket, so for the common nginx -> unix socket -> uWSGI setup this is the only place
the real queue can be read.

No third-party netlink library: the requests are three fixed structs and the replies are parsed
in place with `struct.unpack_from`, because this runs every second on hosts that may have
hundreds of listeners.

What the numbers mean (Linux, checked against `ss -ltn` / `ss -lxn`):
- `queue` is the number of connections completed by the kernel and waiting for accept();
  `backlog` is the listen() backlog after the kernel capped it at net.core.somaxconn.
- The kernel lets `queue` reach backlog + 1 before it refuses (TCP: drops the SYN and counts
  ListenOverflows; UNIX: connect() blocks or fails with EAGAIN), so a full queue reads
  `queue > backlog`, not `queue == backlog`.
- Only listeners of the caller's network namespace are visible.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeVar

from stackmon.model import SourceError

AF_INET, AF_INET6, SOCK_STREAM = socket.AF_INET, socket.AF_INET6, socket.SOCK_STREAM
inet_ntop = socket.inet_ntop

SOURCE = "kernel"

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 0x001
NLM_F_DUMP = 0x300  # NLM_F_ROOT | NLM_F_MATCH
NLM_F_DUMP_INTR = 0x010  # the dump was disturbed by a concurrent change: results may be partial
NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLMSG_OVERRUN = 4
TCP_LISTEN = 10  # UNIX listeners use the TCP state numbers too
LISTEN_MASK = 1 << TCP_LISTEN

UDIAG_SHOW_NAME = 0x01
UDIAG_SHOW_RQLEN = 0x10
UDIAG_SHOW_VFS = 0x02
UNIX_DIAG_NAME = 0
UNIX_DIAG_VFS = 1
UNIX_DIAG_RQLEN = 4
NLA_TYPE_MASK = 0x3FFF  # strips NLA_F_NESTED / NLA_F_NET_BYTEORDER

# Bigger than the largest skb the kernel builds for a dump (32 KiB minus overhead), so a reply
# datagram is never truncated; MSG_TRUNC is still checked.
RECV_BUFFER = 64 * 1024
TIMEOUT_S = 2.0

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_INET_REQ = struct.Struct("=BBBBI48x")  # inet_diag_req_v2: family, proto, ext, pad, states, id
_UNIX_REQ = struct.Struct("=BBHIIIII")  # unix_diag_req: family, proto, pad, states, ino, show,
#                                         cookie[2]
_I32 = struct.Struct("=i")
_NLATTR = struct.Struct("=HH")  # len, type
# inet_diag_msg (72 bytes) in one unpack: family, [state, timer, retrans], sport (big-endian,
# kept as 2 bytes), [dport], src (16 bytes; IPv4 uses the first 4), [dst], if, [cookie[2],
# expires], rqueue (accept queue), wqueue (backlog), [uid], inode.
_INET_MSG = struct.Struct("=B3x2s2x16s16xI8x4xII4xI")
# unix_diag_msg (16 bytes): [family], type, [state, pad], ino, [cookie[2]].
_UNIX_MSG = struct.Struct("=xB2xI8x")
_RQLEN = struct.Struct("=II")  # unix_diag_rqlen: rqueue, wqueue
_HDR_LEN = _NLMSGHDR.size
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class RawListener:
    """One listening socket as sock_diag reports it, before anyone knows who owns it.

    address: TCP "127.0.0.1:8080", "[::1]:80", "0.0.0.0:80" (with "%dev" after the host when
    the socket is bound to a device, as `ss` prints it); UNIX: the path exactly as given to
    bind() (a relative path stays relative), abstract names as "@name".
    """

    kind: Literal["tcp", "unix"]
    address: str
    queue: int
    backlog: int
    inode: int


class _DumpError(Exception):
    """Internal: a dump failed; carries the reason for the SourceError."""


def _ifname(index: int) -> str:
    try:
        return socket.if_indextoname(index)
    except OSError:
        return str(index)


def _parse_inet(buf: bytearray, off: int, end: int, out: list[RawListener]) -> None:
    if end - off < _INET_MSG.size:
        raise _DumpError("short inet_diag_msg in sock_diag reply")
    family, sport, src, ifindex, rqueue, wqueue, inode = _INET_MSG.unpack_from(buf, off)
    if family == socket.AF_INET:
        host = inet_ntop(AF_INET, src[:4])
    else:
        host = "[" + inet_ntop(AF_INET6, src) + "]"
    if ifindex:
        host = f"{host}%{_ifname(ifindex)}"
    out.append(RawListener("tcp", f"{host}:{(sport[0] << 8) | sport[1]}", rqueue, wqueue, inode))


def _unix_name(raw: bytes) -> str:
    if raw[:1] == b"\0":
        # Abstract: every byte counts, NULs included; `ss` shows NULs as '@', so do we.
        return "@" + raw[1:].replace(b"\0", b"@").decode("utf-8", "backslashreplace")
    # A path name may carry the trailing NUL bind() was given.
    return raw.split(b"\0", 1)[0].decode("utf-8", "backslashreplace")


def _parse_unix(buf: bytearray, off: int, end: int, out: list[RawListener]) -> None:
    if end - off < _UNIX_MSG.size:
        raise _DumpError("short unix_diag_msg in sock_diag reply")
    stype, inode = _UNIX_MSG.unpack_from(buf, off)
    if stype != SOCK_STREAM:
        return  # SEQPACKET listeners exist (systemd, ...) but nginx and uWSGI never use them
    name = ""
    queue = backlog = 0
    a = off + _UNIX_MSG.size
    while a + 4 <= end:
        alen, atype = _NLATTR.unpack_from(buf, a)
        if alen < 4 or a + alen > end:
            break
        atype &= NLA_TYPE_MASK
        if atype == UNIX_DIAG_NAME:
            name = _unix_name(bytes(buf[a + 4 : a + alen]))
        elif atype == UNIX_DIAG_RQLEN and alen >= 12:
            queue, backlog = _RQLEN.unpack_from(buf, a + 4)
        a += (alen + 3) & ~3
    out.append(RawListener("unix", name, queue, backlog, inode))


def _dump(
    sock: socket.socket,
    buf: bytearray,
    request: bytes,
    seq: int,
    parse: Callable[[bytearray, int, int, list[_T]], None],
    out: list[_T],
) -> bool:
    """Send one dump request and parse replies until NLMSG_DONE. True if the kernel flagged
    the dump as interrupted (NLM_F_DUMP_INTR), so the caller may retry it once."""
    hdr = _NLMSGHDR.pack(_HDR_LEN + len(request), SOCK_DIAG_BY_FAMILY,
                         NLM_F_REQUEST | NLM_F_DUMP, seq, 0)
    sock.send(hdr + request)
    view = memoryview(buf)
    interrupted = False
    while True:
        n, _anc, flags, _addr = sock.recvmsg_into([view])
        if flags & socket.MSG_TRUNC:
            raise _DumpError(f"sock_diag reply larger than the {len(buf)}-byte buffer")
        if n == 0:
            raise _DumpError("sock_diag socket closed before the dump ended")
        off = 0
        while off + _HDR_LEN <= n:
            mlen, mtype, mflags, mseq, _pid = _NLMSGHDR.unpack_from(buf, off)
            if mlen < _HDR_LEN or off + mlen > n:
                raise _DumpError("malformed netlink message in sock_diag reply")
            if mseq == seq:
                if mflags & NLM_F_DUMP_INTR:
                    interrupted = True
                if mtype == SOCK_DIAG_BY_FAMILY:
                    parse(buf, off + _HDR_LEN, off + mlen, out)
                elif mtype == NLMSG_DONE:
                    # The DONE payload is an int: negative errno when the dump failed midway.
                    if mlen >= _HDR_LEN + 4:
                        (err,) = _I32.unpack_from(buf, off + _HDR_LEN)
                        if err < 0:
                            raise OSError(-err, os.strerror(-err))
                    return interrupted
                elif mtype == NLMSG_ERROR:
                    (err,) = _I32.unpack_from(buf, off + _HDR_LEN)
                    if err < 0:
                        raise OSError(-err, os.strerror(-err))
                    # err == 0 is an ACK, which a dump does not end with; keep reading.
                elif mtype == NLMSG_OVERRUN:
                    raise _DumpError("netlink overrun: the sock_diag dump lost data")
            # Messages with another seq are leftovers of an earlier request: skip them.
            off += (mlen + 3) & ~3


_REQUESTS: tuple[tuple[str, bytes, Callable[[bytearray, int, int, list[RawListener]], None]],
                 ...] = (
    ("tcp", _INET_REQ.pack(socket.AF_INET, socket.IPPROTO_TCP, 0, 0, LISTEN_MASK),
     _parse_inet),
    ("tcp6", _INET_REQ.pack(socket.AF_INET6, socket.IPPROTO_TCP, 0, 0, LISTEN_MASK),
     _parse_inet),
    ("unix", _UNIX_REQ.pack(socket.AF_UNIX, 0, 0, LISTEN_MASK, 0,
                            UDIAG_SHOW_NAME | UDIAG_SHOW_RQLEN, 0xFFFFFFFF, 0xFFFFFFFF),
     _parse_unix),
)


# A kernel without IPv6 answers an AF_INET6 dump with one of these: it just has no v6 listeners.
_NO_V6 = {errno.EAFNOSUPPORT, errno.ENOENT, errno.EINVAL, errno.EOPNOTSUPP}


def listening_sockets() -> list[RawListener] | SourceError:
    """Every TCP (v4 and v6) and UNIX stream listener in this network namespace, with its
    accept queue and backlog; a SourceError (never an exception) when sock_diag can't be read.

    Needs no privilege (any user can run `ss`). One netlink socket per call, three dumps on it
    in turn (the kernel allows one dump in flight per socket). A dump the kernel flags as
    interrupted by concurrent changes is retried once, then kept as it is (`ss` would show the
    same mix).
    """
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                             NETLINK_SOCK_DIAG)
    except (OSError, AttributeError) as exc:
        return SourceError(SOURCE, f"cannot open a sock_diag netlink socket: {_why(exc)}")
    out: list[RawListener] = []
    buf = bytearray(RECV_BUFFER)
    try:
        sock.settimeout(TIMEOUT_S)
        seq = 0
        for label, request, parse in _REQUESTS:
            for attempt in (0, 1):
                seq += 1
                part: list[RawListener] = []
                try:
                    interrupted = _dump(sock, buf, request, seq, parse, part)
                except OSError as exc:
                    if label == "tcp6" and exc.errno in _NO_V6:
                        break
                    if isinstance(exc, TimeoutError):
                        return SourceError(
                            SOURCE, f"sock_diag {label} dump: no answer in {TIMEOUT_S:g} s")
                    return SourceError(SOURCE, f"sock_diag {label} dump failed: {_why(exc)}")
                except _DumpError as exc:
                    return SourceError(SOURCE, f"sock_diag {label} dump: {exc}")
                if not interrupted or attempt:
                    out.extend(part)
                    break
    finally:
        sock.close()
    return out


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"{os.strerror(exc.errno)} (errno {errno.errorcode.get(exc.errno, exc.errno)})"
    return str(exc) or type(exc).__name__


# ------------------------------------------------------------------ unix listeners' files


@dataclass(frozen=True, slots=True)
class UnixListenerFile:
    """A path-bound UNIX stream listener and the file it is bound to, as the kernel knows it.

    `inode` is the socket's inode (what /proc/PID/fd shows as `socket:[INODE]`); `dev` and `ino`
    identify the socket file in the filesystem, with `dev` in userspace st_dev encoding so it
    compares with os.stat(). Why: a listener's name is the path exactly as given to bind(), so
    a relative name, a symlinked directory or another mount namespace make names useless for
    proving which listener a path reaches; the file's (dev, ino) does prove it.
    """

    inode: int
    dev: int
    ino: int
    address: str


_VFS = struct.Struct("=II")  # unix_diag_vfs: ino, dev (kernel dev_t: major << 20 | minor)


def _parse_unix_vfs(buf: bytearray, off: int, end: int, out: list[UnixListenerFile]) -> None:
    if end - off < _UNIX_MSG.size:
        raise _DumpError("short unix_diag_msg in sock_diag reply")
    stype, inode = _UNIX_MSG.unpack_from(buf, off)
    if stype != SOCK_STREAM:
        return
    name = ""
    vfs: tuple[int, int] | None = None
    a = off + _UNIX_MSG.size
    while a + 4 <= end:
        alen, atype = _NLATTR.unpack_from(buf, a)
        if alen < 4 or a + alen > end:
            break
        atype &= NLA_TYPE_MASK
        if atype == UNIX_DIAG_NAME:
            name = _unix_name(bytes(buf[a + 4 : a + alen]))
        elif atype == UNIX_DIAG_VFS and alen >= 4 + _VFS.size:
            vfs = _VFS.unpack_from(buf, a + 4)
        a += (alen + 3) & ~3
    if vfs is not None:
        ino, kdev = vfs
        out.append(UnixListenerFile(inode, os.makedev(kdev >> 20, kdev & 0xFFFFF), ino, name))


def unix_listener_files() -> list[UnixListenerFile] | SourceError:
    """Every path-bound UNIX stream listener of this network namespace with the (dev, ino) of
    its socket file; abstract listeners have no file and are not listed. A SourceError (never
    an exception) when sock_diag cannot be read. Used to prove which listener, and so which
    process, answers at a unix socket path (stackmon.trust)."""
    request = _UNIX_REQ.pack(socket.AF_UNIX, 0, 0, LISTEN_MASK, 0,
                             UDIAG_SHOW_NAME | UDIAG_SHOW_VFS, 0xFFFFFFFF, 0xFFFFFFFF)
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                             NETLINK_SOCK_DIAG)
    except (OSError, AttributeError) as exc:
        return SourceError(SOURCE, f"cannot open a sock_diag netlink socket: {_why(exc)}")
    try:
        sock.settimeout(TIMEOUT_S)
        for seq in (1, 2):
            out: list[UnixListenerFile] = []
            try:
                interrupted = _dump(sock, bytearray(RECV_BUFFER), request, seq,
                                    _parse_unix_vfs, out)
            except TimeoutError:
                return SourceError(SOURCE, f"sock_diag unix dump: no answer in {TIMEOUT_S:g} s")
            except OSError as exc:
                return SourceError(SOURCE, f"sock_diag unix dump failed: {_why(exc)}")
            except _DumpError as exc:
                return SourceError(SOURCE, f"sock_diag unix dump: {exc}")
            if not interrupted:
                break
        return out
    finally:
        sock.close()
