"""Fit a stage's request into its model's context window: earlier stages' text first, then max_tokens.

A small local model serves a window of a few thousand tokens, and a stage asked for `max_tokens: 4096`
fills it by itself (seen with a local model served with a 4,096-token window). When the window is known (the
agent's `context_window` in the pipeline file, else what the provider knows of the model), the prompt
(system + user message, estimated) plus max_tokens must fit in it:

1. the output is first given room for the agent's usual answer (plan.TYPICAL_OUTPUT), or its whole
   max_tokens when that is less;
2. what the prompt carries of earlier stages is shortened, in the order that loses least for the agent
   (`CUT_ORDER`: the design before the code the Reviewer reviews, the tests before the code the
   Documenter documents), each cut said in the prompt;
3. max_tokens is lowered to what is left. Below `MIN_OUTPUT_TOKENS` the stage cannot do its job, and
   fails with a FAILED_PRECONDITION that names the agent and the pipeline file's keys.

Token counts are estimates (tokens.py): on the high side, so a fitted request is refused only by a window
set too large.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import structlog

from facilitair.server.domain import AgentRole, ModelRef
from facilitair.server.errors import FailedPrecondition
from facilitair.server.pipeline import prompts
from facilitair.server.pipeline.plan import TYPICAL_OUTPUT
from facilitair.server.pipeline.tokens import CHARS_PER_TOKEN, estimate_tokens, request_tokens
from facilitair.server.pipeline_file import AgentConfig
from facilitair.server.providers import CompletionRequest

log = structlog.get_logger(__name__)

# Less output than this cannot hold a design, a file or a verdict: the stage fails instead.
MIN_OUTPUT_TOKENS = 256
# The note that ends a shortened part ("[... 1234 more characters left out here ...]").
NOTE_TOKENS = 24
# A part cut to fewer tokens than this says too little to be worth its note: it is left out whole.
MIN_PART_TOKENS = 32

# What each agent loses first when its prompt must shrink: the part it needs least comes first.
CUT_ORDER: dict[AgentRole, tuple[str, ...]] = {
    AgentRole.ARCHITECT: (),
    AgentRole.CODER: ("design",),
    AgentRole.REVIEWER: ("design", "test_results", "code"),
    # The review and the failing tests say what to fix: without them a refinement round is pointless.
    AgentRole.REFINER: ("design", "code", "test_results", "review"),
    AgentRole.TESTER: ("design", "code"),
    AgentRole.DOCUMENTER: ("tests", "design", "code"),
}


class ContextTooSmall(FailedPrecondition):
    """A stage's task, context and instructions leave its model too little room to answer."""


@dataclasses.dataclass(frozen=True, slots=True)
class Fitted:
    """A stage's inputs (`inputs.shortened` names the parts cut) and max_tokens once fitted; the prompt's estimate."""

    inputs: prompts.StageInputs
    max_tokens: int
    prompt_tokens: int


def fit(
    role: AgentRole,
    inputs: prompts.StageInputs,
    system: str,
    *,
    max_tokens: int,
    window: int,
    model: ModelRef,
) -> Fitted:
    """Shorten what `inputs` carry of earlier stages and lower max_tokens until the request fits `window`."""

    def measure(candidate: prompts.StageInputs) -> int:
        return request_tokens(system, prompts.user_prompt(role, candidate))

    used = measure(inputs)
    if used + max_tokens <= window:
        return Fitted(inputs, max_tokens, used)
    floor = min(MIN_OUTPUT_TOKENS, max_tokens)
    room = window - min(max_tokens, max(floor, TYPICAL_OUTPUT[role]))  # the most the prompt may take
    for key in CUT_ORDER[role]:
        whole: str = getattr(inputs, key)
        keep = estimate_tokens(whole) - (used - room) - NOTE_TOKENS
        # Cut from the whole text each time; the estimate is not linear, so measure again and cut more if
        # still over: `keep` falls at every turn, and below MIN_PART_TOKENS the part is left out.
        while used > room and whole:
            text = shorten(whole, keep) if keep >= MIN_PART_TOKENS else ""
            inputs = inputs.with_part(key, text)
            used = measure(inputs)
            if not text:
                break
            keep -= max(used - room, 1)
    output = min(max_tokens, window - used)
    if output < floor:
        fixed = measure(prompts.StageInputs(task=inputs.task, context=inputs.context))
        raise ContextTooSmall(
            f"the {role.label}'s request does not fit {model}'s context window of {window} tokens: its task, "
            f"context and instructions take about {fixed} tokens, leaving {max(window - used, 0)} for the "
            f"answer, less than the {floor} it needs. Shorten the task or its context, or give "
            f"[agents.{role.label}] a model with a larger window in the pipeline file (context_window, "
            "max_tokens)"
        )
    return Fitted(inputs, output, used)


def shorten(text: str, tokens: int) -> str:
    """The head of `text` that takes at most about `tokens`, cut at a line, with a note of what was left out."""
    # No estimate is below a token per CHARS_PER_TOKEN characters: no longer prefix can be within `tokens`.
    low, high = 0, min(len(text), max(tokens, 0) * CHARS_PER_TOKEN)
    while low < high:  # the longest prefix within the estimate
        middle = (low + high + 1) // 2
        if estimate_tokens(text[:middle]) <= tokens:
            low = middle
        else:
            high = middle - 1
    line_end = text.rfind("\n", 0, low)
    cut = line_end if line_end > low * 3 // 4 else low
    head = text[:cut].rstrip("\n")
    if sum(1 for line in head.splitlines() if line.startswith("````")) % 2:
        head += "\n````"  # close the file block the cut opened (prompts render files in ```` fences)
    left = len(text) - cut
    return f"{head}\n[... {left} more characters left out here to fit the model's context window]"


class StageRequests:
    """A stage's request for each model it may ask, fitted to that model's context window when it is known."""

    def __init__(
        self,
        role: AgentRole,
        inputs: prompts.StageInputs,
        config: AgentConfig,
        provider_window: Callable[[ModelRef], int | None],
    ) -> None:
        self._role = role
        self._inputs = inputs
        self._config = config
        self._provider_window = provider_window
        self._system = prompts.system_prompt(role, config.system_prompt)
        self._fitted: dict[ModelRef, tuple[str, int]] = {}  # per model: the user prompt and max_tokens

    def window(self, model: ModelRef) -> int | None:
        """The model's context window: the pipeline file's, else the provider's, else unknown."""
        return self._config.context_window or self._provider_window(model)

    def __call__(self, model: ModelRef, timeout: float) -> CompletionRequest:
        """The request for `model`; ContextTooSmall when the stage cannot fit its window."""
        if model not in self._fitted:
            self._fitted[model] = self._fit(model)
        prompt, max_tokens = self._fitted[model]
        return CompletionRequest(
            model=model.model,
            system=self._system,
            prompt=prompt,
            max_tokens=max_tokens,
            temperature=self._config.temperature,
            timeout=timeout,
        )

    def _fit(self, model: ModelRef) -> tuple[str, int]:
        window = self.window(model)
        max_tokens = self._config.max_tokens
        if window is None:
            return prompts.user_prompt(self._role, self._inputs), max_tokens
        fitted = fit(self._role, self._inputs, self._system, max_tokens=max_tokens, window=window, model=model)
        if fitted.inputs.shortened or fitted.max_tokens < max_tokens:
            log.info(
                "stage_fitted_to_context_window",
                model=str(model),
                context_window=window,
                prompt_tokens=fitted.prompt_tokens,
                max_tokens=fitted.max_tokens,
                shortened=sorted(fitted.inputs.shortened),
            )
        return prompts.user_prompt(self._role, fitted.inputs), fitted.max_tokens
