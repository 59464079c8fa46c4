"""Durability: a run outlives its streams, its watchers and its server process, and its log never lies.

Every test drives the real server (in-process, or `python -m facilitair.server` as a child process when the
server has to die) against `FakeOpenAI`, which speaks the real wire format and runs in the test's event loop.
Synchronisation is by events only: a scripted reply holds mid-stream (`hold_after`) until the test releases it,
and a test waits for what it needs to have seen; timeouts are hang guards, never synchronisation.

The silence watchdog is set to its longest intervals so that no `thinking` or `heartbeat` event can slip into
a run's log: the event sequence of a run is then fully determined by the script below.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import structlog
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from facilitair.client import Client, FacilitairError, StatusCode
from facilitair.server.settings import Settings
from facilitair.server.transport.app import RunningServer, create_server
from facilitair.v1 import orchestrator_pb2 as pb
from facilitair.v1 import orchestrator_pb2_grpc as pb_grpc
from tests.fakes.providers import FakeOpenAI, Reply

# ----- the script: what each agent answers ------------------------------------------------------------------

TASK = "Write a function that reverses a string"
MODEL = "openai:gpt-4.1-mini"

CHUNKS: dict[str, list[str]] = {
    "Architect": ["# Design\n", "One module ", "`rev.py` ", "with ", "`rev(s)` ", "— ünïcode ✓.\n"],
    "Coder": [
        "File: rev.py\n",
        "```python\n",
        "def rev(s: str) -> str:\n",
        "    ",
        "return ",
        "s[::-1]\n",
        "```\n",
    ],
    "Reviewer": ['```json\n{"approved": true, ', '"summary": "fine", ', '"issues": []}\n```'],
    "Tester": [
        "File: test_rev.py\n",
        "```python\n",
        "from rev import rev\n",
        "\n",
        "def test_rev() -> None:\n",
        "    assert rev('ab') == 'ba'\n",
        "```\n",
    ],
    "Documenter": ["# rev\n", "Reverses ", "a ", "string.\n"],
}
# With an approving review the stages are, in order:
STAGE_OF = {"Architect": 1, "Coder": 2, "Reviewer": 3, "Tester": 4, "Documenter": 5}
AGENT_NAMES = ("Architect", "Coder", "Reviewer", "Refiner", "Tester", "Documenter")
# run_started; per stage stage_started + tokens + (artifact | verdict) + stage_completed; run_completed.
EVENTS_PER_RUN = 1 + sum(len(c) + 3 for c in CHUNKS.values()) + 1
# Seqs whose event and the next are both token_deltas of one stage: cut points inside a stage's tokens.
MID_ARCHITECT = 5  # seq 1 run_started, 2 stage_started, 3..8 Architect tokens
MID_CODER = 14  # 9 artifact, 10 stage_completed, 11 stage_started, 12..18 Coder tokens
HELD_TOKENS = 2  # a held reply sends this many chunks, then waits for its release
HANG_GUARD = 30.0
TERMINAL = frozenset({"run_completed", "run_failed", "run_cancelled"})


def agent_of(body: dict[str, Any]) -> str:
    """The agent a provider request is for, from its system prompt."""
    system = body["messages"][0]["content"]
    for name in AGENT_NAMES:
        if system.startswith(f"You are the {name}"):
            return name
    raise AssertionError(f"not an agent's system prompt: {system[:60]!r}")


class Team:
    """The responder: each agent answers with its chunks; `hold_next` makes one agent's next reply hold."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self._holds: dict[str, int] = {}

    def hold_next(self, agent: str, after: int = HELD_TOKENS) -> asyncio.Event:
        """Hold the next reply of `agent` after `after` chunks; set the returned event to let it go on."""
        self._holds[agent] = after
        self.release = asyncio.Event()
        return self.release

    def __call__(self, body: dict[str, Any]) -> Reply:
        agent = agent_of(body)
        after = self._holds.pop(agent, None)
        if after is None:
            return Reply(chunks=list(CHUNKS[agent]))
        return Reply(chunks=list(CHUNKS[agent]), hold_after=after, release=self.release)


def requests_per_agent(fake: FakeOpenAI) -> Counter[str]:
    """How many provider requests each agent made."""
    return Counter(agent_of(body) for body in fake.requests)


# ----- reading events ----------------------------------------------------------------------------------------

EventCall = grpc.aio.UnaryStreamCall[Any, Any]


def kind(event: pb.RunEvent) -> str:
    """The payload's name."""
    return event.WhichOneof("payload") or ""


def tokens_of(events: Sequence[pb.RunEvent], stage: int) -> list[str]:
    """The token_delta texts of one stage, in order."""
    return [e.token_delta.text for e in events if kind(e) == "token_delta" and e.token_delta.stage == stage]


def stage_texts(events: Sequence[pb.RunEvent]) -> dict[int, str]:
    """Each stage's streamed text."""
    texts: dict[int, str] = {}
    for e in events:
        if kind(e) == "token_delta":
            texts[e.token_delta.stage] = texts.get(e.token_delta.stage, "") + e.token_delta.text
    return texts


def expected_texts() -> dict[int, str]:
    """The text of every stage of an uninterrupted run, from the script."""
    return {STAGE_OF[agent]: "".join(chunks) for agent, chunks in CHUNKS.items()}


def held(events: Sequence[pb.RunEvent], agent: str = "Coder") -> bool:
    """Whether `events` reach the point where `agent`'s held reply stops."""
    return len(tokens_of(events, STAGE_OF[agent])) >= HELD_TOKENS


def wire(events: Sequence[pb.RunEvent]) -> list[bytes]:
    """The events as bytes, to compare payloads exactly."""
    return [e.SerializeToString(deterministic=True) for e in events]


def assert_complete_log(events: Sequence[pb.RunEvent], last: str = "run_completed") -> None:
    """Seqs 1..N with no gap or duplicate, one run, one terminal event, at the end."""
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert len({e.run_id for e in events}) == 1
    assert kind(events[0]) == "run_started"
    assert kind(events[-1]) == last
    terminal = [e for e in events if kind(e) in TERMINAL]
    assert len(terminal) == 1


async def read_until(call: EventCall, done: Callable[[list[pb.RunEvent]], bool]) -> list[pb.RunEvent]:
    """Read events until `done(events)` holds; the stream must not end first."""
    events: list[pb.RunEvent] = []
    while not done(events):
        response = await call.read()
        if not isinstance(response, pb.CollaborateResponse | pb.WatchRunResponse):
            pytest.fail(f"the stream ended after {len(events)} events: {[kind(e) for e in events]}")
        events.append(response.event)
    return events


async def read_rest(call: EventCall) -> list[pb.RunEvent]:
    """Read events until the stream ends, and check that it ended OK."""
    events: list[pb.RunEvent] = []
    while True:
        response = await call.read()
        if not isinstance(response, pb.CollaborateResponse | pb.WatchRunResponse):
            break
        events.append(response.event)
    assert await call.code() == grpc.StatusCode.OK
    return events


def collaborate_request(**fields: Any) -> pb.CollaborateRequest:
    """A Collaborate request for the scripted task."""
    fields.setdefault("task", TASK)
    return pb.CollaborateRequest(**fields)


# ----- an in-process server ----------------------------------------------------------------------------------


def quiet_settings(db: Path, base_url: str, listen: str = "127.0.0.1:0") -> Settings:
    """Settings against the fake, every agent on it, with a silent watchdog."""
    return Settings(
        listen=listen,
        db=db,
        openai_api_key=SecretStr("test-key"),
        openai_base_url=base_url,
        thinking_interval=60,
        heartbeat_interval=60,
        model=MODEL,
    )


@dataclass
class Env:
    """A fake provider, a server on it, and two ways to call the server over one channel."""

    team: Team
    fake: FakeOpenAI
    server: RunningServer
    client: Client
    stub: pb_grpc.OrchestratorServiceAsyncStub
    runs: list[str] = field(default_factory=list)

    async def watch_all(self, run_id: str, after_seq: int = 0) -> list[pb.RunEvent]:
        """The run's events after `after_seq`, to its end."""
        return await read_rest(self.stub.WatchRun(pb.WatchRunRequest(run_id=run_id, after_seq=after_seq)))

    async def get_run(self, run_id: str) -> pb.RunSummary:
        """GetRun."""
        response = await self.stub.GetRun(pb.GetRunRequest(run_id=run_id))
        return response.run

    async def run_to_end(self, **fields: Any) -> list[pb.RunEvent]:
        """Start a run with Collaborate and read it to its end."""
        return await read_rest(self.stub.Collaborate(collaborate_request(**fields)))


@contextlib.asynccontextmanager
async def serving(tmp_path: Path) -> AsyncIterator[Env]:
    """Start the fake and an in-process server on a fresh database; stop both afterwards."""
    team = Team()
    async with FakeOpenAI(team) as fake:
        server = await create_server(quiet_settings(tmp_path / "runs.db", fake.base_url))
        try:
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
            async with Client(f"127.0.0.1:{server.port}", channel=channel) as client:
                yield Env(team, fake, server, client, pb_grpc.OrchestratorServiceStub(channel))
        finally:
            await server.stop(0)


@contextlib.contextmanager
def on_log(event: str, **match: object) -> Iterator[asyncio.Event]:
    """An event set when the server logs `event` with these fields (for what no RPC can observe)."""
    seen = asyncio.Event()

    def processor(_logger: object, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        if event_dict.get("event") == event and all(event_dict.get(k) == v for k, v in match.items()):
            seen.set()
        return event_dict

    # The configured list itself is changed (as structlog.testing.capture_logs does) so cached loggers see it.
    processors = structlog.get_config()["processors"]
    processors.insert(0, processor)
    try:
        yield seen
    finally:
        processors.remove(processor)


# ----- a server process ---------------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ServerProcess:
    """`python -m facilitair.server` on one database, started, SIGKILLed and started again."""

    def __init__(self, db: Path, base_url: str, listen: str = "127.0.0.1:0") -> None:
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("FACILITAIR_", "OPENAI_", "ANTHROPIC_"))}
        self.env.update(
            FACILITAIR_LISTEN=listen,
            FACILITAIR_DB=str(db),
            FACILITAIR_LOG_FORMAT="json",
            FACILITAIR_LOG_LEVEL="info",
            FACILITAIR_THINKING_INTERVAL="60",
            FACILITAIR_HEARTBEAT_INTERVAL="60",
            FACILITAIR_MODEL=MODEL,
            OPENAI_API_KEY="test-key",
            OPENAI_BASE_URL=base_url,
        )
        self.proc: asyncio.subprocess.Process | None = None
        self.log: list[str] = []
        self._reader: asyncio.Task[None] | None = None
        self.starts = 0

    async def start(self) -> int:
        """Start the server and return its port once it logs that it is serving."""
        assert self.proc is None or self.proc.returncode is not None, "already running"
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "facilitair.server",
            env=self.env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        self.proc = proc
        self.starts += 1
        port: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(self._read_log(proc, port, self.starts))
        return await asyncio.wait_for(port, HANG_GUARD)

    async def _read_log(self, proc: asyncio.subprocess.Process, port: asyncio.Future[int], start: int) -> None:
        """Keep the log (for failure messages) and find the "serving" line; drain stderr until EOF."""
        assert proc.stderr is not None
        async for raw in proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            self.log.append(f"[{start}] {line}")
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict) and record.get("event") == "serving" and not port.done():
                    port.set_result(int(record["port"]))
        if not port.done():
            port.set_exception(AssertionError("the server exited before serving:\n" + "\n".join(self.log[-30:])))

    async def kill(self) -> None:
        """SIGKILL the server and wait for it to be gone."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        if self._reader is not None:
            await self._reader

    def logs_with(self, event: str) -> list[dict[str, Any]]:
        """The JSON log records of one event, across starts."""
        records = []
        for line in self.log:
            with contextlib.suppress(ValueError):
                record = json.loads(line.partition(" ")[2])
                if isinstance(record, dict) and record.get("event") == event:
                    records.append(record)
        return records


@contextlib.asynccontextmanager
async def server_process(db: Path, base_url: str, listen: str = "127.0.0.1:0") -> AsyncIterator[ServerProcess]:
    """A ServerProcess that is always killed at the end."""
    proc = ServerProcess(db, base_url, listen)
    try:
        yield proc
    except BaseException as exc:
        await proc.kill()
        exc.add_note("server log:\n" + "\n".join(proc.log[-40:]))
        raise
    finally:
        await proc.kill()


# ----- 1. drop and resume -------------------------------------------------------------------------------------


def covered(events: Sequence[pb.RunEvent]) -> list[int]:
    """The seqs the events stand for: a coalesced token_delta stands for first_seq..seq."""
    return [s for e in events for s in range((e.first_seq or e.seq), e.seq + 1)]


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


def test_drop_after_k_events_and_resume_loses_and_repeats_nothing(tmp_path: Path) -> None:
    """Dropping a stream anywhere (even mid-token-stream) and re-attaching after the last seq gives the whole run."""
    with asyncio.Runner() as runner:
        stack = contextlib.AsyncExitStack()
        env = runner.run(stack.enter_async_context(serving(tmp_path)))
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


async def test_two_watchers_of_a_live_run_see_identical_events(tmp_path: Path) -> None:
    async with asyncio.timeout(HANG_GUARD), serving(tmp_path) as env:
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


async def test_server_killed_mid_stage_resumes_from_checkpoint(tmp_path: Path) -> None:
    team = Team()
    release = team.hold_next("Coder")
    async with (
        asyncio.timeout(60),
        FakeOpenAI(team) as fake,
        server_process(tmp_path / "runs.db", fake.base_url) as proc,
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
    assert [r["run_id"] for r in proc.logs_with("run_resumed")] == [run_id]
    # `facilitair serve` runs on uvloop's event loop when it is installed (it is, with the server extra).
    assert {r["event_loop"] for r in proc.logs_with("serving")} == {"uvloop"}


# ----- 4. cancel mid-token ------------------------------------------------------------------------------------


async def test_cancel_mid_token_closes_the_provider_call_and_ends_the_run(tmp_path: Path) -> None:
    async with asyncio.timeout(HANG_GUARD), serving(tmp_path) as env:
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


async def test_concurrent_cancels_all_see_the_run_cancelled(tmp_path: Path) -> None:
    """Many CancelRuns at once: the run is cancelled once, and every caller is told it is cancelled."""
    async with asyncio.timeout(HANG_GUARD), serving(tmp_path) as env:
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


async def test_same_client_request_id_attaches_to_one_run(tmp_path: Path) -> None:
    async with asyncio.timeout(HANG_GUARD), serving(tmp_path) as env:
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


async def test_watch_run_errors(tmp_path: Path) -> None:
    async with asyncio.timeout(HANG_GUARD), serving(tmp_path) as env:
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


async def test_dropped_collaborate_with_cancel_on_disconnect_cancels_the_run(tmp_path: Path) -> None:
    async with asyncio.timeout(HANG_GUARD), serving(tmp_path) as env:
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


async def test_dropped_collaborate_by_default_continues_without_any_client(tmp_path: Path) -> None:
    async with asyncio.timeout(HANG_GUARD), serving(tmp_path) as env:
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
    tmp_path: Path, on_disconnect: pb.OnDisconnect.ValueType
) -> None:
    """A stream the server ends by stopping is not a client gone: the run is interrupted, then resumed."""
    team = Team()
    team.hold_next("Coder")
    async with asyncio.timeout(HANG_GUARD), FakeOpenAI(team) as fake:
        settings = quiet_settings(tmp_path / "runs.db", fake.base_url)
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


async def test_client_resumes_across_a_server_restart_on_the_same_port(tmp_path: Path) -> None:
    team = Team()
    team.hold_next("Coder")
    listen = f"127.0.0.1:{free_port()}"
    async with (
        asyncio.timeout(60),
        FakeOpenAI(team) as fake,
        server_process(tmp_path / "runs.db", fake.base_url, listen) as proc,
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


async def test_list_runs_pages_newest_first_and_filters_by_state(tmp_path: Path) -> None:
    async with asyncio.timeout(HANG_GUARD), serving(tmp_path) as env:
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
