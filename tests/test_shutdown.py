"""SIGTERM on a real server process: drain gracefully, refuse new runs, resume the run at the next start."""

from __future__ import annotations

import asyncio
import signal

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from facilitair.v1 import orchestrator_pb2 as pb
from facilitair.v1 import orchestrator_pb2_grpc as pb_grpc
from tests.fakes.providers import FakeOpenAI
from tests.harness.events import assert_complete_log, read_rest, read_until
from tests.harness.processes import clean_environment, server_processes
from tests.harness.servers import quiet_environment
from tests.harness.stores import Target
from tests.harness.team import Team, collaborate_request, requests_per_agent
from tests.harness.team import at_hold as held

# On a SQLite file and on a PostgreSQL database.
pytestmark = pytest.mark.both_stores

GRACE = 1.5


async def test_sigterm_goes_not_serving_refuses_new_runs_and_resumes_after_restart(store_target: Target) -> None:
    team = Team()
    team.hold_next("Coder")
    async with (
        asyncio.timeout(60),
        FakeOpenAI(team) as fake,
        server_processes(clean_environment(**quiet_environment(store_target, fake.base_url))) as [proc],
    ):
        proc.env["FACILITAIR_GRACE_SECONDS"] = str(GRACE)
        port = await proc.start()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.OrchestratorServiceStub(channel)
            health = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
            assert (await health.read()).status == health_pb2.HealthCheckResponse.SERVING
            call = stub.Collaborate(collaborate_request())
            head = await read_until(call, held)  # the Coder is mid-stage, its reply held
            assert proc.proc is not None
            proc.proc.send_signal(signal.SIGTERM)
            assert (await health.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await read_rest(stub.Collaborate(collaborate_request()))
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(grpc.aio.AioRpcError):
                await read_rest(call)  # the open stream ends when the grace period does
            assert loop.time() - started == pytest.approx(GRACE, abs=1.0)
        assert await proc.proc.wait() == 0
        assert proc.records("stopped"), "the server stopped by itself, cleanly"
        team.release.set()
        port = await proc.start()  # the same database
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.OrchestratorServiceStub(channel)
            events = await read_rest(stub.WatchRun(pb.WatchRunRequest(run_id=head[0].run_id)))
    assert_complete_log(events)
    assert [e.SerializeToString() for e in events[: len(head)]] == [e.SerializeToString() for e in head]
    resets = [e for e in events if e.WhichOneof("payload") == "attempt_reset"]
    assert [(r.attempt_reset.stage, r.attempt_reset.attempt) for r in resets] == [(2, 2)]
    assert requests_per_agent(fake) == {"Architect": 1, "Coder": 2, "Reviewer": 1, "Tester": 1, "Documenter": 1}
