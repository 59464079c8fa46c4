"""Text no store can hold: a NUL anywhere in a request, and page tokens whose JSON holds NUL, a lone surrogate,
NaN or Infinity, are INVALID_ARGUMENT naming the field, on SQLite and PostgreSQL alike.

On PostgreSQL these ended as INTERNAL with a traceback in the log (text columns refuse NUL, asyncpg cannot encode a
surrogate), and a model name with a NUL started a run on both stores. The guard checks every string of every request
once (transport/requests.py `unstorable_strings`); page tokens are decoded strictly (runs/queries.py).
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterable, Awaitable
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from facilitair.v1 import orchestrator_pb2 as pb
from facilitair.v1 import orchestrator_pb2_grpc as pb_grpc
from tests.fakes.providers import FakeOpenAI
from tests.harness.events import RUN_TIMEOUT
from tests.harness.logs import no_error_logs
from tests.harness.scripts import scripted
from tests.harness.servers import ServerFactory

pytestmark = pytest.mark.both_stores

TASK = "Write a function that reverses a string"
MINI = "openai:gpt-4.1-mini"
NUL = "holds a NUL character (U+0000), which cannot be stored"


async def failure(call: Awaitable[Any] | AsyncIterable[Any]) -> grpc.aio.AioRpcError:
    """The error a raw call ends with (a stream is read to its end); fails the test if the call succeeds."""
    try:
        async with asyncio.timeout(RUN_TIMEOUT):
            if isinstance(call, AsyncIterable):
                async for _ in call:
                    pass
            else:
                await call
    except grpc.aio.AioRpcError as err:
        return err
    raise AssertionError("the call succeeded")


def bad_request_fields(err: grpc.aio.AioRpcError) -> list[str]:
    """The fields the BadRequest detail names, in order."""
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None, "no google.rpc.Status in the trailers"
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            return [v.field for v in bad.field_violations]
    raise AssertionError("no BadRequest detail")


def with_context(context: dict[str, Any]) -> pb.CollaborateRequest:
    """A valid request but for its context."""
    request = pb.CollaborateRequest(task=TASK)
    request.context.update(context)
    return request


def token(json_text: str) -> str:
    """A page token holding exactly this JSON."""
    return base64.urlsafe_b64encode(json_text.encode()).decode()


# Each request, and the field violations it must get (field, description).
COLLABORATE: dict[str, tuple[pb.CollaborateRequest, list[tuple[str, str]]]] = {
    "client_request_id": (pb.CollaborateRequest(task=TASK, client_request_id="key\x00"), [("client_request_id", NUL)]),
    "model": (pb.CollaborateRequest(task=TASK, model=f"{MINI}\x00"), [("model", NUL)]),
    "agent model": (
        pb.CollaborateRequest(task=TASK, agent_models={"coder": f"{MINI}\x00"}),
        [("agent_models[coder]", NUL)],
    ),
    "task": (pb.CollaborateRequest(task=f"{TASK}\x00"), [("task", NUL)]),
    "file path": (with_context({"files": {"src/a\x00.py": "pass"}}), [("context[files][src/a\\x00.py]", NUL)]),
    "file content": (with_context({"files": {"src/a.py": "pass\x00"}}), [("context[files][src/a.py]", NUL)]),
    "in a list": (with_context({"notes": ["ok", {"k": "v\x00"}]}), [("context[notes][1][k]", NUL)]),
    "several": (
        pb.CollaborateRequest(task=f"{TASK}\x00", client_request_id="\x00"),
        [("task", NUL), ("client_request_id", NUL)],
    ),
}
PAGE_TOKENS = {
    "nul": token('[1.0,"\\u0000"]'),
    "lone surrogate": token('[1,"\\ud800"]'),
    "nan": token('[NaN,"0b7e1516-28ae-4d2a-8abf-7158809cf4f3"]'),
    "infinity": token('[Infinity,"0b7e1516-28ae-4d2a-8abf-7158809cf4f3"]'),
    "1e999": token('[1e999,"0b7e1516-28ae-4d2a-8abf-7158809cf4f3"]'),
}


async def test_text_no_store_can_hold_is_an_invalid_argument_naming_its_field(
    make_server: ServerFactory, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    with no_error_logs(caplog, capfd):
        async with FakeOpenAI(scripted()) as fake:
            h = await make_server(openai=fake)
            async with grpc.aio.insecure_channel(h.target) as channel:
                stub = pb_grpc.OrchestratorServiceStub(channel)
                for name, (request, violations) in COLLABORATE.items():
                    err = await failure(stub.Collaborate(request))
                    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (name, err.code(), err.details())
                    assert err.details() == "; ".join(f"{f}: {d}" for f, d in violations), name
                    assert bad_request_fields(err) == [f for f, _ in violations], name
                for name, page_token in PAGE_TOKENS.items():
                    err = await failure(stub.ListRuns(pb.ListRunsRequest(page_token=page_token)))
                    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (name, err.code(), err.details())
                    assert err.details() == "page_token: not a token returned by ListRuns", name
                for call in (
                    stub.GetRun(pb.GetRunRequest(run_id="last\x00")),
                    stub.CancelRun(pb.CancelRunRequest(run_id="0b7e\x00")),
                    stub.WatchRun(pb.WatchRunRequest(run_id="\x00")),
                ):
                    err = await failure(call)
                    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (err.code(), err.details())
                    assert err.details() == f"run_id: {NUL}"
                # Nothing was started, nothing was asked of the provider, and the store still answers.
                assert list((await stub.ListRuns(pb.ListRunsRequest())).runs) == []
            assert fake.requests == []
