"""Fitting a stage's request into a context window (issue 11, item 10): estimates, cut order, max_tokens."""

from __future__ import annotations

import math

import pytest

from facilitair.server.domain import AgentRole, ModelRef
from facilitair.server.pipeline import prompts
from facilitair.server.pipeline.context import ContextTooSmall, fit, shorten
from facilitair.server.pipeline.tokens import estimate_tokens

MODEL = ModelRef("openai", "small")
DESIGN = "".join(f"- Component {n}: parses its part of the input and hands it on.\n" for n in range(200))
CODE = "File: src/a.py\n````\n" + "".join(f"def f{n}(x: int) -> int:\n    return x + {n}\n" for n in range(60)) + "````"
INPUTS = prompts.StageInputs(task="Write a thing", context={}, design=DESIGN, code=CODE, review="- fix f1", tests=CODE)


@pytest.mark.parametrize(
    "text", ["", "x" * 999, DESIGN, CODE, "naïve ✓ — «ça»", "a=b;c=d;" * 50, "\n" * 40, "1234567890" * 9]
)
def test_the_estimate_is_never_below_four_characters_a_token(text: str) -> None:
    assert estimate_tokens(text) >= math.ceil(len(text) / 4)


def test_code_is_estimated_at_more_tokens_than_prose_of_the_same_length() -> None:
    prose = ("The parser reads the input and hands each part to the checker. " * 40)[: len(CODE)]
    assert estimate_tokens(CODE) > estimate_tokens(prose) * 1.2


def test_a_request_that_fits_is_left_as_it_is() -> None:
    fitted = fit(AgentRole.REVIEWER, INPUTS, "system", max_tokens=1000, window=100_000, model=MODEL)
    assert (fitted.inputs, fitted.max_tokens) == (INPUTS, 1000)


def test_the_reviewer_loses_the_design_before_the_code() -> None:
    window = 3000
    fitted = fit(AgentRole.REVIEWER, INPUTS, "system", max_tokens=4096, window=window, model=MODEL)
    assert fitted.inputs.shortened == {"design"}
    assert fitted.inputs.code == CODE
    assert fitted.inputs.design.startswith(DESIGN[:500])
    assert fitted.inputs.design.endswith("more characters left out here to fit the model's context window]")
    assert fitted.prompt_tokens + fitted.max_tokens <= window
    assert fitted.max_tokens >= 500  # the reviewer's usual answer keeps its room
    prompt = prompts.user_prompt(AgentRole.REVIEWER, fitted.inputs)
    assert "# Design (from the Architect) (shortened to fit the model's context window" in prompt
    assert "# Code\n" in prompt


def test_the_documenter_loses_the_tests_then_the_design_and_a_part_too_short_to_help_is_left_out() -> None:
    fitted = fit(AgentRole.DOCUMENTER, INPUTS, "system", max_tokens=4096, window=2500, model=MODEL)
    assert fitted.inputs.shortened == {"tests", "design"}
    assert fitted.inputs.tests == ""
    assert fitted.inputs.code == CODE
    prompt = prompts.user_prompt(AgentRole.DOCUMENTER, fitted.inputs)
    assert "# Tests (left out: it does not fit the model's context window)" in prompt


def test_the_architect_keeps_its_prompt_and_gets_max_tokens_lowered() -> None:
    fitted = fit(AgentRole.ARCHITECT, INPUTS, "system", max_tokens=4096, window=4096, model=MODEL)
    assert fitted.inputs == INPUTS
    assert fitted.max_tokens == 4096 - fitted.prompt_tokens


def test_no_room_for_the_answer_is_a_precondition_naming_the_agent() -> None:
    long_task = prompts.StageInputs(task="word " * 4000, context={})
    with pytest.raises(ContextTooSmall) as raised:
        fit(AgentRole.CODER, long_task, "system", max_tokens=4096, window=4096, model=MODEL)
    assert (
        "the coder's request does not fit openai:small's context window of 4096 tokens" in raised.value.public_message
    )
    assert "[agents.coder]" in raised.value.public_message


def test_a_cut_inside_a_file_closes_its_block_and_counts_what_it_left_out() -> None:
    cut = shorten(CODE, 100)
    head, note = cut.rsplit("\n", 1)
    assert head.endswith("\n````")
    assert sum(1 for line in head.splitlines() if line == "````") == 2
    kept = len(head) - len("\n````")
    assert note == f"[... {len(CODE) - kept} more characters left out here to fit the model's context window]"
    assert CODE.startswith(head[:kept])
