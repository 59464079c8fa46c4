"""One server per SQLite file: an exclusive lock on `<db>.lock`, held from before the store opens until it closes.

SQLite lets any number of processes open one file, and a server on a one-process store claims every unfinished
run at start, leases or not (the server before it is taken to be gone). A second server on the same file would
so take the first one's live runs away from it: that server loses them mid-stage and the stages run again. The
lock stops the second server before it reads anything.

It is flock(2), not fcntl's POSIX locks: a flock belongs to the open file, so a second server in the same process
is refused too, and the kernel drops it when the process ends however it ends (a crash leaves the file behind,
but no stale lock). While held, the file says who holds it (pid, host, address), so the refusal names the other
server. Not the `filelock` package: it opens the file with O_TRUNC before it tries the lock, so every refused
attempt would wipe the holder's note.

On Windows (no flock) there is no lock: one server per file is then up to the operator.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
from pathlib import Path

from facilitair.server.settings import ConfigError

# What is read of a lock file's note: ours are about 100 bytes.
_NOTE_MAX = 4096


class StoreInUse(Exception):
    """Another server holds the SQLite file; the message names the file and that server."""


def lock_path(db: Path) -> Path:
    """The lock file of a SQLite file: beside it, as SQLite's own -wal and -shm files are."""
    return db.with_name(db.name + ".lock")


class SqliteFileLock:
    """The exclusive lock of one SQLite file, for one server."""

    def __init__(self, db: Path) -> None:
        self.db = db
        self.path = lock_path(db)
        self._fd: int | None = None

    def acquire(self, address: str) -> None:
        """Take the lock, noting this process and `address` in it; StoreInUse when another server holds it."""
        if sys.platform == "win32" or self._fd is not None:
            return
        import fcntl  # noqa: PLC0415 - POSIX only

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # No O_TRUNC: the note belongs to the holder, and a refused opener must leave it as it is.
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise ConfigError(f"cannot create the lock file {self.path}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise StoreInUse(
                f"{self.db} is in use by another facilitair server ({holder}): a SQLite file belongs to one "
                "server; stop that one, or give this one another --db (servers that share a store use "
                "PostgreSQL: --database-url)"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        note = {"pid": os.getpid(), "host": socket.gethostname(), "address": address}
        with contextlib.suppress(OSError):  # a full disk: the lock holds all the same, only unnamed
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(note).encode() + b"\n", 0)

    def release(self) -> None:
        """Give the lock up (the file stays: removing it would race with a server taking it right then)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)  # the note is void once the lock is not held
            os.close(fd)


def _holder(fd: int) -> str:
    """Who holds the lock, from its note: "pid 4242, serving 127.0.0.1:50051" (on another host: which)."""
    try:
        note = json.loads(os.pread(fd, _NOTE_MAX, 0))
        pid, host, address = int(note["pid"]), str(note["host"]), str(note["address"])
    except (OSError, ValueError, TypeError, KeyError):
        # Taken a moment ago and not noted yet, or not a note of ours.
        return "its pid is not noted in the lock file"
    where = "" if host == socket.gethostname() else f" on {host}"
    return f"pid {pid}{where}, serving {address}"
