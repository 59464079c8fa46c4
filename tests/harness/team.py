"""A fixed script for runs whose every event is known in advance: the durability, shutdown and restart tests.

Each agent answers with its chunks below (the reviewer approves), so with the silence watchdog turned off a
run's event sequence is fully determined; `Team.hold_next` makes one agent's next reply stop after a few chunks
until the test releases it, which is how a test catches a run mid-stage.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from typing import Any

from facilitair.v1 import orchestrator_pb2 as pb
from tests.fakes.providers import FakeOpenAI, Reply
from tests.harness.events import kind

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


def team_agent_of(body: dict[str, Any]) -> str:
    """The agent ("Architect", ...) a provider request is for, from its system prompt."""
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
        agent = team_agent_of(body)
        after = self._holds.pop(agent, None)
        if after is None:
            return Reply(chunks=list(CHUNKS[agent]))
        return Reply(chunks=list(CHUNKS[agent]), hold_after=after, release=self.release)


def requests_per_agent(fake: FakeOpenAI) -> Counter[str]:
    """How many provider requests each agent made."""
    return Counter(team_agent_of(body) for body in fake.requests)


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


def at_hold(events: Sequence[pb.RunEvent], agent: str = "Coder") -> bool:
    """Whether `events` reach the point where `agent`'s held reply stops."""
    return len(tokens_of(events, STAGE_OF[agent])) >= HELD_TOKENS


def collaborate_request(**fields: Any) -> pb.CollaborateRequest:
    """A Collaborate request for the scripted task."""
    fields.setdefault("task", TASK)
    return pb.CollaborateRequest(**fields)
