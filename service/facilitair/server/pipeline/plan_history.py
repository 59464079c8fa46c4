"""What plan estimates learn from completed stages: each model's time and output length per agent.

The table in plan.py holds vendor speeds; a local model on a CPU, or a model whose agents write less than the
table says, was planned far off (~6m23s for local runs of 51 s to 1m44s). Completed stages say how long a
model took for an agent and how much it wrote. They come from the checkpoints of recently finished runs in
the store (loaded when the server plans its first run, and again now and then for other replicas' runs) and
from each stage this server completes. Only the latest few per model and agent count, so a model that got
faster is soon planned faster.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from facilitair.server.domain import AgentRole
from facilitair.server.pipeline.spec import StageOutput, UnreadableRecord

# Completed stages kept per model and agent: enough to even out one slow answer, few enough to follow a change.
SAMPLES_KEPT = 10
# Finished runs whose checkpoints the store is asked for: with six stages each, up to SAMPLES_KEPT per agent.
RUNS_READ = 20


@dataclass(frozen=True, slots=True)
class StageSample:
    """One completed stage: how long it took and how many tokens it wrote."""

    seconds: float
    output_tokens: int


class StageHistory:
    """The latest completed stages by model and agent."""

    def __init__(self) -> None:
        self._samples: dict[tuple[str, AgentRole], deque[StageSample]] = {}

    def add(self, model: str, role: AgentRole, seconds: float, output_tokens: int) -> None:
        """Learn from one completed stage (once per stage, never per token)."""
        if seconds <= 0 or output_tokens < 0:
            return
        kept = self._samples.setdefault((model, role), deque(maxlen=SAMPLES_KEPT))
        kept.append(StageSample(seconds, output_tokens))

    def load(self, checkpoints: Iterable[str]) -> None:
        """Start over from stored checkpoints, skipping unreadable ones and those from before stages kept time."""
        self._samples.clear()
        for data in checkpoints:
            try:
                stage = StageOutput.from_json(data)
            except UnreadableRecord:
                continue
            if stage.seconds is not None and stage.output_tokens is not None:
                self.add(stage.model, stage.role, stage.seconds, stage.output_tokens)

    def of(self, model: str, role: AgentRole) -> tuple[float, float] | None:
        """Mean (seconds, output tokens) of the model's stages for this agent, or None when it has none."""
        kept = self._samples.get((model, role))
        if not kept:
            return None
        return sum(s.seconds for s in kept) / len(kept), sum(s.output_tokens for s in kept) / len(kept)

    def speed(self, model: str) -> float | None:
        """The model's output tokens per second over all its stages (first-token waits included), or None."""
        samples = [s for (m, _), kept in self._samples.items() if m == model for s in kept]
        seconds = sum(s.seconds for s in samples)
        written = sum(s.output_tokens for s in samples)
        return written / seconds if samples and written > 0 else None

    def count(self, models: Iterable[str]) -> int:
        """How many completed stages of these models the estimates learn from."""
        wanted = set(models)
        return sum(len(kept) for (m, _), kept in self._samples.items() if m in wanted)
