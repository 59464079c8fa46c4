"""Property-based fuzzing of every RPC: generated requests, garbage bytes and oversized messages.

One server serves the whole test. Before the fuzzing a "victim" principal leaves runs in every state
(completed, failed, cancelled, and one still live); a "fuzzer" principal then throws hypothesis-generated
requests at Collaborate, WatchRun, GetRun, ListRuns and CancelRun (arbitrary unicode, extreme numbers,
unknown enum values, odd maps and contexts, bad credentials), at the health service (Check, Watch, List)
and at reflection (streams of every kind of reflection request), then raw bytes and messages over the
size limit at every method of all three services.

Every call must end with a status a caller can act on (never UNKNOWN or INTERNAL), with a message that
carries no internal text, and must not touch another principal's runs; nothing in the whole session may
be logged at error level (health and reflection are open to anyone, so that would be a log anyone can
flood). Afterwards the server is healthy, the victim's runs are exactly as they were, the live one
finishes, and another client completes a run.

The whole test runs on SQLite and on PostgreSQL: a string PostgreSQL's text cannot hold (a NUL character, a lone
surrogate smuggled in through a page token's JSON) must be refused as INVALID_ARGUMENT naming its field on both.

Hypothesis drives synchronous examples, so it runs in a worker thread and hands each call to the test's
event loop (where the server, its fake provider and the channels live) with run_coroutine_threadsafe.
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import concurrent.futures
import json
import math
import uuid
from collections import Counter
from collections.abc import AsyncIterable, Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
import pytest
from google.protobuf import json_format, struct_pb2
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from facilitair.client import Client, RunEvent
from facilitair.server.transport.app import SERVICE_NAME
from facilitair.v1 import orchestrator_pb2 as pb
from facilitair.v1 import orchestrator_pb2_grpc as pb_grpc
from tests.fakes.providers import FakeOpenAI, Fault, Reply
from tests.harness.events import TERMINAL, RunStream, collect, kind
from tests.harness.logs import no_error_logs
from tests.harness.scripts import AGENTS, agent_of, default_replies
from tests.harness.servers import ServerFactory

pytestmark = pytest.mark.both_stores

T = TypeVar("T")
Metadata = tuple[tuple[str, str], ...]

TASK = "Write a function that reverses a string"
MINI = "openai:gpt-4.1-mini"
VICTIM_KEY = "victim-key-2b7e151628aed2a6"
FUZZER_KEY = "fuzzer-key-abf7158809cf4f3c"
BYSTANDER_KEY = "bystander-key-762e7160f38b4da5"
KEYS = f"victim:{VICTIM_KEY},fuzzer:{FUZZER_KEY},bystander:{BYSTANDER_KEY}"
# Models the fake treats specially (only the test's own requests name them).
FAILING_MODEL = "openai:fuzz-fails-4d1"
HELD_MODEL = "openai:fuzz-held-9c2"

SERVICE = "/facilitair.v1.OrchestratorService/"
METHODS = ["Collaborate", "WatchRun", "GetRun", "ListRuns", "CancelRun"]
HEALTH_WATCH = "/grpc.health.v1.Health/Watch"  # streams for as long as the caller listens


def shapes(*services: ServiceDescriptor) -> dict[str, tuple[bool, bool]]:
    """Every method of the services: its path -> (client streaming, server streaming)."""
    return {f"/{s.full_name}/{m.name}": (m.client_streaming, m.server_streaming) for s in services for m in s.methods}


# Raw bytes go to every method the server serves: ours, health's and reflection's.
RAW_METHODS = shapes(
    pb.DESCRIPTOR.services_by_name["OrchestratorService"],
    health_pb2.DESCRIPTOR.services_by_name["Health"],
    reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"],
)
MAX_MESSAGE = 1024 * 1024

ALLOWED = frozenset(
    {
        grpc.StatusCode.OK,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.UNAUTHENTICATED,
        # A client_request_id sent again with another task or context: the fuzzer reuses keys across requests.
        grpc.StatusCode.ALREADY_EXISTS,
    }
)
# What a message must never hold: a traceback, a source location, the name of a Python exception class.
INTERNAL_TEXT = (
    "Traceback",
    'File "',
    "DecodeError",
    "ValidationError",
    "AioRpcError",
    "cygrpc",
    *sorted(
        name
        for name, value in vars(builtins).items()
        if isinstance(value, type) and issubclass(value, BaseException) and name.endswith(("Error", "Exception"))
    ),
)
CALL_TIMEOUT = 60.0  # hang guards only: every call here ends in well under a second
EXAMPLES = 100

FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,  # nothing written into the working tree; a failure prints its example and seed
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)


def bearer(key: str) -> Metadata:
    """Call metadata carrying an API key."""
    return (("authorization", f"Bearer {key}"),)


# ----- what a call ended with, and the checks every call must pass -----------------------------------------


@dataclass
class Outcome:
    """How one call ended: its status, message, details, and the responses received before the end."""

    code: grpc.StatusCode
    message: str
    responses: list[Any]
    details: list[Any] = field(default_factory=list)

    def bad_request(self) -> list[tuple[str, str]] | None:
        """The BadRequest field violations, or None when there is no BadRequest detail."""
        for detail in self.details:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                return [(v.field, v.description) for v in bad.field_violations]
        return None


async def outcome(start: Callable[[], Awaitable[Any] | AsyncIterable[Any]], *, at_most: int = 0) -> Outcome:
    """Start a call (on the running loop), run it to its end (reading a stream through), say how it ended.

    With `at_most`, a stream that has sent that many messages is cancelled and counts as OK (health's
    Watch never ends by itself).
    """
    responses: list[Any] = []
    try:
        async with asyncio.timeout(CALL_TIMEOUT):
            call = start()
            if isinstance(call, AsyncIterable):
                async for response in call:
                    responses.append(response)
                    if len(responses) == at_most:
                        call.cancel()  # type: ignore[attr-defined]
                        break
            else:
                responses.append(await call)
    except grpc.aio.AioRpcError as err:
        status = rpc_status.from_call(err)  # type: ignore[arg-type]
        details = list(status.details) if status is not None else []
        return Outcome(err.code(), err.details() or "", responses, details)
    return Outcome(grpc.StatusCode.OK, "", responses)


def strings_in(value: Any) -> list[str]:
    """Every string in a JSON-like value (keys included)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, Mapping):
        return [s for k, v in value.items() for s in (*strings_in(k), *strings_in(v))]
    if isinstance(value, list | tuple):
        return [s for v in value for s in strings_in(v)]
    return []


def echoable(request: Message | bytes) -> str:
    """All the text a request carries, which a message may legitimately quote back (a run id, a model name)."""
    if isinstance(request, bytes):
        return request.decode("utf-8", "replace")
    try:
        as_dict = json_format.MessageToDict(request)
    except (ValueError, json_format.Error):  # a Struct holding NaN has no JSON form; the text format has it all
        return str(request)
    return "\n".join(strings_in(as_dict))


def assert_clean(text: str, request: Message | bytes, where: str) -> None:
    """`text` holds no internal text, except what the request itself put there."""
    sent = echoable(request)
    for marker in INTERNAL_TEXT:
        if marker in text and marker not in sent:
            raise AssertionError(f"{where}: internal text {marker!r} in {text!r}")


def check_events(events: list[RunEvent], after_seq: int, request: Message | bytes, where: str) -> None:
    """A stream's events: numbered on from after_seq without gaps (coalesced or not), ending terminal."""
    expected = after_seq + 1
    for event in events:
        start = event.first_seq or event.seq
        assert start == expected, f"{where}: event {start}..{event.seq} after {expected - 1}"
        expected = event.seq + 1
        name = kind(event)
        if name == "run_failed":
            assert event.run_failed.code not in (grpc.StatusCode.UNKNOWN.value[0], grpc.StatusCode.INTERNAL.value[0])
            assert_clean(event.run_failed.message, request, f"{where}: run_failed")
        elif name == "attempt_reset":
            assert_clean(event.attempt_reset.reason, request, f"{where}: attempt_reset")
        elif name == "model_fallback":
            assert_clean(event.model_fallback.reason, request, f"{where}: model_fallback")
    if events:
        assert kind(events[-1]) in TERMINAL, f"{where}: the stream ended on {kind(events[-1])}"
        assert all(kind(e) not in TERMINAL for e in events[:-1])
    else:
        assert after_seq > 0, f"{where}: an empty stream from the start of a run"


def check(result: Outcome, request: Message | bytes, where: str) -> None:
    """What every call must satisfy, whatever was sent."""
    assert result.code in ALLOWED, f"{where}: {result.code.name} {result.message!r}"
    assert_clean(result.message, request, where)
    if result.code == grpc.StatusCode.INVALID_ARGUMENT and isinstance(request, Message):
        # A well-formed message with a bad field: the BadRequest detail names each field and what is wrong.
        violations = result.bad_request()
        assert violations, f"{where}: INVALID_ARGUMENT without a BadRequest detail: {result.message!r}"
        for name, description in violations:
            assert name, where
            assert description, where
            assert_clean(description, request, where)


# ----- strategies ------------------------------------------------------------------------------------------------

UNICODE = st.characters(codec="utf-8")  # any code point a proto string can hold (no lone surrogates)
text = st.text(UNICODE, max_size=40)
odd_text = st.one_of(
    text,
    st.sampled_from(
        ["", " ", "\t\n", "\x00", "\u200b", "👩‍💻", "💥" * 30, "%s%n", "'; DROP TABLE runs; --", "../../etc"]
    ),
    st.integers(0, 200).map(lambda n: "ä" * n),
)
# Floats where the edge cases are likely, not one in a thousand: NaN, the infinities, the extremes.
floats = st.one_of(
    st.sampled_from([math.nan, math.inf, -math.inf, 1e308, -1e308, 0.0, -0.0, 5e-324, 1e-9]),
    st.floats(),
)
uint32 = st.one_of(st.integers(0, 50), st.just(2**32 - 1), st.integers(0, 2**32 - 1))
uint64 = st.one_of(st.integers(0, 50), st.just(2**64 - 1), st.integers(0, 2**64 - 1))
int32 = st.one_of(st.integers(-3, 8), st.just(2**31 - 1), st.just(-(2**31)), st.integers(-(2**31), 2**31 - 1))
models = st.one_of(
    st.sampled_from(
        [
            "",
            MINI,
            "anthropic:claude-sonnet-4-6",
            f"{MINI},anthropic:claude-sonnet-4-6",
            "openai:",
            ":gpt",
            "openai",
            "bogus:model",
            f"{MINI},",
            ",,,",
            "OPENAI:GPT-4.1-MINI",
            " openai : gpt-4.1-mini ",
        ]
    ),
    odd_text,
    st.builds(lambda p, m: f"{p}:{m}", st.sampled_from(["openai", "anthropic", "x"]), text),
)
agent_names = st.one_of(st.sampled_from([*AGENTS, "ARCHITECT", " coder", "critic", ""]), text)
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), floats, st.integers(-(2**53), 2**53), text),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(text, inner, max_size=3)),
    max_leaves=20,
)


def nested(depth: int) -> dict[str, Any]:
    """A JSON object `depth` levels deep."""
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(depth - 1):
        value = {"next": value}
    return value


contexts = st.one_of(
    st.dictionaries(text, json_values, max_size=5),
    st.integers(1, 12).map(nested),
    st.integers(60_000, 70_000).map(lambda n: {"blob": "x" * n}),
)
tasks = st.one_of(odd_text, st.sampled_from([TASK, "   ", "\n"]), st.integers(19_995, 20_005).map(lambda n: "t" * n))


@dataclass(frozen=True)
class Field:
    """One CollaborateRequest field: a value a valid request would carry, and wild ones."""

    good: st.SearchStrategy[Any]
    wild: st.SearchStrategy[Any]


COLLABORATE_FIELDS: dict[str, Field] = {
    "task": Field(st.just(TASK), tasks),
    "context": Field(st.sampled_from([None, {"language": "python"}]), st.one_of(st.none(), contexts)),
    "model": Field(st.sampled_from(["", MINI]), models),
    "agent_models": Field(st.just({}), st.dictionaries(agent_names, models, max_size=8)),
    "max_refinements": Field(st.sampled_from([None, 0, 1]), st.one_of(st.none(), uint32)),
    "on_disconnect": Field(st.sampled_from([0, 1, 2]), int32),
    "client_request_id": Field(st.just(""), st.one_of(odd_text, st.integers(120, 140).map(lambda n: "r" * n))),
    "max_cost_usd": Field(st.just(None), st.one_of(st.none(), floats)),
    "max_tokens": Field(st.just(None), st.one_of(st.none(), uint64)),
    "coalesce_tokens": Field(st.booleans(), st.booleans()),
}


@st.composite
def collaborate_requests(draw: st.DrawFn) -> pb.CollaborateRequest:
    """A valid request, a valid one with one wild field, or a wholly wild one."""
    mode = draw(st.sampled_from(["valid", "one wild field", "wild"]))
    wild_one = draw(st.sampled_from(sorted(COLLABORATE_FIELDS)))
    values = {
        name: draw(f.wild if mode == "wild" or (mode == "one wild field" and name == wild_one) else f.good)
        for name, f in COLLABORATE_FIELDS.items()
    }
    request = pb.CollaborateRequest(
        task=values["task"],
        model=values["model"],
        agent_models=values["agent_models"],
        on_disconnect=pb.OnDisconnect.ValueType(values["on_disconnect"]),
        client_request_id=values["client_request_id"],
        coalesce_tokens=values["coalesce_tokens"],
    )
    if values["context"] is not None:
        request.context.update(values["context"])
    for name in ("max_refinements", "max_cost_usd", "max_tokens"):
        if values[name] is not None:
            setattr(request, name, values[name])
    return request


def with_context(context: dict[str, Any]) -> pb.CollaborateRequest:
    """A valid request but for its context."""
    request = pb.CollaborateRequest(task=TASK)
    request.context.update(context)
    return request


def forged_token(value: Any) -> str:
    """A page token made the way the server makes them, from any JSON value."""
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode()


def raw_token(json_text: str) -> str:
    """A page token holding exactly this JSON text."""
    return base64.urlsafe_b64encode(json_text.encode()).decode()


SOME_ID = "0b7e1516-28ae-4d2a-8abf-7158809cf4f3"
# Tokens whose JSON has the right shape but holds what no token ListRuns issues can: a string the stores cannot
# hold (NUL; a lone surrogate, which JSON can spell but UTF-8 cannot), a number that is not finite.
POISONED_TOKENS = [
    raw_token('[1.0,"\\u0000"]'),
    raw_token('[1,"\\ud800"]'),
    raw_token(f'[1.0,"{SOME_ID}\\u0000"]'),
    raw_token(f'[NaN,"{SOME_ID}"]'),
    raw_token(f'[Infinity,"{SOME_ID}"]'),
    raw_token(f'[-Infinity,"{SOME_ID}"]'),
    raw_token(f'[1e999,"{SOME_ID}"]'),
]


def struct_strings(value: struct_pb2.Struct | struct_pb2.ListValue | struct_pb2.Value) -> list[str]:
    """Every string in a Struct (keys included), walked as messages: MessageToDict refuses a NaN."""
    if isinstance(value, struct_pb2.Struct):
        return [s for k, v in value.fields.items() for s in (k, *struct_strings(v))]
    if isinstance(value, struct_pb2.ListValue):
        return [s for v in value.values for s in struct_strings(v)]
    held = value.WhichOneof("kind")
    if held == "string_value":
        return [value.string_value]
    if held in ("struct_value", "list_value"):
        return struct_strings(getattr(value, held))
    return []


def fields_holding_nul(request: pb.CollaborateRequest) -> set[str]:
    """The fields of a request with a NUL character anywhere in them (map keys and the context's keys too)."""
    strings = {
        "task": [request.task],
        "model": [request.model],
        "client_request_id": [request.client_request_id],
        "agent_models": [s for k, v in request.agent_models.items() for s in (k, v)],
        "context": struct_strings(request.context),
    }
    return {name for name, texts in strings.items() if any("\x00" in t for t in texts)}


def violated_fields(result: Outcome) -> set[str]:
    """The fields a BadRequest names, without their keys or paths ("agent_models[coder]" -> "agent_models")."""
    return {f.partition("[")[0].partition(".")[0] for f, _ in result.bad_request() or []}


def page_tokens(valid: list[str]) -> st.SearchStrategy[str]:
    """Tokens ListRuns gave out, and forgeries: other JSON, other bytes, plain text."""
    number = st.one_of(floats, st.integers(), st.just(10**400), st.just(-(10**400)))
    forged = st.one_of(
        st.tuples(number, st.one_of(text, st.uuids().map(str))).map(list),
        json_values,
        st.lists(number, max_size=4),
    )
    return st.one_of(
        st.sampled_from(valid),
        st.sampled_from(POISONED_TOKENS),
        forged.map(forged_token),
        st.binary(max_size=40).map(lambda b: base64.urlsafe_b64encode(b).decode()),
        odd_text,
    )


health_services = st.one_of(st.sampled_from(["", SERVICE_NAME, "grpc.health.v1.Health", SERVICE_NAME + " "]), odd_text)
symbols = st.one_of(
    st.sampled_from(
        [
            SERVICE_NAME,
            f"{SERVICE_NAME}.Collaborate",
            "facilitair.v1.CollaborateRequest",
            "grpc.health.v1.Health",
            "google.protobuf.Struct",
            "google.protobuf.FieldOptions",
            "",
            ".",
            "facilitair.",
        ]
    ),
    odd_text,
)
proto_files = st.one_of(
    st.sampled_from(
        [
            "facilitair/v1/orchestrator.proto",
            "grpc/health/v1/health.proto",
            "google/protobuf/struct.proto",
            "google/protobuf/descriptor.proto",
            "../../etc/passwd",
            "",
        ]
    ),
    odd_text,
)
REFLECTION_ASKS = (
    "file_by_filename",
    "file_containing_symbol",
    "file_containing_extension",
    "all_extension_numbers_of_type",
    "list_services",
    "nothing",
)


@st.composite
def reflection_requests(draw: st.DrawFn) -> reflection_pb2.ServerReflectionRequest:
    """One reflection request of any kind, with odd names, numbers and hosts, or with no question at all."""
    request = reflection_pb2.ServerReflectionRequest(host=draw(odd_text))
    ask = draw(st.sampled_from(REFLECTION_ASKS))
    if ask == "file_by_filename":
        request.file_by_filename = draw(proto_files)
    elif ask == "file_containing_symbol":
        request.file_containing_symbol = draw(symbols)
    elif ask == "file_containing_extension":
        request.file_containing_extension.containing_type = draw(symbols)
        request.file_containing_extension.extension_number = draw(int32)
    elif ask == "all_extension_numbers_of_type":
        request.all_extension_numbers_of_type = draw(symbols)
    elif ask == "list_services":
        request.list_services = draw(odd_text)
    return request


def weighted(*choices: tuple[int, st.SearchStrategy[T]]) -> st.SearchStrategy[T]:
    """One of the strategies, each about as often as its weight says (st.one_of favours none reliably)."""
    table = [strategy for weight, strategy in choices for _ in range(weight)]
    return st.integers(0, len(table) - 1).flatmap(lambda i: table[i])


def credentials() -> st.SearchStrategy[Metadata]:
    """Mostly the fuzzer's key; otherwise none, a wrong one, or a malformed header."""
    printable = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)
    bad = st.one_of(
        st.just(()),
        printable.map(lambda v: (("authorization", v),)),
        printable.map(lambda v: (("authorization", f"Bearer {v}"),)),
        st.sampled_from([bearer(FUZZER_KEY[:-1]), bearer(FUZZER_KEY + "x"), (("authorization", FUZZER_KEY),)]),
    )
    return weighted((1, bad), (9, st.just(bearer(FUZZER_KEY))))


# ----- the victim's runs and the fake provider -------------------------------------------------------------


class Provider:
    """Answers every agent with its default reply; FAILING_MODEL gets a 400, HELD_MODEL waits for `release`."""

    def __init__(self) -> None:
        self.release = asyncio.Event()

    def __call__(self, body: dict[str, Any]) -> Reply:
        model = f"openai:{body.get('model')}"
        if model == FAILING_MODEL:
            return Reply(chunks=["never sent"], fault=Fault.http_status(400))
        reply = default_replies()[agent_of(body)]
        if model == HELD_MODEL:
            reply.hold_after = 0
            reply.release = self.release
        return reply


@dataclass
class Snapshot:
    """A finished run as its owner sees it: the summary and every event."""

    summary: bytes
    events: list[bytes]


async def snapshot(client: Client, run_id: str) -> Snapshot:
    """GetRun and a WatchRun replay from the start, serialized for exact comparison."""
    summary = await client.get_run(run_id)
    events = await collect(client.watch(run_id))
    return Snapshot(summary.SerializeToString(), [e.SerializeToString() for e in events])


class Bridge:
    """Runs coroutines on the test's event loop from hypothesis's worker thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def __call__(self, coro: Coroutine[Any, Any, T]) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout=CALL_TIMEOUT + 10)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise AssertionError("the call did not end: the server hung") from None


async def in_thread(prop: Callable[[], None]) -> None:
    """Run a hypothesis property in a worker thread while this loop serves its calls."""
    await asyncio.to_thread(prop)


# ----- the test ------------------------------------------------------------------------------------------------


async def test_no_request_crashes_leaks_or_disturbs_the_server(
    make_server: ServerFactory, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    with no_error_logs(caplog, capfd):
        await fuzz_server(make_server)


async def fuzz_server(make_server: ServerFactory) -> None:
    provider = Provider()
    async with FakeOpenAI(provider) as fake:
        h = await make_server(
            openai=fake,
            model=MINI,
            api_keys=KEYS,
            max_runs=10_000,
            max_runs_per_principal=10_000,
            runs_per_minute=1e9,
            provider_attempts=1,
        )
        victim = Client(h.target, api_key=VICTIM_KEY)
        fuzzer = Client(h.target, api_key=FUZZER_KEY)
        bystander = Client(h.target, api_key=BYSTANDER_KEY)
        channel = grpc.aio.insecure_channel(h.target)
        try:
            await fuzz_session(
                h.target, provider=provider, victim=victim, fuzzer=fuzzer, bystander=bystander, channel=channel
            )
        finally:
            provider.release.set()
            for client in (victim, fuzzer, bystander):
                await client.close()
            await channel.close(None)


async def fuzz_session(
    target: str, *, provider: Provider, victim: Client, fuzzer: Client, bystander: Client, channel: grpc.aio.Channel
) -> None:
    # ----- before: the victim's runs in every state, the fuzzer's own runs -----
    done = await collect(victim.collaborate(TASK))
    failed = await collect(victim.collaborate(TASK, agent_models={"coder": FAILING_MODEL}))
    assert [kind(done[-1]), kind(failed[-1])] == ["run_completed", "run_failed"]
    async with RunStream(victim.collaborate(TASK, model=HELD_MODEL)) as to_cancel:
        cancelled_id = (await to_cancel.until(lambda e: kind(e) == "run_started")).run_id
        await victim.cancel_run(cancelled_id)
        assert kind((await to_cancel.to_end())[-1]) == "run_cancelled"
    finished = {done[0].run_id: "completed", failed[0].run_id: "failed", cancelled_id: "cancelled"}
    before = {run_id: await snapshot(victim, run_id) for run_id in finished}

    live = RunStream(victim.collaborate(TASK, model=HELD_MODEL))
    live_id = (await live.until(lambda e: kind(e) == "run_started")).run_id
    victim_ids = [*finished, live_id]

    own = [(await collect(fuzzer.collaborate(TASK)))[0].run_id for _ in range(3)]
    first_page, token = await fuzzer.list_runs(page_size=1)
    assert token
    assert [r.run_id for r in first_page] == [own[-1]]

    # ----- the fuzzing -----
    bridge = Bridge(asyncio.get_running_loop())
    stub = pb_grpc.OrchestratorServiceStub(channel)
    health = health_pb2_grpc.HealthStub(channel)
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    open_rpcs = ["Health.Check", "Health.Watch", "Health.List", "ServerReflectionInfo"]
    seen: dict[str, Counter[str]] = {name: Counter() for name in [*METHODS, *open_rpcs, "raw", "oversized"]}
    run_ids = weighted(
        (1, st.sampled_from(victim_ids)),
        (2, st.sampled_from(own)),
        (1, st.uuids().map(str)),
        (1, odd_text),
        (1, st.sampled_from(["", live_id.upper(), live_id[:-1], live_id + " ", "0" * 64, "0" * 65])),
        (1, st.sampled_from([own[0][:8], own[1].upper()[:13], "last", live_id[:8], live_id[:4]])),
    )
    # What the fuzzer's own references resolve to (a unique prefix, any spelling; "last" is its newest run,
    # which fuzz_collaborate keeps changing); the victim's prefixes must be as unknown to it as its ids.
    resolves = {own[0][:8]: own[0], own[1].upper()[:13]: own[1]} | {r: r for r in own}
    victims = {*victim_ids, live_id.upper(), live_id[:8], live_id[:4]}

    def authed(md: Metadata) -> bool:
        return md == bearer(FUZZER_KEY)

    def common(name: str, result: Outcome, request: Message, md: Metadata) -> None:
        seen[name][result.code.name] += 1
        check(result, request, name)
        if not authed(md):
            assert result.code == grpc.StatusCode.UNAUTHENTICATED, f"{name}: {result.code.name} without a good key"
        run_id = getattr(request, "run_id", "")
        if authed(md) and "\x00" in run_id:  # not a run id, and nothing a store could be asked about
            assert result.code == grpc.StatusCode.INVALID_ARGUMENT, (name, result.code.name, result.message)
            assert violated_fields(result) == {"run_id"}, (name, result.bad_request())

    @FUZZ_SETTINGS
    @given(request=collaborate_requests(), md=credentials())
    @example(request=with_context({"n": math.nan}), md=bearer(FUZZER_KEY))
    @example(request=with_context({"deep": [{"n": -math.inf}]}), md=bearer(FUZZER_KEY))
    @example(request=pb.CollaborateRequest(task=TASK, client_request_id="key\x00"), md=bearer(FUZZER_KEY))
    @example(request=pb.CollaborateRequest(task=TASK, model=f"{MINI}\x00"), md=bearer(FUZZER_KEY))
    @example(request=pb.CollaborateRequest(task=TASK, agent_models={"coder": f"{MINI}\x00x"}), md=bearer(FUZZER_KEY))
    @example(request=pb.CollaborateRequest(task=f"{TASK}\x00"), md=bearer(FUZZER_KEY))
    @example(request=with_context({"files": {"src/a\x00.py": "pass"}}), md=bearer(FUZZER_KEY))
    @example(request=with_context({"files": {"src/a.py": "pass\x00"}}), md=bearer(FUZZER_KEY))
    def fuzz_collaborate(request: pb.CollaborateRequest, md: Metadata) -> None:
        result = bridge(outcome(lambda: stub.Collaborate(request, metadata=md)))
        common("Collaborate", result, request, md)
        holding_nul = fields_holding_nul(request)
        if authed(md) and holding_nul:  # no store can hold a NUL: refused, naming each field that has one
            assert result.code == grpc.StatusCode.INVALID_ARGUMENT, (holding_nul, result.code.name, result.message)
            assert holding_nul <= violated_fields(result), (holding_nul, result.bad_request())
        events = [r.event for r in result.responses]
        if result.code == grpc.StatusCode.OK:
            check_events(events, 0, request, "Collaborate")
            assert events[0].run_id not in victim_ids
        else:
            assert events == [], "Collaborate: events before an error"

    @FUZZ_SETTINGS
    @given(
        run_id=run_ids,
        after_seq=weighted((3, st.integers(0, 40)), (1, uint64)),
        coalesce=st.booleans(),
        md=credentials(),
    )
    @example(run_id=own[0], after_seq=0, coalesce=True, md=bearer(FUZZER_KEY))
    @example(run_id=own[0], after_seq=2**64 - 1, coalesce=False, md=bearer(FUZZER_KEY))
    @example(run_id=live_id, after_seq=0, coalesce=False, md=bearer(FUZZER_KEY))
    @example(run_id=own[0][:8] + "\x00", after_seq=0, coalesce=False, md=bearer(FUZZER_KEY))
    def fuzz_watch(run_id: str, after_seq: int, coalesce: bool, md: Metadata) -> None:
        request = pb.WatchRunRequest(run_id=run_id, after_seq=after_seq, coalesce_tokens=coalesce)
        result = bridge(outcome(lambda: stub.WatchRun(request, metadata=md)))
        common("WatchRun", result, request, md)
        if authed(md) and run_id in victims:
            assert result.code == grpc.StatusCode.NOT_FOUND
        if result.code == grpc.StatusCode.OK:
            check_events([r.event for r in result.responses], after_seq, request, "WatchRun")

    @FUZZ_SETTINGS
    @given(run_id=run_ids, md=credentials())
    @example(run_id=live_id, md=bearer(FUZZER_KEY))
    @example(run_id=own[0], md=bearer(FUZZER_KEY))
    @example(run_id="last\x00", md=bearer(FUZZER_KEY))
    def fuzz_get(run_id: str, md: Metadata) -> None:
        request = pb.GetRunRequest(run_id=run_id)
        result = bridge(outcome(lambda: stub.GetRun(request, metadata=md)))
        common("GetRun", result, request, md)
        if authed(md) and run_id in victims:
            assert result.code == grpc.StatusCode.NOT_FOUND
        if result.code == grpc.StatusCode.OK:
            got = result.responses[0].run.run_id
            assert got == resolves[run_id] if run_id != "last" else got not in victim_ids

    @FUZZ_SETTINGS
    @given(
        size=weighted((3, st.integers(0, 120)), (1, uint32)),
        page_token=weighted((1, st.just("")), (2, page_tokens([token]))),
        state=weighted((2, st.integers(0, 6)), (1, int32)),
        md=credentials(),
    )
    @example(size=0, page_token=forged_token([10**400, own[0]]), state=0, md=bearer(FUZZER_KEY))
    @example(size=0, page_token=forged_token([math.nan, own[0]]), state=0, md=bearer(FUZZER_KEY))
    @example(size=2**32 - 1, page_token="", state=0, md=bearer(FUZZER_KEY))
    @example(size=1, page_token=token, state=pb.RUN_STATE_COMPLETED, md=bearer(FUZZER_KEY))
    @example(size=0, page_token=POISONED_TOKENS[0], state=0, md=bearer(FUZZER_KEY))
    @example(size=0, page_token=POISONED_TOKENS[1], state=0, md=bearer(FUZZER_KEY))
    @example(size=0, page_token=POISONED_TOKENS[4], state=0, md=bearer(FUZZER_KEY))
    def fuzz_list(size: int, page_token: str, state: int, md: Metadata) -> None:
        request = pb.ListRunsRequest(page_size=size, page_token=page_token, state=pb.RunState.ValueType(state))
        result = bridge(outcome(lambda: stub.ListRuns(request, metadata=md)))
        common("ListRuns", result, request, md)
        if authed(md) and page_token in POISONED_TOKENS:
            assert result.code == grpc.StatusCode.INVALID_ARGUMENT, (page_token, result.code.name, result.message)
            if size <= 100 and state in pb.RunState.values():
                assert violated_fields(result) == {"page_token"}, result.bad_request()
        if result.code == grpc.StatusCode.OK:
            listed = {r.run_id for r in result.responses[0].runs}
            assert not listed & set(victim_ids), "ListRuns: the fuzzer was shown the victim's runs"

    @FUZZ_SETTINGS
    @given(run_id=run_ids, md=credentials())
    @example(run_id=live_id, md=bearer(FUZZER_KEY))
    @example(run_id=own[0], md=bearer(FUZZER_KEY))
    @example(run_id=f"\x00{own[0]}", md=bearer(FUZZER_KEY))
    def fuzz_cancel(run_id: str, md: Metadata) -> None:
        request = pb.CancelRunRequest(run_id=run_id)
        result = bridge(outcome(lambda: stub.CancelRun(request, metadata=md)))
        common("CancelRun", result, request, md)
        if authed(md) and run_id in victims:
            assert result.code == grpc.StatusCode.NOT_FOUND
        if result.code == grpc.StatusCode.OK:
            assert result.responses[0].run.state in (
                pb.RUN_STATE_COMPLETED,
                pb.RUN_STATE_FAILED,
                pb.RUN_STATE_CANCELLED,
            )

    serving = {"": health_pb2.HealthCheckResponse.SERVING, SERVICE_NAME: health_pb2.HealthCheckResponse.SERVING}

    def open_to_all(name: str, result: Outcome, request: Message) -> None:
        seen[name][result.code.name] += 1
        check(result, request, name)
        assert result.code != grpc.StatusCode.UNAUTHENTICATED, f"{name} needs no credentials"

    @FUZZ_SETTINGS
    @given(service=health_services, md=credentials())
    @example(service=SERVICE_NAME, md=())
    @example(service="facilitair.v1.Nope", md=bearer(FUZZER_KEY))
    def fuzz_health(service: str, md: Metadata) -> None:
        request = health_pb2.HealthCheckRequest(service=service)
        checked = bridge(outcome(lambda: health.Check(request, metadata=md)))
        open_to_all("Health.Check", checked, request)
        watched = bridge(outcome(lambda: health.Watch(request, metadata=md), at_most=1))
        open_to_all("Health.Watch", watched, request)
        listed = bridge(outcome(lambda: health.List(health_pb2.HealthListRequest(), metadata=md)))
        open_to_all("Health.List", listed, request)
        if service in serving:
            assert checked.code == grpc.StatusCode.OK
            assert checked.responses[0].status == serving[service]
        else:
            assert checked.code == grpc.StatusCode.NOT_FOUND, (service, checked.code.name)
        assert watched.code == grpc.StatusCode.OK
        unknown = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
        assert [r.status for r in watched.responses] == [serving.get(service, unknown)]
        assert {name: s.status for name, s in listed.responses[0].statuses.items()} == serving

    @FUZZ_SETTINGS
    @given(requests=st.lists(reflection_requests(), max_size=4), md=credentials())
    @example(requests=[reflection_pb2.ServerReflectionRequest(list_services="")], md=())
    @example(requests=[reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE_NAME)], md=())
    def fuzz_reflection(requests: list[reflection_pb2.ServerReflectionRequest], md: Metadata) -> None:
        result = bridge(outcome(lambda: reflection.ServerReflectionInfo(iter(requests), metadata=md)))
        sent = b"".join(r.SerializeToString() for r in requests)  # every string sent, which an answer may quote
        seen["ServerReflectionInfo"][result.code.name] += 1
        check(result, sent, "ServerReflectionInfo")
        assert result.code == grpc.StatusCode.OK, (result.code.name, result.message)
        # One answer per question, in order; a question the server cannot answer gets an error_response.
        assert [r.original_request for r in result.responses] == requests
        for request, response in zip(requests, result.responses, strict=True):
            if request.WhichOneof("message_request") == "list_services":
                listed = {s.name for s in response.list_services_response.service}
                assert listed == {SERVICE_NAME, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"}
            elif response.HasField("error_response"):
                assert_clean(response.error_response.error_message, sent, "ServerReflectionInfo error_response")

    valid_bytes = st.one_of(
        collaborate_requests().map(lambda m: m.SerializeToString()),
        st.builds(lambda r, s: pb.WatchRunRequest(run_id=r, after_seq=s).SerializeToString(), run_ids, uint64),
        st.builds(lambda s, t: pb.ListRunsRequest(page_size=s, page_token=t).SerializeToString(), uint32, text),
        health_services.map(lambda s: health_pb2.HealthCheckRequest(service=s).SerializeToString()),
        reflection_requests().map(lambda r: r.SerializeToString()),
    )

    @st.composite
    def mutated(draw: st.DrawFn) -> bytes:
        data = bytearray(draw(valid_bytes))
        for _ in range(draw(st.integers(0, 4))):
            if data:
                data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        return bytes(data[: draw(st.integers(0, len(data)))]) if draw(st.booleans()) else bytes(data)

    @FUZZ_SETTINGS
    @given(method=st.sampled_from(sorted(RAW_METHODS)), data=st.one_of(st.binary(max_size=300), mutated()))
    @example(method=HEALTH_WATCH, data=b"\x0f\x01")
    @example(method="/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", data=b"\x08" + b"\xff" * 11)
    def fuzz_raw(method: str, data: bytes) -> None:
        result = bridge(raw_call(channel, method, data))
        seen["raw"][result.code.name] += 1
        check(result, data, f"raw {method}")
        for response in result.responses:
            assert isinstance(response, bytes)

    @settings(FUZZ_SETTINGS, max_examples=20)
    @given(
        method=st.sampled_from(sorted(RAW_METHODS)),
        size=st.integers(MAX_MESSAGE - 64, MAX_MESSAGE + 64) | st.integers(MAX_MESSAGE, 4 * MAX_MESSAGE),
        fill=st.integers(0, 255),
    )
    def fuzz_oversized(method: str, size: int, fill: int) -> None:
        data = bytes([fill]) * size
        result = bridge(raw_call(channel, method, data))
        seen["oversized"][result.code.name] += 1
        check(result, b"", f"oversized {method}")
        if size > MAX_MESSAGE:
            assert result.code == grpc.StatusCode.RESOURCE_EXHAUSTED, f"{size} bytes: {result.code.name}"

    fuzzers = (fuzz_collaborate, fuzz_watch, fuzz_get, fuzz_list, fuzz_cancel, fuzz_health, fuzz_reflection)
    for prop in (*fuzzers, fuzz_raw, fuzz_oversized):
        await in_thread(prop)

    # An unknown method is UNIMPLEMENTED, with or without a key, and is not mistaken for one of ours.
    for md in ((), bearer(FUZZER_KEY)):
        nope = await raw_call(channel, f"{SERVICE}Nope", b"", md)
        assert nope.code == grpc.StatusCode.UNIMPLEMENTED

    # The fuzzing reached past the front door: each RPC both served and refused requests (the explicit
    # examples make the rarer outcomes certain; the generated ones make the common ones near certain).
    for name in METHODS:
        assert seen[name]["OK"] > 0, (name, seen[name])
        assert seen[name]["UNAUTHENTICATED"] > 0, (name, seen[name])
    for name, code in [
        ("Collaborate", "INVALID_ARGUMENT"),
        ("WatchRun", "NOT_FOUND"),
        ("WatchRun", "OUT_OF_RANGE"),
        ("GetRun", "NOT_FOUND"),
        ("ListRuns", "INVALID_ARGUMENT"),
        ("CancelRun", "NOT_FOUND"),
        ("Health.Check", "OK"),
        ("Health.Check", "NOT_FOUND"),
        ("Health.Watch", "OK"),
        ("Health.List", "OK"),
        ("ServerReflectionInfo", "OK"),
        ("raw", "INVALID_ARGUMENT"),
        ("oversized", "RESOURCE_EXHAUSTED"),
    ]:
        assert seen[name][code] > 0, (name, code, seen[name])

    # ----- after: healthy, the victim's runs untouched, the live run finishes, others are served -----
    async with grpc.aio.insecure_channel(target) as fresh:
        health = await health_pb2_grpc.HealthStub(fresh).Check(health_pb2.HealthCheckRequest())
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    for run_id, state in finished.items():
        assert await snapshot(victim, run_id) == before[run_id], f"the {state} run changed"
    assert (await victim.get_run(live_id)).state == pb.RUN_STATE_RUNNING
    provider.release.set()
    live_events = await live.to_end()
    await live.aclose()
    assert kind(live_events[-1]) == "run_completed"
    assert [e.seq for e in live_events] == list(range(1, len(live_events) + 1))
    replay = await collect(victim.watch(live_id))
    assert [e.SerializeToString() for e in replay] == [e.SerializeToString() for e in live_events]
    assert sorted(r.run_id for r in (await victim.list_runs(page_size=100))[0]) == sorted(victim_ids)
    after = await collect(bystander.collaborate(TASK))
    assert kind(after[-1]) == "run_completed"
    assert [e.seq for e in after] == list(range(1, len(after) + 1))


async def raw_call(channel: grpc.aio.Channel, path: str, data: bytes, md: Metadata | None = None) -> Outcome:
    """Send bytes as the request of a method (one message, or a stream of one), with the fuzzer's key by default."""
    metadata = bearer(FUZZER_KEY) if md is None else md
    client_streaming, server_streaming = RAW_METHODS.get(path, (False, False))
    shape = f"{'stream' if client_streaming else 'unary'}_{'stream' if server_streaming else 'unary'}"
    call: Any = getattr(channel, shape)(path, request_serializer=None, response_deserializer=None)
    request = iter([data]) if client_streaming else data
    return await outcome(lambda: call(request, metadata=metadata), at_most=1 if path == HEALTH_WATCH else 0)


def test_the_markers_catch_internal_text() -> None:
    # The message check itself: a traceback, a location or an exception name is caught, quoted input is not.
    request = pb.GetRunRequest(run_id="KeyError")
    for bad in ("Traceback (most recent call last):", 'File "/x.py", line 1', "ValueError: nope", "OverflowError"):
        try:
            assert_clean(bad, pb.GetRunRequest(run_id=str(uuid.uuid4())), "probe")
        except AssertionError:
            continue
        raise AssertionError(f"{bad!r} was not caught")
    assert_clean("run 'KeyError' not found", request, "probe")
