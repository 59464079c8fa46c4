"""Percentiles and medians, and the sampler that watches a process's CPU and memory during a window."""

from __future__ import annotations

import asyncio
import contextlib
import math
import statistics
import time
from collections.abc import Callable, Iterable, Sequence

from bench.procs import cpu_seconds, rss_kib

# What the sampler watches under one name: a process (a pid, or "self"), or a group of processes found anew at
# every sample (a server with its workers, every PostgreSQL process), whose CPU and RSS are summed.
Watched = int | str | Callable[[], Iterable[int]]


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), nearest rank; nan for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return float(ordered[rank - 1])


def median(values: Sequence[float]) -> float:
    """The median; nan for no values."""
    return float(statistics.median(values)) if values else math.nan


def ratio(a: float, b: float) -> float:
    """a / b, nan when b is 0 or nan."""
    return a / b if b and not math.isnan(b) else math.nan


class Sampler:
    """Samples processes' RSS every `interval` seconds; reports CPU use and peak RSS over the window.

    A group's CPU is what each of its processes used during the window: a process that joined the group during
    the window (a new PostgreSQL backend) counts from its start; one that left it before the end is not counted.
    """

    def __init__(self, pids: dict[str, Watched], interval: float = 0.25) -> None:
        self._pids = pids
        self._interval = interval
        self._peak: dict[str, int] = dict.fromkeys(pids, 0)
        self._cpu0: dict[str, dict[int | str, float]] = {}
        self._t0 = 0.0
        self._task: asyncio.Task[None] | None = None
        self.result: dict[str, dict[str, float]] = {}

    @staticmethod
    def _members(watched: Watched) -> list[int | str]:
        return list(watched()) if callable(watched) else [watched]

    def _cpu(self, watched: Watched) -> dict[int | str, float]:
        out: dict[int | str, float] = {}
        for pid in self._members(watched):
            with contextlib.suppress(OSError):  # gone between the listing and the read
                out[pid] = cpu_seconds(pid)
        return out

    async def __aenter__(self) -> Sampler:
        self._t0 = time.monotonic()
        self._cpu0 = {name: self._cpu(watched) for name, watched in self._pids.items()}
        self._task = asyncio.create_task(self._sample())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._sample_once()
        elapsed = time.monotonic() - self._t0
        self.result = {}
        for name, watched in self._pids.items():
            before = self._cpu0[name]
            used = sum(cpu - before.get(pid, 0.0) for pid, cpu in self._cpu(watched).items())
            self.result[name] = {"cpu_percent": 100 * used / elapsed, "rss_peak_mib": self._peak[name] / 1024}

    def _sample_once(self) -> None:
        for name, watched in self._pids.items():
            total = 0
            for pid in self._members(watched):
                with contextlib.suppress(OSError, RuntimeError):  # gone, or a zombie (no VmRSS)
                    total += rss_kib(pid)
            self._peak[name] = max(self._peak[name], total)

    async def _sample(self) -> None:
        while True:
            self._sample_once()
            await asyncio.sleep(self._interval)
