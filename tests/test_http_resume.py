"""The SSE stream across a SIGKILLed server and across replicas: real server processes, an HTTP client reading.

A client that resumes with Last-Event-ID after its server was killed and started again on the same store gets
every seq exactly once; a run driven by replica A streams through replica B's gateway (the same remote watch
as WatchRun).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from facilitair.client import Client
from facilitair.v1 import orchestrator_pb2 as pb
from tests.fakes.providers import FakeOpenAI
from tests.harness.events import RunStream, kind
from tests.harness.http import Message, events_of, messages
from tests.harness.processes import ServerProcess, clean_environment, free_port, server_processes
from tests.harness.scripts import default_replies, held, scripted
from tests.harness.stores import Target
from tests.harness.team import TASK

HANG_GUARD = 60.0


def environment(store: Target | None, fake: FakeOpenAI, http_port: int, **settings: str) -> dict[str, str]:
    """A server process's environment: every agent on the fake, no silence events, the gateway on `http_port`."""
    return clean_environment(
        FACILITAIR_LISTEN="127.0.0.1:0",
        FACILITAIR_HTTP_LISTEN=f"127.0.0.1:{http_port}",
        FACILITAIR_THINKING_INTERVAL="60",
        FACILITAIR_HEARTBEAT_INTERVAL="60",
        FACILITAIR_MODEL="openai:gpt-4.1-mini",
        OPENAI_API_KEY=fake.api_key,
        OPENAI_BASE_URL=fake.base_url,
        **(store.environment() if store is not None else {}),
        **settings,
    )


def coder_streaming(event: pb.RunEvent) -> bool:
    return kind(event) == "token_delta" and event.token_delta.stage == 2


async def read_until_coder(response: aiohttp.ClientResponse) -> list[Message]:
    """Messages until the first of the coder's tokens."""
    got: list[Message] = []
    async for message in messages(response):
        got.append(message)
        if message.data and coder_streaming(message.run_event()):
            return got
    raise AssertionError("the stream ended before the coder streamed")


async def collect_into(got: list[Message], response: aiohttp.ClientResponse) -> None:
    """Append the stream's messages to `got` until it ends (or breaks)."""
    async for message in messages(response):
        got.append(message)


@pytest.mark.both_stores
async def test_a_stream_resumed_after_the_server_was_killed_gets_every_seq_once(store_target: Target) -> None:
    coder, _never = held(default_replies()["coder"], after=2)
    script = scripted(coder=[coder, default_replies()["coder"]])
    http_port = free_port()
    async with FakeOpenAI(script) as fake, server_processes(environment(store_target, fake, http_port)) as (proc,):
        await proc.start()
        assert proc.http_port == http_port
        url = f"http://127.0.0.1:{http_port}"
        async with aiohttp.ClientSession(url) as http:
            async with http.post("/v1/runs", json={"task": TASK}) as response:
                run_id = (await response.json())["run"]["runId"]
            async with http.get(f"/v1/runs/{run_id}/events") as response:
                before = await read_until_coder(response)
                await proc.kill()  # mid-stage, the coder's reply held
                with pytest.raises(aiohttp.ClientError):  # the connection breaks: whatever came before is kept
                    await collect_into(before, response)
            await proc.start()
            last_id = [m.id for m in before if m.id is not None][-1]
            async with http.get(f"/v1/runs/{run_id}/events", headers={"Last-Event-ID": last_id}) as response:
                after = [m async for m in messages(response)]
            async with http.get(f"/v1/runs/{run_id}/events") as response:
                whole = await events_of(response)
    received = [m.run_event() for m in before + after if m.data]
    assert [e.seq for e in received] == list(range(1, len(received) + 1))  # every seq once, in order
    assert received == whole
    assert [kind(e) for e in received].count("run_completed") == 1
    assert kind(received[-1]) == "run_completed"
    assert after[0].retry is not None


async def test_a_run_driven_by_replica_a_streams_through_replica_b(pg_url: str, tmp_path: Path) -> None:
    coder, release = held(default_replies()["coder"], after=2)
    store = Target("postgresql", tmp_path / "unused.db", pg_url)
    ports = free_port(), free_port()
    async with FakeOpenAI(scripted(coder=coder)) as fake, server_processes(
        environment(store, fake, ports[0], FACILITAIR_REPLICA_ID="a"),
        environment(store, fake, ports[1], FACILITAIR_REPLICA_ID="b"),
    ) as (a, b):
        await asyncio.gather(a.start(), b.start())
        async with Client(a.target) as on_a, aiohttp.ClientSession(f"http://127.0.0.1:{ports[1]}") as on_b:
            started = RunStream(on_a.collaborate(TASK))
            live = await started.until(coder_streaming)
            async with on_b.get(f"/v1/runs/{live.run_id}") as response:
                assert (await response.json())["run"]["replicaId"] == "a"
            async with on_b.get(f"/v1/runs/{live.run_id}/events") as response:
                stream = messages(response)
                through_b = []
                async for message in stream:
                    if message.data:
                        through_b.append(message.run_event())
                        if through_b[-1].seq == live.seq:
                            break
                release.set()
                through_b += [m.run_event() async for m in stream if m.data]
            from_a = await started.to_end(within=HANG_GUARD)
    assert [e.SerializeToString(deterministic=True) for e in through_b] == [
        e.SerializeToString(deterministic=True) for e in from_a
    ]
    assert kind(through_b[-1]) == "run_completed"
    assert b.records("run_created") == []


async def test_every_worker_serves_the_gateway_on_one_port(pg_url: str, tmp_path: Path) -> None:
    store = Target("postgresql", tmp_path / "unused.db", pg_url)
    async with FakeOpenAI(scripted()) as fake:
        env = environment(store, fake, 0)  # port 0: `serve --workers` picks one port for all its workers
        workers = ServerProcess(env, args=("--workers", "2"))
        try:
            await workers.start()
            await workers.until_logged("serving", count=2)
            serving = workers.records("serving")
            assert {r["http_port"] for r in serving} == {workers.http_port} != {0}
            # Each new connection goes to either worker (the kernel's choice): a fresh connection per request.
            seen: set[str] = set()
            connector = aiohttp.TCPConnector(force_close=True)
            async with aiohttp.ClientSession(f"http://127.0.0.1:{workers.http_port}", connector=connector) as http:
                for _ in range(200):
                    async with http.get("/v1/info") as response:
                        seen.add((await response.json())["replicaId"])
                    if len(seen) == 2:
                        break
            assert seen == {r["replica"] for r in serving}
            assert await workers.terminate() == 0
        finally:
            await workers.kill()
