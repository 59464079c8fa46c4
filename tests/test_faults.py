"""Provider faults, fallback, budgets and deadlines, each injected by the fake vendors through the real SDKs.

Every test checks the events a client sees (attempt resets, fallbacks, the terminal event), the exact
number of requests each fake received, and that the final text carries no duplicated or truncated output.
"""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping, Sequence
from typing import Any

import grpc
import pytest

from facilitair.client import RunEvent
from facilitair.v1 import orchestrator_pb2 as pb
from facilitair.v1 import orchestrator_pb2_grpc as pb_grpc
from tests.fakes.providers import FakeAnthropic, FakeOpenAI, Fault, Reply
from tests.harness.events import collect, kind, of_kind, stage_text
from tests.harness.logs import captured_logs
from tests.harness.scripts import Script, default_replies, held, scripted, text_of
from tests.harness.servers import Harness, ServerFactory

TASK = "Write a function that reverses a string"
MINI = "openai:gpt-4.1-mini"
SONNET = "anthropic:claude-sonnet-4-6"
FAST_RETRIES = 0.01  # retry_backoff: keeps retried tests quick
CODER_STAGE = 2
# The tests whose runs end other than by completing (failed, refused, cut by a deadline) and are read back: on
# both stores. The retry matrices stay on SQLite: what they vary is the provider's wire, not what is stored.
STORED = pytest.mark.both_stores


def fake_for(vendor: str, script: Script) -> FakeOpenAI | FakeAnthropic:
    """A fake of the named vendor answering from `script`."""
    return FakeOpenAI(script) if vendor == "openai" else FakeAnthropic(script)


async def start(make_server: ServerFactory, fake: FakeOpenAI | FakeAnthropic, **settings: Any) -> Harness:
    """A server using `fake` for its vendor's model, with fast retries."""
    settings.setdefault("retry_backoff", FAST_RETRIES)
    if isinstance(fake, FakeOpenAI):
        return await make_server(openai=fake, model=MINI, **settings)
    return await make_server(anthropic=fake, model=SONNET, **settings)


def model_for(vendor: str) -> str:
    """The model the tests ask of a vendor."""
    return MINI if vendor == "openai" else SONNET


def coder_text_after_last_reset(events: Sequence[RunEvent]) -> str:
    """The coder stage's text as a client that honours attempt_reset keeps it."""
    last_reset = max(
        (i for i, e in enumerate(events) if kind(e) == "attempt_reset" and e.attempt_reset.stage == CODER_STAGE),
        default=-1,
    )
    return stage_text(events[last_reset + 1 :], CODER_STAGE)


def assert_gapless(events: Sequence[RunEvent]) -> None:
    """Seq is 1..N and only the last event is terminal."""
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    terminal = [e for e in events if kind(e) in ("run_completed", "run_failed", "run_cancelled")]
    assert terminal == [events[-1]]


VENDORS = ["openai", "anthropic"]


@pytest.mark.parametrize("vendor", VENDORS)
@pytest.mark.parametrize(
    ("fault", "delay"),
    [
        (Fault.http_status(429, retry_after=0.05), 0.05),
        (Fault.http_status(500), None),
        (Fault.http_status(503), None),
        (Fault.http_status(529), None),
        (Fault.hang_up(), None),
    ],
    ids=["429-retry-after", "500", "503", "529", "hang-up"],
)
async def test_fault_before_the_first_token_is_retried(
    make_server: ServerFactory, vendor: str, fault: Fault, delay: float | None
) -> None:
    good = default_replies()["coder"]
    script = scripted(coder=[Reply(chunks=["never sent"], fault=fault), good])
    async with fake_for(vendor, script) as fake:
        h = await start(make_server, fake)
        events = await h.run(TASK)
    assert_gapless(events)
    assert kind(events[-1]) == "run_completed"
    assert len(script.requests("coder")) == 2
    resets = of_kind(events, "attempt_reset")
    assert [(r.stage, r.attempt, r.model) for r in resets] == [(CODER_STAGE, 2, model_for(vendor))]
    assert vendor in resets[0].reason
    if fault.kind == "hang_up":
        # aiohttp's ServerDisconnectedError reaches the SDK as httpx2.ConnectTimeout: not a timeout to us.
        assert "connection failed" in resets[0].reason, resets[0].reason
    if delay is not None:  # retry-after is honoured as given
        assert resets[0].delay.ToNanoseconds() / 1e9 == pytest.approx(delay)
    assert coder_text_after_last_reset(events) == text_of(good)
    assert stage_text(events, CODER_STAGE) == text_of(good)  # nothing was streamed before the failure


@pytest.mark.parametrize("vendor", VENDORS)
@pytest.mark.parametrize(
    "fault",
    [Fault.error_event(2), Fault.reset(2), Fault.reset(2, rst=False), Fault.stall(2, seconds=30), Fault.truncate(2)],
    ids=["error-event", "tcp-reset", "fin", "stall", "truncated"],
)
async def test_fault_after_the_first_token_resets_the_attempt(
    make_server: ServerFactory, vendor: str, fault: Fault
) -> None:
    good = default_replies()["coder"]
    broken = Reply(chunks=["File: src/rev.py\n```python\n", "def broken(", "never sent"], fault=fault)
    script = scripted(coder=[broken, good])
    async with fake_for(vendor, script) as fake:
        h = await start(make_server, fake, provider_timeout=0.5)
        events = await h.run(TASK)
    assert_gapless(events)
    assert kind(events[-1]) == "run_completed"
    assert len(script.requests("coder")) == 2
    # The partial text came first, then the reset, then the whole text of the second attempt.
    reset_index = next(i for i, e in enumerate(events) if kind(e) == "attempt_reset")
    assert stage_text(events[:reset_index], CODER_STAGE) == "".join(broken.chunks[:2])
    assert events[reset_index].attempt_reset.attempt == 2
    # Only the stall is a timeout: the aiohttp transport re-raises a dropped connection as httpx2's
    # ConnectTimeout, and providers/transport.py classifies it by the aiohttp error beneath.
    reason = events[reset_index].attempt_reset.reason
    assert ("timed out" in reason) == (fault.kind == "stall"), reason
    assert coder_text_after_last_reset(events) == text_of(good)
    files = {a.path: a.content for a in events[-1].run_completed.result.artifacts}
    assert files["src/rev.py"] == "".join(good.chunks[1:-1])  # no duplicated or truncated code


@pytest.mark.parametrize("vendor", VENDORS)
async def test_events_split_across_reads_arrive_whole(make_server: ServerFactory, vendor: str) -> None:
    # Each event reaches the server in two reads, split inside its JSON (and inside "é", "→" and "🙂" when
    # the middle falls there): the OpenAI provider splits the bytes into lines itself.
    chunks = ["File: src/accents.py\n```python\n", "s = 'café → ", "naïve 🙂'\n", "```\n"]
    script = scripted(coder=Reply(chunks=chunks, split_events=True))
    async with fake_for(vendor, script) as fake:
        h = await start(make_server, fake)
        events = await h.run(TASK)
    assert_gapless(events)
    assert kind(events[-1]) == "run_completed"
    deltas = [e.token_delta.text for e in events if kind(e) == "token_delta" and e.token_delta.stage == CODER_STAGE]
    assert deltas == chunks
    files = {a.path: a.content for a in events[-1].run_completed.result.artifacts}
    assert files["src/accents.py"] == "s = 'café → naïve 🙂'\n"


@STORED
@pytest.mark.parametrize(
    ("status", "code", "words"),
    [(503, grpc.StatusCode.UNAVAILABLE, "overloaded"), (429, grpc.StatusCode.RESOURCE_EXHAUSTED, "rate limited")],
)
async def test_exhausted_retries_end_the_run_with_the_right_status(
    make_server: ServerFactory, status: int, code: grpc.StatusCode, words: str
) -> None:
    script = scripted(coder=Reply(chunks=["x"], fault=Fault.http_status(status)))
    async with FakeOpenAI(script) as fake:
        h = await start(make_server, fake, provider_attempts=3)
        events = await h.run(TASK)
    assert_gapless(events)
    assert len(script.requests("coder")) == 3
    assert [r.attempt for r in of_kind(events, "attempt_reset")] == [2, 3]
    failed = events[-1].run_failed
    assert failed.code == code.value[0]
    assert failed.retryable
    assert failed.stage == CODER_STAGE
    assert "openai" in failed.message
    assert words in failed.message
    assert "test-key" not in failed.message
    architect_usage = of_kind(events, "stage_completed")[0].usage
    assert failed.usage.input_tokens == architect_usage.input_tokens
    assert failed.usage.cost_usd == pytest.approx(architect_usage.cost_usd)


@STORED
async def test_fallback_moves_to_the_next_model_across_providers(make_server: ServerFactory) -> None:
    openai_script = scripted(coder=Reply(chunks=["x"], fault=Fault.http_status(500)))
    anthropic_script = scripted()
    async with FakeOpenAI(openai_script) as oa, FakeAnthropic(anthropic_script) as an:
        h = await make_server(openai=oa, anthropic=an, provider_attempts=2, retry_backoff=FAST_RETRIES)
        events = await h.run(TASK, agent_models={"coder": f"{MINI},{SONNET}"})
    assert_gapless(events)
    assert kind(events[-1]) == "run_completed"
    assert len(openai_script.requests("coder")) == 2
    assert anthropic_script.agents() == ["coder"]
    fallbacks = of_kind(events, "model_fallback")
    assert [(f.stage, f.from_model, f.to_model) for f in fallbacks] == [(CODER_STAGE, MINI, SONNET)]
    resets = of_kind(events, "attempt_reset")
    assert [(r.attempt, r.model) for r in resets] == [(2, MINI), (3, SONNET)]
    fallback_index = events.index(next(e for e in events if kind(e) == "model_fallback"))
    assert kind(events[fallback_index + 1]) == "attempt_reset"
    completed = {c.stage: c.model for c in of_kind(events, "stage_completed")}
    assert completed[CODER_STAGE] == SONNET
    assert completed[1] == MINI
    assert coder_text_after_last_reset(events) == text_of(default_replies()["coder"])


async def test_a_failure_retrying_cannot_fix_falls_back_at_once(make_server: ServerFactory) -> None:
    openai_script = scripted(coder=Reply(chunks=["x"], fault=Fault.http_status(404)))
    anthropic_script = scripted()
    async with FakeOpenAI(openai_script) as oa, FakeAnthropic(anthropic_script) as an:
        h = await make_server(openai=oa, anthropic=an, provider_attempts=3, retry_backoff=FAST_RETRIES)
        events = await h.run(TASK, agent_models={"coder": f"{MINI},{SONNET}"})
    assert kind(events[-1]) == "run_completed"
    assert len(openai_script.requests("coder")) == 1  # a 404 is not retried
    assert "does not know the model" in of_kind(events, "model_fallback")[0].reason


@STORED
async def test_plan_over_budget_is_refused_with_the_amount(make_server: ServerFactory) -> None:
    async with FakeOpenAI(scripted()) as fake:
        h = await make_server(openai=fake)
        async with grpc.aio.insecure_channel(h.target) as channel:
            stub = pb_grpc.OrchestratorServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await collect_raw(stub.Collaborate(pb.CollaborateRequest(task=TASK, max_cost_usd=0.001)))
            runs = await stub.ListRuns(pb.ListRunsRequest())
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "over the budget $0.0010 by $" in (err.value.details() or "")
    assert len(runs.runs) == 0
    assert fake.requests == []


@STORED
async def test_no_stage_starts_once_the_cost_budget_is_spent(make_server: ServerFactory) -> None:
    # The architect reports 10M input tokens: $4 at gpt-4.1-mini prices, far over a $0.05 budget.
    script = scripted(architect=Reply(chunks=["design"], input_tokens=10_000_000, output_tokens=1))
    async with FakeOpenAI(script) as fake:
        h = await make_server(openai=fake)
        events = await h.run(TASK, max_cost_usd=0.05)
    assert_gapless(events)
    assert script.agents() == ["architect"]
    failed = events[-1].run_failed
    assert failed.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert "cost budget of $0.0500 is spent" in failed.message
    assert "stage 2 was not started" in failed.message
    assert "Raise max_cost_usd (--max-cost for facilitair run) or FACILITAIR_BUDGET_USD" in failed.message
    assert failed.usage.input_tokens == 10_000_000
    assert failed.usage.cost_usd == pytest.approx(4.0 + 1.6e-6)


@STORED
async def test_a_stage_that_crosses_the_token_budget_is_stopped(make_server: ServerFactory) -> None:
    # 20k tokens allow the plan (about 18k) but not an architect that streams 100 x 1000 characters.
    # Held after 90 chunks, so the fake is still sending when the server must close the stream.
    long_reply, release = held(Reply(chunks=["y" * 1000] * 100), after=90)
    script = scripted(architect=long_reply)
    async with FakeOpenAI(script) as fake:
        try:
            h = await make_server(openai=fake)
            events = await h.run(TASK, max_tokens=20_000)
            await asyncio.wait_for(fake.wait_disconnect(), 5)  # the stream was closed, not read to its end
        finally:
            release.set()
    assert_gapless(events)
    failed = events[-1].run_failed
    assert failed.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert "stage 1 was stopped" in failed.message
    assert "token budget of 20000" in failed.message
    assert "(--max-cost / --max-tokens for facilitair run)" in failed.message
    streamed = len(stage_text(events, 1))
    assert 70_000 < streamed < 81_000  # about (20000 - the prompt's tokens) * 4 characters, then it stopped
    assert script.agents() == ["architect"]


@STORED
async def test_the_server_deadline_ends_a_run_with_deadline_exceeded(make_server: ServerFactory) -> None:
    architect, release = held(default_replies()["architect"], after=0)
    script = scripted(architect=architect)
    async with FakeOpenAI(script) as fake:
        try:
            h = await make_server(openai=fake, run_timeout=1.0)
            events = await h.run(TASK)
            await asyncio.wait_for(fake.wait_disconnect(), 5)
        finally:
            release.set()
    assert_gapless(events)
    failed = events[-1].run_failed
    assert failed.code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
    assert "FACILITAIR_RUN_TIMEOUT" in failed.message
    run = await h.client.get_run(events[0].run_id)
    assert run.state == pb.RUN_STATE_FAILED


@STORED
@pytest.mark.parametrize("on_disconnect", [pb.ON_DISCONNECT_CONTINUE, pb.ON_DISCONNECT_CANCEL])
async def test_a_client_deadline_ends_only_the_stream(make_server: ServerFactory, on_disconnect: int) -> None:
    architect, release = held(default_replies()["architect"], after=1)
    script = scripted(architect=architect)
    async with FakeOpenAI(script) as fake:
        h = await make_server(openai=fake)
        channel = grpc.aio.insecure_channel(h.target)
        stub = pb_grpc.OrchestratorServiceStub(channel)
        seen: list[pb.RunEvent] = []
        request = pb.CollaborateRequest(task=TASK, on_disconnect=on_disconnect)  # type: ignore[arg-type]
        call = stub.Collaborate(request, timeout=1.0)

        async def read() -> None:
            async for response in call:
                seen.append(response.event)

        with pytest.raises(grpc.aio.AioRpcError) as err:
            await read()
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        run_id = seen[0].run_id
        assert kind(seen[-1]) in ("token_delta", "thinking", "heartbeat")
        if on_disconnect == pb.ON_DISCONNECT_CANCEL:
            await asyncio.wait_for(fake.wait_disconnect(), 5)
        release.set()
        events = await collect(h.client.watch(run_id))
        await channel.close(None)
    assert_gapless(events)
    expected = "run_completed" if on_disconnect == pb.ON_DISCONNECT_CONTINUE else "run_cancelled"
    assert kind(events[-1]) == expected


@pytest.mark.parametrize(("server_min_ping_ms", "survives"), [(500, True), (10_000, False)])
async def test_keepalive_across_a_silent_provider(
    make_server: ServerFactory, server_min_ping_ms: int, survives: bool
) -> None:
    """The client pings every second while the provider says nothing for 4 s and no event is sent.

    With the server allowing pings that often, the stream lives; with the default 10 s minimum the
    server answers GOAWAY too_many_pings and the stream dies UNAVAILABLE: the pitfall the settings avoid.
    """
    architect = Reply(chunks=["quiet ", "design"], first_chunk_delay=4.0)
    async with FakeOpenAI(scripted(architect=architect)) as fake:
        h = await make_server(
            openai=fake,
            thinking_interval=60,
            heartbeat_interval=60,
            keepalive_min_ping_interval_ms=server_min_ping_ms,
        )
        options = [
            ("grpc.keepalive_time_ms", 1000),
            ("grpc.keepalive_timeout_ms", 1000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
        ]
        async with grpc.aio.insecure_channel(h.target, options=options) as channel:
            stub = pb_grpc.OrchestratorServiceStub(channel)
            call = stub.Collaborate(pb.CollaborateRequest(task=TASK))
            if survives:
                events = await collect_raw(call)
                assert_gapless(events)
                assert kind(events[-1]) == "run_completed"
                assert of_kind(events, "thinking") == []  # the stream really was silent
            else:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await collect_raw(call)
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE


async def collect_raw(call: grpc.aio.UnaryStreamCall[pb.CollaborateRequest, pb.CollaborateResponse]) -> list[RunEvent]:
    """Every event of a raw Collaborate call, with a hang guard."""

    async def read() -> list[RunEvent]:
        return [response.event async for response in call]

    return await asyncio.wait_for(read(), 60)


async def test_a_stall_before_the_first_token_is_a_retried_timeout(make_server: ServerFactory) -> None:
    good = default_replies()["coder"]
    script = scripted(coder=[Reply(chunks=["never sent"], fault=Fault.stall(0, seconds=30)), good])
    async with FakeOpenAI(script) as fake:
        h = await start(make_server, fake, provider_timeout=0.5)
        events = await h.run(TASK)
    assert_gapless(events)
    assert kind(events[-1]) == "run_completed"
    assert len(script.requests("coder")) == 2
    [reset] = of_kind(events, "attempt_reset")
    assert "timed out" in reset.reason
    assert coder_text_after_last_reset(events) == text_of(good)


@STORED
async def test_an_unreachable_provider_is_retried_then_fails_unavailable(make_server: ServerFactory) -> None:
    # The fake's port is closed (no other program's port, which might answer): every attempt is refused.
    async with FakeOpenAI(scripted()) as fake:
        await fake.stop_listening()
        h = await make_server(openai=fake, provider_attempts=3, retry_backoff=0.01)
        events = await h.run(TASK)
    assert fake.requests == []
    assert_gapless(events)
    assert [r.attempt for r in of_kind(events, "attempt_reset")] == [2, 3]
    failed = events[-1].run_failed
    assert failed.code == grpc.StatusCode.UNAVAILABLE.value[0]
    assert failed.retryable
    assert failed.stage == 1
    assert "openai connection failed for model gpt-4.1-mini" in failed.message


# ----- output of the wrong shape (issue 11, item 13) -----

WRONG_SHAPES = {
    "openai": [
        "[]",
        "7",
        "null",
        '"text"',
        '{"choices":["x"]}',
        '{"choices":[{"index":0,"delta":["x"],"finish_reason":null}]}',
        '{"choices":[{"index":0,"delta":{"content":7},"finish_reason":null}]}',
        '{"choices":[],"usage":{"prompt_tokens":null,"completion_tokens":3,"total_tokens":3}}',
    ],
    "anthropic": [
        "[]",
        "7",
        "null",
        '{"choices":["x"]}',
        '{"type":"content_block_delta","index":0,"delta":["x"]}',
        '{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":null}}',
        '{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":null}}',
        '{"type":"message_start","message":{"usage":{"input_tokens":null,"output_tokens":1}}}',
    ],
}


@pytest.mark.parametrize(
    ("vendor", "payload"), [(vendor, payload) for vendor, shapes in WRONG_SHAPES.items() for payload in shapes]
)
async def test_a_chunk_of_the_wrong_shape_is_a_broken_stream_and_retried(
    make_server: ServerFactory, vendor: str, payload: str
) -> None:
    good = default_replies()["coder"]
    broken = Reply(chunks=["File: src/rev.py\n```python\n", "def broken(", "more"], fault=Fault.wrong_shape(2, payload))
    script = scripted(coder=[broken, good])
    async with fake_for(vendor, script) as fake:
        h = await start(make_server, fake)
        events = await h.run(TASK)
    assert_gapless(events)
    assert kind(events[-1]) == "run_completed", events[-1]
    assert len(script.requests("coder")) == 2
    [reset] = of_kind(events, "attempt_reset")
    assert (reset.stage, reset.attempt) == (CODER_STAGE, 2)
    assert "stream broke off" in reset.reason
    assert coder_text_after_last_reset(events) == text_of(good)


@pytest.mark.parametrize("vendor", VENDORS)
async def test_a_body_without_its_terminal_event_is_retried_even_after_finish_and_usage(
    make_server: ServerFactory, vendor: str
) -> None:
    # The finish chunk and the usage came, [DONE] / message_stop did not: docs/runs.md says that is retried.
    good = default_replies()["coder"]
    script = scripted(coder=[Reply(chunks=["File: src/rev.py\n"], fault=Fault.no_terminal()), good])
    async with fake_for(vendor, script) as fake:
        h = await start(make_server, fake)
        events = await h.run(TASK)
    assert kind(events[-1]) == "run_completed", events[-1]
    [reset] = of_kind(events, "attempt_reset")
    assert (reset.stage, reset.attempt) == (CODER_STAGE, 2)
    assert "stream broke off" in reset.reason
    assert len(script.requests("coder")) == 2
    assert coder_text_after_last_reset(events) == text_of(good)


# ----- the server log (item 11) -----

LOGGED_KEY = "sk-fake-Zq8x3LoggedKey"  # a key the vendor's error text echoes: it must never reach the log


class EchoingOpenAI(FakeOpenAI):
    """A fake OpenAI whose error messages quote the key it was sent, as some vendors' do."""

    def _status_message(self, status: int) -> str:
        return f"Vendor trouble for key {LOGGED_KEY}: {super()._status_message(status)}"


PROVIDER_EVENTS = {"provider_attempt_failed", "provider_retry", "provider_fallback", "provider_failed"}


def provider_lines(logs: list[MutableMapping[str, Any]]) -> list[MutableMapping[str, Any]]:
    """The captured log lines about failed provider calls, in order."""
    return [line for line in logs if line.get("event") in PROVIDER_EVENTS]


async def test_failed_attempts_retries_fallbacks_and_the_final_error_are_logged(make_server: ServerFactory) -> None:
    # openai: two 500s (a retry between them), then a fallback to anthropic, which answers 429 twice: the end.
    openai_script = scripted(coder=Reply(chunks=["x"], fault=Fault.http_status(500)))
    anthropic_script = scripted(coder=Reply(chunks=["x"], fault=Fault.http_status(429, retry_after=0.01)))
    async with EchoingOpenAI(openai_script, api_key=LOGGED_KEY) as oa, FakeAnthropic(anthropic_script) as an:
        h = await make_server(openai=oa, anthropic=an, provider_attempts=2, retry_backoff=FAST_RETRIES)
        with captured_logs() as logs:
            events = await h.run(TASK, agent_models={"coder": f"{MINI},{SONNET}"})
    assert kind(events[-1]) == "run_failed"

    lines = provider_lines(logs.entries)
    assert [line["event"] for line in lines] == [
        "provider_attempt_failed",
        "provider_retry",
        "provider_attempt_failed",
        "provider_fallback",
        "provider_attempt_failed",
        "provider_retry",
        "provider_attempt_failed",
        "provider_failed",
    ]
    openai_host, anthropic_host = (f.base_url.split("//")[1].split("/")[0] for f in (oa, an))
    first, retry, _, fallback, _, anthropic_retry, last, final = lines
    assert first["log_level"] == "warning"
    assert {k: first[k] for k in ("stage", "provider", "model", "host", "http_status", "error", "retryable")} == {
        "stage": CODER_STAGE,
        "provider": "openai",
        "model": "gpt-4.1-mini",
        "host": openai_host,
        "http_status": 500,
        "error": "server_error",
        "retryable": True,
    }
    assert first["cause"] == "HTTPStatusError"
    assert (retry["attempt"], retry["provider"], retry["host"]) == (2, "openai", openai_host)
    assert 0 < retry["delay"] < 1
    assert (fallback["model"], fallback["to_model"], fallback["error"]) == ("gpt-4.1-mini", SONNET, "server_error")
    assert anthropic_retry["delay"] == pytest.approx(0.01)
    assert (last["provider"], last["host"], last["http_status"], last["error"]) == (
        "anthropic",
        anthropic_host,
        429,
        "rate_limited",
    )
    assert final["log_level"] == "warning"  # a provider failing is not a server bug
    assert (final["provider"], final["model"], final["http_status"]) == ("anthropic", "claude-sonnet-4-6", 429)
    # The vendors' bodies, with the key one of them echoed, are nowhere in the log.
    logged = repr(logs.entries)
    assert LOGGED_KEY not in logged
    assert "Vendor trouble" not in logged
    assert "Rate limit reached" not in logged
    assert "/v1" not in logged  # hosts only: no paths


async def test_a_connection_refused_is_logged_with_its_cause(make_server: ServerFactory) -> None:
    async with FakeOpenAI(scripted()) as fake:
        await fake.stop_listening()
        h = await make_server(openai=fake, provider_attempts=1)
        with captured_logs() as logs:
            events = await h.run(TASK)
    assert kind(events[-1]) == "run_failed"
    failed, final = provider_lines(logs.entries)
    assert (failed["event"], failed["error"], failed["http_status"]) == ("provider_attempt_failed", "connection", None)
    assert failed["cause"] == "ConnectionRefusedError"
    assert final["event"] == "provider_failed"
