"""End to end: a real server and the real client, with fake OpenAI/Anthropic servers behind the official SDKs.

Each test drives a whole run through `Client.collaborate` and checks what the client receives: the order,
numbering and count of the events, the exact text streamed, usage and cost, the artifacts, the verdicts, and
the errors. Timing-sensitive behaviour (tokens before the response ends, thinking, heartbeats) is pinned with
replies held by the fake until the test releases them; timeouts are hang guards only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from facilitair.client import FacilitairError, RunEvent, StatusCode
from facilitair.v1 import orchestrator_pb2 as pb
from tests.fakes.providers import FakeAnthropic, FakeOpenAI, Fault, Reply
from tests.harness.events import TERMINAL, kind, of_kind, stage_text
from tests.harness.scripts import Script, agent_of, default_replies, held, prompt_of, scripted, text_of
from tests.harness.servers import Harness, ServerFactory

TASK = "Write a function that reverses a string"
MINI = "openai:gpt-4.1-mini"
SONNET = "anthropic:claude-sonnet-4-6"
# USD per million input / output tokens, as published (pricing.py must agree).
PRICES = {MINI: (0.40, 1.60), SONNET: (3.00, 15.00)}
AGENT_ENUM = {
    "architect": pb.AGENT_ARCHITECT,
    "coder": pb.AGENT_CODER,
    "reviewer": pb.AGENT_REVIEWER,
    "refiner": pb.AGENT_REFINER,
    "tester": pb.AGENT_TESTER,
    "documenter": pb.AGENT_DOCUMENTER,
}
PLANNED = ["architect", "coder", "reviewer", "tester", "documenter"]
# Events the silence watchdog adds whenever a pause is long enough; left out where exact order is checked.
WATCHDOG = frozenset({"thinking", "heartbeat"})

# The tests that read a run back from the store (its summary, or that none was made): on both stores.
STORED = pytest.mark.both_stores

ISSUE = "rev(None) raises TypeError; validate the input and raise ValueError."


def rejection() -> Reply:
    """A well-formed verdict that rejects the code with one major issue."""
    return Reply(
        chunks=[
            "The input is not validated.\n```json\n",
            '{"approved": false, "summary": "Needs input validation.", ',
            f'"issues": [{{"severity": "major", "file": "src/rev.py", "description": "{ISSUE}"}}]}}\n```',
        ],
        input_tokens=300,
        output_tokens=50,
    )


def cost(model: str, input_tokens: int, output_tokens: int) -> float:
    """The expected cost in USD."""
    price_in, price_out = PRICES[model]
    return (input_tokens * price_in + output_tokens * price_out) / 1_000_000


def output_tokens(reply: Reply) -> int:
    """The output tokens the fake reports for a reply."""
    return len(reply.chunks) if reply.output_tokens is None else reply.output_tokens


def code_of(reply: Reply) -> str:
    """The body of the single `File:` block a default coder/refiner/tester reply holds."""
    text = text_of(reply)
    body = text.split("\n", 2)[2]  # drop "File: ..." and the opening fence
    return body[: body.rindex("```")]


def without_watchdog(events: Sequence[RunEvent]) -> list[RunEvent]:
    """The events other than thinking and heartbeat."""
    return [e for e in events if kind(e) not in WATCHDOG]


def shape(events: Sequence[RunEvent]) -> list[str]:
    """Event kinds in order, watchdog events left out and each run of token_deltas shown once as "token_delta+"."""
    out: list[str] = []
    for e in without_watchdog(events):
        name = kind(e)
        if name == "token_delta":
            name = "token_delta+"
            if out and out[-1] == name:
                continue
        out.append(name)
    return out


def stage_of(event: RunEvent) -> int:
    """The stage an event belongs to (0 for run-level events)."""
    if kind(event) == "artifact_produced":
        return int(event.artifact_produced.artifact.stage)
    return int(getattr(getattr(event, kind(event)), "stage", 0))


def assert_well_numbered(events: Sequence[RunEvent]) -> None:
    """seq is 1..N without a gap, one run, run_started first and exactly one terminal event, last."""
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert len({e.run_id for e in events}) == 1
    assert events[0].run_id
    assert kind(events[0]) == "run_started"
    assert [kind(e) for e in events if kind(e) in TERMINAL] == [kind(events[-1])]


def assert_stage_brackets(events: Sequence[RunEvent]) -> None:
    """Every stage-bound event sits between its stage's stage_started and stage_completed."""
    started = {e.stage_started.stage: i for i, e in enumerate(events) if kind(e) == "stage_started"}
    completed = {e.stage_completed.stage: i for i, e in enumerate(events) if kind(e) == "stage_completed"}
    for i, e in enumerate(events):
        if kind(e) in ("token_delta", "review_verdict", "artifact_produced", "attempt_reset"):
            stage = stage_of(e)
            assert started[stage] < i, f"{kind(e)} of stage {stage} before its stage_started"
            if stage in completed:
                assert i < completed[stage], f"{kind(e)} of stage {stage} after its stage_completed"


def stage_shape(agents: Sequence[str], extras: dict[str, str]) -> list[str]:
    """The expected `shape` of a run that goes through `agents` and completes."""
    out = ["run_started"]
    for agent in agents:
        out += ["stage_started", "token_delta+", extras[agent], "stage_completed"]
    return [*out, "run_completed"]


EXTRAS = {
    "architect": "artifact_produced",
    "coder": "artifact_produced",
    "reviewer": "review_verdict",
    "refiner": "artifact_produced",
    "tester": "artifact_produced",
    "documenter": "artifact_produced",
}


def client_view(events: Sequence[RunEvent]) -> dict[int, str]:
    """Each stage's text as a client keeps it: token_delta appends, attempt_reset drops what the stage had."""
    texts: dict[int, str] = {}
    for e in events:
        if kind(e) == "token_delta":
            texts[e.token_delta.stage] = texts.get(e.token_delta.stage, "") + e.token_delta.text
        elif kind(e) == "attempt_reset":
            texts[e.attempt_reset.stage] = ""
    return texts


def vendor_fake(vendor: str, script: Script) -> FakeOpenAI | FakeAnthropic:
    """The fake of one vendor ("openai" or "anthropic"), answering from `script`."""
    return FakeOpenAI(script) if vendor == "openai" else FakeAnthropic(script)


async def serve(make_server: ServerFactory, fake: FakeOpenAI | FakeAnthropic, **settings: Any) -> Harness:
    """A server whose only provider is `fake`."""
    if isinstance(fake, FakeOpenAI):
        return await make_server(openai=fake, **settings)
    return await make_server(anthropic=fake, **settings)


# ----- a whole run ------------------------------------------------------------------------------------------------


@STORED
@pytest.mark.parametrize(("vendor", "model"), [("openai", MINI), ("anthropic", SONNET)])
async def test_a_whole_run_streams_every_stage_exactly(make_server: ServerFactory, vendor: str, model: str) -> None:
    script = scripted()
    async with vendor_fake(vendor, script) as fake:
        h = await serve(make_server, fake)
        events = await h.run(TASK, model=model)
        summary = await h.client.get_run(events[0].run_id)

    assert_well_numbered(events)
    assert kind(events[-1]) == "run_completed"
    assert shape(events) == stage_shape(PLANNED, EXTRAS)
    assert_stage_brackets(events)

    started = events[0].run_started
    assert started.task == TASK
    assert [(s.agent, s.model) for s in started.plan.stages] == [(AGENT_ENUM[a], model) for a in PLANNED]
    assert started.plan.max_refinements == 2
    assert all(s.HasField("estimated_cost_usd") for s in started.plan.stages)

    # One provider request per stage, each for its agent and model.
    assert script.agents() == PLANNED
    assert [s.body["model"] for s in script.served] == [model.split(":", 1)[1]] * 5
    assert len(fake.requests) == 5

    stages = of_kind(events, "stage_started")
    assert [(s.stage, s.agent, s.model, s.round, s.attempt) for s in stages] == [
        (n, AGENT_ENUM[a], model, 0, 1) for n, a in enumerate(PLANNED, start=1)
    ]
    completed = of_kind(events, "stage_completed")
    assert [(c.stage, c.agent, c.model) for c in completed] == [
        (n, AGENT_ENUM[a], model) for n, a in enumerate(PLANNED, start=1)
    ]
    finish = "stop" if vendor == "openai" else "end_turn"
    for n, (served, done) in enumerate(zip(script.served, completed, strict=True), start=1):
        reply = served.reply
        # The text the client got for the stage is exactly what the fake streamed for its request.
        assert stage_text(events, n) == text_of(reply)
        assert done.usage.input_tokens == reply.input_tokens
        assert done.usage.output_tokens == output_tokens(reply)
        assert done.usage.cost_usd == pytest.approx(cost(model, reply.input_tokens, output_tokens(reply)))
        assert not done.usage.cost_unknown
        assert done.finish_reason == finish
        assert done.duration.ToNanoseconds() > 0

    total = events[-1].run_completed.usage
    assert total.input_tokens == sum(s.reply.input_tokens for s in script.served)
    assert total.output_tokens == sum(output_tokens(s.reply) for s in script.served)
    assert total.cost_usd == pytest.approx(sum(c.usage.cost_usd for c in completed))
    assert total.cost_usd == pytest.approx(cost(model, total.input_tokens, total.output_tokens))
    assert not total.cost_unknown

    (verdict,) = of_kind(events, "review_verdict")
    assert (verdict.stage, verdict.approved, verdict.well_formed, verdict.round) == (3, True, True, 0)
    assert verdict.summary == "Correct and complete."
    assert list(verdict.issues) == []

    replies = default_replies()
    result = events[-1].run_completed.result
    expected = [
        ("DESIGN.md", pb.ARTIFACT_KIND_DESIGN, text_of(replies["architect"]), 1),
        ("src/rev.py", pb.ARTIFACT_KIND_CODE, code_of(replies["coder"]), 2),
        ("tests/test_rev.py", pb.ARTIFACT_KIND_TEST, code_of(replies["tester"]), 4),
        ("README.md", pb.ARTIFACT_KIND_DOC, text_of(replies["documenter"]), 5),
    ]
    assert [(a.path, a.kind, a.content, a.stage) for a in result.artifacts] == expected
    produced = [p.artifact for p in of_kind(events, "artifact_produced")]
    assert [(a.path, a.kind, a.content, a.stage) for a in produced] == expected
    assert result.approved
    assert result.refinements == 0

    # Later agents are given what earlier ones wrote.
    coder_prompt = prompt_of(script.requests("coder")[0])
    assert TASK in coder_prompt
    assert text_of(replies["architect"]) in coder_prompt
    assert code_of(replies["tester"]) in prompt_of(script.requests("documenter")[0])

    assert summary.state == pb.RUN_STATE_COMPLETED
    assert summary.result == result
    assert summary.usage == total
    assert summary.last_seq == len(events)
    assert summary.current_stage == 0
    assert summary.HasField("finished_at")
    assert events[-1].run_completed.duration.ToNanoseconds() > 0


async def test_a_token_reaches_the_client_while_the_fake_still_holds_the_rest(make_server: ServerFactory) -> None:
    coder, release = held(default_replies()["coder"], 1)
    script = scripted(coder=coder)
    architect_chunks = len(default_replies()["architect"].chunks)
    async with FakeOpenAI(script) as fake:
        h = await make_server(openai=fake)
        async with h.stream(TASK) as run:
            first = await run.until(lambda e: kind(e) == "token_delta" and e.token_delta.stage == 2)
            # The fake has sent the architect's reply and one coder chunk, and holds the rest of it.
            assert first.token_delta.text == coder.chunks[0]
            assert fake.chunks_sent == architect_chunks + 1
            assert not release.is_set()
            assert [c.stage for c in of_kind(run.events, "stage_completed")] == [1]
            release.set()
            events = await run.to_end()

    assert_well_numbered(events)
    assert kind(events[-1]) == "run_completed"
    assert stage_text(events, 2) == text_of(coder)
    assert fake.chunks_sent == sum(len(s.reply.chunks) for s in script.served)


# ----- the review loop --------------------------------------------------------------------------------------------


async def test_rejections_run_refinement_rounds_up_to_the_bound(make_server: ServerFactory) -> None:
    script = scripted(reviewer=rejection())
    async with FakeOpenAI(script) as fake:
        h = await make_server(openai=fake)
        events = await h.run(TASK, max_refinements=2)

    assert_well_numbered(events)
    agents = ["architect", "coder", "reviewer", "refiner", "reviewer", "refiner", "reviewer", "tester", "documenter"]
    assert shape(events) == stage_shape(agents, EXTRAS)
    assert_stage_brackets(events)
    assert events[0].run_started.plan.max_refinements == 2
    stages = of_kind(events, "stage_started")
    assert [(s.stage, s.agent, s.round) for s in stages] == [
        (n, AGENT_ENUM[a], r) for n, (a, r) in enumerate(zip(agents, [0, 0, 0, 1, 1, 2, 2, 2, 2], strict=True), start=1)
    ]
    assert script.agents() == agents

    verdicts = of_kind(events, "review_verdict")
    assert [(v.stage, v.round, v.approved, v.well_formed) for v in verdicts] == [
        (3, 0, False, True),
        (5, 1, False, True),
        (7, 2, False, True),
    ]
    for v in verdicts:
        assert v.summary == "Needs input validation."
        assert [(i.severity, i.file, i.description) for i in v.issues] == [("major", "src/rev.py", ISSUE)]

    result = events[-1].run_completed.result
    assert not result.approved
    assert result.refinements == 2
    code = {a.path: a for a in result.artifacts}["src/rev.py"]
    # The last refiner's file wins.
    assert (code.content, code.stage) == (code_of(default_replies()["refiner"]), 6)


async def test_one_rejection_then_approval_runs_exactly_one_refiner(make_server: ServerFactory) -> None:
    approve = default_replies()["reviewer"]
    script = scripted(reviewer=[rejection(), approve])
    async with FakeOpenAI(script) as fake:
        h = await make_server(openai=fake)
        events = await h.run(TASK)

    assert_well_numbered(events)
    agents = ["architect", "coder", "reviewer", "refiner", "reviewer", "tester", "documenter"]
    assert shape(events) == stage_shape(agents, EXTRAS)
    stages = of_kind(events, "stage_started")
    assert [(s.agent, s.round) for s in stages] == [
        (AGENT_ENUM[a], r) for a, r in zip(agents, [0, 0, 0, 1, 1, 1, 1], strict=True)
    ]
    verdicts = of_kind(events, "review_verdict")
    assert [(v.round, v.approved, len(v.issues)) for v in verdicts] == [(0, False, 1), (1, True, 0)]
    result = events[-1].run_completed.result
    assert result.approved
    assert result.refinements == 1
    assert {a.path: a.content for a in result.artifacts}["src/rev.py"] == code_of(default_replies()["refiner"])


async def test_the_refiner_is_given_the_issues_and_the_code(make_server: ServerFactory) -> None:
    script = scripted(reviewer=rejection())
    async with FakeOpenAI(script) as fake:
        h = await make_server(openai=fake)
        events = await h.run(TASK, max_refinements=2)
    assert kind(events[-1]) == "run_completed"

    replies = default_replies()
    first, second = (prompt_of(b) for b in script.requests("refiner"))
    for prompt in (first, second):
        assert TASK in prompt
        assert ISSUE in prompt
        assert "[major] (src/rev.py)" in prompt
        assert "Needs input validation." in prompt
        assert text_of(replies["architect"]) in prompt
    # The first refiner fixes the coder's code, the second the first refiner's.
    assert "File: src/rev.py" in first
    assert code_of(replies["coder"]) in first
    assert code_of(replies["refiner"]) in second
    assert code_of(replies["coder"]) not in second
    # Each review looks at the current code.
    reviews = [prompt_of(b) for b in script.requests("reviewer")]
    assert code_of(replies["coder"]) in reviews[0]
    assert all(code_of(replies["refiner"]) in p for p in reviews[1:])


async def test_a_malformed_verdict_is_a_non_approval_and_the_run_goes_on(make_server: ServerFactory) -> None:
    script = scripted(reviewer=Reply(chunks=["Looks good to me, ", "ship it!"]))
    async with FakeOpenAI(script) as fake:
        h = await make_server(openai=fake)
        events = await h.run(TASK, max_refinements=0)

    assert_well_numbered(events)
    assert shape(events) == stage_shape(PLANNED, EXTRAS)
    assert events[0].run_started.plan.max_refinements == 0
    (verdict,) = of_kind(events, "review_verdict")
    assert (verdict.stage, verdict.approved, verdict.well_formed, verdict.round) == (3, False, False, 0)
    assert len(verdict.issues) == 1
    assert verdict.issues[0].description
    result = events[-1].run_completed.result
    assert not result.approved
    assert result.refinements == 0
    assert script.agents() == PLANNED


# ----- errors before and during a run -----------------------------------------------------------------------------


@STORED
@pytest.mark.parametrize(
    "options", [{"model": SONNET}, {"agent_models": {"tester": SONNET}}], ids=["model", "agent_models"]
)
async def test_a_provider_that_is_not_configured_is_refused_before_a_run_exists(
    make_server: ServerFactory, options: dict[str, Any]
) -> None:
    async with FakeOpenAI(scripted()) as fake:
        h = await make_server(openai=fake)
        with pytest.raises(FacilitairError) as caught:
            await h.run(TASK, **options)
        runs, token = await h.client.list_runs()

    assert caught.value.code == StatusCode.FAILED_PRECONDITION
    assert "ANTHROPIC_API_KEY" in caught.value.message
    assert caught.value.field_violations == []
    assert (runs, token) == ([], "")
    assert fake.requests == []


@pytest.mark.parametrize(
    ("options", "violations"),
    [
        ({"task": "   \n\t"}, [("task", "blank")]),
        ({"model": "nope"}, [("model", "provider:model")]),
        ({"model": "mistral:x"}, [("model", "mistral")]),
        ({"agent_models": {"painter": MINI}}, [("agent_models[painter]", "painter")]),
        ({"max_refinements": 99}, [("max_refinements", "10")]),
        (
            {"task": "", "model": "nope", "agent_models": {"coder": "mistral:x"}, "max_refinements": 11},
            [
                ("task", "blank"),
                ("model", "provider:model"),
                ("agent_models[coder]", "mistral"),
                ("max_refinements", "10"),
            ],
        ),
    ],
    ids=[
        "blank-task",
        "model-without-provider",
        "unknown-provider",
        "unknown-agent",
        "too-many-refinements",
        "several",
    ],
)
async def test_bad_requests_name_every_bad_field(
    make_server: ServerFactory, options: dict[str, Any], violations: list[tuple[str, str]]
) -> None:
    request = {"task": TASK, **options}
    async with FakeOpenAI(scripted()) as fake:
        h = await make_server(openai=fake)
        with pytest.raises(FacilitairError) as caught:
            await h.run(**request)
        runs, _ = await h.client.list_runs()

    error = caught.value
    assert error.code == StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in error.field_violations] == [f for f, _ in violations]
    for (field, description), (_, expected) in zip(error.field_violations, violations, strict=True):
        assert expected in description, (field, description)
        assert field in error.message
    assert runs == []
    assert fake.requests == []


@pytest.mark.parametrize("model", ["", MINI], ids=["server-default", "request-model"])
async def test_a_per_agent_model_sends_that_agent_to_its_provider(make_server: ServerFactory, model: str) -> None:
    script = scripted()
    async with FakeOpenAI(script) as openai_fake, FakeAnthropic(script) as anthropic_fake:
        h = await make_server(openai=openai_fake, anthropic=anthropic_fake)
        # The override wins over the request's `model` as well as over the server's default.
        events = await h.run(TASK, model=model, agent_models={"coder": SONNET})

    assert_well_numbered(events)
    assert kind(events[-1]) == "run_completed"
    assert [agent_of(b) for b in anthropic_fake.requests] == ["coder"]
    assert [b["model"] for b in anthropic_fake.requests] == ["claude-sonnet-4-6"]
    assert [agent_of(b) for b in openai_fake.requests] == ["architect", "reviewer", "tester", "documenter"]
    assert {b["model"] for b in openai_fake.requests} == {"gpt-4.1-mini"}

    models = {a: SONNET if a == "coder" else MINI for a in PLANNED}
    plan = events[0].run_started.plan
    assert [(s.agent, s.model) for s in plan.stages] == [(AGENT_ENUM[a], models[a]) for a in PLANNED]
    assert [(s.agent, s.model) for s in of_kind(events, "stage_started")] == [
        (AGENT_ENUM[a], models[a]) for a in PLANNED
    ]
    completed = of_kind(events, "stage_completed")
    assert [c.model for c in completed] == [models[a] for a in PLANNED]
    for served, done in zip(script.served, completed, strict=True):
        expected = cost(models[served.agent], served.reply.input_tokens, output_tokens(served.reply))
        assert done.usage.cost_usd == pytest.approx(expected)
    assert stage_text(events, 2) == text_of(default_replies()["coder"])


@STORED
@pytest.mark.parametrize(("vendor", "model"), [("openai", MINI), ("anthropic", SONNET)])
async def test_a_rejected_api_key_fails_the_run_without_revealing_the_key(
    make_server: ServerFactory, vendor: str, model: str
) -> None:
    secret = "sk-wrong-0123456789abcdef"
    async with vendor_fake(vendor, scripted()) as fake:
        h = await serve(make_server, fake, **{f"{vendor.upper()}_API_KEY": secret})
        events = await h.run(TASK, model=model)
        summary = await h.client.get_run(events[0].run_id)

    assert_well_numbered(events)
    assert shape(events) == ["run_started", "stage_started", "run_failed"]
    failed = events[-1].run_failed
    assert failed.code == 9
    assert StatusCode(failed.code) is StatusCode.FAILED_PRECONDITION
    assert vendor in failed.message
    assert f"{vendor.upper()}_API_KEY" in failed.message
    assert not failed.retryable
    assert failed.stage == 1
    assert failed.usage.input_tokens == 0
    assert all(secret.encode() not in e.SerializeToString() for e in events)
    # The key was really sent, and a 401 is not retried.
    assert len(fake.headers) == 1
    assert secret in (
        fake.headers[0].get("x-api-key"),
        fake.headers[0].get("authorization", "").removeprefix("Bearer "),
    )

    assert summary.state == pb.RUN_STATE_FAILED
    assert summary.failure == failed
    assert not summary.HasField("result")
    assert summary.last_seq == len(events)


@pytest.mark.parametrize(("vendor", "model"), [("openai", MINI), ("anthropic", SONNET)])
async def test_a_stream_that_breaks_is_retried_and_its_partial_text_voided(
    make_server: ServerFactory, vendor: str, model: str
) -> None:
    good = default_replies()["coder"]
    broken = Reply(
        chunks=["File: src/rev.py\n```python\n", "def rev(s):  # first try\n", "NEVER SENT\n", "```\n"],
        fault=Fault.reset(after_chunks=2),
    )
    script = scripted(coder=[broken, good])
    async with vendor_fake(vendor, script) as fake:
        h = await serve(make_server, fake)
        events = await h.run(TASK, model=model)

    assert_well_numbered(events)
    assert kind(events[-1]) == "run_completed"
    assert_stage_brackets(events)
    assert script.agents() == ["architect", "coder", "coder", "reviewer", "tester", "documenter"]

    coder = [e for e in without_watchdog(events) if stage_of(e) == 2]
    kinds = [kind(e) for e in coder]
    assert kinds.count("attempt_reset") == 1
    assert kinds.count("stage_started") == 1
    at = kinds.index("attempt_reset")
    reset = coder[at].attempt_reset
    assert (reset.stage, reset.attempt) == (2, 2)
    assert vendor in reset.reason
    before = [e.token_delta.text for e in coder[:at] if kind(e) == "token_delta"]
    after = [e.token_delta.text for e in coder[at:] if kind(e) == "token_delta"]
    assert "".join(before) == "".join(broken.chunks[:2])
    assert "".join(after) == text_of(good)
    assert kinds[-1] == "stage_completed"

    # A client that drops a stage's text at attempt_reset holds exactly what each request finally streamed.
    finished = (s for s in script.served if s.reply is not broken)
    assert client_view(events) == {n: text_of(s.reply) for n, s in enumerate(finished, start=1)}

    # The broken attempt was paid for too: it counts in its stage, as an estimate where the provider had not said
    # (tests/test_partial_usage.py has the exact counts).
    done = of_kind(events, "stage_completed")[1]
    assert done.usage.estimated
    assert done.usage.output_tokens > output_tokens(good)
    if vendor == "anthropic":  # message_start reported the broken attempt's prompt
        assert done.usage.input_tokens == good.input_tokens + broken.input_tokens
    else:
        assert done.usage.input_tokens > good.input_tokens
    code = {a.path: a for a in events[-1].run_completed.result.artifacts}["src/rev.py"]
    assert code.content == code_of(good)
    assert [a.path for a in (p.artifact for p in of_kind(events, "artifact_produced")) if a.stage == 2] == [
        "src/rev.py"
    ]


# ----- never silent -------------------------------------------------------------------------------------------------


async def test_thinking_events_come_while_the_model_has_not_answered(make_server: ServerFactory) -> None:
    architect, release = held(default_replies()["architect"], 0)
    script = scripted(architect=architect)
    async with FakeOpenAI(script) as fake:
        h = await make_server(openai=fake, thinking_interval=0.05)
        async with h.stream(TASK) as run:
            await run.until(lambda e: len(of_kind(run.events, "thinking")) >= 2)
            thinking = of_kind(run.events, "thinking")
            assert [t.stage for t in thinking] == [1] * len(thinking)
            waited = [t.waited_seconds for t in thinking]
            assert waited == sorted(set(waited))  # strictly increasing
            assert waited[0] >= 0.049
            assert of_kind(run.events, "token_delta") == []
            assert fake.chunks_sent == 0
            release.set()
            events = await run.to_end()

    assert_well_numbered(events)
    assert kind(events[-1]) == "run_completed"
    first_token = next(i for i, e in enumerate(events) if kind(e) == "token_delta")
    stage1_thinking = [i for i, e in enumerate(events) if kind(e) == "thinking" and e.thinking.stage == 1]
    assert len(stage1_thinking) >= 2
    assert max(stage1_thinking) < first_token
    assert stage_text(events, 1) == text_of(architect)


async def test_a_heartbeat_comes_when_a_stream_goes_quiet(make_server: ServerFactory) -> None:
    chunks = ["# Design\n", "part two\n", "part three\n", "part four\n"]
    architect, release = held(Reply(chunks=chunks, input_tokens=50, output_tokens=4), 2)
    script = scripted(architect=architect)

    def quiet_after_two(event: RunEvent) -> bool:
        return kind(event) == "heartbeat" and stage_text(run.events, 1) == "".join(architect.chunks[:2])

    async with FakeOpenAI(script) as fake:
        # A long thinking interval: once the model has answered, only the heartbeat interval may count.
        h = await make_server(openai=fake, heartbeat_interval=0.05, thinking_interval=30)
        async with h.stream(TASK) as run:
            beat = await run.until(quiet_after_two)
            assert beat.heartbeat.stage == 1
            assert fake.chunks_sent == 2
            assert not release.is_set()
            assert of_kind(run.events, "stage_completed") == []
            release.set()
            events = await run.to_end()

    assert_well_numbered(events)
    assert kind(events[-1]) == "run_completed"
    assert stage_text(events, 1) == text_of(architect)
