"""Approval gates across restarts and replicas: real server processes, SIGKILLed while a run waits.

A run that waits at a gate is stored with its gate; killing the server loses nothing, and the decision (sent to
the server started again, or to another replica) is applied once: one approval_decided in the run's log, and no
stage asked of the fake vendor twice.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import grpc
import pytest

from facilitair.v1 import orchestrator_pb2 as pb
from facilitair.v1 import orchestrator_pb2_grpc as pb_grpc
from tests.fakes.providers import FakeOpenAI
from tests.harness.events import EventCall, assert_complete_log, kind, read_rest, read_until
from tests.harness.processes import clean_environment, server_processes
from tests.harness.scripts import agent_of, scripted
from tests.harness.servers import quiet_environment
from tests.harness.stores import Target

HANG_GUARD = 90.0
TASK = "Write a function that reverses a string"
EACH_ONCE = Counter(architect=1, coder=1, reviewer=1, tester=1, documenter=1)


def at_gate(events: list[pb.RunEvent]) -> bool:
    return bool(events) and kind(events[-1]) == "approval_requested"


def approve(run_id: str) -> pb.SubmitApprovalRequest:
    return pb.SubmitApprovalRequest(run_id=run_id, decision=pb.APPROVAL_DECISION_APPROVE, client_request_id="ok-1")


@pytest.mark.both_stores
async def test_a_server_killed_while_a_run_waits_applies_the_decision_once_after_a_restart(
    store_target: Target,
) -> None:
    script = scripted()
    async with asyncio.timeout(HANG_GUARD), FakeOpenAI(script) as fake:
        environment = clean_environment(**quiet_environment(store_target, fake.base_url), FACILITAIR_LEASE_SECONDS="2")
        async with server_processes(environment) as [proc]:
            port = await proc.start()
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = pb_grpc.OrchestratorServiceStub(channel)
                call: EventCall = stub.Collaborate(
                    pb.CollaborateRequest(task=TASK, pause_after=[pb.AGENT_ARCHITECT, pb.AGENT_CODER])
                )
                head = await read_until(call, at_gate)
                run_id = head[0].run_id
                await proc.kill()
            port = await proc.start()
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = pb_grpc.OrchestratorServiceStub(channel)
                waiting = (await stub.GetRun(pb.GetRunRequest(run_id=run_id))).run
                watch: EventCall = stub.WatchRun(pb.WatchRunRequest(run_id=run_id))
                await read_until(watch, at_gate)
                first = await stub.SubmitApproval(approve(run_id))
                # The Coder's gate next: the same process kill, start and decision again.
                await read_until(watch, at_gate)
                await proc.kill()
                port = await proc.start()
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = pb_grpc.OrchestratorServiceStub(channel)
                await stub.SubmitApproval(
                    pb.SubmitApprovalRequest(run_id=run_id, decision=pb.APPROVAL_DECISION_APPROVE)
                )
                retried = await stub.SubmitApproval(
                    pb.SubmitApprovalRequest(
                        run_id=run_id,
                        approval_id=first.decided.approval_id,
                        decision=pb.APPROVAL_DECISION_REJECT,
                        client_request_id="ok-1",
                    )
                )
                log = await read_rest(stub.WatchRun(pb.WatchRunRequest(run_id=run_id)))
    assert waiting.state == pb.RUN_STATE_AWAITING_APPROVAL
    assert waiting.pending_approval == head[-1].approval_requested.approval
    assert_complete_log(log)
    decided = [e.approval_decided for e in log if kind(e) == "approval_decided"]
    assert [(d.stage, d.agent) for d in decided] == [(1, pb.AGENT_ARCHITECT), (2, pb.AGENT_CODER)]
    assert retried.decided == first.decided
    assert Counter(agent_of(s.body) for s in script.served) == EACH_ONCE


def replica(pg_url: str, fake: FakeOpenAI, name: str) -> dict[str, str]:
    """One replica on the shared database with a 2 s lease, every agent on the fake."""
    return clean_environment(
        FACILITAIR_DATABASE_URL=pg_url,
        FACILITAIR_REPLICA_ID=name,
        FACILITAIR_LISTEN="127.0.0.1:0",
        FACILITAIR_LEASE_SECONDS="2",
        FACILITAIR_THINKING_INTERVAL="60",
        FACILITAIR_HEARTBEAT_INTERVAL="60",
        FACILITAIR_MODEL="openai:gpt-4.1-mini",
        OPENAI_API_KEY=fake.api_key,
        OPENAI_BASE_URL=fake.base_url,
    )


async def test_a_decision_on_another_replica_goes_on_there_after_the_owner_was_killed(pg_url: str) -> None:
    script = scripted()
    async with (
        asyncio.timeout(HANG_GUARD),
        FakeOpenAI(script) as fake,
        server_processes(replica(pg_url, fake, "a"), replica(pg_url, fake, "b")) as (a, b),
    ):
        await asyncio.gather(a.start(), b.start())
        async with grpc.aio.insecure_channel(a.target) as to_a, grpc.aio.insecure_channel(b.target) as to_b:
            on_a, on_b = pb_grpc.OrchestratorServiceStub(to_a), pb_grpc.OrchestratorServiceStub(to_b)
            head = await read_until(
                on_a.Collaborate(pb.CollaborateRequest(task=TASK, pause_after=[pb.AGENT_ARCHITECT])), at_gate
            )
            run_id = head[0].run_id
            watch: EventCall = on_b.WatchRun(pb.WatchRunRequest(run_id=run_id))  # attached across the wait
            await read_until(watch, at_gate)
            await a.kill()
            response = await on_b.SubmitApproval(approve(run_id))
            rest = await read_rest(watch)
            summary = (await on_b.GetRun(pb.GetRunRequest(run_id=run_id))).run
    log = head + rest
    assert_complete_log(log)
    assert [kind(e) for e in log].count("approval_decided") == 1
    assert rest[0].approval_decided == response.decided
    assert summary.state == pb.RUN_STATE_COMPLETED
    assert [r["run_id"] for r in b.records("run_claimed")] == [run_id]
    assert Counter(agent_of(s.body) for s in script.served) == EACH_ONCE
