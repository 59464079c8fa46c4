"""OpenTelemetry: a run's spans and the GenAI metrics, read from in-memory exporters injected into a real server (not
global providers) and checked against the run's own stage usage events; the export over OTLP/HTTP to a receiver on
127.0.0.1 that decodes the protobuf requests; and a server process with the otel extra made unimportable.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import textwrap
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from aiohttp import web
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from facilitair.server.telemetry import from_environment, valid_traceparent
from facilitair.server.telemetry.otel import OtelTelemetry
from facilitair.v1 import orchestrator_pb2 as pb
from facilitair.v1 import orchestrator_pb2_grpc as pb_grpc
from tests.fakes.providers import FakeAnthropic, FakeOpenAI, Fault, Reply
from tests.harness.events import EventCall, assert_complete_log, kind, of_kind, read_rest, read_until, stage_text
from tests.harness.http import events_of
from tests.harness.processes import clean_environment, free_port, server_processes
from tests.harness.scripts import default_replies, prompt_of, scripted, system_of
from tests.harness.servers import ServerFactory, quiet_environment
from tests.harness.stores import Target, fetch
from tests.harness.team import Team, collaborate_request
from tests.harness.team import at_hold as held

TASK = "Write a function that reverses a string"
MINI = "openai:gpt-4.1-mini"
SONNET = "anthropic:claude-sonnet-4-6"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{CALLER_SPAN}-01"
COLLABORATE = "facilitair.v1.OrchestratorService/Collaborate"
STAGES = ["architect", "coder", "reviewer", "tester", "documenter"]
INPUT_TOKENS = "gen_ai.usage.input_tokens"
CAPTURE = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
ENDPOINT = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"}
CONTENT_KEYS = ("gen_ai.input.messages", "gen_ai.output.messages", "gen_ai.system_instructions")
HANG_GUARD = 60


@dataclasses.dataclass
class Recording:
    """A telemetry whose spans and metrics stay in memory, for the test to read."""

    spans: InMemorySpanExporter
    metrics: InMemoryMetricReader
    telemetry: OtelTelemetry

    def finished(self) -> list[ReadableSpan]:
        """The ended spans, in the order they started."""
        return sorted(self.spans.get_finished_spans(), key=lambda s: s.start_time or 0)

    def points(self, name: str) -> list[Any]:
        """The data points of one metric."""
        data = self.metrics.get_metrics_data()
        assert data is not None
        return [
            point
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
            if metric.name == name
            for point in metric.data.data_points
        ]


def recording(*, capture_content: bool = False) -> Recording:
    """In-memory exporters behind the server's own providers (nothing global is set)."""
    exporter = InMemorySpanExporter()
    tracers = TracerProvider()
    tracers.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meters = MeterProvider(metric_readers=[reader])
    return Recording(exporter, reader, OtelTelemetry(tracers, meters, capture_content=capture_content))


def one(spans: Sequence[ReadableSpan], name: str) -> ReadableSpan:
    """The one span of that name."""
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, [s.name for s in spans]
    return found[0]


def children(spans: Sequence[ReadableSpan], parent: ReadableSpan) -> list[ReadableSpan]:
    """The spans whose parent is `parent`, in the order they started."""
    return [s for s in spans if s.parent is not None and s.parent.span_id == parent.context.span_id]


def traceparent_of(span: ReadableSpan) -> str:
    """The W3C traceparent naming a span."""
    return f"00-{span.context.trace_id:032x}-{span.context.span_id:016x}-01"


def traced_call(target: str, request: pb.CollaborateRequest, traceparent: str) -> tuple[grpc.aio.Channel, EventCall]:
    """A Collaborate call that sends the caller's traceparent in its metadata."""
    channel = grpc.aio.insecure_channel(target)
    call = pb_grpc.OrchestratorServiceStub(channel).Collaborate(request, metadata=(("traceparent", traceparent),))
    return channel, call


# ----- the span tree and attributes of a run, against its usage events --------------------------------------------


@pytest.mark.both_stores
async def test_a_run_is_in_the_callers_trace_with_one_span_per_stage_and_attempt(
    make_server: ServerFactory, store_target: Target
) -> None:
    rec = recording()
    # The coder's first model fails twice (a retry), then its fallback answers with prompt-cache counts.
    sonnet_coder = dataclasses.replace(default_replies()["coder"], cache_read_tokens=40, cache_write_tokens=9)
    openai_script = scripted(coder=Reply(chunks=["x"], fault=Fault.http_status(500)))
    anthropic_script = scripted(coder=sonnet_coder)
    async with asyncio.timeout(HANG_GUARD), FakeOpenAI(openai_script) as oa, FakeAnthropic(anthropic_script) as an:
        h = await make_server(openai=oa, anthropic=an, provider_attempts=2, retry_backoff=0.01, telemetry=rec.telemetry)
        request = pb.CollaborateRequest(task=TASK, agent_models={"coder": f"{MINI},{SONNET}"})
        channel, call = traced_call(h.target, request, TRACEPARENT)
        async with channel:
            events = await read_rest(call)
        await h.stop()  # every span of the run has ended once its driver has
    assert_complete_log(events)
    spans = rec.finished()
    [(stored_parent, stored_stretch)] = await fetch(
        store_target, "SELECT traceparent, trace_stretch FROM runs WHERE run_id = ?", events[0].run_id
    )

    # The RPC continues the caller's trace; its context is what the run stores.
    rpc = one(spans, COLLABORATE)
    assert rpc.kind == SpanKind.SERVER
    assert rpc.parent is not None
    assert rpc.parent.is_remote
    assert (f"{rpc.context.trace_id:032x}", f"{rpc.parent.span_id:016x}") == (TRACE_ID, CALLER_SPAN)
    assert rpc.attributes is not None
    assert rpc.attributes["rpc.method"] == "Collaborate"
    assert stored_parent == traceparent_of(rpc)

    # One stretch, under the RPC, and stored so that a later stretch can link to it.
    stretch = one(spans, "facilitair.run")
    assert stretch.parent is not None
    assert stretch.parent.span_id == rpc.context.span_id
    assert stretch.attributes is not None
    assert (stretch.attributes["facilitair.run.id"], stretch.attributes["facilitair.run.ending"]) == (
        events[0].run_id,
        "completed",
    )
    assert list(stretch.links) == []
    assert stored_stretch == traceparent_of(stretch)
    assert {s.context.trace_id for s in spans} == {int(TRACE_ID, 16)}

    # One invoke_agent span per stage, in order, under the stretch.
    stages = children(spans, stretch)
    assert [s.name for s in stages] == [f"invoke_agent {agent}" for agent in STAGES]
    assert [(s.attributes or {}).get("gen_ai.agent.name") for s in stages] == STAGES

    # One chat span per attempt, siblings under their stage: the coder's retry and fallback are two more.
    attempts = {agent: children(spans, stage) for agent, stage in zip(STAGES, stages, strict=True)}
    coder = [(s.name, (s.attributes or {}).get("error.type"), s.status.status_code) for s in attempts["coder"]]
    assert coder == [
        ("chat gpt-4.1-mini", "server_error", StatusCode.ERROR),
        ("chat gpt-4.1-mini", "server_error", StatusCode.ERROR),
        ("chat claude-sonnet-4-6", None, StatusCode.UNSET),
    ]
    assert [len(attempts[a]) for a in STAGES] == [1, 3, 1, 1, 1]
    assert all(s.kind == SpanKind.CLIENT for a in STAGES for s in attempts[a])

    # The clean attempt of each stage carries what its stage_completed event says it used.
    completed = of_kind(events, "stage_completed")
    for agent, done in zip(STAGES, completed, strict=True):
        attributes = attempts[agent][-1].attributes
        assert attributes is not None
        provider, _, model = done.model.partition(":")
        assert {key: attributes.get(key) for key in GENAI_KEYS} == {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": provider,
            "gen_ai.request.model": model,
            "gen_ai.response.model": model,
            "gen_ai.response.finish_reasons": (done.finish_reason,),
            "gen_ai.usage.input_tokens": done.usage.input_tokens,
            "gen_ai.usage.output_tokens": done.usage.output_tokens,
            "gen_ai.usage.cache_read.input_tokens": done.usage.cache_read_input_tokens,
            "gen_ai.usage.cache_creation.input_tokens": done.usage.cache_write_input_tokens,
        }
    coder_usage = completed[1].usage
    assert (coder_usage.cache_read_input_tokens, coder_usage.cache_write_input_tokens) == (40, 9)

    # Prompts and outputs are not recorded: content capture is off.
    assert not [key for s in spans for key in (s.attributes or {}) if key.startswith(CONTENT_KEYS)]

    # The metrics, recorded once per attempt: 7 attempts, 2 failed; tokens as the stage events total them.
    durations = rec.points("gen_ai.client.operation.duration")
    assert sum(p.count for p in durations) == 7
    assert sum(p.count for p in durations if p.attributes.get("error.type") == "server_error") == 2
    tokens = rec.points("gen_ai.client.token.usage")
    for token_type, field in (("input", "input_tokens"), ("output", "output_tokens")):
        recorded = [p for p in tokens if p.attributes["gen_ai.token.type"] == token_type]
        assert sum(p.sum for p in recorded) == sum(getattr(c.usage, field) for c in completed)
        assert sum(p.count for p in recorded) == 5
    assert sum(p.count for p in rec.points("gen_ai.client.operation.time_to_first_chunk")) == 5


GENAI_KEYS = (
    "gen_ai.operation.name",
    "gen_ai.provider.name",
    "gen_ai.request.model",
    "gen_ai.response.model",
    "gen_ai.response.finish_reasons",
    "gen_ai.usage.input_tokens",
    "gen_ai.usage.output_tokens",
    "gen_ai.usage.cache_read.input_tokens",
    "gen_ai.usage.cache_creation.input_tokens",
)


async def test_content_capture_records_each_attempts_prompts_and_output(make_server: ServerFactory) -> None:
    rec = recording(capture_content=True)
    script = scripted()
    async with asyncio.timeout(HANG_GUARD), FakeOpenAI(script) as fake:
        h = await make_server(openai=fake, telemetry=rec.telemetry)
        events = await h.run(TASK)
        await h.stop()
    assert kind(events[-1]) == "run_completed"
    chats = [s for s in rec.finished() if s.name.startswith("chat ")]
    assert len(chats) == 5
    for stage, (span, served) in enumerate(zip(chats, script.served, strict=True), start=1):
        attributes = span.attributes
        assert attributes is not None
        assert json.loads(str(attributes["gen_ai.system_instructions"])) == [
            {"type": "text", "content": system_of(served.body)}
        ]
        assert json.loads(str(attributes["gen_ai.input.messages"])) == [
            {"role": "user", "parts": [{"type": "text", "content": prompt_of(served.body)}]}
        ]
        [output] = json.loads(str(attributes["gen_ai.output.messages"]))
        assert output["parts"] == [{"type": "text", "content": stage_text(events, stage)}]


# ----- a run resumed after a restart: a second stretch, linked to the first -------------------------------------


@pytest.mark.both_stores
async def test_a_resumed_run_has_a_second_stretch_linked_to_the_first(make_server: ServerFactory) -> None:
    first, second = recording(), recording()
    team = Team()
    team.hold_next("Coder")
    quiet: dict[str, Any] = {"thinking_interval": 60, "heartbeat_interval": 60}
    async with asyncio.timeout(HANG_GUARD), FakeOpenAI(team) as fake:
        h = await make_server(openai=fake, telemetry=first.telemetry, **quiet)
        channel, call = traced_call(h.target, collaborate_request(), TRACEPARENT)
        async with channel:
            head = await read_until(call, held)
            stopping = asyncio.create_task(h.stop(0.2))
            with pytest.raises(grpc.aio.AioRpcError):
                await read_rest(call)
            await stopping
        team.release.set()
        again = await make_server(openai=fake, telemetry=second.telemetry, **quiet)
        async with grpc.aio.insecure_channel(again.target) as channel:
            stub = pb_grpc.OrchestratorServiceStub(channel)
            events = await read_rest(stub.WatchRun(pb.WatchRunRequest(run_id=head[0].run_id)))
        await again.stop()
    assert_complete_log(events)

    rpc = one(first.finished(), COLLABORATE)
    before = one(first.finished(), "facilitair.run")
    after = one(second.finished(), "facilitair.run")
    assert before.attributes is not None
    assert after.attributes is not None
    assert (before.attributes["facilitair.run.ending"], after.attributes["facilitair.run.ending"]) == (
        "interrupted",
        "completed",
    )
    # Both stretches are in the caller's trace, under the call that created the run; the second links to the first.
    for stretch in (before, after):
        assert stretch.parent is not None
        assert stretch.parent.span_id == rpc.context.span_id
        assert f"{stretch.context.trace_id:032x}" == TRACE_ID
    assert [link.context.span_id for link in after.links] == [before.context.span_id]
    assert after.attributes["facilitair.run.resumed"] is True
    # The first stretch's coder stage was cut; the second runs it again and the stages after it (the architect's
    # is replayed from its checkpoint: no provider call, no span).
    assert [s.name for s in children(first.finished(), before)] == ["invoke_agent architect", "invoke_agent coder"]
    assert [s.name for s in children(second.finished(), after)] == [f"invoke_agent {a}" for a in STAGES[1:]]
    cut = children(first.finished(), before)[1]
    assert cut.attributes is not None
    assert cut.attributes["error.type"] == "cancelled"


# ----- the export over OTLP/HTTP, configured the standard way ---------------------------------------------------


class Receiver:
    """An OTLP/HTTP receiver on 127.0.0.1: decodes each export request as the collector would."""

    def __init__(self) -> None:
        self.traces: list[ExportTraceServiceRequest] = []
        self.metrics: list[ExportMetricsServiceRequest] = []
        self.content_types: set[str] = set()

    async def _traces(self, request: web.Request) -> web.Response:
        self.content_types.add(request.content_type)
        self.traces.append(ExportTraceServiceRequest.FromString(await request.read()))
        return web.Response(body=b"", content_type="application/x-protobuf")

    async def _metrics(self, request: web.Request) -> web.Response:
        self.metrics.append(ExportMetricsServiceRequest.FromString(await request.read()))
        return web.Response(body=b"", content_type="application/x-protobuf")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/traces", self._traces)
        app.router.add_post("/v1/metrics", self._metrics)
        return app


@contextlib.asynccontextmanager
async def receiving(receiver: Receiver) -> AsyncIterator[int]:
    """Serve the receiver on a free port of 127.0.0.1 and give the port."""
    runner = web.AppRunner(receiver.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


async def test_spans_and_metrics_reach_an_otlp_http_receiver(
    make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    receiver = Receiver()
    async with asyncio.timeout(HANG_GUARD), FakeOpenAI(scripted()) as fake, receiving(receiver) as port:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")
        monkeypatch.setenv("OTEL_SERVICE_NAME", "facilitair-otlp-test")
        h = await make_server(openai=fake)
        channel, call = traced_call(h.target, pb.CollaborateRequest(task=TASK), TRACEPARENT)
        async with channel:
            events = await read_rest(call)
        await h.stop()  # flushes what the batch processor and the metric reader still hold
    assert kind(events[-1]) == "run_completed"
    assert receiver.content_types == {"application/x-protobuf"}
    spans = [
        (resource, span)
        for request in receiver.traces
        for resource in request.resource_spans
        for scope in resource.scope_spans
        for span in scope.spans
    ]
    services = {a.value.string_value for r, _ in spans for a in r.resource.attributes if a.key == "service.name"}
    assert services == {"facilitair-otlp-test"}
    by_name: dict[str, list[Any]] = {}
    for _, span in spans:
        by_name.setdefault(span.name, []).append(span)
    [rpc] = by_name[COLLABORATE]
    assert (rpc.trace_id.hex(), rpc.parent_span_id.hex()) == (TRACE_ID, CALLER_SPAN)
    [stretch] = by_name["facilitair.run"]
    assert stretch.parent_span_id == rpc.span_id
    assert sorted(n for n in by_name if n.startswith("invoke_agent ")) == sorted(f"invoke_agent {a}" for a in STAGES)
    [chats] = [by_name["chat gpt-4.1-mini"]]
    inputs = sorted(next(a.value.int_value for a in c.attributes if a.key == INPUT_TOKENS) for c in chats)
    assert inputs == sorted(c.usage.input_tokens for c in of_kind(events, "stage_completed"))
    metric_names = {
        metric.name
        for request in receiver.metrics
        for resource in request.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    }
    assert {
        "gen_ai.client.operation.duration",
        "gen_ai.client.token.usage",
        "gen_ai.client.operation.time_to_first_chunk",
    } <= metric_names


# ----- without the extra ---------------------------------------------------------------------------------------

# Installed as sitecustomize in the server process: the SDK and the exporters cannot be imported there, as where the
# otel extra is not installed (the API stays: the anthropic SDK depends on it), and every attempt is written down.
BLOCKER = """
import os
import sys


class _NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.startswith(("opentelemetry.sdk", "opentelemetry.exporter")):
            with open(os.environ["OTEL_BLOCKED_LOG"], "a") as log:
                log.write(name + "\\n")
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, _NotInstalled())
"""


@pytest.mark.parametrize("configured", [False, True], ids=["unconfigured", "endpoint-set"])
async def test_the_server_runs_without_the_otel_extra(store_target: Target, tmp_path: Path, configured: bool) -> None:
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(textwrap.dedent(BLOCKER))
    attempts = tmp_path / "blocked.log"
    attempts.touch()
    settings = {"PYTHONPATH": str(blocker), "OTEL_BLOCKED_LOG": str(attempts)}
    if configured:
        settings["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{free_port()}"
    team = Team()
    async with (
        asyncio.timeout(HANG_GUARD),
        FakeOpenAI(team) as fake,
        server_processes(clean_environment(**quiet_environment(store_target, fake.base_url), **settings)) as [proc],
    ):
        port = await proc.start()
        channel, call = traced_call(f"127.0.0.1:{port}", collaborate_request(), TRACEPARENT)
        async with channel:
            events = await read_rest(call)
    assert_complete_log(events)
    if configured:
        # It looked for the SDK (without importing it), found none, said so once, and ran as without the variable.
        assert len(proc.records("otel_extra_missing")) == 1
        assert set(attempts.read_text().split()) == {"opentelemetry.sdk"}
    else:
        assert proc.records("otel_extra_missing") == []
        assert attempts.read_text() == ""  # unconfigured: not even looked for


# ----- the standard configuration and the caller's traceparent ---------------------------------------------------


def test_nothing_is_set_up_without_an_endpoint_or_with_the_sdk_disabled() -> None:
    assert not from_environment({}).enabled
    assert not from_environment({"OTEL_SERVICE_NAME": "x"}).enabled
    assert not from_environment({**ENDPOINT, "OTEL_SDK_DISABLED": "true"}).enabled


def test_an_endpoint_turns_exporting_on_and_content_capture_is_the_standard_switch() -> None:
    for value, capture in (("", False), ("false", False), ("true", True), ("TRUE", True)):
        telemetry = from_environment({**ENDPOINT, CAPTURE: value})
        assert isinstance(telemetry, OtelTelemetry)
        assert telemetry.capture_content is capture
        telemetry.shutdown()


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        (TRACEPARENT, TRACEPARENT),
        (f" {TRACEPARENT} ".encode(), TRACEPARENT),
        (f"01-{TRACE_ID}-{CALLER_SPAN}-01-later-fields", f"01-{TRACE_ID}-{CALLER_SPAN}-01"),
        (f"00-{TRACE_ID}-{CALLER_SPAN}-01-more", None),  # version 00 has exactly four fields
        (f"ff-{TRACE_ID}-{CALLER_SPAN}-01", None),
        (f"00-{'0' * 32}-{CALLER_SPAN}-01", None),
        (f"00-{TRACE_ID}-{'0' * 16}-01", None),
        (TRACEPARENT.upper(), None),
        ("00-abc-def-01", None),
        ("x" * 10_000, None),
        ("", None),
        (None, None),
    ],
)
def test_only_a_valid_traceparent_is_kept(sent: str | bytes | None, kept: str | None) -> None:
    assert valid_traceparent(sent) == kept


@pytest.mark.both_stores
async def test_with_tracing_off_the_callers_traceparent_is_stored_and_a_bad_one_is_not(
    make_server: ServerFactory, store_target: Target
) -> None:
    async with asyncio.timeout(HANG_GUARD), FakeOpenAI(Team()) as fake:
        h = await make_server(openai=fake, thinking_interval=60, heartbeat_interval=60)
        runs = []
        for sent in (TRACEPARENT, "00-not-a-traceparent-01"):
            channel, call = traced_call(h.target, collaborate_request(), sent)
            async with channel:
                runs.append((await read_rest(call))[0].run_id)
    stored = [
        (await fetch(store_target, "SELECT traceparent, trace_stretch FROM runs WHERE run_id = ?", run_id))[0]
        for run_id in runs
    ]
    assert stored == [(TRACEPARENT, None), (None, None)]


@pytest.mark.both_stores
async def test_a_run_created_over_http_joins_the_trace_its_traceparent_header_names(
    make_server: ServerFactory, store_target: Target
) -> None:
    rec = recording()
    async with asyncio.timeout(HANG_GUARD), FakeOpenAI(scripted()) as fake:
        h = await make_server(openai=fake, telemetry=rec.telemetry)
        async with aiohttp.ClientSession(f"http://127.0.0.1:{h.server.http_port}") as http:
            async with http.post("/v1/runs", json={"task": TASK}, headers={"traceparent": TRACEPARENT}) as response:
                assert response.status == 201
                run_id = (await response.json())["run"]["runId"]
            async with http.get(f"/v1/runs/{run_id}/events") as response:
                events = await events_of(response)
        await h.stop()
    assert kind(events[-1]) == "run_completed"
    spans = rec.finished()
    post = one(spans, "POST /v1/runs")
    assert post.kind == SpanKind.SERVER
    assert post.parent is not None
    assert (f"{post.context.trace_id:032x}", f"{post.parent.span_id:016x}") == (TRACE_ID, CALLER_SPAN)
    assert dict(post.attributes or {}) == {"http.request.method": "POST", "http.route": "/v1/runs"}
    [(stored,)] = await fetch(store_target, "SELECT traceparent FROM runs WHERE run_id = ?", run_id)
    assert stored == traceparent_of(post)
    stretch = one(spans, "facilitair.run")
    assert stretch.parent is not None
    assert stretch.parent.span_id == post.context.span_id
    assert [s.name for s in children(spans, stretch)] == [f"invoke_agent {a}" for a in STAGES]


async def test_a_failed_run_ends_its_stretch_stage_and_attempt_with_the_error(make_server: ServerFactory) -> None:
    rec = recording()
    script = scripted(architect=Reply(chunks=["x"], fault=Fault.http_status(401)))
    async with asyncio.timeout(HANG_GUARD), FakeOpenAI(script) as fake:
        h = await make_server(openai=fake, telemetry=rec.telemetry)
        events = await h.run(TASK)
        await h.stop()
    failed = events[-1].run_failed
    assert kind(events[-1]) == "run_failed"
    spans = rec.finished()
    stretch = one(spans, "facilitair.run")
    [stage] = children(spans, stretch)
    [attempt] = children(spans, stage)
    ended = [(s.name, (s.attributes or {}).get("error.type"), s.status.status_code) for s in (stretch, stage, attempt)]
    assert ended == [
        ("facilitair.run", failed.reason, StatusCode.ERROR),
        ("invoke_agent architect", "auth", StatusCode.ERROR),
        ("chat gpt-4.1-mini", "auth", StatusCode.ERROR),
    ]
    assert (stretch.attributes or {}).get("facilitair.run.ending") == "failed"
