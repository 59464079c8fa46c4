"""Operations: the Prometheus endpoint and the structured logs, observed from outside like a scraper would."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import urllib.request
import uuid

import pytest
import structlog
import uvloop  # the server extra installs it on Linux, where the tests run
from pydantic import ValidationError

from facilitair.server.logging_setup import configure_logging
from facilitair.server.settings import ConfigError, Settings
from facilitair.server.transport.app import loop_factory
from tests.fakes.providers import FakeOpenAI
from tests.harness.events import kind
from tests.harness.scripts import scripted
from tests.harness.servers import ServerFactory


def scrape(port: int) -> dict[str, float]:
    """The endpoint's samples as {'name{labels}': value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def delta(before: dict[str, float], after: dict[str, float], name: str) -> float:
    """How much a sample grew (metrics are process-wide, so tests compare before and after)."""
    return after.get(name, 0.0) - before.get(name, 0.0)


async def test_metrics_endpoint_counts_a_run(make_server: ServerFactory) -> None:
    async with FakeOpenAI(scripted()) as fake:
        h = await make_server(openai=fake, metrics_listen="127.0.0.1:0")
        assert h.server.metrics is not None
        port = h.server.metrics.port
        before = await asyncio.to_thread(scrape, port)
        events = await h.run("reverse a string")
        after = await asyncio.to_thread(scrape, port)
    tokens = sum(1 for e in events if kind(e) == "token_delta")
    assert delta(before, after, 'facilitair_runs_finished_total{state="completed"}') == 1
    assert delta(before, after, 'facilitair_events_committed_total{kind="token_delta"}') == tokens
    assert delta(before, after, 'facilitair_events_committed_total{kind="run_completed"}') == 1
    assert delta(before, after, 'facilitair_messages_sent_total{rpc="Collaborate"}') == len(events)
    assert delta(before, after, 'facilitair_provider_first_token_seconds_count{provider="openai"}') == 5
    usage = events[-1].run_completed.usage
    assert delta(before, after, 'facilitair_provider_tokens_total{direction="input",provider="openai"}') == (
        usage.input_tokens
    )
    assert delta(before, after, 'facilitair_cost_usd_total{provider="openai"}') == pytest.approx(usage.cost_usd)
    for agent in ("architect", "coder", "reviewer", "tester", "documenter"):
        assert delta(before, after, f'facilitair_stage_seconds_count{{agent="{agent}"}}') == 1
    assert after["facilitair_runs_active"] == 0
    assert after["facilitair_watchers_active"] == 0


async def test_logs_are_json_with_context_and_one_summary_per_run(
    make_server: ServerFactory, capfd: pytest.CaptureFixture[str]
) -> None:
    configure_logging("info", "json")
    async with FakeOpenAI(scripted()) as fake:
        h = await make_server(openai=fake)
        events = await h.run("reverse a string")
    lines = [json.loads(line) for line in capfd.readouterr().err.splitlines() if line.startswith("{")]
    run_id = events[0].run_id
    summaries = [line for line in lines if line["event"] == "run_finished" and line.get("run_id") == run_id]
    assert len(summaries) == 1
    summary = summaries[0]
    assert summary["state"] == "RUN_STATE_COMPLETED"
    assert summary["input_tokens"] == events[-1].run_completed.usage.input_tokens
    assert summary["cost_usd"] == pytest.approx(events[-1].run_completed.usage.cost_usd, abs=1e-6)
    created = next(line for line in lines if line["event"] == "run_created")
    assert created["rpc"] == "Collaborate"
    assert created["principal"] == "local"
    assert created["run_id"] == run_id
    assert summary["stage"] == 5  # the run's own context carries the stage it last ran
    assert all("timestamp" in line and "level" in line for line in lines)


def fail_holding(task: str) -> None:
    """Raise while a local variable holds `task` (as a stage's frame holds the user's task)."""
    generated_code = f"def solve():\n    return {task!r}\n"
    raise RuntimeError(f"the stage failed after {len(generated_code)} characters")


@pytest.mark.parametrize("fmt", ["console", "json"])
def test_tracebacks_in_the_log_leave_local_variables_out(capfd: pytest.CaptureFixture[str], fmt: str) -> None:
    configure_logging("info", fmt)
    marker = f"user-task-{uuid.uuid4().hex}"  # made at run time: the marker is in no source line a traceback shows
    try:
        fail_holding(marker)
    except RuntimeError:
        structlog.get_logger("probe").exception("probe_structlog_failure")
        logging.getLogger("grpc._cython.cygrpc").exception("probe_stdlib_failure")  # the stdlib's records too
    logging.getLogger().handlers[0].flush()
    err = capfd.readouterr().err
    for probe in ("probe_structlog_failure", "probe_stdlib_failure"):
        assert probe in err
    # Both tracebacks are there, down to the frame that raised and the exception's message...
    assert err.count("fail_holding") >= 2, err
    assert err.count("RuntimeError") >= 2, err
    assert err.count("the stage failed after") >= 2, err
    # ...but not the values of the frames' local variables.
    assert marker not in err
    assert marker[:20] not in err  # nor the start of it, as a shortened repr would show


def test_the_event_loop_setting_picks_uvloop_or_asyncio(monkeypatch: pytest.MonkeyPatch) -> None:
    assert loop_factory("asyncio") is None
    assert loop_factory("auto") is uvloop.new_event_loop
    assert loop_factory("uvloop") is uvloop.new_event_loop
    with pytest.raises(ValidationError):
        Settings(event_loop="trio")  # type: ignore[arg-type]
    # Without uvloop (Windows), auto falls back to asyncio's loop and an explicit uvloop is a clear error.
    monkeypatch.setitem(sys.modules, "uvloop", None)
    assert loop_factory("auto") is None
    with pytest.raises(ConfigError, match="FACILITAIR_EVENT_LOOP=uvloop but uvloop is not installed"):
        loop_factory("uvloop")
