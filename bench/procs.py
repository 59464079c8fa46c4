"""Child processes of the harness (server, baseline, fake provider) and what /proc says about them."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# The repository root: children import `bench` and `tests.fakes` from it, wherever the harness was started.
ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT = 30.0


def cpu_seconds(pid: int | str = "self") -> float:
    """User plus system CPU time a process has used, in seconds (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        # The command name may hold spaces; the fields we want come after its closing parenthesis.
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_kib(pid: int | str = "self") -> int:
    """Resident set size of a process, in KiB (/proc/PID/status)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def _parent_and_name(pid: int) -> tuple[int, str]:
    with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
        head, _, rest = f.read().rpartition(")")
    return int(rest.split()[1]), head.partition("(")[2]


def _processes() -> list[tuple[int, int, str]]:
    """(pid, parent pid, command name) of every process that can be read now."""
    out = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                parent, name = _parent_and_name(int(entry.name))
            except (OSError, ValueError, IndexError):
                continue  # gone meanwhile
            out.append((int(entry.name), parent, name))
    return out


def with_descendants(pid: int) -> list[int]:
    """A process and every process below it (a server and its workers)."""
    children: dict[int, list[int]] = {}
    for child, parent, _ in _processes():
        children.setdefault(parent, []).append(child)
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo += children.get(current, [])
    return out


def postgres_pids() -> list[int]:
    """Every PostgreSQL process on this machine (server, backends, background writers): their CPU is the
    store's cost. On the machines measured nothing else uses that PostgreSQL during a run."""
    return [pid for pid, _, name in _processes() if name == "postgres"]


@dataclass
class Child:
    """A harness child process that prints `READY <port>` once it listens."""

    name: str
    proc: asyncio.subprocess.Process
    port: int

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self.proc.pid

    @property
    def target(self) -> str:
        """host:port of the child's listening socket."""
        return f"127.0.0.1:{self.port}"

    def rss_kib(self) -> int:
        """The child's resident memory now."""
        return rss_kib(self.pid)

    def cpu_seconds(self) -> float:
        """The child's CPU time so far."""
        return cpu_seconds(self.pid)

    def pids(self) -> list[int]:
        """The processes that are this child (one)."""
        return [self.pid]

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not exit in 10 s."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


async def spawn(name: str, module: str, *args: str) -> Child:
    """Start `python -m module args...` and wait for its `READY <port>` line."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": path}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", module, *args, stdout=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL, env=env
    )
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(READY_TIMEOUT):
            while True:
                line = (await proc.stdout.readline()).decode()
                if not line:
                    raise RuntimeError(f"{name} exited before it was ready (code {await proc.wait()})")
                if line.startswith("READY "):
                    return Child(name, proc, int(line.split()[1]))
    except BaseException:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise


def announce_ready(port: int) -> None:
    """What a child prints once it listens (the harness reads it), then stdout is left alone."""
    print(f"READY {port}", flush=True)
