"""The client library as a calling service meets it: first connection, bad arguments, a run's outcome, types.

A real server on 127.0.0.1:0 with the fake OpenAI behind it; "nothing listening" is a port held by a bound
socket that does not listen, so the kernel refuses connections to it and nobody else can take it.
"""

from __future__ import annotations

import asyncio
import datetime
import signal
import socket
import sys
from collections.abc import Iterator

import pytest

from facilitair.client import (
    Agent,
    ArtifactKind,
    Client,
    CompletedRun,
    Decision,
    EventKind,
    FacilitairError,
    OnApprovalTimeout,
    OnDisconnect,
    RunCancelled,
    RunEvent,
    RunFailed,
    RunState,
    ServerUnreachable,
    StatusCode,
    StoreKind,
    event_kind,
    is_terminal,
    parse_target,
)
from facilitair.v1 import orchestrator_pb2 as pb
from tests.fakes.providers import FakeOpenAI, Fault, Reply
from tests.harness.scripts import default_replies, held, scripted
from tests.harness.servers import ServerFactory

TASK = "Write a function that reverses a string"


@pytest.fixture
def dead_target() -> Iterator[str]:
    """HOST:PORT where nothing listens (connections are refused) for the duration of the test."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{sock.getsockname()[1]}"


# ----- the first connection ------------------------------------------------------------------------------------


async def test_nothing_listening_fails_the_first_call_at_once_without_reconnecting(dead_target: str) -> None:
    reconnects: list[int] = []
    async with Client(dead_target, reconnect_timeout=60.0) as client:
        client.on_reconnect = lambda attempt, _delay, _err: reconnects.append(attempt)
        async with asyncio.timeout(10):  # a hang guard: the old client retried for reconnect_timeout (60 s)
            with pytest.raises(ServerUnreachable) as err:
                async for _ in client.collaborate(TASK):
                    pass
            with pytest.raises(ServerUnreachable) as listed:
                await client.list_runs()
    assert reconnects == []
    assert err.value.code == StatusCode.UNAVAILABLE
    assert err.value.message == f"cannot reach facilitair at {dead_target} - is `facilitair serve` running?"
    assert listed.value.message == err.value.message


async def test_tls_against_a_plaintext_server_is_unreachable_not_retried(make_server: ServerFactory) -> None:
    async with FakeOpenAI(scripted()) as fake:
        h = await make_server(openai=fake)
        async with Client(h.target, tls=True) as client, asyncio.timeout(10):
            with pytest.raises(ServerUnreachable) as err:
                await client.run(TASK)
    assert "with TLS" in err.value.message
    assert fake.requests == []


async def test_a_server_that_was_there_and_went_away_is_reconnected_to(make_server: ServerFactory) -> None:
    coder, release = held(default_replies()["coder"], after=1)
    async with FakeOpenAI(scripted(coder=coder)) as fake:
        h = await make_server(openai=fake)
        reconnects: list[StatusCode] = []
        async with Client(h.target, reconnect_timeout=1.0) as client:
            client.on_reconnect = lambda _attempt, _delay, err: reconnects.append(err.code)
            events = client.collaborate(TASK)
            async for event in events:
                if event_kind(event) is EventKind.TOKEN_DELTA and event.token_delta.stage == 2:
                    break
            await events.aclose()
            await h.stop()
            release.set()
            with pytest.raises(FacilitairError) as err:
                async for _ in client.watch(event.run_id, event.seq):
                    pass
    assert not isinstance(err.value, ServerUnreachable)
    assert "gave up reconnecting after 1s" in err.value.message
    assert reconnects
    assert set(reconnects) == {StatusCode.UNAVAILABLE}


# ----- bad arguments are FacilitairError, not ValueError --------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"max_refinements": -1}, "max_refinements"),
        ({"context": {"when": datetime.date(2026, 1, 1)}}, "context"),
        ({"context": {"ratio": float("nan")}}, "context"),
        ({"context": {1: "x"}}, "context"),
        ({"max_tokens": -5}, "max_tokens"),
        ({"max_cost_usd": -1.0}, "max_cost_usd"),
    ],
)
async def test_bad_arguments_are_refused_before_sending(
    make_server: ServerFactory, options: dict[str, object], field: str
) -> None:
    async with FakeOpenAI(scripted()) as fake:
        h = await make_server(openai=fake)
        with pytest.raises(FacilitairError) as err:
            await h.client.run(TASK, **options)  # type: ignore[arg-type]
        runs, _ = await h.client.list_runs()
    assert err.value.code == StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in err.value.field_violations] == [field]
    assert runs == []


async def test_bad_positions_and_page_sizes_are_refused(make_server: ServerFactory) -> None:
    async with FakeOpenAI(scripted()) as fake:
        h = await make_server(openai=fake)
        with pytest.raises(FacilitairError) as watched:
            async for _ in h.client.watch("some-run", -5):
                pass
        with pytest.raises(FacilitairError) as listed:
            await h.client.list_runs(page_size=-1)
        with pytest.raises(FacilitairError) as stated:
            await h.client.list_runs(state=42)
    assert [e.value.code for e in (watched, listed, stated)] == [StatusCode.INVALID_ARGUMENT] * 3
    assert watched.value.field_violations[0][0] == "after_seq"


# ----- a run's outcome cannot be mistaken ----------------------------------------------------------------------


async def test_run_returns_the_result_and_shows_every_event(make_server: ServerFactory) -> None:
    async with FakeOpenAI(scripted()) as fake:
        h = await make_server(openai=fake)
        seen: list[RunEvent] = []
        result = await h.client.run(TASK, on_event=seen.append)
    assert isinstance(result, CompletedRun)
    assert [e.seq for e in seen] == list(range(1, len(seen) + 1))
    assert is_terminal(seen[-1])
    assert result.event == seen[-1]
    assert result.run_id == seen[0].run_id
    assert result.approved
    assert result.refinements == 0
    assert {f.path: f.content for f in result.files}["src/rev.py"] == "".join(default_replies()["coder"].chunks[1:-1])
    assert result.usage.input_tokens == sum(r.input_tokens for a, r in default_replies().items() if a != "refiner")
    assert {ArtifactKind(f.kind) for f in result.files} == {
        ArtifactKind.DESIGN,
        ArtifactKind.CODE,
        ArtifactKind.TEST,
        ArtifactKind.DOC,
    }


async def test_a_failed_run_raises_run_failed_with_the_event_code(make_server: ServerFactory) -> None:
    script = scripted(coder=Reply(chunks=["x"], fault=Fault.http_status(503)))
    async with FakeOpenAI(script) as fake:
        h = await make_server(openai=fake, provider_attempts=1)
        with pytest.raises(RunFailed) as err:
            await h.client.run(TASK)
    assert isinstance(err.value, FacilitairError)
    assert err.value.code == StatusCode.UNAVAILABLE
    assert "overloaded" in err.value.message
    assert err.value.retryable
    assert err.value.stage == 2
    assert err.value.usage.input_tokens == default_replies()["architect"].input_tokens
    assert err.value.run_id


async def test_a_cancelled_run_raises_run_cancelled_and_wait_follows_a_started_run(make_server: ServerFactory) -> None:
    coder, release = held(default_replies()["coder"], after=1)
    async with FakeOpenAI(scripted(coder=coder)) as fake:
        try:
            h = await make_server(openai=fake)
            started = asyncio.Event()
            run_ids: list[str] = []

            async def on_event(event: RunEvent) -> None:  # a coroutine callback is awaited
                run_ids.append(event.run_id)
                if event_kind(event) is EventKind.TOKEN_DELTA and event.token_delta.stage == 2:
                    started.set()

            running = asyncio.ensure_future(h.client.run(TASK, on_event=on_event))
            await asyncio.wait_for(started.wait(), 20)
            summary = await h.client.cancel_run(run_ids[0])
            with pytest.raises(RunCancelled) as err:
                await running
            with pytest.raises(RunCancelled) as again:
                await h.client.wait(run_ids[0])
        finally:
            release.set()
    assert RunState(summary.state) is RunState.CANCELLED
    assert err.value.code == StatusCode.CANCELLED
    assert err.value.run_id == run_ids[0]
    assert err.value.cancel_reason == again.value.cancel_reason == "cancelled by a client request"
    assert err.value.reason == "RUN_CANCELLED"
    assert err.value.usage.input_tokens >= default_replies()["architect"].input_tokens


# ----- typed helpers ---------------------------------------------------------------------------------------------


def test_the_enums_match_the_proto() -> None:
    for ours, theirs, prefix in (
        (RunState, pb.RunState, "RUN_STATE_"),
        (Agent, pb.Agent, "AGENT_"),
        (ArtifactKind, pb.ArtifactKind, "ARTIFACT_KIND_"),
        (OnDisconnect, pb.OnDisconnect, "ON_DISCONNECT_"),
        (StoreKind, pb.StoreKind, "STORE_KIND_"),
        (Decision, pb.ApprovalDecision, "APPROVAL_DECISION_"),
        (OnApprovalTimeout, pb.OnApprovalTimeout, "ON_APPROVAL_TIMEOUT_"),
    ):
        assert {m.name: m.value for m in ours} == {name.removeprefix(prefix): value for name, value in theirs.items()}
    payloads = {f.name for f in pb.RunEvent.DESCRIPTOR.oneofs_by_name["payload"].fields}
    assert {k.value for k in EventKind} - {"unknown"} == payloads


def test_event_kind_and_is_terminal() -> None:
    token = RunEvent(token_delta=pb.TokenDelta(stage=1, text="x"))
    assert event_kind(token) is EventKind.TOKEN_DELTA
    assert event_kind(token) == "token_delta"
    assert not is_terminal(token)
    assert is_terminal(RunEvent(run_failed=pb.RunFailed(code=14)))
    assert event_kind(RunEvent()) is EventKind.UNKNOWN


@pytest.mark.parametrize(
    ("target", "address", "tls"),
    [
        ("example.com", "example.com:50051", None),
        ("example.com:9000", "example.com:9000", None),
        ("http://example.com", "example.com:50051", False),
        ("http://127.0.0.1:7000/", "127.0.0.1:7000", False),
        ("https://example.com", "example.com:50051", True),
        ("[::1]", "[::1]:50051", None),
        ("[::1]:7000", "[::1]:7000", None),
        ("::1", "[::1]:50051", None),
        ("unix:/tmp/facilitair.sock", "unix:/tmp/facilitair.sock", None),
        ("50059", "127.0.0.1:50059", None),  # a port alone is this machine's
        ("http://50059", "127.0.0.1:50059", False),
    ],
)
def test_targets_are_understood(target: str, address: str, tls: bool | None) -> None:
    parsed = parse_target(target)
    assert (parsed.address, parsed.tls) == (address, tls)


@pytest.mark.parametrize("target", ["", "host:port", "host:70000", "ftp://host", "http://host/path", ":50051", "70000"])
def test_bad_targets_are_invalid_argument(target: str) -> None:
    with pytest.raises(FacilitairError) as err:
        parse_target(target)
    assert err.value.code == StatusCode.INVALID_ARGUMENT


async def test_the_client_takes_the_port_and_tls_from_the_target() -> None:
    async with Client("http://127.0.0.1") as client:
        assert client.target == "127.0.0.1:50051"
        assert not client.tls
    async with Client("https://127.0.0.1:1") as client:
        assert client.tls
    with pytest.raises(FacilitairError):
        Client("http://127.0.0.1:1", tls=True)


# ----- SyncClient in a script: Ctrl-C and leaving a loop early ----------------------------------------------------

SYNC_INTERRUPTED = """
import sys
from facilitair.client import EventKind, SyncClient, event_kind

with SyncClient(sys.argv[1]) as client:
    try:
        for event in client.collaborate("reverse a string"):
            if event_kind(event) is EventKind.TOKEN_DELTA and event.token_delta.stage == 2:
                print("streaming", flush=True)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
print("closed", flush=True)
"""

SYNC_BREAK = """
import sys
from facilitair.client import SyncClient

client = SyncClient(sys.argv[1])
events = client.collaborate("reverse a string")
for event in events:
    break
watching = client.watch(event.run_id)
next(watching)
client.close()
print("closed", flush=True)
"""


async def _script(source: str, target: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-c", source, target, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )


async def test_sync_client_ctrl_c_in_a_loop_is_a_clean_keyboard_interrupt(make_server: ServerFactory) -> None:
    coder, release = held(default_replies()["coder"], after=1)
    async with FakeOpenAI(scripted(coder=coder)) as fake:
        try:
            h = await make_server(openai=fake)
            proc = await _script(SYNC_INTERRUPTED, h.target)
            assert proc.stdout is not None
            assert await asyncio.wait_for(proc.stdout.readline(), 30) == b"streaming\n"
            proc.send_signal(signal.SIGINT)
            out, err = await asyncio.wait_for(proc.communicate(), 30)
        finally:
            release.set()
    assert err.decode() == ""  # no "RuntimeError: aclose(): asynchronous generator is already running"
    assert out.decode() == "interrupted\nclosed\n"
    assert proc.returncode == 0


async def test_sync_client_left_early_exits_without_loop_errors(make_server: ServerFactory) -> None:
    coder, release = held(default_replies()["coder"], after=1)
    async with FakeOpenAI(scripted(coder=coder)) as fake:
        try:
            h = await make_server(openai=fake)
            proc = await _script(SYNC_BREAK, h.target)
            out, err = await asyncio.wait_for(proc.communicate(), 30)
        finally:
            release.set()
    assert err.decode() == ""  # no "Event loop is closed" from iterators finalised after close()
    assert out.decode() == "closed\n"
    assert proc.returncode == 0
