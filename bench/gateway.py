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

from bench.cluster import Served
from bench.fake import Directive
from bench.lab import Lab
from bench.lifecycle import rss_per_watcher
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


# Seconds each stage of the live run waits before its first token: time for the watchers to attach.
LIVE_HOLD = 1.0


async def _live_run_cpu(
    server: Served, channels: Channels, http: aiohttp.ClientSession, kind: str, *, watchers: int, directive: Directive
) -> tuple[float, int]:
    """Server CPU seconds over one live run with `watchers` watchers of `kind` attached, and its events."""
    call = channels.stub().Collaborate(collaborate_request(directive))
    first: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    starter = asyncio.create_task(follow(call, stamped=False, on_first=first.set_result))
    run_id = await first
    attached = [asyncio.Event() for _ in range(watchers if kind != "none" else 0)]

    async def watch(flag: asyncio.Event) -> None:
        if kind == "sse":
            async with http.get(f"/v1/runs/{run_id}/events") as response:
                async for line in response.content:
                    if line.startswith(b"id: "):
                        flag.set()
        else:
            async for _ in channels.stub().WatchRun(pb.WatchRunRequest(run_id=run_id)):
                flag.set()

    tasks = [asyncio.create_task(watch(flag)) for flag in attached]
    for flag in attached:
        await flag.wait()
    before = cpu_seconds(server.pid)
    run = await starter
    await asyncio.gather(*tasks)
    return cpu_seconds(server.pid) - before, run.last_seq


async def sse_live_cpu(lab: Lab, *, tokens: int, size: int, watchers: int, repeats: int) -> dict[str, Any]:
    """Server CPU per event per watcher on a live run streamed as fast as possible: (the run's CPU with
    `watchers` watchers of one kind - its CPU with none) / (watchers x events), for SSE and for WatchRun."""
    port = free_port()
    directive = Directive(tokens={"coder": tokens}, size=size, hold=LIVE_HOLD)
    cpu: dict[str, list[float]] = {"none": [], "watchrun": [], "sse": []}
    events = 0
    async with lab.server("sse-live", FACILITAIR_HTTP_LISTEN=f"127.0.0.1:{port}") as server:
        channels = Channels(server.target, watchers + 2)
        await channels.ready()
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}", connector=aiohttp.TCPConnector(limit=0)) as http:
            for _ in range(repeats):
                for kind, samples in cpu.items():
                    spent, events = await _live_run_cpu(
                        server, channels, http, kind, watchers=watchers, directive=directive
                    )
                    samples.append(spent)
        await channels.close()
    m = {k: median(v) for k, v in cpu.items()}
    per = {k: max(0.0, m[k] - m["none"]) * 1e6 / (watchers * events) for k in ("watchrun", "sse")}
    return {
        "events": events,
        "watchers": watchers,
        "repeats": repeats,
        "cpu_s": cpu,
        "us_per_event_per_watcher": per,
        "ratio": ratio(per["sse"], per["watchrun"]),
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
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}", connector=connector) as http:
            result = await rss_per_watcher(server, watchers, lambda attached: _idle_sse(http, run_id, attached))
        starter.cancel()
        await channels.close()
    return result
