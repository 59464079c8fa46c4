"""`python -m facilitair.server` as a real child process: started, SIGKILLed, paused, stopped, started again.

Its JSON log lines are kept (for failure messages and for what no RPC shows), and `start` returns the port it
serves on, read from its `serving` line. Settings come from the environment, as an operator would give them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Mapping
from typing import Any

# Hang guard for a start: a server is up in about a second.
START_GUARD = 30.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def clean_environment(**settings: str) -> dict[str, str]:
    """This process's environment without any facilitair, provider or OpenTelemetry setting, plus `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FACILITAIR_", "OPENAI_", "ANTHROPIC_", "OTEL_"))}
    # No HTTP gateway unless asked for: its default port would be shared by every server a test starts. No Test
    # run step unless the test asks for one (FACILITAIR_SANDBOX="bwrap"), as for in-process servers.
    env.update(FACILITAIR_LOG_FORMAT="json", FACILITAIR_LOG_LEVEL="info")
    env.update(FACILITAIR_HTTP_LISTEN="off", FACILITAIR_SANDBOX="off")
    env.update(settings)
    return env


class ServerProcess:
    """One server process; `start` may be called again after it stopped or was killed."""

    def __init__(self, env: Mapping[str, str], *, args: tuple[str, ...] = ()) -> None:
        self.env = dict(env)
        self.args = args
        self.proc: asyncio.subprocess.Process | None = None
        self.log: list[str] = []
        self.port = 0
        self.http_port = 0  # the HTTP gateway's, when it serves one
        self.starts = 0
        self._reader: asyncio.Task[None] | None = None
        self._logged = asyncio.Event()  # set at every new log line (for `until_logged`)

    @property
    def target(self) -> str:
        """Where it serves."""
        return f"127.0.0.1:{self.port}"

    async def start(self) -> int:
        """Start the server and return its port once it logs that it is serving."""
        assert self.proc is None or self.proc.returncode is not None, "already running"
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "facilitair.server",
            *self.args,
            env=self.env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # its own process group: a kill reaches the workers it starts too
        )
        self.proc = proc
        self.starts += 1
        port: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(self._read_log(proc, port, self.starts))
        self.port = await asyncio.wait_for(port, START_GUARD)
        return self.port

    async def _read_log(self, proc: asyncio.subprocess.Process, port: asyncio.Future[int], start: int) -> None:
        """Keep the log and find the "serving" line; drain stderr until EOF."""
        assert proc.stderr is not None
        async for raw in proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            self.log.append(f"[{start}] {line}")
            self._logged.set()
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict) and record.get("event") == "serving" and not port.done():
                    self.http_port = int(record.get("http_port") or 0)
                    port.set_result(int(record["port"]))
        if not port.done():
            port.set_exception(AssertionError("the server exited before serving:\n" + "\n".join(self.log[-30:])))

    @property
    def pid(self) -> int:
        """The running process's id."""
        assert self.proc is not None
        return self.proc.pid

    def pause(self) -> None:
        """SIGSTOP: the process stops dead, holding its connections and leases, as a stalled machine does."""
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT."""
        os.kill(self.pid, signal.SIGCONT)

    async def kill(self) -> None:
        """SIGKILL the server (and any process it started) and wait for it to be gone."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            await self.proc.wait()
        if self._reader is not None:
            await self._reader

    async def terminate(self) -> int:
        """SIGTERM (a graceful stop) and the exit code."""
        assert self.proc is not None
        self.proc.terminate()
        code = await asyncio.wait_for(self.proc.wait(), START_GUARD)
        if self._reader is not None:
            await self._reader
        return code

    async def until_logged(self, event: str, *, count: int = 1, within: float = START_GUARD) -> dict[str, Any]:
        """Wait (`within` is a hang guard) until the server has logged `event` `count` times; the last record."""
        async with asyncio.timeout(within):
            while len(found := self.records(event)) < count:
                self._logged.clear()
                await self._logged.wait()
        return found[count - 1]

    def records(self, event: str) -> list[dict[str, Any]]:
        """The JSON log records of one event, across starts."""
        found = []
        for line in self.log:
            with contextlib.suppress(ValueError):
                record = json.loads(line.partition(" ")[2])
                if isinstance(record, dict) and record.get("event") == event:
                    found.append(record)
        return found


@contextlib.asynccontextmanager
async def server_processes(*envs: Mapping[str, str]) -> AsyncIterator[list[ServerProcess]]:
    """Server processes (not started yet) that are always killed at the end, their logs added to a failure."""
    procs = [ServerProcess(env) for env in envs]
    try:
        yield procs
    except BaseException as exc:
        for n, proc in enumerate(procs):
            exc.add_note(f"server {n} log:\n" + "\n".join(proc.log[-40:]))
        raise
    finally:
        for proc in procs:
            await proc.kill()
