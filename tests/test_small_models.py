"""What small models really do, end to end: echo the prompt's example, fill their context window, stop on length.

A real server and client, the official SDKs against the fake vendors (tests/fakes), which can enforce a context
window as a small local model's server does (as a real local server was seen to do).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest

from facilitair.server.pipeline import prompts
from tests.fakes.providers import FakeAnthropic, FakeOpenAI, Reply
from tests.harness.cli import cli
from tests.harness.events import kind, of_kind
from tests.harness.scripts import AGENTS, Script, prompt_of, scripted, system_of
from tests.harness.servers import Harness, ServerFactory
from tests.harness.terminal import terminal

TASK = "Write a function that reverses a string"
MINI = "openai:gpt-4.1-mini"
SONNET = "anthropic:claude-sonnet-4-6"


# ----- the reviewer echoes its format's example (issue 11, item 15) -----


async def test_a_reviewer_that_echoes_the_example_is_a_malformed_verdict(make_server: ServerFactory) -> None:
    # What a small model answered: the example block of its prompt, verbatim.
    echoed = prompts.VERDICT_FORMAT.split("\n", 1)[1].rsplit("\n", 1)[0]
    assert '"summary": "one paragraph"' in echoed
    script = scripted(reviewer=Reply(chunks=[echoed[:40], echoed[40:]]))
    async with FakeOpenAI(script) as fake:
        h = await make_server(openai=fake, model=MINI)
        events = await h.run(TASK, max_refinements=1)

    assert kind(events[-1]) == "run_completed", events[-1]
    first, second = of_kind(events, "review_verdict")
    assert (first.approved, first.well_formed, first.summary) == (
        False,
        False,
        "The reviewer repeated the format's example instead of a verdict.",
    )
    assert [i.description for i in first.issues] == [
        "The review repeated the example of its output format instead of reviewing the code; review the code again."
    ]
    assert "one paragraph" not in first.summary
    assert not any(i.severity == "critical|major|minor" or i.file == "path or empty" for i in first.issues)
    assert (second.approved, second.well_formed) == (False, False)
    # The refiner is told to look again, not given the example as if it were an issue.
    refiner_prompt = script.requests("refiner")[0]["messages"][-1]["content"]
    assert "repeated the example" in refiner_prompt
    assert "path or empty" not in refiner_prompt
    assert not events[-1].run_completed.result.approved


# ----- a small context window (issue 11, item 10) -----

WINDOW = 4096
# A design as long as the architect may write in the window (~3,900 tokens by the fakes' count).
DESIGN = "".join(f"- Component {n}: parses its part of the input, checks it, and hands it on.\n" for n in range(220))
CODE = "".join(f"def step_{n}(value: int) -> int:\n    return value + {n}\n\n\n" for n in range(30))


async def serve(make_server: ServerFactory, fake: FakeOpenAI | FakeAnthropic, **settings: Any) -> Harness:
    """A server whose only provider is `fake`, asking it for its vendor's model."""
    if isinstance(fake, FakeOpenAI):
        return await make_server(openai=fake, model=MINI, **settings)
    return await make_server(anthropic=fake, model=SONNET, **settings)


def pipeline_file(tmp_path: Path, body: str) -> Path:
    """A pipeline file with `body` for every agent."""
    path = tmp_path / "pipeline.toml"
    path.write_text("".join(f"[agents.{agent}]\n{body}\n" for agent in AGENTS), encoding="utf-8")
    return path


def request_tokens(body: dict[str, Any]) -> int:
    """What the request takes of the window by the fakes' count: the prompt at four characters a token, plus
    max_tokens."""
    return (len(system_of(body)) + len(prompt_of(body))) // 4 + int(body["max_tokens"])


def small_model(vendor: str) -> Script:
    """A small model's answers: a long design cut off at max_tokens, then well-formed stages."""
    cut_off = "length" if vendor == "openai" else "max_tokens"
    return scripted(
        architect=Reply(chunks=[DESIGN[i : i + 500] for i in range(0, len(DESIGN), 500)], finish_reason=cut_off),
        coder=Reply(chunks=["File: src/steps.py\n```python\n", CODE, "```\n"]),
    )


@pytest.mark.parametrize("vendor", ["openai", "anthropic"])
async def test_a_whole_run_fits_a_small_context_window(make_server: ServerFactory, tmp_path: Path, vendor: str) -> None:
    assert len(DESIGN) // 4 > WINDOW - 400, "the design alone must nearly fill the window"
    script = small_model(vendor)
    fake = (
        FakeOpenAI(script, context_window=WINDOW)
        if vendor == "openai"
        else FakeAnthropic(script, context_window=WINDOW)
    )
    async with fake:
        h = await serve(make_server, fake, pipeline=pipeline_file(tmp_path, f"context_window = {WINDOW}"))
        events = await h.run(TASK, max_refinements=0)

    assert kind(events[-1]) == "run_completed", events[-1]
    # Every request fitted: none was refused (a refused one never reaches the script) and each fits by count.
    assert script.agents() == ["architect", "coder", "reviewer", "tester", "documenter"]
    assert len(fake.requests) == 5
    assert all(request_tokens(body) <= WINDOW for body in fake.requests), [request_tokens(b) for b in fake.requests]
    by_agent = {s.agent: s.body for s in script.served}
    # max_tokens (4096 by default) was lowered to what each prompt leaves; never below the floor.
    assert all(256 <= body["max_tokens"] < 4096 for body in fake.requests)
    # The Coder got the design's beginning, and was told it is only that.
    coder = prompt_of(by_agent["coder"])
    assert "# Design (from the Architect) (shortened to fit the model's context window" in coder
    assert DESIGN[:2000] in coder
    assert "more characters left out here to fit the model's context window]" in coder
    # The Reviewer, the Tester and the Documenter lose the design before any of the code they work on.
    for agent in ("reviewer", "tester", "documenter"):
        prompt = prompt_of(by_agent[agent])
        assert CODE in prompt, agent
        assert "# Code (" not in prompt, agent
        assert "# Design (from the Architect) (" in prompt, agent
    # The architect's cut-off design is flagged; the other stages ended normally.
    completed = of_kind(events, "stage_completed")
    assert [c.truncated for c in completed] == [True, False, False, False, False]


async def test_a_request_past_an_unknown_window_names_the_agent_and_the_keys(make_server: ServerFactory) -> None:
    # No context_window in the pipeline file: the server cannot fit the coder's request, and the provider refuses it.
    script = scripted(architect=Reply(chunks=[DESIGN]))
    async with FakeOpenAI(script, context_window=WINDOW + 1000) as fake:
        h = await make_server(openai=fake, model=MINI)
        events = await h.run(TASK)

    failed = events[-1].run_failed
    assert kind(events[-1]) == "run_failed"
    assert failed.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert failed.stage == 2
    assert "[agents.coder] max_tokens" in failed.message
    assert "[agents.coder] context_window" in failed.message
    assert "<agent>" not in failed.message


async def test_a_task_that_leaves_no_room_to_answer_fails_naming_the_agent_and_the_keys(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    script = scripted()
    async with FakeOpenAI(script, context_window=1024) as fake:
        h = await make_server(openai=fake, model=MINI, pipeline=pipeline_file(tmp_path, "context_window = 1024"))
        events = await h.run("Reverse a string. " + "Keep it short. " * 240)

    failed = events[-1].run_failed
    assert kind(events[-1]) == "run_failed"
    assert failed.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert (failed.stage, failed.reason) == (1, "FAILED_PRECONDITION")
    assert "the architect's request does not fit openai:gpt-4.1-mini's context window of 1024 tokens" in failed.message
    assert "[agents.architect]" in failed.message
    assert "context_window" in failed.message
    assert "max_tokens" in failed.message
    assert fake.requests == []  # nothing was sent that could not fit


async def test_each_model_of_the_list_is_tried_against_its_window_before_the_stage_fails(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    async with FakeOpenAI(scripted(), context_window=1024) as oa, FakeAnthropic(scripted()) as an:
        pipeline = pipeline_file(tmp_path, "context_window = 1024")
        h = await make_server(openai=oa, anthropic=an, pipeline=pipeline)
        events = await h.run("Reverse a string. " + "Keep it short. " * 240, model=f"{MINI},{SONNET}")

    (fallback,) = of_kind(events, "model_fallback")
    assert (fallback.stage, fallback.from_model, fallback.to_model) == (1, MINI, SONNET)
    assert "does not fit openai:gpt-4.1-mini's context window of 1024 tokens" in fallback.reason
    assert kind(events[-1]) == "run_failed"
    assert "does not fit anthropic:claude-sonnet-4-6's context window" in events[-1].run_failed.message
    assert oa.requests == an.requests == []


# ----- a stage cut off at max_tokens is flagged (issue 11, item 10) -----


@pytest.mark.parametrize("vendor", ["openai", "anthropic"])
async def test_a_truncated_stage_is_flagged_in_its_event_and_in_the_cli(
    make_server: ServerFactory, vendor: str
) -> None:
    script = small_model(vendor)
    fake = FakeOpenAI(script) if vendor == "openai" else FakeAnthropic(script)
    async with fake:
        h = await serve(make_server, fake)
        events = await h.run(TASK, max_refinements=0)
        run_id = events[0].run_id
        code, plain, _ = await cli(h.target, "watch", run_id, "--format", "plain")
        async with terminal(h.target, "watch", run_id, rows=800, cols=200) as term:
            pretty_code = await term.wait_exit()

    completed = of_kind(events, "stage_completed")
    assert [(c.finish_reason, c.truncated) for c in completed] == [
        ("length" if vendor == "openai" else "max_tokens", True),
        *[("stop" if vendor == "openai" else "end_turn", False)] * 4,
    ]
    assert code == 0
    done = [line for line in plain.splitlines() if line.startswith("-- [")]
    assert [("output truncated" in line) for line in done] == [True, False, False, False, False]
    assert done[0].startswith("-- [1] done in ")
    assert "; output truncated (the model reached max_tokens): " in done[0]
    table = [line for line in plain.splitlines() if line.startswith(("1 ", "2 "))]
    assert table[0].startswith("1    Architect  ")
    assert table[0].endswith("  output truncated")
    assert "truncated" not in table[1]
    assert pretty_code == 0
    lines = term.lines()
    assert "output truncated (the model reached max_tokens)" in lines[term.row_of("-- [1] done in")]
    assert not any("truncated" in line for line in lines if line.startswith("-- [2]"))
