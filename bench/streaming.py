"""Goals 1 and 2: tokens per second for one run, and relay latency under many concurrent runs."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from bench.baseline import Spec
from bench.fake import Directive
from bench.lab import Lab
from bench.load import RUNS_PER_CONNECTION, Channels, Followed, collaborate_request, follow
from bench.stats import Sampler, Watched, median, percentile, ratio
from facilitair.v1 import orchestrator_pb2 as pb

CODER_STAGE = 2
STAGES = 5


def _rate(f: Followed, stage: int) -> float:
    """Tokens per second of one stage: its tokens over the time from the call to its last token.

    From the call, not from the stage's first message: a coalesced stage arrives in a few large messages, and
    under a busy loop even stage_started may arrive with them. The server's time also covers creating the run
    and the one-token stages before the Coder's (a few tens of ms against seconds of streaming).
    """
    s = f.stages[stage]
    return s.tokens / max((s.last_ns - f.call_ns) / 1e9, 1e-9)


async def throughput(lab: Lab, *, tokens: int, size: int, repeats: int) -> dict[str, Any]:
    """One run whose Coder streams `tokens` as fast as the fake can, per token and coalesced, vs the bare RPC."""
    directive = Directive(tokens={"coder": tokens}, size=size)
    samples: dict[str, list[float]] = {"server": [], "server_coalesced": [], "baseline": []}
    messages: list[float] = []
    cpu: list[dict[str, dict[str, float]]] = []
    async with lab.server("throughput") as server:
        channels = Channels(server.target, 1)
        bare = Channels(lab.baseline.target, 1)
        await channels.ready()
        await bare.ready()
        await follow(channels.stub().Collaborate(collaborate_request(directive)), stamped=False)  # warm up
        for _ in range(repeats):
            async with Sampler({"server": server.pid, "fake": lab.fake.pid, "client": "self"}) as sampler:
                plain = await follow(channels.stub().Collaborate(collaborate_request(directive)), stamped=False)
            cpu.append(sampler.result)
            samples["server"].append(_rate(plain, CODER_STAGE))
            joined = await follow(
                channels.stub().Collaborate(collaborate_request(directive, coalesce=True)), stamped=False
            )
            samples["server_coalesced"].append(_rate(joined, CODER_STAGE))
            coder = joined.stages[CODER_STAGE]
            messages.append(coder.tokens / coder.messages)
            base = await follow(
                bare.stub().WatchRun(pb.WatchRunRequest(run_id=Spec(tokens, size).encode())), stamped=False
            )
            samples["baseline"].append(_rate(base, CODER_STAGE))
        await channels.close()
        await bare.close()
    m = {k: median(v) for k, v in samples.items()}
    return {
        "tokens": tokens,
        "size": size,
        "repeats": repeats,
        "tokens_per_s": m,
        "samples": samples,
        "ratio_server": ratio(m["server"], m["baseline"]),
        "ratio_coalesced": ratio(m["server_coalesced"], m["baseline"]),
        "tokens_per_coalesced_message": median(messages),
        "cpu_percent_per_token_run": {p: median([c[p]["cpu_percent"] for c in cpu]) for p in cpu[0]},
    }


@dataclass(frozen=True)
class LoadShape:
    """`runs` runs at `rate` tokens/s each, streaming for about `seconds` (spread over the 5 stages)."""

    runs: int
    rate: float
    seconds: float
    size: int
    # All runs started at the same moment (no ramp): a burst of starts (bench/remote_db.py).
    burst: bool = False

    def fields(self) -> dict[str, float]:
        """The shape, for a result."""
        return {"runs": self.runs, "rate": self.rate, "seconds": self.seconds, "size": self.size}

    @property
    def ramp(self) -> float:
        """Starts are spread over this many seconds, as real clients do not all call in the same millisecond."""
        return 0.0 if self.burst else min(5.0, self.runs / 100)


class Served(Protocol):
    """What a load pass needs of the thing under test: where it listens, its processes, their memory."""

    @property
    def target(self) -> str: ...

    def pids(self) -> list[int]: ...

    def rss_kib(self) -> int: ...


# Starts a fresh server under test for one pass (its label names a profile); the harness's own by default.
Serve = Callable[[str], AbstractAsyncContextManager[Served]]


@contextlib.asynccontextmanager
async def _under_test(lab: Lab, label: str, *, bare: bool, serve: Serve | None) -> AsyncIterator[Served]:
    """The baseline (already running), or a fresh server."""
    if bare:
        yield lab.baseline
    elif serve is not None:
        async with serve(label) as server:
            yield server
    else:
        async with lab.server(label) as child:
            yield child


def in_window(results: list[Followed], start_ns: int, end_ns: int) -> list[int]:
    """The relay latencies (ns) of the stamped tokens received between start_ns and end_ns."""
    out: list[int] = []
    for f in results:
        out += [lat for t, lat in zip(f.received_ns, f.latency_ns, strict=True) if start_ns <= t <= end_ns]
    return out


async def load_once(
    lab: Lab,
    shape: LoadShape,
    *,
    bare: bool,
    serve: Serve | None = None,
    store: dict[str, Watched] | None = None,
) -> dict[str, Any]:
    """One load pass against a fresh server (`serve`'s, or the harness's own) or the baseline; latency over the
    steady window. `store` names processes whose CPU is also the server's (PostgreSQL's). Runs share client
    connections `RUNS_PER_CONNECTION` at a time."""
    per_run = max(1, round(shape.rate * shape.seconds / STAGES))
    label = f"load-{shape.runs}x{shape.rate:g}"
    async with _under_test(lab, label, bare=bare, serve=serve) as target:
        channels = Channels(target.target, shape.runs, RUNS_PER_CONNECTION)
        await channels.ready()
        rss_before = target.rss_kib()

        async def one(i: int) -> Followed:
            await asyncio.sleep(i * shape.ramp / shape.runs)
            stub = channels.stub()
            if bare:
                spec = Spec(per_run * STAGES, shape.size, shape.rate)
                return await follow(stub.WatchRun(pb.WatchRunRequest(run_id=spec.encode())), stamped=True)
            directive = Directive(default_tokens=per_run, rate=shape.rate, size=shape.size)
            return await follow(stub.Collaborate(collaborate_request(directive)), stamped=True)

        tasks = [asyncio.create_task(one(i)) for i in range(shape.runs)]
        # The steady window: every run started (and a little more), until the first run ends.
        await asyncio.sleep(shape.ramp + min(1.0, shape.seconds / 4))
        start_ns = time.time_ns()
        watched: dict[str, Watched] = {"server": target.pids, "fake": lab.fake.pid, "client": "self", **(store or {})}
        processes = target.pids()
        if len(processes) > 1:  # each process of the server too, to show how the work spread over them
            watched |= {f"server process {pid}": pid for pid in processes}
        async with Sampler(watched) as sampler:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        end_ns = time.time_ns()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        await channels.close()
    ok = [r for r in results if isinstance(r, Followed)]
    lat = in_window(ok, start_ns, end_ns)
    window = (end_ns - start_ns) / 1e9
    ttfe = [f.time_to_first_event * 1e3 for f in ok]
    # The server's CPU per relayed token: its processes and its store's, over the tokens delivered in the window.
    busy = sum(sampler.result[name]["cpu_percent"] for name in ("server", *(store or {}))) / 100 * window
    return {
        "window_s": window,
        "samples": len(lat),
        "p50_ms": percentile(lat, 50) / 1e6,
        "p99_ms": percentile(lat, 99) / 1e6,
        "max_ms": max(lat, default=0) / 1e6,
        "delivered_tokens_per_s": len(lat) / window if window else 0.0,
        "offered_tokens_per_s": shape.runs * shape.rate,
        # Every token every run was to stream, against what arrived: 0 when nothing was lost or cut short.
        "tokens_missing": per_run * STAGES * shape.runs - sum(f.tokens for f in ok),
        "failed_runs": len(results) - len(ok) + sum(1 for f in ok if not bare and f.terminal != "run_completed"),
        "first_event_p50_ms": percentile(ttfe, 50),
        "first_event_p99_ms": percentile(ttfe, 99),
        "rss_before_mib": rss_before / 1024,
        "rss_per_run_kib": (sampler.result["server"]["rss_peak_mib"] * 1024 - rss_before) / shape.runs,
        "cpu_us_per_token": 1e6 * busy / len(lat) if lat else math.nan,
        "processes": sampler.result,
    }


async def load(lab: Lab, shape: LoadShape, *, repeats: int) -> dict[str, Any]:
    """The bare baseline and the server under the same load, `repeats` times each, interleaved; medians.

    The same passes as the replica scenario's baseline and SQLite configurations (bench/replicas.py): same
    server start, same connections, same order, so that the two agree on the same shape (issue 26).
    """
    server: list[dict[str, Any]] = []
    base: list[dict[str, Any]] = []
    for _ in range(repeats):
        base.append(await load_once(lab, shape, bare=True))
        server.append(await load_once(lab, shape, bare=False))

    def med(rows: list[dict[str, Any]], key: str) -> float:
        return median([r[key] for r in rows])

    keys = (
        "p50_ms",
        "p99_ms",
        "max_ms",
        "delivered_tokens_per_s",
        "first_event_p50_ms",
        "first_event_p99_ms",
        "cpu_us_per_token",
    )
    return shape.fields() | {
        "repeats": repeats,
        "server": {k: med(server, k) for k in (*keys, "rss_per_run_kib", "failed_runs", "tokens_missing")}
        | {"cpu_percent": median([r["processes"]["server"]["cpu_percent"] for r in server])},
        "baseline": {k: med(base, k) for k in keys}
        | {"cpu_percent": median([r["processes"]["server"]["cpu_percent"] for r in base])},
        "ratio_p50": ratio(med(server, "p50_ms"), med(base, "p50_ms")),
        "ratio_p99": ratio(med(server, "p99_ms"), med(base, "p99_ms")),
        "passes": {"server": server, "baseline": base},
    }
