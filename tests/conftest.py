"""Shared test helpers: scripted fake-LLM responders, a server-plus-client factory, event collection.

Typical use::

    async def test_something(make_server: ServerFactory) -> None:
        script = scripted(coder=Reply(chunks=["File: a.py\\n```python\\nx = 1\\n```\\n"]))
        async with FakeOpenAI(script) as fake:
            h = await make_server(openai=fake)
            events = await h.run("Write a thing")
        assert events[-1].WhichOneof("payload") == "run_completed"

`scripted` picks each reply by the agent a request is for (read from its system prompt, which starts
"You are the Architect", "You are the Coder", ...), so a test states what each agent answers without caring
about the order of the requests. Test modules import the helpers and types with ``from tests.conftest import``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Self

import pytest

from facilitair.client import Client, RunEvent
from facilitair.server.settings import Settings
from facilitair.server.transport.app import RunningServer, create_server
from tests.fakes.providers import FakeAnthropic, FakeOpenAI, Reply

AGENTS = ("architect", "coder", "reviewer", "refiner", "tester", "documenter")
TERMINAL = frozenset({"run_completed", "run_failed", "run_cancelled"})
# Hang guards only, never synchronisation: a healthy run with the fakes takes well under a second.
EVENT_TIMEOUT = 20.0
RUN_TIMEOUT = 30.0
# The environment variables Settings reads; cleared so a developer's real keys never reach a test server.
_PROVIDER_ENV = ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL")


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


# ----- events ---------------------------------------------------------------------------------------------------


def kind(event: RunEvent) -> str:
    """The name of the payload an event carries ("token_delta", "run_completed", ...)."""
    name = event.WhichOneof("payload")
    assert name is not None, f"event {event.seq} has no payload"
    return name


def payload(event: RunEvent) -> Any:
    """The payload message of an event."""
    return getattr(event, kind(event))


def of_kind(events: Sequence[RunEvent], name: str) -> list[Any]:
    """The payloads of the events of one kind, in order."""
    return [getattr(e, name) for e in events if e.WhichOneof("payload") == name]


def stage_text(events: Sequence[RunEvent], stage: int) -> str:
    """The concatenated token_delta text of one stage (across attempts)."""
    return "".join(e.token_delta.text for e in events if kind(e) == "token_delta" and e.token_delta.stage == stage)


class RunStream:
    """Reads a run's event stream step by step, keeping every event received in `events`.

    `until` stops at the first event that matches (for tests that act mid-run); `to_end` reads on until the
    terminal event. Both fail after `within` seconds, as hang guards only.
    """

    def __init__(self, events: AsyncIterator[RunEvent]) -> None:
        """Wrap an iterator from `Client.collaborate` or `Client.watch`."""
        self._iter = events
        self.events: list[RunEvent] = []
        self.ended = False

    async def _next(self) -> RunEvent | None:
        try:
            event = await anext(self._iter)
        except StopAsyncIteration:
            self.ended = True
            return None
        self.events.append(event)
        if kind(event) in TERMINAL:
            self.ended = True
        return event

    async def until(self, predicate: Callable[[RunEvent], bool], *, within: float = EVENT_TIMEOUT) -> RunEvent:
        """Read until an event matches `predicate` and return it; fail if the stream ends first."""
        async with asyncio.timeout(within):
            while not self.ended:
                event = await self._next()
                if event is not None and predicate(event):
                    return event
        raise AssertionError(f"stream ended without a matching event; got {[kind(e) for e in self.events]}")

    async def to_end(self, *, within: float = RUN_TIMEOUT) -> list[RunEvent]:
        """Read until the stream ends and return every event received."""
        async with asyncio.timeout(within):
            while not self.ended:
                await self._next()
        return self.events

    async def aclose(self) -> None:
        """Close the underlying stream (cancels its RPC)."""
        close = getattr(self._iter, "aclose", None)
        if close is not None:
            await close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


async def collect(events: AsyncIterator[RunEvent], *, within: float = RUN_TIMEOUT) -> list[RunEvent]:
    """Every event of a stream until it ends (the run's terminal event), in the order received."""
    async with RunStream(events) as stream:
        return await stream.to_end(within=within)


# ----- servers --------------------------------------------------------------------------------------------------


@dataclass
class Harness:
    """A started server, its settings and a client connected to it."""

    server: RunningServer
    client: Client
    settings: Settings
    stopped: bool = False

    @property
    def target(self) -> str:
        """The address the server listens on."""
        return f"127.0.0.1:{self.server.port}"

    def stream(self, task: str, **options: Any) -> RunStream:
        """Start a run with `Client.collaborate(task, **options)` and read it step by step."""
        return RunStream(self.client.collaborate(task, **options))

    async def run(self, task: str, **options: Any) -> list[RunEvent]:
        """Start a run and return all its events, up to and including the terminal one."""
        return await collect(self.client.collaborate(task, **options))

    async def stop(self, grace: float = 0.0) -> None:
        """Stop the server (once; the fixture's teardown calls it too)."""
        if not self.stopped:
            self.stopped = True
            await self.server.stop(grace)


class ServerFactory(Protocol):
    """The type of the `make_server` fixture."""

    async def __call__(
        self, *, openai: FakeOpenAI | None = None, anthropic: FakeAnthropic | None = None, **settings: Any
    ) -> Harness:
        """Start a server wired to the given fakes; `settings` override Settings fields (by name or alias)."""
        ...


@pytest.fixture
async def make_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[ServerFactory]:
    """Start servers on 127.0.0.1:0 with a SQLite file in tmp_path; each comes with a connected `Client`.

    `openai=`/`anthropic=` point the provider at a fake (its key and base URL); any other keyword is a
    Settings field, e.g. ``thinking_interval=0.05`` or ``OPENAI_API_KEY="wrong"`` (which wins over the fake's
    key). Calls share one database file unless ``db=`` is given. Teardown closes the clients and stops the
    servers with no grace. Provider and FACILITAIR_* environment variables are cleared first.
    """
    for name in list(os.environ):
        if name in _PROVIDER_ENV or name.startswith("FACILITAIR_"):
            monkeypatch.delenv(name)
    harnesses: list[Harness] = []

    async def factory(
        *, openai: FakeOpenAI | None = None, anthropic: FakeAnthropic | None = None, **overrides: Any
    ) -> Harness:
        values: dict[str, Any] = {"listen": "127.0.0.1:0", "db": tmp_path / "facilitair.db"}
        if openai is not None:
            values |= {"OPENAI_API_KEY": openai.api_key, "OPENAI_BASE_URL": openai.base_url}
        if anthropic is not None:
            values |= {"ANTHROPIC_API_KEY": anthropic.api_key, "ANTHROPIC_BASE_URL": anthropic.base_url}
        values |= overrides
        settings = Settings(**values)
        server = await create_server(settings)
        harness = Harness(server, Client(f"127.0.0.1:{server.port}"), settings)
        harnesses.append(harness)
        return harness

    try:
        yield factory
    finally:
        for harness in reversed(harnesses):
            await harness.client.close()
            await harness.stop(0)
