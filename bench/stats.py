"""Percentiles and medians, and the sampler that watches a process's CPU and memory during a window."""

from __future__ import annotations

import asyncio
import contextlib
import math
import statistics
import time
from collections.abc import Sequence

from bench.procs import cpu_seconds, rss_kib


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
    """Samples processes' RSS every `interval` seconds; reports CPU use and peak RSS over the window."""

    def __init__(self, pids: dict[str, int | str], interval: float = 0.25) -> None:
        self._pids = pids
        self._interval = interval
        self._peak: dict[str, int] = dict.fromkeys(pids, 0)
        self._cpu0: dict[str, float] = {}
        self._t0 = 0.0
        self._task: asyncio.Task[None] | None = None
        self.result: dict[str, dict[str, float]] = {}

    async def __aenter__(self) -> Sampler:
        self._t0 = time.monotonic()
        self._cpu0 = {name: cpu_seconds(pid) for name, pid in self._pids.items()}
        self._task = asyncio.create_task(self._sample())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._sample_once()
        elapsed = time.monotonic() - self._t0
        self.result = {
            name: {
                "cpu_percent": 100 * (cpu_seconds(pid) - self._cpu0[name]) / elapsed,
                "rss_peak_mib": self._peak[name] / 1024,
            }
            for name, pid in self._pids.items()
        }

    def _sample_once(self) -> None:
        for name, pid in self._pids.items():
            self._peak[name] = max(self._peak[name], rss_kib(pid))

    async def _sample(self) -> None:
        while True:
            self._sample_once()
            await asyncio.sleep(self._interval)
