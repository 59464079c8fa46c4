"""Secrets: callers' API keys and provider keys never reach logs, events, error messages or stored runs.

One server session runs with distinctive keys and every kind of fault: a 429 that is retried, a stream
reset mid-answer, an error event inside a stream, a 401 from one provider that falls back to the other,
a run that fails on a 401, a run that fails on exhausted 429s, a cancelled run, a caller with a wrong
key, a caller asking for another's run, an invalid request. The fake vendors quote the key they were
sent in every error body (as some vendors do), so passing vendor text on would leak it.

Everything is gathered: the server's logs, configured as in production (JSON, at debug level, the
stdlib's grpc/httpx/SDK records through the same handler) and captured at the file-descriptor level;
every event of every run replayed from the start; every summary and listing; every error a client saw;
the bytes of the SQLite files. Each key is searched for whole and as every 8-character piece of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiohttp import web

from facilitair.client import Client, FacilitairError, RunEvent, StatusCode
from facilitair.server.logging_setup import _QUIET, configure_logging
from tests.fakes.providers import FakeAnthropic, FakeOpenAI, Fault, Reply
from tests.harness.events import RunStream, collect, kind, of_kind
from tests.harness.logs import logging_restored
from tests.harness.scripts import agent_of, default_replies
from tests.harness.servers import Harness, ServerFactory

TASK = "Write a function that reverses a string"
MINI = "openai:gpt-4.1-mini"
SONNET = "anthropic:claude-sonnet-4-6"
HELD = "openai:gpt-4.1-nano"  # every request for it waits for the test (the run to cancel)
REFUSED = "openai:gpt-4.1"  # every request for it gets a 429 (the run that fails on exhausted retries)

OPENAI_KEY = "sk-openai-SECRET-4f1c9a7be2d04c6f8a31"
ANTHROPIC_KEY = "sk-ant-SECRET-9d2e7c41a6b84f03be55"  # the server's key, which the fake Anthropic rejects
ANTHROPIC_ACCEPTED = "sk-ant-accepted-SECRET-70b3e1f5c2d9"  # the key the fake Anthropic wants (never sent)
ALICE_KEY = "fac-caller-SECRET-alice-7e3b19c2d4f6a805"
BOB_KEY = "fac-caller-SECRET-bob-5a9c0e2f71d8b346"
MALLORY_KEY = "fac-caller-SECRET-mallory-c4e81f0a9b27d563"  # sent by a caller, configured nowhere
SECRETS = [OPENAI_KEY, ANTHROPIC_KEY, ANTHROPIC_ACCEPTED, ALICE_KEY, BOB_KEY, MALLORY_KEY]
# The fakes' error bodies carry this text; it must not be passed on.
VENDOR_TEXT = "Incorrect API key provided"


def pieces(secret: str) -> list[str]:
    """Every 8-character substring of a secret."""
    return [secret[i : i + 8] for i in range(len(secret) - 7)]


def echoed(message: str, sent: str) -> str:
    """A vendor error message that quotes the key the request was sent with."""
    return f"{message} {VENDOR_TEXT}: {sent}. You can find your API key at https://example.invalid/keys."


class EchoingOpenAI(FakeOpenAI):
    """A fake OpenAI whose error bodies and in-stream error events quote the key it was sent."""

    sent = ""

    def _authorized(self, request: web.Request) -> bool:
        self.sent = request.headers.get("Authorization", "")
        return super()._authorized(request)

    def _error_response(
        self, status: int, message: str, *, extra_headers: dict[str, str] | None = None
    ) -> web.Response:
        return super()._error_response(status, echoed(message, self.sent), extra_headers=extra_headers)

    def _error_event(self) -> bytes:
        error = {"message": echoed("The server had an error.", self.sent), "type": "server_error"}
        return self._data({"error": {**error, "param": None, "code": None}})


class EchoingAnthropic(FakeAnthropic):
    """A fake Anthropic whose error bodies quote the key it was sent."""

    sent = ""

    def _authorized(self, request: web.Request) -> bool:
        self.sent = request.headers.get("x-api-key") or request.headers.get("Authorization") or ""
        return super()._authorized(request)

    def _error_response(
        self, status: int, message: str, *, extra_headers: dict[str, str] | None = None
    ) -> web.Response:
        return super()._error_response(status, echoed(message, self.sent), extra_headers=extra_headers)


class Vendor:
    """The fake OpenAI's answers: the first request of some agents fails, then they answer normally."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.count: Counter[tuple[str, str]] = Counter()

    def __call__(self, body: dict[str, Any]) -> Reply:
        agent, model = agent_of(body), f"openai:{body['model']}"
        first = self.count[(model, agent)] == 0
        self.count[(model, agent)] += 1
        good = default_replies()[agent]
        if model == REFUSED:
            return Reply(chunks=["never sent"], fault=Fault.http_status(429, retry_after=0.01))
        if model == HELD:
            good.hold_after, good.release = 0, self.release
        elif first and agent == "architect":
            return Reply(chunks=["never sent"], fault=Fault.http_status(429, retry_after=0.01))
        elif first and agent == "coder":
            return Reply(chunks=["File: src/rev.py\n```python\n", "def rev(", "never sent"], fault=Fault.reset(2))
        elif first and agent == "reviewer":
            return Reply(chunks=["Looks ", "never sent"], fault=Fault.error_event(1))
        return good


@contextlib.contextmanager
def production_logging() -> Iterator[None]:
    """The server's own logging setup (JSON, debug) for the duration; everything restored afterwards.

    Stricter than production: the libraries the server quiets to WARNING (grpc, httpx, the SDKs) log at
    DEBUG too, so that their request and response lines are searched as well.
    """
    saved_levels = {name: logging.getLogger(name).level for name in _QUIET}
    with logging_restored():
        configure_logging("debug", "json")
        for name in _QUIET:
            logging.getLogger(name).setLevel(logging.DEBUG)
        # Cached loggers would keep this configuration (and its stream) after the test: no caching here.
        structlog.configure(cache_logger_on_first_use=False)
        try:
            yield
        finally:
            for name, level in saved_levels.items():
                logging.getLogger(name).setLevel(level)


async def everything_seen(h: Harness, clients: dict[str, Client], streams: list[list[RunEvent]]) -> list[str]:
    """Every event (streamed and replayed from 0), summary and listing that each caller can see, as text."""
    seen: list[str] = []
    for events in streams:
        seen += [f"{e}\n{e.SerializeToString()!r}" for e in events]
    for client in clients.values():
        runs, _ = await client.list_runs(page_size=100)
        for run in runs:
            seen.append(str(run))
            seen.append(str(await client.get_run(run.run_id)))
            replay = await collect(client.watch(run.run_id))
            assert replay[0].seq == 1
            assert kind(replay[-1]) in ("run_completed", "run_failed", "run_cancelled")
            seen += [f"{e}\n{e.SerializeToString()!r}" for e in replay]
    return seen


def database_files(folder: Path) -> dict[str, bytes]:
    """The bytes of the SQLite database and its WAL and shared-memory files."""
    return {path.name: path.read_bytes() for path in sorted(folder.glob("facilitair.db*"))}


def error_text(err: FacilitairError) -> str:
    """All a client learns from an error."""
    return f"{err}\n{err.message}\n{err.field_violations}\n{err.code.name}"


def assert_nothing_leaks(where: str, text: str) -> None:
    """No secret, and no 8-character piece of one, in `text`."""
    for secret in SECRETS:
        assert secret not in text, f"a whole key leaked into {where}"
        for piece in pieces(secret):
            at = text.find(piece)
            assert at < 0, f"{piece!r} of a key leaked into {where}: ...{text[max(0, at - 80) : at + 80]!r}..."


async def test_no_secret_reaches_logs_events_errors_or_the_database(
    make_server: ServerFactory, capfd: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    vendor = Vendor()
    errors: list[FacilitairError] = []
    with production_logging():
        # Proof that the capture works: a structlog debug line and a stdlib warning from an SDK's logger.
        structlog.get_logger("probe").debug("probe_debug_line")
        logging.getLogger("openai").warning("probe_openai_warning")
        async with (
            EchoingOpenAI(vendor, api_key=OPENAI_KEY) as oa,
            EchoingAnthropic([], api_key=ANTHROPIC_ACCEPTED) as an,
        ):
            h = await make_server(
                openai=oa,
                anthropic=an,
                ANTHROPIC_API_KEY=ANTHROPIC_KEY,  # not the key the fake accepts: every Anthropic call gets a 401
                model=MINI,
                api_keys=f"alice:{ALICE_KEY},bob:{BOB_KEY}",
                provider_attempts=2,
                retry_backoff=0.01,
            )
            settings_text = f"{h.settings!r}\n{h.settings}\n{h.settings.model_dump_json()}"
            clients = {"alice": Client(h.target, api_key=ALICE_KEY), "bob": Client(h.target, api_key=BOB_KEY)}
            alice, bob = clients["alice"], clients["bob"]
            try:
                # A: retried 429, reset mid-stream, error event mid-stream, a 401 that falls back to OpenAI.
                a = await collect(alice.collaborate(TASK, agent_models={"tester": f"{SONNET},{MINI}"}))
                # B: every agent on Anthropic, whose 401 ends the run.
                b = await collect(alice.collaborate(TASK, model=SONNET))
                # C: cancelled while the provider is answering.
                async with RunStream(bob.collaborate(TASK, model=HELD)) as run:
                    c_id = (await run.until(lambda e: kind(e) == "run_started")).run_id
                    await bob.cancel_run(c_id)
                    c = await run.to_end()
                # D: 429 on every attempt, until the run fails.
                d = await collect(bob.collaborate(TASK, model=REFUSED))
                # A caller with a wrong key; a caller asking for another's run; an invalid request.
                async with Client(h.target, api_key=MALLORY_KEY) as mallory:
                    with pytest.raises(FacilitairError) as refused:
                        await mallory.list_runs()
                    errors.append(refused.value)
                    with pytest.raises(FacilitairError) as refused:
                        await collect(mallory.collaborate(TASK))
                    errors.append(refused.value)
                with pytest.raises(FacilitairError) as not_theirs:
                    await alice.get_run(c_id)
                errors.append(not_theirs.value)
                with pytest.raises(FacilitairError) as invalid:
                    await collect(alice.collaborate(TASK, model="bogus:model"))
                errors.append(invalid.value)
                seen = await everything_seen(h, clients, [a, b, c, d])
            finally:
                vendor.release.set()
                for client in clients.values():
                    await client.close()
                await h.stop()
            logging.getLogger().handlers[0].flush()
        sys.stdout.flush()
        sys.stderr.flush()
        out, err = capfd.readouterr()
    logs = out + err

    # The session went as planned, so that every path above really ran.
    assert [kind(x[-1]) for x in (a, b, c, d)] == ["run_completed", "run_failed", "run_cancelled", "run_failed"]
    assert sorted(r.attempt for r in of_kind(a, "attempt_reset")) == [2, 2, 2, 2]
    fallbacks = of_kind(a, "model_fallback")
    assert [(f.from_model, f.to_model) for f in fallbacks] == [(SONNET, MINI)]
    assert "rejected the API key" in fallbacks[0].reason
    assert b[-1].run_failed.code == StatusCode.FAILED_PRECONDITION
    assert "check ANTHROPIC_API_KEY" in b[-1].run_failed.message
    assert d[-1].run_failed.code == StatusCode.RESOURCE_EXHAUSTED
    assert [e.code.name for e in errors] == ["UNAUTHENTICATED", "UNAUTHENTICATED", "NOT_FOUND", "INVALID_ARGUMENT"]
    # The providers were sent the keys (so there was something to leak), and answered quoting them.
    assert {sent["authorization"] for sent in oa.headers} == {f"Bearer {OPENAI_KEY}"}
    assert {sent.get("x-api-key") or sent["authorization"] for sent in an.headers} <= {
        ANTHROPIC_KEY,
        f"Bearer {ANTHROPIC_KEY}",
    }
    assert len(an.headers) == 2  # the tester of A, the architect of B
    assert ANTHROPIC_KEY in an.sent
    assert OPENAI_KEY in oa.sent
    # The logs were captured: structlog's JSON lines at debug level, the stdlib's records, the runs' lines.
    assert '"event": "probe_debug_line"' in logs
    assert "probe_openai_warning" in logs
    assert logs.count('"event": "run_finished"') == 4
    for library in ("openai._base_client", "anthropic._base_client", "grpc."):
        assert f'"logger": "{library}' in logs, f"nothing logged by {library}"

    # The search.
    error_texts = [error_text(e) for e in errors]
    events_and_errors = "\n".join(seen + error_texts)
    assert VENDOR_TEXT not in events_and_errors, "vendor error text was passed on"
    assert VENDOR_TEXT not in logs, "vendor error text (which quotes keys) was logged"
    assert_nothing_leaks("the events, summaries and listings", "\n".join(seen))
    assert_nothing_leaks("the errors callers saw", "\n".join(error_texts))
    assert_nothing_leaks("the logs", logs)
    assert_nothing_leaks("the settings as printed", settings_text)
    stored = database_files(tmp_path)
    assert "facilitair.db" in stored
    for name, data in stored.items():
        for secret in SECRETS:
            for piece in pieces(secret):
                assert piece.encode() not in data, f"{piece!r} of a key is stored in {name}"
                assert piece.encode("utf-16-le") not in data, f"{piece!r} of a key is stored in {name}"
    # The run rows and events were there to search: the task is stored with each run.
    assert sum(data.count(TASK.encode()) for data in stored.values()) >= 4


def test_the_search_finds_a_piece_of_a_key() -> None:
    # The check itself: a whole key, or any 8 characters of one, is caught; unrelated text is not.
    for text in (f"x {ALICE_KEY} y", f"key={OPENAI_KEY[5:13]}", f"...{BOB_KEY[-8:]}"):
        with pytest.raises(AssertionError):
            assert_nothing_leaks("probe", text)
    assert_nothing_leaks("probe", "principal=alice run_id=2f1c rejected the API key; check OPENAI_API_KEY")
