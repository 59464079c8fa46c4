"""A stage's completion is durable before anything of the next stage happens (issue 19, item 5).

A run that asked for its next stage before the stage before was committed pays for that stage twice when the
server dies in between: the replica that takes the run over finds no checkpoint and asks again. Here the
commit of the Coder's completion is held (a slow disk) and the test watches the fake provider for the
Reviewer's request: it must not come while the commit is held. Whether something does not happen can only be
watched for a while (WINDOW); the server that asked early did so within milliseconds.

Both tests run on a SQLite file and on a PostgreSQL database: in-process with a gate in the server's store, and
as a real process killed the moment the next stage is asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import grpc
import pytest

from facilitair.client import Client
from facilitair.server.errors import Reason, Unavailable
from facilitair.server.events.channel import Committed, RunChannel
from facilitair.server.transport.app import create_server
from facilitair.v1 import orchestrator_pb2 as pb
from facilitair.v1 import orchestrator_pb2_grpc as pb_grpc
from tests.fakes.providers import FakeOpenAI, Reply
from tests.harness.events import EventCall, assert_complete_log, collect, read_rest, read_until
from tests.harness.processes import clean_environment, server_processes
from tests.harness.servers import quiet_environment, quiet_settings
from tests.harness.stores import CommitGate, Stores, Target, writes_held
from tests.harness.team import STAGE_OF, TASK, Team, at_hold, collaborate_request, requests_per_agent, team_agent_of

pytestmark = pytest.mark.both_stores

HANG_GUARD = 60.0
# How long the test watches for a request that must not come while a commit is held.
WINDOW = 1.0


class Asked:
    """The Team's responder, noting each agent asked for and whether the held commit was let go by then."""

    def __init__(self, team: Team) -> None:
        self.team = team
        self.committing = True  # the test sets this to False when it lets the held commit go
        self.asked: list[tuple[str, bool]] = []  # (agent, asked while the commit was held)
        self._changed = asyncio.Event()

    def __call__(self, body: dict[str, Any]) -> Reply:
        """Note the request, then answer as the Team does."""
        agent = team_agent_of(body)
        self.asked.append((agent, self.committing))
        self._changed.set()
        return self.team(body)

    async def within(self, agent: str, seconds: float) -> bool:
        """Whether `agent` is (or was) asked for within `seconds`."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                while not any(a == agent for a, _ in self.asked):
                    self._changed.clear()
                    await self._changed.wait()
        return any(a == agent for a, _ in self.asked)


async def test_the_next_stage_is_asked_for_only_once_the_stage_before_is_committed(
    stores: Stores, store_target: Target
) -> None:
    gate = CommitGate(STAGE_OF["Coder"])
    asked = Asked(Team())
    async with asyncio.timeout(HANG_GUARD), FakeOpenAI(asked) as fake:
        server = await create_server(quiet_settings(store_target, fake.base_url), store=stores.gated(gate))
        try:
            async with Client(f"127.0.0.1:{server.port}") as client:
                run = asyncio.create_task(collect(client.collaborate(TASK)))
                await gate.reached.wait()  # the Coder's stage is over; its completion is being committed
                early = await asked.within("Reviewer", WINDOW)
                asked.committing = False
                gate.opened.set()
                events = await run
        finally:
            await server.stop(0)
    assert not early, "the Reviewer was asked for before the Coder's completion was committed"
    assert asked.asked == [
        ("Architect", True),
        ("Coder", True),
        ("Reviewer", False),
        ("Tester", False),
        ("Documenter", False),
    ]
    assert_complete_log(events)


async def test_a_kill_right_after_a_stage_does_not_make_the_next_owner_ask_for_it_again(store_target: Target) -> None:
    team = Team()
    coder_release = team.hold_next("Coder")
    asked = Asked(team)
    async with asyncio.timeout(HANG_GUARD), FakeOpenAI(asked) as fake:
        # A short lease: on PostgreSQL the next process takes the dead one's run over once its lease ran out.
        environment = clean_environment(**quiet_environment(store_target, fake.base_url), FACILITAIR_LEASE_SECONDS="2")
        async with server_processes(environment) as [proc]:
            port = await proc.start()
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = pb_grpc.OrchestratorServiceStub(channel)
                call: EventCall = stub.Collaborate(collaborate_request())
                run_id = (await read_until(call, at_hold))[0].run_id
                # The Reviewer's request is the first sign that the Coder's stage is over: the process is killed
                # right then (its reply holds until the kill, so the Reviewer's stage does not end).
                team.hold_next("Reviewer")
                async with writes_held(store_target):
                    coder_release.set()
                    early = await asked.within("Reviewer", WINDOW)
                    if early:
                        await proc.kill()  # before the Coder's completion could be committed
                    asked.committing = False
                assert await asked.within("Reviewer", HANG_GUARD)
                await proc.kill()
                call.cancel()
            port = await proc.start()  # the same store: the run is taken over (on PostgreSQL, once its lease ran out)
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = pb_grpc.OrchestratorServiceStub(channel)
                events = await read_rest(stub.WatchRun(pb.WatchRunRequest(run_id=run_id)))
    assert not early, "the Reviewer was asked for before the Coder's completion was committed"
    # The Coder's stage was replayed from its checkpoint; only the Reviewer's, cut by the kill, was asked again.
    assert requests_per_agent(fake) == {"Architect": 1, "Coder": 1, "Reviewer": 2, "Tester": 1, "Documenter": 1}
    assert_complete_log(events)


@pytest.mark.parametrize("ending", ["error", "moved"])
async def test_a_wait_for_a_commit_ends_when_the_channel_ends_first(ending: str) -> None:
    """A run waiting for its events to commit is not left waiting when they never will be here."""
    channel = RunChannel("run", last_seq=3)
    waiting = asyncio.create_task(channel.until_committed(5))
    await channel.until_committed(3)  # what is committed already returns at once
    channel.commit(Committed([pb.RunEvent(seq=4)], [b""]), terminal=False)  # still short of 5
    error = Unavailable("the store cannot write", reason=Reason.STORE_UNAVAILABLE)
    channel.close(moved=ending == "moved", error=error if ending == "error" else None)
    with pytest.raises(Unavailable) as ended:
        async with asyncio.timeout(HANG_GUARD):
            await waiting
    assert ended.value.reason is (Reason.STORE_UNAVAILABLE if ending == "error" else Reason.RUN_NOT_DRIVEN)
