"""Bounded, non-blocking reads of files named by configuration or by other processes.

stackmon runs as root, and many of the paths it opens come from places an unprivileged user
can influence: a hosts file, a token file, an ini named on a uWSGI master's command line, an
nginx `include`. Reading such a path naively lets that user hang stackmon (a FIFO blocks
`open()` until a writer appears), exhaust memory (`/dev/zero` or a 10 GB file read whole) or
make root read a file its owner could not. So every such read goes through `read_file`:

- the open never blocks (O_NONBLOCK) and never makes a terminal ours (O_NOCTTY);
- only a regular file is read, checked with fstat on the descriptor that is read, so a path
  swapped between a check and the read is never used (O_NOFOLLOW is optional: configs are
  often symlinks into /etc/... and that is fine, the fstat is of the target);
- at most `limit` bytes are read; a larger file is refused with its size, not truncated;
- `as_user` (uid, gids) refuses a file that user could not read, for files named by another
  user's process (root must not become a reading proxy for it).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

# A hosts file of 500 hosts is ~50 KB, an ini or an nginx config is rarely 100 KB; 4 MiB leaves
# room for generated configs while bounding what a hostile path can cost.
DEFAULT_LIMIT = 4 * 1024 * 1024
_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


class BoundedReadError(OSError):
    """A file that was refused or could not be read; `str()` is one line for the user."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        super().__init__(f"{os.fspath(path)}: {reason}")
        self.path = os.fspath(path)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class User:
    """Whose read rights a file is checked against: a uid and its groups (primary included)."""

    uid: int
    gids: frozenset[int]

    @classmethod
    def of_process(cls, pid: int) -> User:
        """The real uid and groups of `pid`, from /proc/PID/status (readable by every user)."""
        uid, gids = -1, set()
        data = read_file(f"/proc/{pid}/status", limit=64 * 1024, what="process status")
        for line in data.decode("ascii", "replace").splitlines():
            key, _, value = line.partition(":")
            if key == "Uid":
                uid = int(value.split()[0])
            elif key == "Gid":
                gids.add(int(value.split()[0]))
            elif key == "Groups":
                gids.update(int(g) for g in value.split())
        if uid < 0:
            raise BoundedReadError(f"/proc/{pid}/status", "no Uid line")
        return cls(uid, frozenset(gids))


def may_read(st: os.stat_result, user: User) -> bool:
    """Whether `user` could read a file with this stat, by its mode bits (root always can).

    ACLs are not consulted: a file readable only through an ACL is refused, which errs on the
    side of not reading for someone.
    """
    if user.uid == 0:
        return True
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid == user.uid:
        return bool(mode & stat.S_IRUSR)
    if st.st_gid in user.gids:
        return bool(mode & stat.S_IRGRP)
    return bool(mode & stat.S_IROTH)


def describe_type(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISDIR, "a directory")):
        if test(mode):
            return name
    return "not a regular file"


def read_file(path: str | os.PathLike[str], *, limit: int = DEFAULT_LIMIT, what: str = "file",
              as_user: User | None = None) -> bytes:
    """The whole content of the regular file at `path`, at most `limit` bytes.

    Raises BoundedReadError (an OSError; `.reason` says why in words) when the path is missing,
    unreadable, not a regular file, larger than `limit`, or not readable by `as_user`.
    /proc files report size 0 and are regular, so they are read up to `limit` like others.
    """
    try:
        fd = os.open(path, _FLAGS)
    except FileNotFoundError:
        raise BoundedReadError(path, f"{what} does not exist") from None
    except OSError as exc:
        raise BoundedReadError(path, f"cannot open {what}: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise BoundedReadError(path, f"{what} is {describe_type(st.st_mode)}, not a regular "
                                         "file; refusing to read it")
        if as_user is not None and not may_read(st, as_user):
            raise BoundedReadError(path, f"{what} is not readable by uid {as_user.uid} (owner "
                                         f"{st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o}); "
                                         "refusing to read it on its behalf")
        if st.st_size > limit:
            raise BoundedReadError(path, f"{what} is {st.st_size} bytes, over the "
                                         f"{limit}-byte limit")
        chunks: list[bytes] = []
        total = 0
        while True:
            chunk = os.read(fd, min(65536, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                raise BoundedReadError(path, f"{what} is over the {limit}-byte limit")
        return b"".join(chunks)
    except BoundedReadError:
        raise
    except OSError as exc:
        raise BoundedReadError(path, f"cannot read {what}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
