"""Issue 26's remote database: the load on one replica whose PostgreSQL is a network hop away.

`db_rtt`: for each round-trip time asked for (`--db-rtt MS[,MS...]`), a fresh database reached through the
bench's own delay proxy (bench/delay_proxy.py: each way held rtt/2), one `facilitair serve` on it, and the load
(default 100 runs at 10 tokens/s) started all at once (a burst, no ramp): relay latency, time to first event,
runs that failed, tokens missing. The proxy runs in the bench's own process, on its event loop.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

from bench.cluster import Postgres, Served, environment, serving
from bench.delay_proxy import delayed
from bench.lab import Lab
from bench.procs import postgres_pids
from bench.stats import Watched, median
from bench.streaming import LoadShape, load_once

KEYS = (
    "p50_ms",
    "p99_ms",
    "max_ms",
    "first_event_p50_ms",
    "first_event_p99_ms",
    "delivered_tokens_per_s",
    "tokens_missing",
    "failed_runs",
)


async def db_rtt(lab: Lab, pg: Postgres, shape: LoadShape, rtts: list[float], *, repeats: int) -> dict[str, Any]:
    """The burst load at each RTT, `repeats` times each; medians per RTT."""
    burst = dataclasses.replace(shape, burst=True)
    out: dict[str, Any] = {}
    for rtt in rtts:

        @contextlib.asynccontextmanager
        async def serve(label: str, rtt: float = rtt) -> AsyncIterator[Served]:
            async with pg.database() as store, delayed(store["FACILITAIR_DATABASE_URL"], rtt) as (url, _proxy):
                env = environment(lab.openai_url, f"rtt{rtt:g}", {"FACILITAIR_DATABASE_URL": url})
                async with serving(env, lab.workdir) as served:
                    yield served

        pg_pids: dict[str, Watched] = {"postgres": postgres_pids}
        rows = [await load_once(lab, burst, bare=False, serve=serve, store=pg_pids) for _ in range(repeats)]
        out[f"{rtt:g}"] = {k: median([r[k] for r in rows]) for k in KEYS} | {"passes": rows}
    return shape.fields() | {"repeats": repeats, "postgres": pg.server.how, "rtt_ms": out}
