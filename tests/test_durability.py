"""Durability: a run outlives its streams, its watchers and its server process, and its log never lies.

Every test drives the real server (in-process, or `python -m facilitair.server` as a child process when the
server has to die) against `FakeOpenAI`, which speaks the real wire format and runs in the test's event loop.
Synchronisation is by events only: a scripted reply holds mid-stream (`hold_after`) until the test releases it,
and a test waits for what it needs to have seen; timeouts are hang guards, never synchronisation.

The silence watchdog is set to its longest intervals so that no `thinking` or `heartbeat` event can slip into
a run's log: the event sequence of a run is then fully determined by the `Team` script (tests/harness/team.py).
Each test runs on a SQLite file and on a PostgreSQL database; on PostgreSQL a server started again after a
SIGKILL takes its run over once the dead process's lease has run out (FACILITAIR_LEASE_SECONDS, 10 s).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import uuid

import grpc
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from facilitair.client import Client, FacilitairError, StatusCode
from facilitair.server.transport.app import create_server
from facilitair.v1 import orchestrator_pb2 as pb
from facilitair.v1 import orchestrator_pb2_grpc as pb_grpc
from tests.fakes.providers import FakeOpenAI
from tests.harness.events import (
    TERMINAL,
    EventCall,
    assert_complete_log,
    covered,
    kind,
    read_rest,
    read_until,
    wire,
)
from tests.harness.logs import on_log
from tests.harness.processes import clean_environment, free_port, server_processes
from tests.harness.servers import Env, quiet_environment, quiet_settings, serving
from tests.harness.stores import Target
from tests.harness.team import (
    CHUNKS,
    EVENTS_PER_RUN,
    HELD_TOKENS,
    MID_ARCHITECT,
    MID_CODER,
    STAGE_OF,
    TASK,
    Team,
    collaborate_request,
    expected_texts,
    requests_per_agent,
    stage_texts,
    tokens_of,
)
from tests.harness.team import at_hold as held

# Every test here runs on a SQLite file and on a PostgreSQL database.
pytestmark = pytest.mark.both_stores

HANG_GUARD = 30.0


# ----- 1. drop and resume -------------------------------------------------------------------------------------


async def drop_and_resume(env: Env, drops: list[int], coalesce: bool) -> None:
    """Read a run in pieces, dropping each stream after so many messages; the pieces are the whole run."""
    call: EventCall = env.stub.Collaborate(collaborate_request(coalesce_tokens=coalesce))
    pieces: list[list[pb.RunEvent]] = []
    last = 0
    ended = False
    for count in drops:

        def enough(evs: list[pb.RunEvent], n: int = count) -> bool:
            return len(evs) == n or (bool(evs) and kind(evs[-1]) in TERMINAL)

        piece = await read_until(call, enough)
        call.cancel()
        pieces.append(piece)
        assert covered(piece)[0] == last + 1, "a re-attached stream starts right after the last event received"
        last = piece[-1].seq
        if kind(piece[-1]) in TERMINAL:
            ended = True
            break
        request = pb.WatchRunRequest(run_id=piece[0].run_id, after_seq=last, coalesce_tokens=coalesce)
        call = env.stub.WatchRun(request)
    if not ended:
        pieces.append(await read_rest(call))
    got = [e for piece in pieces for e in piece]
    assert covered(got) == list(range(1, len(covered(got)) + 1)), "every seq exactly once, in order"

    full = await env.watch_all(got[0].run_id)
    assert_complete_log(full)
    assert len(full) == EVENTS_PER_RUN
    assert covered(got) == [e.seq for e in full]
    assert stage_texts(got) == stage_texts(full) == expected_texts()
    if coalesce:
        others = [e for e in got if kind(e) != "token_delta"]
        assert wire(others) == wire([e for e in full if kind(e) != "token_delta"])
    else:
        assert wire(got) == wire(full), "the pieces are the uninterrupted log, byte for byte"
    # The cut points pinned by @example below do fall inside a stage's tokens.
    for seq in (MID_ARCHITECT, MID_CODER):
        before, after = full[seq - 1], full[seq]
        assert kind(before) == kind(after) == "token_delta"
        assert before.token_delta.stage == after.token_delta.stage


def test_drop_after_k_events_and_resume_loses_and_repeats_nothing(store_target: Target) -> None:
    """Dropping a stream anywhere (even mid-token-stream) and re-attaching after the last seq gives the whole run."""
    with asyncio.Runner() as runner:
        stack = contextlib.AsyncExitStack()
        env = runner.run(stack.enter_async_context(serving(store_target)))
        try:

            @settings(max_examples=10, deadline=None, database=None)
            @given(drops=st.lists(st.integers(1, 40), min_size=1, max_size=4), coalesce=st.booleans())
            @example(drops=[MID_ARCHITECT], coalesce=False)
            @example(drops=[MID_CODER, 3], coalesce=False)
            @example(drops=[EVENTS_PER_RUN - 1], coalesce=False)
            @example(drops=[MID_ARCHITECT, 1, 2], coalesce=True)
            def check(drops: list[int], coalesce: bool) -> None:
                runner.run(asyncio.wait_for(drop_and_resume(env, drops, coalesce), HANG_GUARD))

            check()
        finally:
            runner.run(stack.aclose())


# ----- 2. two watchers ----------------------------------------------------------------------------------------


async def test_two_watchers_of_a_live_run_see_identical_events(store_target: Target) -> None:
    async with asyncio.timeout(HANG_GUARD), serving(store_target) as env:
        release = env.team.hold_next("Coder")
        starter: EventCall = env.stub.Collaborate(collaborate_request())
        head = await read_until(starter, held)
        run_id = head[0].run_id

        async def watcher(attached: asyncio.Event) -> list[pb.RunEvent]:
            call: EventCall = env.stub.WatchRun(pb.WatchRunRequest(run_id=run_id, after_seq=0))
            caught_up = await read_until(call, lambda evs: bool(evs) and evs[-1].seq == head[-1].seq)
            attached.set()
            return caught_up + await read_rest(call)

        attached = [asyncio.Event(), asyncio.Event()]
        watchers = [asyncio.create_task(watcher(attached[0])), asyncio.create_task(watcher(attached[1]))]
        # A third one at the live edge, with nothing to replay (a stream sends no headers before its first
        # message, so nothing says when it is attached: it may be before or after the release).
        edge_call: EventCall = env.stub.WatchRun(pb.WatchRunRequest(run_id=run_id, after_seq=head[-1].seq))
        edge_task = asyncio.create_task(read_rest(edge_call))
        for event in attached:
            await event.wait()
        live = await env.get_run(run_id)
        assert live.state == pb.RUN_STATE_RUNNING
        assert live.last_seq == head[-1].seq, "the run is held: nothing happened since"
        release.set()
        first, second, edge = await asyncio.gather(*watchers, edge_task)
        rest = await read_rest(starter)

        assert_complete_log(first)
        assert [e.seq for e in first] == [e.seq for e in second]
        assert wire(first) == wire(second) == wire(head + rest)
        assert wire(edge) == wire(first[len(head) :])
        assert wire(first) == wire(await env.watch_all(run_id))
        assert stage_texts(first) == expected_texts()


# ----- 3. the server process dies mid-stage ---------------------------------------------------------------------


async def test_server_killed_mid_stage_resumes_from_checkpoint(store_target: Target) -> None:
    team = Team()
    release = team.hold_next("Coder")
    async with (
        asyncio.timeout(60),
        FakeOpenAI(team) as fake,
        server_processes(clean_environment(**quiet_environment(store_target, fake.base_url))) as [proc],
    ):
        port = await proc.start()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.OrchestratorServiceStub(channel)
            call: EventCall = stub.Collaborate(collaborate_request())
            before = await read_until(call, held)
            run_id = before[0].run_id
            await proc.kill()
            with pytest.raises(grpc.aio.AioRpcError) as broken:
                await read_rest(call)
            assert broken.value.code() == grpc.StatusCode.UNAVAILABLE
        assert not release.is_set()
        assert requests_per_agent(fake) == {"Architect": 1, "Coder": 1}

        port = await proc.start()  # the same database; the run resumes at start
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.OrchestratorServiceStub(channel)
            events = await read_rest(stub.WatchRun(pb.WatchRunRequest(run_id=run_id)))
            summary = (await stub.GetRun(pb.GetRunRequest(run_id=run_id))).run

    assert_complete_log(events)
    assert wire(events[: len(before)]) == wire(before), "what the client saw before the kill was stored as it"
    # Completed stages were replayed from their checkpoints, never asked again; the interrupted one ran again.
    assert requests_per_agent(fake) == {"Architect": 1, "Coder": 2, "Reviewer": 1, "Tester": 1, "Documenter": 1}
    coder = STAGE_OF["Coder"]
    resets = [i for i, e in enumerate(events) if kind(e) == "attempt_reset"]
    assert len(resets) == 1
    reset = events[resets[0]]
    assert reset.attempt_reset.stage == coder
    assert reset.attempt_reset.attempt == 2
    assert "restart" in reset.attempt_reset.reason
    assert resets[0] == len(before), "the reset comes right after the partial tokens"
    partial, rerun = events[: resets[0]], events[resets[0] + 1 :]
    assert tokens_of(partial, coder) == CHUNKS["Coder"][:HELD_TOKENS]
    assert tokens_of(rerun, coder) == CHUNKS["Coder"]
    assert [kind(e) for e in events].count("stage_started") == 5, "the interrupted stage is not started again"
    assert [e.stage_completed.stage for e in events if kind(e) == "stage_completed"] == [1, 2, 3, 4, 5]
    for stage in (3, 4, 5):
        assert "".join(tokens_of(events, stage)) == expected_texts()[stage]

    done = events[-1].run_completed
    stage_usage = [e.stage_completed.usage for e in events if kind(e) == "stage_completed"]
    assert done.usage.input_tokens == sum(u.input_tokens for u in stage_usage)
    assert done.usage.output_tokens == sum(u.output_tokens for u in stage_usage)
    assert {a.path for a in done.result.artifacts} == {"DESIGN.md", "rev.py", "test_rev.py", "README.md"}
    assert summary.state == pb.RUN_STATE_COMPLETED
    assert summary.last_seq == events[-1].seq
    assert summary.result == done.result
    assert [r["run_id"] for r in proc.records("run_resumed")] == [run_id]
    # `facilitair serve` runs on uvloop's event loop when it is installed (it is, with the server extra).
    assert {r["event_loop"] for r in proc.records("serving")} == {"uvloop"}


# ----- 4. cancel mid-token ------------------------------------------------------------------------------------


async def test_cancel_mid_token_closes_the_provider_call_and_ends_the_run(store_target: Target) -> None:
    async with asyncio.timeout(HANG_GUARD), serving(store_target) as env:
        env.team.hold_next("Coder")
        starter: EventCall = env.stub.Collaborate(collaborate_request())
        head = await read_until(starter, held)
        run_id = head[0].run_id
        assert env.fake.disconnects == 0

        cancelled = await env.client.cancel_run(run_id)
        await asyncio.wait_for(env.fake.wait_disconnect(), 1.0)
        assert env.fake.disconnects == 1
        assert cancelled.state == pb.RUN_STATE_CANCELLED

        rest = await read_rest(starter)
        events = head + rest
        assert_complete_log(events, last="run_cancelled")
        assert [kind(e) for e in rest] == ["run_cancelled"], "nothing between the last token and run_cancelled"
        assert cancelled.last_seq == events[-1].seq
        assert wire(await env.watch_all(run_id)) == wire(events)
        # The usage so far: the Architect's completed stage, and the cut Coder attempt, which its provider had not
        # reported yet: estimated, and marked so (tests/test_partial_usage.py has the exact counts).
        architect = next(e.stage_completed.usage for e in events if kind(e) == "stage_completed")
        usage = events[-1].run_cancelled.usage
        assert usage.input_tokens > architect.input_tokens > 0
        assert usage.output_tokens > architect.output_tokens
        assert (usage.estimated, architect.estimated) == (True, False)
        assert usage.cost_usd > architect.cost_usd
        assert events[-1].run_cancelled.reason

        summary = await env.client.get_run(run_id)
        assert summary.state == pb.RUN_STATE_CANCELLED
        assert summary.usage == usage
        assert summary.HasField("finished_at")

        again = await env.client.cancel_run(run_id)  # idempotent
        assert again.state == pb.RUN_STATE_CANCELLED
        assert again.last_seq == cancelled.last_seq
        assert wire(await env.watch_all(run_id)) == wire(events), "no new events"
        assert requests_per_agent(env.fake) == {"Architect": 1, "Coder": 1}

        finished = await env.run_to_end()
        done = await env.client.cancel_run(finished[0].run_id)
        assert done.state == pb.RUN_STATE_COMPLETED
        assert done.last_seq == finished[-1].seq
        assert wire(await env.watch_all(finished[0].run_id)) == wire(finished)


async def test_concurrent_cancels_all_see_the_run_cancelled(store_target: Target) -> None:
    """Many CancelRuns at once: the run is cancelled once, and every caller is told it is cancelled."""
    async with asyncio.timeout(HANG_GUARD), serving(store_target) as env:
        for _ in range(3):  # the interleavings vary from one try to the next
            env.team.hold_next("Coder")
            starter: EventCall = env.stub.Collaborate(collaborate_request())
            head = await read_until(starter, held)
            run_id = head[0].run_id
            answers = await asyncio.gather(*(env.client.cancel_run(run_id) for _ in range(10)))
            events = head + await read_rest(starter)
            assert_complete_log(events, last="run_cancelled")
            assert {pb.RunState.Name(a.state) for a in answers} == {"RUN_STATE_CANCELLED"}
            assert {a.last_seq for a in answers} == {events[-1].seq}
            assert wire(await env.watch_all(run_id)) == wire(events)


# ----- 5. idempotent Collaborate ------------------------------------------------------------------------------


async def test_same_client_request_id_attaches_to_one_run(store_target: Target) -> None:
    async with asyncio.timeout(HANG_GUARD), serving(store_target) as env:
        release = env.team.hold_next("Coder")
        request = collaborate_request(client_request_id="retry-me-" + uuid.uuid4().hex)
        first: EventCall = env.stub.Collaborate(request)
        first_head = await read_until(first, held)
        second: EventCall = env.stub.Collaborate(request)  # a retry while the run is live
        second_head = await read_until(second, held)
        assert wire(second_head) == wire(first_head), "the retry replays the same run from its start"
        release.set()
        first_events = first_head + await read_rest(first)
        second_events = second_head + await read_rest(second)
        assert_complete_log(first_events)
        assert wire(second_events) == wire(first_events)

        after = await env.run_to_end(client_request_id=request.client_request_id)  # a retry after the end
        assert wire(after) == wire(first_events)

        runs, token = await env.client.list_runs()
        assert [r.run_id for r in runs] == [first_events[0].run_id]
        assert token == ""
        assert requests_per_agent(env.fake)["Architect"] == 1, "one run, one Architect call"


# ----- 6. WatchRun errors -------------------------------------------------------------------------------------


async def test_watch_run_errors(store_target: Target) -> None:
    async with asyncio.timeout(HANG_GUARD), serving(store_target) as env:
        events = await env.run_to_end()
        run_id, last = events[0].run_id, events[-1].seq

        async def watch_code(run: str, after_seq: int = 0) -> tuple[grpc.StatusCode, str]:
            call: EventCall = env.stub.WatchRun(pb.WatchRunRequest(run_id=run, after_seq=after_seq))
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await read_rest(call)
            return err.value.code(), err.value.details() or ""

        code, _ = await watch_code(str(uuid.uuid4()))
        assert code == grpc.StatusCode.NOT_FOUND
        code, _ = await watch_code("not-a-run-id")  # the server treats a malformed id as an unknown one
        assert code == grpc.StatusCode.NOT_FOUND
        code, _ = await watch_code("x" * 65)
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        code, _ = await watch_code("")
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        code, message = await watch_code(run_id, last + 1)
        assert code == grpc.StatusCode.OUT_OF_RANGE
        assert str(last) in message

        # The client library reports the same codes.
        with pytest.raises(FacilitairError) as err:
            async for _ in env.client.watch(run_id, last + 5):
                pass
        assert err.value.code == StatusCode.OUT_OF_RANGE

        assert await env.watch_all(run_id, last) == [], "after the last event: an empty stream that ends OK"
        assert wire(await env.watch_all(run_id, last - 1)) == wire(events[-1:])


# ----- 7. on_disconnect -----------------------------------------------------------------------------------------


async def test_dropped_collaborate_with_cancel_on_disconnect_cancels_the_run(store_target: Target) -> None:
    async with asyncio.timeout(HANG_GUARD), serving(store_target) as env:
        env.team.hold_next("Coder")
        seen: list[pb.RunEvent] = []
        async with contextlib.aclosing(env.client.collaborate(TASK, cancel_on_disconnect=True, resume=False)) as stream:
            async for event in stream:
                seen.append(event)
                if held(seen):
                    break  # aclosing closes the generator, which cancels the call
        events = await env.watch_all(seen[0].run_id)  # follows the run to its end
        assert_complete_log(events, last="run_cancelled")
        assert wire(events[: len(seen)]) == wire(seen)
        assert [kind(e) for e in events[len(seen) :]] == ["run_cancelled"]
        assert "disconnect" in events[-1].run_cancelled.reason
        await asyncio.wait_for(env.fake.wait_disconnect(), 5.0)
        assert (await env.client.get_run(seen[0].run_id)).state == pb.RUN_STATE_CANCELLED


async def test_dropped_collaborate_by_default_continues_without_any_client(store_target: Target) -> None:
    async with asyncio.timeout(HANG_GUARD), serving(store_target) as env:
        release = env.team.hold_next("Coder")
        seen: list[pb.RunEvent] = []
        with on_log("stream_closed", complete=False) as closed:
            async with contextlib.aclosing(env.client.collaborate(TASK, resume=False)) as stream:
                async for event in stream:
                    seen.append(event)
                    if held(seen):
                        break
            await closed.wait()  # the server has seen the stream go; only then may the run go on
        release.set()
        run_id = seen[0].run_id
        events = await env.watch_all(run_id)
        assert_complete_log(events)
        assert wire(events[: len(seen)]) == wire(seen)
        assert stage_texts(events) == expected_texts()
        assert env.fake.disconnects == 0
        assert (await env.client.get_run(run_id)).state == pb.RUN_STATE_COMPLETED


@pytest.mark.parametrize(
    "on_disconnect", [pb.ON_DISCONNECT_CONTINUE, pb.ON_DISCONNECT_CANCEL], ids=["continue", "cancel"]
)
async def test_graceful_stop_interrupts_the_run_whatever_on_disconnect_says(
    store_target: Target, on_disconnect: pb.OnDisconnect.ValueType
) -> None:
    """A stream the server ends by stopping is not a client gone: the run is interrupted, then resumed."""
    team = Team()
    team.hold_next("Coder")
    async with asyncio.timeout(HANG_GUARD), FakeOpenAI(team) as fake:
        settings = quiet_settings(store_target, fake.base_url)
        server = await create_server(settings)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                stub = pb_grpc.OrchestratorServiceStub(channel)
                call: EventCall = stub.Collaborate(collaborate_request(on_disconnect=on_disconnect))
                head = await read_until(call, held)
                stopping = asyncio.create_task(server.stop(0.2))  # the stream is still open when the grace ends
                with pytest.raises(grpc.aio.AioRpcError):
                    await read_rest(call)
                await stopping
        finally:
            if not stopping.done():
                await server.stop(0)
        server = await create_server(settings)  # the same database: the run resumes
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                stub = pb_grpc.OrchestratorServiceStub(channel)
                events = await read_rest(stub.WatchRun(pb.WatchRunRequest(run_id=head[0].run_id)))
                summary = (await stub.GetRun(pb.GetRunRequest(run_id=head[0].run_id))).run
        finally:
            await server.stop(0)
    assert_complete_log(events)
    assert wire(events[: len(head)]) == wire(head)
    assert [kind(e) for e in events].count("attempt_reset") == 1
    assert stage_texts(events[len(head) + 1 :]) == {s: t for s, t in expected_texts().items() if s >= 2}
    assert summary.state == pb.RUN_STATE_COMPLETED
    assert requests_per_agent(fake) == {"Architect": 1, "Coder": 2, "Reviewer": 1, "Tester": 1, "Documenter": 1}


# ----- 8. the client library across a server restart ---------------------------------------------------------


async def test_client_resumes_across_a_server_restart_on_the_same_port(store_target: Target) -> None:
    team = Team()
    team.hold_next("Coder")
    listen = f"127.0.0.1:{free_port()}"
    async with (
        asyncio.timeout(60),
        FakeOpenAI(team) as fake,
        server_processes(clean_environment(**quiet_environment(store_target, fake.base_url, listen))) as [proc],
    ):
        await proc.start()
        reconnects: list[StatusCode] = []
        events: list[pb.RunEvent] = []
        async with Client(listen, reconnect_timeout=20.0) as client:
            client.on_reconnect = lambda _attempt, _delay, error: reconnects.append(error.code)
            async with contextlib.aclosing(client.collaborate(TASK)) as stream:
                async for event in stream:
                    events.append(event)
                    if proc.starts == 1 and held(events):
                        await proc.kill()
                        await proc.start()
            summary = await client.get_run(events[0].run_id)
            full = [e async for e in client.watch(events[0].run_id)]

    assert [e.seq for e in events] == list(range(1, len(events) + 1)), "each event once, in order"
    assert_complete_log(events)
    assert wire(events) == wire(full)
    assert reconnects, "the stream did break"
    assert set(reconnects) == {StatusCode.UNAVAILABLE}
    assert summary.state == pb.RUN_STATE_COMPLETED
    assert summary.last_seq == events[-1].seq
    assert [kind(e) for e in events].count("attempt_reset") == 1
    assert requests_per_agent(fake) == {"Architect": 1, "Coder": 2, "Reviewer": 1, "Tester": 1, "Documenter": 1}


# ----- 9. ListRuns paging -------------------------------------------------------------------------------------


async def test_list_runs_pages_newest_first_and_filters_by_state(store_target: Target) -> None:
    async with asyncio.timeout(HANG_GUARD), serving(store_target) as env:
        created = [(await env.run_to_end(task=f"{TASK} #{i}"))[0].run_id for i in range(5)]
        newest_first = created[::-1]

        pages: list[list[str]] = []
        token = ""
        while True:
            runs, token = await env.client.list_runs(page_size=2, page_token=token)
            pages.append([r.run_id for r in runs])
            assert all(not r.HasField("result") for r in runs), "ListRuns leaves results to GetRun"
            if not token:
                break
        assert [len(p) for p in pages] == [2, 2, 1]
        assert [run for page in pages for run in page] == newest_first

        # One more run, cancelled: the state filter tells them apart.
        env.team.hold_next("Coder")
        starter: EventCall = env.stub.Collaborate(collaborate_request(task=f"{TASK} #cancelled"))
        cancelled = (await read_until(starter, held))[0].run_id
        await env.client.cancel_run(cancelled)
        await read_rest(starter)

        everything, token = await env.client.list_runs()
        assert [r.run_id for r in everything] == [cancelled, *newest_first]
        assert token == ""
        completed, _ = await env.client.list_runs(state=pb.RUN_STATE_COMPLETED, page_size=100)
        assert [r.run_id for r in completed] == newest_first
        assert {r.state for r in completed} == {pb.RUN_STATE_COMPLETED}
        only, _ = await env.client.list_runs(state=pb.RUN_STATE_CANCELLED)
        assert [r.run_id for r in only] == [cancelled]
        first, token = await env.client.list_runs(state=pb.RUN_STATE_COMPLETED, page_size=3)
        rest, last_token = await env.client.list_runs(state=pb.RUN_STATE_COMPLETED, page_size=3, page_token=token)
        assert [r.run_id for r in first + rest] == newest_first
        assert last_token == ""
        none, _ = await env.client.list_runs(state=pb.RUN_STATE_FAILED)
        assert none == []

        bad_tokens = [
            "garbage!",
            base64.urlsafe_b64encode(b'{"created_at": 1}').decode(),
            base64.urlsafe_b64encode(b"[1, 2]").decode(),
            base64.urlsafe_b64encode(b"\xff\xfe").decode(),
        ]
        for bad in bad_tokens:
            with pytest.raises(FacilitairError) as err:
                await env.client.list_runs(page_token=bad)
            assert err.value.code == StatusCode.INVALID_ARGUMENT, bad
            assert [f for f, _ in err.value.field_violations] == ["page_token"]
        with pytest.raises(FacilitairError) as err:
            await env.client.list_runs(page_size=101)
        assert err.value.code == StatusCode.INVALID_ARGUMENT
