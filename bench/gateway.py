"""Issue 23's goals for the HTTP gateway: server CPU per event of an SSE watcher against a WatchRun watcher
(goal <= 1.5x), and server memory per idle SSE watcher (goal < 50 KB).

CPU: one finished run of about `events` events is replayed from seq 1, alternately over WatchRun and over
`GET /v1/runs/{id}/events`, each read to its end by this process; the server's CPU time (user + system, from
/proc) over each replay, divided by the events sent, is the cost per event of that kind of watcher. Both read
the same log from the same store, so the difference is what each protocol costs: protobuf bytes on HTTP/2
against a JSON line on HTTP/1.1. Memory: as the `watchers` scenario, with SSE connections to a held run.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from bench.fake import Directive
from bench.lab import Lab
from bench.lifecycle import SETTLE_SECONDS
from bench.load import Channels, collaborate_request, follow
from bench.procs import cpu_seconds
from bench.stats import median, ratio
from facilitair.v1 import orchestrator_pb2 as pb
from tests.harness.processes import free_port

# Events of a bench run besides the Coder's tokens (bench/lifecycle.py).
_OTHER_EVENTS = 2 + 5 * 3 + 4


async def _sse_to_end(http: aiohttp.ClientSession, run_id: str) -> int:
    """Read a run's event stream to its end; the number of events."""
    events = 0
    async with http.get(f"/v1/runs/{run_id}/events") as response:
        async for line in response.content:
            if line.startswith(b"id: "):
                events += 1
    return events


async def sse_cpu(lab: Lab, *, events: int, size: int, repeats: int) -> dict[str, Any]:
    """Server CPU per event sent: an SSE watcher against a WatchRun watcher, replaying one finished run."""
    port = free_port()
    directive = Directive(tokens={"coder": max(1, events - _OTHER_EVENTS)}, size=size)
    us: dict[str, list[float]] = {"watchrun": [], "sse": []}
    async with lab.server("sse-cpu", FACILITAIR_HTTP_LISTEN=f"127.0.0.1:{port}") as server:
        channels = Channels(server.target, 1)
        await channels.ready()
        run = await follow(channels.stub().Collaborate(collaborate_request(directive)), stamped=False)
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:
            await _sse_to_end(http, run.run_id)  # warm up both paths (first-use imports and allocations)
            await follow(channels.stub().WatchRun(pb.WatchRunRequest(run_id=run.run_id)), stamped=False)
            for _ in range(repeats):
                before = cpu_seconds(server.pid)
                got = await follow(channels.stub().WatchRun(pb.WatchRunRequest(run_id=run.run_id)), stamped=False)
                us["watchrun"].append((cpu_seconds(server.pid) - before) * 1e6 / got.messages)
                before = cpu_seconds(server.pid)
                sent = await _sse_to_end(http, run.run_id)
                assert sent == run.last_seq, "the event stream ended early"
                us["sse"].append((cpu_seconds(server.pid) - before) * 1e6 / sent)
        await channels.close()
    m = {k: median(v) for k, v in us.items()}
    return {
        "events": run.last_seq,
        "repeats": repeats,
        "us_per_event": m,
        "samples_us": us,
        "ratio": ratio(m["sse"], m["watchrun"]),
    }


async def _idle_sse(http: aiohttp.ClientSession, run_id: str, attached: asyncio.Event) -> None:
    """Follow a held run over SSE: the replay arrives, then nothing but the odd thinking event."""
    async with http.get(f"/v1/runs/{run_id}/events") as response:
        async for line in response.content:
            if line.startswith(b"id: "):
                attached.set()


async def sse_idle_watchers(lab: Lab, *, watchers: int) -> dict[str, Any]:
    """Server RSS added per SSE watcher of a live run that has nothing to say (its provider holds)."""
    port = free_port()
    async with lab.server("sse-idle", FACILITAIR_HTTP_LISTEN=f"127.0.0.1:{port}") as server:
        channels = Channels(server.target, 1)
        await channels.ready()
        starter = channels.stub().Collaborate(collaborate_request(Directive(hold=-1), cancel_on_disconnect=True))
        first = await anext(aiter(starter))
        run_id = first.event.run_id
        tasks: list[asyncio.Task[None]] = []
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}", connector=connector) as http:

            async def attach(n: int) -> None:
                flags = [asyncio.Event() for _ in range(n)]
                tasks.extend(asyncio.create_task(_idle_sse(http, run_id, f)) for f in flags)
                for flag in flags:
                    await flag.wait()
                await asyncio.sleep(SETTLE_SECONDS)

            await attach(min(20, watchers))  # warm up: first-use allocations are not per watcher
            before = server.rss_kib()
            await attach(watchers)
            after = server.rss_kib()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        starter.cancel()
        await channels.close()
    return {
        "watchers": watchers,
        "rss_before_mib": before / 1024,
        "rss_after_mib": after / 1024,
        "kib_per_watcher": (after - before) / watchers,
    }
