"""Many replicas, one truth: real server processes on one real PostgreSQL database.

Every replica is `python -m facilitair.server` as a child process with a short lease (2 s), so a takeover
happens within seconds; the fake vendor runs in the test's loop and every replica talks to it over HTTP. A
scripted reply that holds mid-stream (until the test releases it) pins the moment a replica is killed, paused
or asked to cancel; waits are on events, with timeouts as hang guards only.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections import Counter
from collections.abc import Sequence
from typing import Any

import pytest

from facilitair.client import Client, RunEvent
from facilitair.v1 import orchestrator_pb2 as pb
from tests.fakes.providers import FakeOpenAI
from tests.harness.events import RunStream, collect, kind
from tests.harness.processes import ServerProcess, clean_environment, server_processes
from tests.harness.scripts import agent_of, default_replies, held, scripted

TASK = "Write a function that reverses a string"
HANG_GUARD = 60.0
LEASE = "2"


def replica(pg_url: str, fake: FakeOpenAI, name: str, **settings: str) -> dict[str, str]:
    """The environment of one replica on the shared database, every agent on the fake."""
    return clean_environment(
        FACILITAIR_DATABASE_URL=pg_url,
        FACILITAIR_REPLICA_ID=name,
        FACILITAIR_LISTEN="127.0.0.1:0",
        FACILITAIR_LEASE_SECONDS=LEASE,
        # No thinking or heartbeat events: a run's log is then the same whoever drives it.
        FACILITAIR_THINKING_INTERVAL="60",
        FACILITAIR_HEARTBEAT_INTERVAL="60",
        FACILITAIR_MODEL="openai:gpt-4.1-mini",
        OPENAI_API_KEY=fake.api_key,
        OPENAI_BASE_URL=fake.base_url,
        **settings,
    )


def wire(events: Sequence[RunEvent]) -> list[bytes]:
    """Events as bytes, to compare exactly."""
    return [e.SerializeToString(deterministic=True) for e in events]


def assert_whole_log(events: Sequence[RunEvent]) -> None:
    """Seqs 1..N with no gap and no duplicate, one run, and one terminal event: the last."""
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert len({e.run_id for e in events}) == 1
    assert kind(events[0]) == "run_started"
    assert [kind(e) for e in events].count("run_completed") == 1
    assert kind(events[-1]) == "run_completed"


def coder_streaming(event: RunEvent) -> bool:
    """The Coder's (held) reply has begun."""
    return kind(event) == "token_delta" and event.token_delta.stage == 2


async def owner_of(procs: Sequence[ServerProcess], run_id: str) -> tuple[ServerProcess, list[ServerProcess]]:
    """The replica driving the run now, and the others."""
    async with Client(procs[0].target) as client:
        owner = (await client.get_run(run_id)).replica_id
    names = [p.env["FACILITAIR_REPLICA_ID"] for p in procs]
    assert owner in names, f"{owner!r} is not one of {names}"
    driving = procs[names.index(owner)]
    return driving, [p for p in procs if p is not driving]


async def test_a_run_started_on_one_replica_is_watched_identically_on_the_others(pg_url: str) -> None:
    coder, release = held(default_replies()["coder"], after=2)
    async with FakeOpenAI(scripted(coder=coder)) as fake, server_processes(
        replica(pg_url, fake, "a"), replica(pg_url, fake, "b"), replica(pg_url, fake, "c")
    ) as (a, b, c):
        await asyncio.gather(a.start(), b.start(), c.start())
        async with Client(a.target) as on_a, Client(b.target) as on_b, Client(c.target) as on_c:
            started = RunStream(on_a.collaborate(TASK))
            live = await started.until(coder_streaming)
            assert (await on_b.get_run(live.run_id)).replica_id == "a"
            watchers = [RunStream(on_b.watch(live.run_id)), RunStream(on_c.watch(live.run_id))]
            for watcher in watchers:  # both replayed up to the live point before the rest is produced
                await watcher.until(lambda e: e.seq == live.seq)
            release.set()
            logs = [await started.to_end(within=HANG_GUARD)] + [await w.to_end(within=HANG_GUARD) for w in watchers]
    for log in logs:
        assert_whole_log(log)
    assert wire(logs[0]) == wire(logs[1]) == wire(logs[2])
    assert [r["replica"] for r in a.records("run_created")] == ["a"]
    assert b.records("run_created") == c.records("run_created") == []


async def test_a_killed_owner_is_taken_over_and_every_watcher_reaches_the_end(pg_url: str) -> None:
    coder, release = held(default_replies()["coder"], after=2)
    script = scripted(coder=[coder, default_replies()["coder"]])
    async with FakeOpenAI(script) as fake, server_processes(
        replica(pg_url, fake, "a"), replica(pg_url, fake, "b")
    ) as procs:
        await asyncio.gather(*(p.start() for p in procs))
        # The client knows both replicas and is sent to one of them; the one that drives the run dies.
        async with Client(f"ipv4:{procs[0].target},{procs[1].target}", reconnect_timeout=HANG_GUARD) as client:
            started = RunStream(client.collaborate(TASK))
            live = await started.until(coder_streaming)
            owner, (other,) = await owner_of(procs, live.run_id)
            async with Client(other.target) as on_other:
                watcher = RunStream(on_other.watch(live.run_id))
                await watcher.until(lambda e: e.seq == live.seq)
                await owner.kill()
                release.set()  # the dead replica's request is gone with it
                from_client = await started.to_end(within=HANG_GUARD)
                from_watcher = await watcher.to_end(within=HANG_GUARD)
                summary = await on_other.get_run(live.run_id)
    for log in (from_client, from_watcher):
        assert_whole_log(log)
    assert wire(from_client) == wire(from_watcher)
    resets = [e.attempt_reset for e in from_client if kind(e) == "attempt_reset"]
    assert [(r.stage, r.attempt) for r in resets] == [(2, 2)]
    # Completed stages were never asked of the provider again; the interrupted one was asked twice.
    asked = Counter(agent_of(s.body) for s in script.served)
    assert asked == Counter(architect=1, coder=2, reviewer=1, tester=1, documenter=1)
    assert summary.state == pb.RUN_STATE_COMPLETED
    assert [r["run_id"] for r in other.records("run_claimed")] == [live.run_id]


async def test_a_paused_owner_taken_over_writes_nothing_once_it_resumes(pg_url: str) -> None:
    coder, release = held(default_replies()["coder"], after=2)
    script = scripted(coder=[coder, default_replies()["coder"]])
    async with FakeOpenAI(script) as fake, server_processes(
        replica(pg_url, fake, "a"), replica(pg_url, fake, "b")
    ) as (a, b):
        await asyncio.gather(a.start(), b.start())
        async with Client(a.target) as on_a, Client(b.target) as on_b:
            started = RunStream(on_a.collaborate(TASK))
            live = await started.until(coder_streaming)
            watcher = RunStream(on_b.watch(live.run_id))
            await watcher.until(lambda e: e.seq == live.seq)
            a.pause()  # past its lease: b takes the run over and finishes it
            on_b_log = await watcher.to_end(within=HANG_GUARD)
            a.resume()
            # a learns at its next renewal that the run is not its own any more, and closes the provider's
            # stream (the held reply, still open) without writing anything.
            async with asyncio.timeout(HANG_GUARD):
                await fake.wait_disconnect(1)
            release.set()
            stored = await collect(on_b.watch(live.run_id))
            await started.aclose()
    assert_whole_log(on_b_log)
    assert wire(stored) == wire(on_b_log), "nothing was written after the run's end"
    assert [r["run_id"] for r in a.records("run_lost")] == [live.run_id]
    assert not a.records("run_finished")


async def test_cancel_on_one_replica_stops_the_run_on_its_owner(pg_url: str) -> None:
    coder, _release = held(default_replies()["coder"], after=2)
    async with FakeOpenAI(scripted(coder=coder)) as fake, server_processes(
        replica(pg_url, fake, "a"), replica(pg_url, fake, "b")
    ) as (a, b):
        await asyncio.gather(a.start(), b.start())
        async with Client(a.target) as on_a, Client(b.target) as on_b:
            started = RunStream(on_a.collaborate(TASK))
            live = await started.until(coder_streaming)
            summary = await on_b.cancel_run(live.run_id)
            assert summary.state == pb.RUN_STATE_CANCELLED  # b waited for the owner to end it
            async with asyncio.timeout(HANG_GUARD):
                await fake.wait_disconnect(1)  # a closed the provider's stream
            events = await started.to_end(within=HANG_GUARD)
    assert kind(events[-1]) == "run_cancelled"
    assert events[-1].run_cancelled.reason == "cancelled by a client request"
    assert [e.seq for e in events] == list(range(1, len(events) + 1))


async def test_one_request_id_sent_to_two_replicas_at_once_makes_one_run(pg_url: str) -> None:
    script = scripted()
    async with FakeOpenAI(script) as fake, server_processes(
        replica(pg_url, fake, "a"), replica(pg_url, fake, "b")
    ) as (a, b):
        await asyncio.gather(a.start(), b.start())
        async with Client(a.target) as on_a, Client(b.target) as on_b:
            first, second = await asyncio.gather(
                collect(on_a.collaborate(TASK, client_request_id="once"), within=HANG_GUARD),
                collect(on_b.collaborate(TASK, client_request_id="once"), within=HANG_GUARD),
            )
            runs, _ = await on_b.list_runs()
    assert first[0].run_id == second[0].run_id
    assert wire(first) == wire(second)
    assert [r.run_id for r in runs] == [first[0].run_id]
    assert [agent_of(s.body) for s in script.served].count("architect") == 1


async def test_the_per_principal_limit_holds_across_replicas(pg_url: str) -> None:
    architect, release = held(default_replies()["architect"], after=1)
    async with FakeOpenAI(scripted(architect=architect)) as fake, server_processes(
        replica(pg_url, fake, "a", FACILITAIR_MAX_RUNS_PER_PRINCIPAL="2"),
        replica(pg_url, fake, "b", FACILITAIR_MAX_RUNS_PER_PRINCIPAL="2"),
    ) as (a, b):
        await asyncio.gather(a.start(), b.start())
        async with Client(a.target) as on_a, Client(b.target) as on_b:
            running = [RunStream(on_a.collaborate(f"{TASK} 1")), RunStream(on_b.collaborate(f"{TASK} 2"))]
            for stream in running:
                await stream.until(lambda e: kind(e) == "token_delta")
            for client in (on_a, on_b):
                refused = RunStream(client.collaborate(f"{TASK} 3"))
                with pytest.raises(Exception, match="RESOURCE_EXHAUSTED") as err:
                    await refused.until(lambda e: True)
                assert "FACILITAIR_MAX_RUNS_PER_PRINCIPAL" in str(err.value)
            release.set()
            for stream in running:
                assert kind((await stream.to_end(within=HANG_GUARD))[-1]) == "run_completed"


async def test_workers_serve_one_port_as_replicas(pg_url: str) -> None:
    async with FakeOpenAI(scripted()) as fake:
        env = replica(pg_url, fake, "w")
        env.pop("FACILITAIR_REPLICA_ID")
        workers = ServerProcess(env, args=("--workers", "2"))
        try:
            await workers.start()
            # Each new connection goes to either worker (the kernel's choice): twenty make both serve some.
            # (gRPC shares one connection between a process's channels unless told not to.)
            for n in range(20):
                async with Client(workers.target, options=[("grpc.use_local_subchannel_pool", 1)]) as client:
                    events = await collect(client.collaborate(f"{TASK} {n}"), within=HANG_GUARD)
                    assert kind(events[-1]) == "run_completed"
            serving = workers.records("serving")
            assert len(serving) == 2
            assert {r["port"] for r in serving} == {workers.port}
            assert len({r["replica"] for r in workers.records("run_created")}) == 2
            assert await workers.terminate() == 0
            assert len(workers.records("stopped")) == 2
        finally:
            await workers.kill()


async def test_the_cli_given_two_replicas_finishes_the_run_after_its_owner_dies(pg_url: str) -> None:
    coder, release = held(default_replies()["coder"], after=2)
    async with FakeOpenAI(scripted(coder=[coder, default_replies()["coder"]])) as fake, server_processes(
        replica(pg_url, fake, "a"), replica(pg_url, fake, "b")
    ) as procs:
        await asyncio.gather(*(p.start() for p in procs))
        target = f"ipv4:{procs[0].target},{procs[1].target}"
        cli = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "facilitair.cli.main", "run", TASK, "--format", "jsonl", "--target", target,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=clean_environment(),
        )  # fmt: skip
        assert cli.stdout is not None
        events: list[dict[str, Any]] = []

        def coder_seen() -> bool:
            return bool(events) and events[-1].get("tokenDelta", {}).get("stage") == 2

        try:
            async with asyncio.timeout(HANG_GUARD):
                while not coder_seen():
                    events.append(json.loads(await cli.stdout.readline())["event"])
            owner, _ = await owner_of(procs, str(events[0]["runId"]))
            await owner.kill()
            release.set()
            out, err = await asyncio.wait_for(cli.communicate(), HANG_GUARD)
        finally:
            if cli.returncode is None:
                cli.kill()
        events += [json.loads(line)["event"] for line in out.decode().splitlines()]
    assert cli.returncode == 0, err.decode()
    assert [int(e["seq"]) for e in events] == list(range(1, len(events) + 1))
    assert "runCompleted" in events[-1]


async def test_the_cli_given_one_replica_that_dies_says_how_to_follow_the_run_on_another(pg_url: str) -> None:
    coder, release = held(default_replies()["coder"], after=2)
    async with FakeOpenAI(scripted(coder=[coder, default_replies()["coder"]])) as fake, server_processes(
        replica(pg_url, fake, "a"), replica(pg_url, fake, "b")
    ) as (a, b):
        await asyncio.gather(a.start(), b.start())
        cli = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "facilitair.cli.main", "run", TASK, "--format", "jsonl", "--target", a.target,
            "--reconnect-timeout", "3",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=clean_environment(),
        )  # fmt: skip
        assert cli.stdout is not None
        events: list[dict[str, Any]] = []
        try:
            async with asyncio.timeout(HANG_GUARD):
                while not (events and events[-1].get("tokenDelta", {}).get("stage") == 2):
                    events.append(json.loads(await cli.stdout.readline())["event"])
            await a.kill()  # the one replica the CLI knows, and the run's owner
            release.set()
            out, err = await asyncio.wait_for(cli.communicate(), HANG_GUARD)
        finally:
            if cli.returncode is None:
                cli.kill()
        events += [json.loads(line)["event"] for line in out.decode().splitlines()]
        run_id, seen = str(events[0]["runId"]), int(events[-1]["seq"])
        lines = err.decode().splitlines()
        # The hint, run on the other replica, follows the run (taken over by b) to its end from where it stopped.
        hint = f"facilitair watch {run_id} --after {seen}"
        rest = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "facilitair.cli.main", *hint.split()[1:], "--format", "jsonl", "--target", b.target,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=clean_environment(),
        )  # fmt: skip
        more, _ = await asyncio.wait_for(rest.communicate(), HANG_GUARD)
    assert cli.returncode == 3
    assert lines[:2] == [
        f"connection lost (the connection to {a.target} was cut); reconnecting",
        f"gave up reconnecting after 3s: nothing listens at {a.target} (connection refused)",
    ]
    assert lines[2:] == [
        f"Run {run_id} goes on on the server (it resumes when the server is back, or on another replica). "
        f"Follow it with: {hint} (and --target ANOTHER_REPLICA when there are several)"
    ]
    assert not any(words in err.decode() for words in ("backends failing", "Cancelling all calls", "Socket closed"))
    assert rest.returncode == 0
    after = [json.loads(line)["event"] for line in more.decode().splitlines()]
    assert [int(e["seq"]) for e in events + after] == list(range(1, len(events) + len(after) + 1))
    assert "runCompleted" in after[-1]
