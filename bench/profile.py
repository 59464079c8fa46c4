"""Profile the server process with py-spy while a scenario runs, and summarise where its time went.

`py-spy record --pid` samples without stopping the process (`--nonblocking`); the raw output (one line per
distinct stack: frames separated by `;`, then a count) is kept in bench/results/ and summarised here as the
share of samples by the library of the innermost frame, by stage of a relayed token's path (`_STAGES`), and the top
functions by self and inclusive samples.
"""

from __future__ import annotations

import asyncio
import collections
import shutil
import sys
from pathlib import Path
from typing import Any

# The first of these found in a frame's file names its library; order matters (facilitair before grpc).
_LIBRARIES = (
    ("facilitair/server", "facilitair"),
    ("facilitair/v1", "facilitair stubs"),
    ("openai/", "openai SDK"),
    ("httpx", "httpx"),
    ("httpcore", "httpx"),
    ("anyio", "anyio"),
    ("pydantic", "pydantic"),
    ("grpc", "grpc"),
    ("google/protobuf", "protobuf"),
    ("structlog", "structlog"),
    ("sqlite3", "sqlite3"),
    ("asyncio", "asyncio"),
    ("concurrent/futures", "threads"),
    ("threading", "threads"),
    ("json", "json"),
)


def py_spy() -> str | None:
    """The py-spy executable, next to this Python or on PATH."""
    return shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")


async def record(pid: int, path: Path) -> asyncio.subprocess.Process:
    """Start sampling `pid` into `path` (raw format) until the returned process is interrupted."""
    exe = py_spy()
    if exe is None:
        raise RuntimeError("py-spy is not installed (pip install py-spy)")
    return await asyncio.create_subprocess_exec(
        exe, "record", "--pid", str(pid), "--format", "raw", "--output", str(path), "--rate", "200",
        "--nonblocking", "--threads",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip


async def finish(proc: asyncio.subprocess.Process) -> None:
    """Stop sampling; py-spy writes its file on SIGINT."""
    if proc.returncode is None:
        proc.send_signal(2)
    await asyncio.wait_for(proc.wait(), 30)


# Where a relayed token's time goes: a sample belongs to the first of these stages found in its stack, innermost
# frame first (so the provider's read inside a stage runner counts as the read, not the stage). A sample of the
# event loop thread in none of them is the loop's own work: uvloop, and grpc's sends (Cython, no Python frame).
_STAGES = (
    ("store writer thread (SQLite)", ("sqlite_batch.py", "store/sqlite.py")),
    ("watcher: servicer and guard", ("servicer.py", "guard.py")),
    ("watcher: event log watch, channel, fan-out", ("EventLog.watch", "channel.py", "_fan_out", "relay.py")),
    ("event log writer loop (batch, serialise)", ("_write_loop", "EventLog._write")),
    ("event built and appended (recorder)", ("recorder.py", "wire.py", "EventLog.append")),
    ("provider chunk parsed (json)", ("chat_chunks.py",)),
    ("provider stream read (aiohttp)", ("openai_provider.py", "aiohttp", "providers/transport.py")),
    ("stage boundaries (request built, attempts, runs)", (
        "attempts.py", "orchestrator.py", "openai/", "httpx", "pydantic", "runs/", "pricing.py", "fences.py",
    )),
)  # fmt: skip


def _stage(frames: list[str]) -> str:
    for frame in reversed(frames):
        for name, needles in _STAGES:
            if any(n in frame for n in needles):
                return name
    return "other threads" if any("threading.py" in f for f in frames) else "event loop itself (uvloop, grpc sends)"


def _library(frame: str) -> str:
    for needle, name in _LIBRARIES:
        if needle in frame:
            return name
    return "other"


def _short(frame: str) -> str:
    """`func (path/to/file.py:12)` as `func (file.py)`."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit('/', 1)[-1].split(':')[0]})" if where else name


def summarise(path: Path, top: int = 15) -> dict[str, Any]:
    """Shares of samples by library (innermost frame), and the top functions by self and inclusive share."""
    by_library: collections.Counter[str] = collections.Counter()
    self_: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    stages: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if not f.startswith(("thread (", "process "))]
        if not frames:
            continue
        total += count
        by_library[_library(frames[-1])] += count
        stages[_stage(frames)] += count
        self_[_short(frames[-1])] += count
        for name in {_short(f) for f in frames}:
            inclusive[name] += count

    def shares(counter: collections.Counter[str], n: int) -> list[tuple[str, float]]:
        return [(k, round(100 * v / total, 1)) for k, v in counter.most_common(n)]

    return {
        "samples": total,
        "by_library_percent": shares(by_library, len(by_library)),
        "token_path_percent": shares(stages, len(stages)),
        "top_self_percent": shares(self_, top),
        "top_inclusive_percent": shares(inclusive, top),
    }
