"""Issue 13's measurements: the load on each store and process count, a watcher on another replica, takeover.

- `replica_load`: the load scenario (N runs at R tokens/s) against the bare baseline, SQLite with one
  process, and PostgreSQL with `--workers 1` and `--workers 2`, each started as `facilitair serve` is
  (bench/cluster.py), a fresh database per pass. CPU per relayed token counts every server process and every
  PostgreSQL process.
- `cross_watch`: runs started on replica A, each followed by its own Collaborate stream (a watcher on the
  owner, the in-process fast path) and by a WatchRun on replica B (replay, then LISTEN/NOTIFY); the relay
  latency of both over the same steady window.
- `takeover`: a run streaming on A, watched on B; A is SIGKILLed; the time from the kill to B's
  `attempt_reset` (B claimed the run after its lease ran out and resumed it), over many kills.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from bench.cluster import Postgres, Served, environment, serving, start
from bench.fake import Directive
from bench.lab import Lab
from bench.load import Channels, Followed, collaborate_request, follow
from bench.procs import postgres_pids
from bench.stats import Watched, median, percentile, ratio
from bench.streaming import CODER_STAGE, STAGES, LoadShape, in_window, load_once
from facilitair.v1 import orchestrator_pb2 as pb

# The configurations compared, in the order each repeat runs them.
CONFIGS = ("baseline", "sqlite", "postgres_workers_1", "postgres_workers_2")
SUMMARY_KEYS = (
    "p50_ms",
    "p99_ms",
    "max_ms",
    "delivered_tokens_per_s",
    "tokens_missing",
    "failed_runs",
    "cpu_us_per_token",
    "rss_per_run_kib",
)


class _Servers:
    """Starts each configuration's fresh server (new SQLite file or new PostgreSQL database) per pass."""

    def __init__(self, lab: Lab, pg: Postgres) -> None:
        self._lab = lab
        self._pg = pg
        self._n = itertools.count()

    @contextlib.asynccontextmanager
    async def sqlite(self, label: str) -> AsyncIterator[Served]:
        """`facilitair serve --db FILE`, one process."""
        db = self._lab.workdir / f"{label}-{next(self._n)}.sqlite3"
        env = environment(self._lab.openai_url, "sqlite", {"FACILITAIR_DB": str(db)})
        async with serving(env, self._lab.workdir) as served:
            yield served

    def postgres(self, workers: int) -> Any:
        """`facilitair serve --database-url URL --workers N`, on a new database."""

        @contextlib.asynccontextmanager
        async def serve(label: str) -> AsyncIterator[Served]:
            async with self._pg.database() as store:
                env = environment(self._lab.openai_url, f"pg{workers}", store)
                async with serving(env, self._lab.workdir, workers=workers) as served:
                    yield served

        return serve


async def replica_load(lab: Lab, pg: Postgres, shape: LoadShape, *, repeats: int) -> dict[str, Any]:
    """The load on every configuration, `repeats` times each, interleaved; medians."""
    servers = _Servers(lab, pg)
    passes: dict[str, list[dict[str, Any]]] = {c: [] for c in CONFIGS}
    for _ in range(repeats):
        passes["baseline"].append(await load_once(lab, shape, bare=True))
        passes["sqlite"].append(await load_once(lab, shape, bare=False, serve=servers.sqlite))
        for workers in (1, 2):
            serve = servers.postgres(workers)
            pg_pids: dict[str, Watched] = {"postgres": postgres_pids}
            passes[f"postgres_workers_{workers}"].append(
                await load_once(lab, shape, bare=False, serve=serve, store=pg_pids)
            )

    def summary(rows: list[dict[str, Any]]) -> dict[str, float]:
        out = {k: median([r[k] for r in rows]) for k in SUMMARY_KEYS}
        for name in ("server", "postgres"):
            if name in rows[0]["processes"]:
                out[f"{name}_cpu_percent"] = median([r["processes"][name]["cpu_percent"] for r in rows])
        return out

    configs = {c: summary(rows) for c, rows in passes.items()}
    bare_cpu = configs["baseline"]["cpu_us_per_token"]
    for c in CONFIGS[1:]:
        configs[c]["cpu_ratio"] = ratio(configs[c]["cpu_us_per_token"], bare_cpu)
    return shape.fields() | {
        "repeats": repeats,
        "postgres": pg.server.how,
        "configs": configs,
        "passes": passes,
    }


async def _cross_once(lab: Lab, pg: Postgres, shape: LoadShape) -> dict[str, Any]:
    per_run = max(1, round(shape.rate * shape.seconds / STAGES))
    directive = Directive(default_tokens=per_run, rate=shape.rate, size=shape.size)
    async with pg.database() as store, contextlib.AsyncExitStack() as stack:
        a = await stack.enter_async_context(serving(environment(lab.openai_url, "a", store), lab.workdir))
        b = await stack.enter_async_context(serving(environment(lab.openai_url, "b", store), lab.workdir))
        on_a, on_b = Channels(a.target, shape.runs), Channels(b.target, shape.runs)
        await on_a.ready()
        await on_b.ready()
        remote: list[asyncio.Task[Followed]] = []

        def watch_on_b(run_id: str) -> None:
            call = on_b.stub().WatchRun(pb.WatchRunRequest(run_id=run_id))
            remote.append(asyncio.create_task(follow(call, stamped=True)))

        async def one(i: int) -> Followed:
            await asyncio.sleep(i * shape.ramp / shape.runs)
            call = on_a.stub().Collaborate(collaborate_request(directive))
            return await follow(call, stamped=True, on_first=watch_on_b)

        owners = [asyncio.create_task(one(i)) for i in range(shape.runs)]
        await asyncio.sleep(shape.ramp + min(1.0, shape.seconds / 4))
        start_ns = time.time_ns()
        await asyncio.wait(owners, return_when=asyncio.FIRST_COMPLETED)
        end_ns = time.time_ns()
        owned = await asyncio.gather(*owners)
        watched = await asyncio.gather(*remote)
        await on_a.close()
        await on_b.close()
    owner, other = in_window(owned, start_ns, end_ns), in_window(watched, start_ns, end_ns)
    last_seq = {o.run_id: o.last_seq for o in owned}
    gaps = sum(1 for w in watched if w.last_seq != last_seq.get(w.run_id))
    return {
        "owner_p50_ms": percentile(owner, 50) / 1e6,
        "owner_p99_ms": percentile(owner, 99) / 1e6,
        "remote_p50_ms": percentile(other, 50) / 1e6,
        "remote_p99_ms": percentile(other, 99) / 1e6,
        "samples": len(other),
        "remote_short": gaps + shape.runs - len(watched),
        "incomplete_runs": sum(1 for o in owned if o.terminal != "run_completed"),
    }


async def cross_watch(lab: Lab, pg: Postgres, shape: LoadShape, *, repeats: int) -> dict[str, Any]:
    """Watchers on the owner and on another replica, same runs, same window; medians over repeats."""
    rows = [await _cross_once(lab, pg, shape) for _ in range(repeats)]
    out: dict[str, Any] = {k: median([r[k] for r in rows]) for k in rows[0]}
    out["remote_minus_owner_p50_ms"] = out["remote_p50_ms"] - out["owner_p50_ms"]
    return (
        {"runs": shape.runs, "rate": shape.rate, "repeats": repeats, "postgres": pg.server.how} | out | {"passes": rows}
    )


async def _next(call: Any) -> pb.RunEvent:
    """The next event of a stream that must go on."""
    message = await call.read()
    if message is grpc.aio.EOF:  # type: ignore[attr-defined]  # (missing from the stubs)
        raise RuntimeError("the stream ended before the takeover was seen")
    event: pb.RunEvent = message.event
    return event


async def _one_kill(lab: Lab, store: dict[str, str], b: Served, lease: float, *, n: int, rng: random.Random) -> float:
    """Start a run on a new replica A, watch it on B, SIGKILL A once the Coder streams; seconds to takeover."""
    env = environment(lab.openai_url, f"a{n}", store, FACILITAIR_LEASE_SECONDS=f"{lease:g}")
    a = await start(env, lab.workdir)
    on_a, on_b = Channels(a.target, 1), Channels(b.target, 1)
    try:
        directive = Directive(tokens={"coder": 100_000}, default_tokens=1, rate=20.0)
        collaborate = on_a.stub().Collaborate(collaborate_request(directive))
        run_id = (await _next(collaborate)).run_id
        watch = on_b.stub().WatchRun(pb.WatchRunRequest(run_id=run_id))
        while True:
            event = await _next(watch)
            if event.WhichOneof("payload") == "token_delta" and event.token_delta.stage == CODER_STAGE:
                break
        # At a random point of A's renewal period and of B's claim period: a kill at a fixed phase (each round
        # starts when B's previous claim ends) would measure one point of the range, not its spread.
        await asyncio.sleep(rng.uniform(0, lease / 3))
        a.kill()
        killed = time.monotonic()
        while (await _next(watch)).WhichOneof("payload") != "attempt_reset":
            pass
        took = time.monotonic() - killed
        collaborate.cancel()
        await on_b.stub().CancelRun(pb.CancelRunRequest(run_id=run_id))
        while (await _next(watch)).WhichOneof("payload") != "run_cancelled":
            pass
        return took
    finally:
        await on_a.close()
        await on_b.close()
        await a.stop()


async def takeover(lab: Lab, pg: Postgres, *, kills: int, lease: float) -> dict[str, Any]:
    """Seconds from SIGKILL of a run's owner to the takeover seen by a watcher on another replica."""
    times: list[float] = []
    rng = random.Random(13)  # the same kill moments in every bench run
    async with pg.database() as store:
        env = environment(lab.openai_url, "b", store, FACILITAIR_LEASE_SECONDS=f"{lease:g}")
        async with serving(env, lab.workdir) as b:
            for n in range(kills):
                async with asyncio.timeout(3 * lease + 60):
                    times.append(await _one_kill(lab, store, b, lease, n=n, rng=rng))
    return {
        "kills": kills,
        "lease_s": lease,
        "postgres": pg.server.how,
        "p50_s": median(times),
        "worst_s": max(times),
        "best_s": min(times),
        "samples_s": times,
    }
