"""Servers as an operator runs them: `python -m facilitair.server` (= `facilitair serve`) with FACILITAIR_*
settings, on SQLite or on PostgreSQL, with `--workers N`; and the PostgreSQL the replica scenarios use.

Every scenario starts its servers this same way (the load and lifecycle scenarios through Lab.server, the
replica scenarios with every configuration, SQLite too), so that configurations differ only in the store and
the number of processes, and the load scenario and the replicas' SQLite configuration measure the same server.
PostgreSQL is the one the tests use (tests/harness/pg.py: the server at FACILITAIR_TEST_DATABASE_URL, else the
one on 127.0.0.1:5432, else a throwaway cluster), with a fresh database per pass, dropped afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc

from bench.procs import ROOT, rss_kib, with_descendants
from facilitair.v1 import orchestrator_pb2 as pb
from facilitair.v1 import orchestrator_pb2_grpc as pb_grpc
from tests.harness.pg import Databases, PgServer, pg_server_for
from tests.harness.processes import free_port

READY_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
UNLIMITED = "1000000"


@dataclass
class Served:
    """One `facilitair serve` process (with its workers, if any), listening on `port`."""

    name: str
    proc: asyncio.subprocess.Process
    port: int
    log: Path

    @property
    def target(self) -> str:
        """host:port of the server."""
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        """The process started (with --workers, the supervisor)."""
        return self.proc.pid

    def pids(self) -> list[int]:
        """Every process of this server: the one started and its workers."""
        return with_descendants(self.proc.pid) if self.proc.returncode is None else []

    def rss_kib(self) -> int:
        """The resident memory of all its processes."""
        total = 0
        for pid in self.pids():
            with contextlib.suppress(OSError, RuntimeError):
                total += rss_kib(pid)
        return total

    def kill(self) -> None:
        """SIGKILL, as a machine that dies (only the process started: use it without workers)."""
        self.proc.kill()

    async def stop(self) -> None:
        """SIGTERM (a graceful stop, handing runs over), then SIGKILL of every process left after 30 s."""
        if self.proc.returncode is None:
            left = self.pids()
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), STOP_TIMEOUT)
            except TimeoutError:
                for pid in left:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                await self.proc.wait()


def environment(openai_url: str, name: str, store: dict[str, str], **settings: str) -> dict[str, str]:
    """A server's environment: this one's without any facilitair or provider setting, plus the bench's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FACILITAIR_", "OPENAI_", "ANTHROPIC_"))}
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env.update(
        PYTHONPATH=path,
        FACILITAIR_LOG_LEVEL="warning",  # the log is not what is measured
        FACILITAIR_LOG_FORMAT="json",
        FACILITAIR_HTTP_LISTEN="off",  # not measured here; its default port would be shared by the replicas
        FACILITAIR_SANDBOX="off",  # streaming is measured here; test runs have their own scenario (bench/sandbox.py)
        FACILITAIR_REPLICA_ID=name,
        FACILITAIR_MODEL="openai:gpt-4.1-mini",
        # The load is one principal starting hundreds of runs at once: lift the admission limits.
        FACILITAIR_MAX_RUNS=UNLIMITED,
        FACILITAIR_MAX_RUNS_PER_PRINCIPAL=UNLIMITED,
        FACILITAIR_RUNS_PER_MINUTE=UNLIMITED,
        OPENAI_API_KEY="test-key",
        OPENAI_BASE_URL=openai_url,
    )
    env.update(store)
    env.update(settings)
    return env


async def _replicas_answering(target: str) -> str:
    """The replica id of whichever process answers a new connection to `target`."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.OrchestratorServiceStub(channel)
        info = await stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=2)
        return info.replica_id


async def start(env: dict[str, str], workdir: Path, *, workers: int = 1, tries: tuple[str, ...] = ()) -> Served:
    """Start a server and wait until each of its `workers` processes answers on the port; `tries` are patches
    (bench/patches.py) applied to the process started (not to the workers it starts)."""
    port = free_port()
    name = env["FACILITAIR_REPLICA_ID"]
    env = {**env, "FACILITAIR_LISTEN": f"127.0.0.1:{port}", "FACILITAIR_WORKERS": str(workers)}
    log = workdir / f"server-{name}-{port}.log"
    command = ["-m", "bench.server", "--try", ",".join(tries)] if tries else ["-m", "facilitair.server"]
    with log.open("ab") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, *command, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out, env=env
        )
    served = Served(name, proc, port, log)
    # Each new connection goes to one worker (SO_REUSEPORT): ask until every worker has answered.
    seen: set[str] = set()
    deadline = time.monotonic() + READY_TIMEOUT
    while len(seen) < workers:
        if proc.returncode is not None or time.monotonic() > deadline:
            await served.stop()
            tail = log.read_text(encoding="utf-8", errors="replace")[-3000:]
            raise RuntimeError(f"server {name} did not serve ({len(seen)} of {workers} workers):\n{tail}")
        try:
            seen.add(await _replicas_answering(served.target))
        except grpc.aio.AioRpcError:
            await asyncio.sleep(0.1)  # not listening yet
    return served


@contextlib.asynccontextmanager
async def serving(
    env: dict[str, str], workdir: Path, *, workers: int = 1, tries: tuple[str, ...] = ()
) -> AsyncIterator[Served]:
    """A server for the block, stopped at its end."""
    served = await start(env, workdir, workers=workers, tries=tries)
    try:
        yield served
    finally:
        await served.stop()


@dataclass
class Postgres:
    """The PostgreSQL server of this bench run, making a fresh database per pass."""

    server: PgServer

    @contextlib.asynccontextmanager
    async def database(self) -> AsyncIterator[dict[str, str]]:
        """A new empty database for the block, as the settings that select it; dropped at its end."""
        databases = Databases(self.server)
        url = await asyncio.to_thread(databases.new)
        try:
            yield {"FACILITAIR_DATABASE_URL": url}
        finally:
            await asyncio.to_thread(databases.drop_all)


@contextlib.contextmanager
def postgres() -> Iterator[Postgres]:
    """The PostgreSQL the tests would use (FACILITAIR_TEST_PG picks which), for the whole bench run."""
    with pg_server_for(os.environ.get("FACILITAIR_TEST_PG", "auto").strip() or "auto") as server:
        yield Postgres(server)
