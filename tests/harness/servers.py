"""In-process servers: a real grpc.aio server on 127.0.0.1:0 with a connected client, on the test's store.

`Servers` is what the `make_server` fixture hands out (as a `ServerFactory`): each call starts a server wired
to the given fakes, on the store the test runs on (`tests.harness.stores.Target`: a SQLite file, or a
PostgreSQL database for a test marked `both_stores`). `serving` is the same for the fixed `Team` script, with
a raw stub next to the client, for the tests that read streams exactly as the server sends them.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc
import pytest
from pydantic import SecretStr

from facilitair.client import Client, RunEvent
from facilitair.server.settings import Settings
from facilitair.server.transport.app import RunningServer, create_server
from facilitair.v1 import orchestrator_pb2 as pb
from facilitair.v1 import orchestrator_pb2_grpc as pb_grpc
from tests.fakes.providers import FakeAnthropic, FakeOpenAI
from tests.harness.events import RunStream, collect, read_rest
from tests.harness.stores import Target
from tests.harness.team import MODEL, Team, collaborate_request

# The environment variables Settings reads; cleared so a developer's real keys never reach a test server.
PROVIDER_ENV = ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL")


def clear_server_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Remove provider, FACILITAIR_* and OTEL_* variables for the test, so only what it states configures a server."""
    for name in list(os.environ):
        if name in PROVIDER_ENV or name.startswith(("FACILITAIR_", "OTEL_")):
            monkeypatch.delenv(name)


@dataclass
class Harness:
    """A started server, its settings and a client connected to it."""

    server: RunningServer
    client: Client
    settings: Settings
    store: Target
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


class Servers:
    """Starts servers on one store and closes their clients and stops them all at the end (a `ServerFactory`).

    `openai=`/`anthropic=` point the provider at a fake (its key and base URL); any other keyword is a Settings
    field, e.g. ``thinking_interval=0.05`` or ``OPENAI_API_KEY="wrong"`` (which wins over the fake's key). Calls
    share the test's store unless ``db=`` (SQLite) or ``database_url=`` is given. ``telemetry=`` is handed to
    create_server (tests/test_telemetry.py injects in-memory exporters).
    """

    def __init__(self, store: Target) -> None:
        self.store = store
        self.started: list[Harness] = []

    async def __call__(
        self, *, openai: FakeOpenAI | None = None, anthropic: FakeAnthropic | None = None, **overrides: Any
    ) -> Harness:
        """Start a server wired to the given fakes; `overrides` are Settings fields (by name or alias)."""
        # The HTTP gateway on a free port too (its default port would be shared by every test server). No Test run
        # step unless a test asks for one (sandbox="bwrap"): the other tests' runs have the team's stages only.
        values: dict[str, Any] = {
            "listen": "127.0.0.1:0",
            "http_listen": "127.0.0.1:0",
            "sandbox": "off",
            **self.store.settings(),
        }
        if openai is not None:
            values |= {"OPENAI_API_KEY": openai.api_key, "OPENAI_BASE_URL": openai.base_url}
        if anthropic is not None:
            values |= {"ANTHROPIC_API_KEY": anthropic.api_key, "ANTHROPIC_BASE_URL": anthropic.base_url}
        if "db" in overrides and "database_url" not in overrides:
            values.pop("database_url", None)  # a file of its own was asked for
        telemetry = overrides.pop("telemetry", None)
        values |= overrides
        settings = Settings(**values)
        server = await create_server(settings, telemetry=telemetry)
        harness = Harness(server, Client(f"127.0.0.1:{server.port}"), settings, self.store)
        self.started.append(harness)
        return harness

    async def close(self) -> None:
        """Close every client and stop every server, newest first, with no grace."""
        for harness in reversed(self.started):
            await harness.client.close()
            await harness.stop(0)


# ----- the Team script's server ---------------------------------------------------------------------------------


def quiet_settings(store: Target, base_url: str, listen: str = "127.0.0.1:0") -> Settings:
    """Settings against the fake, every agent on it, with a silent watchdog (no thinking or heartbeat events)."""
    return Settings(
        listen=listen,
        http_listen="127.0.0.1:0",
        openai_api_key=SecretStr("test-key"),
        openai_base_url=base_url,
        thinking_interval=60,
        heartbeat_interval=60,
        model=MODEL,
        sandbox="off",
        **store.settings(),
    )


def quiet_environment(store: Target, base_url: str, listen: str = "127.0.0.1:0") -> dict[str, str]:
    """`quiet_settings` as a server process's environment variables."""
    return {
        "FACILITAIR_LISTEN": listen,
        "FACILITAIR_HTTP_LISTEN": "off",
        "FACILITAIR_THINKING_INTERVAL": "60",
        "FACILITAIR_HEARTBEAT_INTERVAL": "60",
        "FACILITAIR_MODEL": MODEL,
        "FACILITAIR_SANDBOX": "off",
        "OPENAI_API_KEY": "test-key",
        "OPENAI_BASE_URL": base_url,
        **store.environment(),
    }


@dataclass
class Env:
    """A fake provider, a server on it, and two ways to call the server over one channel."""

    team: Team
    fake: FakeOpenAI
    server: RunningServer
    client: Client
    stub: pb_grpc.OrchestratorServiceAsyncStub
    runs: list[str] = field(default_factory=list)

    async def watch_all(self, run_id: str, after_seq: int = 0) -> list[pb.RunEvent]:
        """The run's events after `after_seq`, to its end."""
        return await read_rest(self.stub.WatchRun(pb.WatchRunRequest(run_id=run_id, after_seq=after_seq)))

    async def get_run(self, run_id: str) -> pb.RunSummary:
        """GetRun."""
        response = await self.stub.GetRun(pb.GetRunRequest(run_id=run_id))
        return response.run

    async def run_to_end(self, **fields: Any) -> list[pb.RunEvent]:
        """Start a run with Collaborate and read it to its end."""
        return await read_rest(self.stub.Collaborate(collaborate_request(**fields)))


@contextlib.asynccontextmanager
async def serving(store: Target) -> AsyncIterator[Env]:
    """Start the fake and an in-process server on the store; stop both afterwards."""
    team = Team()
    async with FakeOpenAI(team) as fake:
        server = await create_server(quiet_settings(store, fake.base_url))
        try:
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
            async with Client(f"127.0.0.1:{server.port}", channel=channel) as client:
                yield Env(team, fake, server, client, pb_grpc.OrchestratorServiceStub(channel))
        finally:
            await server.stop(0)
