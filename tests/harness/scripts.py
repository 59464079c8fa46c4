"""Scripted fake-LLM replies: what each agent answers, picked by the agent a request is for.

`scripted` picks each reply by the agent a request is for (read from its system prompt, which starts
"You are the Architect", "You are the Coder", ...), so a test states what each agent answers without caring
about the order of the requests::

    script = scripted(coder=Reply(chunks=["File: a.py\\n```python\\nx = 1\\n```\\n"]))
    async with FakeOpenAI(script) as fake:
        h = await make_server(openai=fake)
        events = await h.run("Write a thing")
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tests.fakes.providers import Reply

AGENTS = ("architect", "coder", "reviewer", "refiner", "tester", "documenter")


# ----- reading provider requests -------------------------------------------------------------------------------


def system_of(body: Mapping[str, Any]) -> str:
    """The system prompt of an OpenAI (first message) or Anthropic (`system`) request body."""
    if "system" in body:
        system = body["system"]
        if isinstance(system, list):  # Anthropic also accepts a list of text blocks
            return "".join(block.get("text", "") for block in system)
        return str(system)
    return str(body["messages"][0]["content"])


def prompt_of(body: Mapping[str, Any]) -> str:
    """The user message of a request body (the last message, for both vendors)."""
    return str(body["messages"][-1]["content"])


def agent_of(body: Mapping[str, Any]) -> str:
    """The agent ("architect", "coder", ...) a request is for, read from its system prompt."""
    system = system_of(body)
    for agent in AGENTS:
        if system.startswith(f"You are the {agent.capitalize()}"):
            return agent
    raise AssertionError(f"no agent recognised in system prompt {system[:60]!r}")


# ----- scripted replies ----------------------------------------------------------------------------------------


def default_replies() -> dict[str, Reply]:
    """A well-formed answer for every agent (fresh objects each call): the reviewer approves."""
    return {
        "architect": Reply(
            chunks=["# Design\n", "One module `src/rev.py` with `rev(s: str) -> str`.\n", "Edge case: empty string."],
            input_tokens=120,
            output_tokens=31,
        ),
        "coder": Reply(
            chunks=[
                "File: src/rev.py\n```python\n",
                "def rev(s: str) -> str:\n",
                '    """Reverse `s` (naïve ✓)."""\n',
                "    return s[::-1]\n",
                "```\n",
            ],
            input_tokens=240,
            output_tokens=42,
        ),
        "reviewer": Reply(
            chunks=['```json\n{"approved": true, ', '"summary": "Correct and complete.", "issues": []}\n```'],
            input_tokens=310,
            output_tokens=18,
        ),
        "refiner": Reply(
            chunks=[
                "File: src/rev.py\n```python\n",
                "def rev(s: str) -> str:\n",
                '    """Reverse `s`; refined."""\n',
                "    return s[::-1]\n",
                "```\n",
            ],
            input_tokens=420,
            output_tokens=44,
        ),
        "tester": Reply(
            chunks=[
                "File: tests/test_rev.py\n```python\n",
                "from src.rev import rev\n\n\n",
                "def test_rev() -> None:\n",
                '    assert rev("ab") == "ba"\n',
                "```\n",
            ],
            input_tokens=330,
            output_tokens=37,
        ),
        "documenter": Reply(
            chunks=["# rev\n\n", "Reverses a string.\n\n", '```python\nrev("ab")  # "ba"\n```\n'],
            input_tokens=510,
            output_tokens=25,
        ),
    }


@dataclass(frozen=True)
class Served:
    """One request a `Script` answered: the agent, the reply given and the request body."""

    agent: str
    reply: Reply
    body: dict[str, Any]


class Script:
    """A responder for `FakeOpenAI`/`FakeAnthropic`: per agent, replies in order, the last one repeated.

    Every answered request is kept in `served`, in arrival order, so a test can match the n-th request of an
    agent with the reply it got.
    """

    def __init__(self, replies: Mapping[str, Sequence[Reply]]) -> None:
        """Answer each agent from its list of replies; every agent needs at least one."""
        unknown = set(replies) - set(AGENTS)
        if unknown:
            raise ValueError(f"unknown agents: {sorted(unknown)}")
        self.replies = {agent: list(rs) for agent, rs in replies.items()}
        for agent, rs in self.replies.items():
            if not rs:
                raise ValueError(f"no reply for {agent}")
        self.served: list[Served] = []

    def __call__(self, body: dict[str, Any]) -> Reply:
        """Pick the reply for the agent this request is for."""
        agent = agent_of(body)
        replies = self.replies[agent]
        count = sum(1 for s in self.served if s.agent == agent)
        reply = replies[min(count, len(replies) - 1)]
        self.served.append(Served(agent, reply, body))
        return reply

    def requests(self, agent: str) -> list[dict[str, Any]]:
        """The request bodies this script answered for `agent`, in order."""
        return [s.body for s in self.served if s.agent == agent]

    def agents(self) -> list[str]:
        """The agent of every request answered, in order."""
        return [s.agent for s in self.served]


def scripted(**replies: Reply | Sequence[Reply]) -> Script:
    """A `Script` where the named agents answer as given and the others with `default_replies()`."""
    unknown = set(replies) - set(AGENTS)
    if unknown:
        raise ValueError(f"unknown agents: {sorted(unknown)}")
    table: dict[str, Sequence[Reply]] = {agent: [reply] for agent, reply in default_replies().items()}
    for agent, given in replies.items():
        table[agent] = [given] if isinstance(given, Reply) else list(given)
    return Script(table)


def held(reply: Reply, after: int) -> tuple[Reply, asyncio.Event]:
    """A copy of `reply` that the fake holds after `after` chunks, and the event that releases it."""
    release = asyncio.Event()
    return dataclasses.replace(reply, hold_after=after, release=release), release


def text_of(reply: Reply) -> str:
    """The whole text a reply streams."""
    return "".join(reply.chunks)
