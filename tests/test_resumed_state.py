"""A run resumed after a graceful stop is running again: GetRun, ListRuns' state filter and `facilitair runs`.

A graceful stop stores the run as interrupted (no terminal event) and the next server resumes it. While that
server drives it, every way of asking about the run must say RUNNING: an operator who looks for running runs
(`facilitair runs --state running`) must find it, and `status` must not call it interrupted. The resumed Coder
reply is held, so the questions are asked while the run is being driven again; the test then lets it finish.
"""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest

from facilitair.server.transport.app import create_server
from facilitair.v1 import orchestrator_pb2 as pb
from facilitair.v1 import orchestrator_pb2_grpc as pb_grpc
from tests.fakes.providers import FakeOpenAI
from tests.harness.cli import cli
from tests.harness.events import EventCall, assert_complete_log, kind, read_rest, read_until
from tests.harness.servers import quiet_settings
from tests.harness.stores import Target, fetch
from tests.harness.team import HELD_TOKENS, STAGE_OF, Team, collaborate_request, requests_per_agent, tokens_of
from tests.harness.team import at_hold as held

pytestmark = pytest.mark.both_stores

HANG_GUARD = 60.0


def held_again(events: list[pb.RunEvent]) -> bool:
    """The resumed Coder stage (after its attempt_reset) has reached its held point."""
    resets = [i for i, e in enumerate(events) if kind(e) == "attempt_reset"]
    return bool(resets) and len(tokens_of(events[resets[0] :], STAGE_OF["Coder"])) >= HELD_TOKENS


async def test_a_run_resumed_after_a_graceful_stop_reads_as_running(store_target: Target) -> None:
    team = Team()
    team.hold_next("Coder")
    async with asyncio.timeout(HANG_GUARD), FakeOpenAI(team) as fake:
        settings = quiet_settings(store_target, fake.base_url)
        server = await create_server(settings)
        stopping = None
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                stub = pb_grpc.OrchestratorServiceStub(channel)
                call: EventCall = stub.Collaborate(collaborate_request())
                head = await read_until(call, held)
                run_id = head[0].run_id
                stopping = asyncio.ensure_future(server.stop(0))  # a graceful stop: the run is interrupted
                with pytest.raises(grpc.aio.AioRpcError):
                    await read_rest(call)
                await stopping
        finally:
            if stopping is None:
                await server.stop(0)
        assert await fetch(store_target, "SELECT state FROM runs") == [(pb.RUN_STATE_INTERRUPTED,)]

        release = team.hold_next("Coder")  # the resumed Coder holds too: the run is being driven while we ask
        server = await create_server(settings)  # the same database: the run resumes
        try:
            target = f"127.0.0.1:{server.port}"
            async with grpc.aio.insecure_channel(target) as channel:
                stub = pb_grpc.OrchestratorServiceStub(channel)
                call = stub.WatchRun(pb.WatchRunRequest(run_id=run_id, after_seq=head[-1].seq))
                again = await read_until(call, held_again)

                summary = (await stub.GetRun(pb.GetRunRequest(run_id=run_id))).run
                running = (await stub.ListRuns(pb.ListRunsRequest(state=pb.RUN_STATE_RUNNING))).runs
                interrupted = (await stub.ListRuns(pb.ListRunsRequest(state=pb.RUN_STATE_INTERRUPTED))).runs
                code, out, err = await cli(target, "runs", "--state", "running", "--json")
                status = await cli(target, "status", run_id, "--json")

                release.set()
                rest = await read_rest(call)
                final = (await stub.GetRun(pb.GetRunRequest(run_id=run_id))).run
        finally:
            await server.stop(0)

    assert summary.state == pb.RUN_STATE_RUNNING
    assert summary.current_stage == STAGE_OF["Coder"]
    assert [r.run_id for r in running] == [run_id]
    assert list(interrupted) == []
    assert (code, err) == (0, "")
    assert [r["runId"] for r in json.loads(out)["runs"]] == [run_id]
    assert status[0] == 0
    assert json.loads(status[1])["state"] == "RUN_STATE_RUNNING"

    assert kind(rest[-1]) == "run_completed"
    assert final.state == pb.RUN_STATE_COMPLETED
    assert requests_per_agent(fake) == {"Architect": 1, "Coder": 2, "Reviewer": 1, "Tester": 1, "Documenter": 1}
    full = head + again + rest
    assert [e.seq for e in full] == list(range(1, len(full) + 1))
    assert_complete_log(full)
