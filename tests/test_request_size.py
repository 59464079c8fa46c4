"""A request over the server's size limits gets one clear message naming the field, from the client before anything
is sent, and the same kind of message when gRPC's own 1 MiB limit refuses it (never gRPC's words)."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from facilitair.client import FacilitairError, StatusCode
from facilitair.v1 import orchestrator_pb2 as pb
from facilitair.v1 import orchestrator_pb2_grpc as pb_grpc
from tests.fakes.providers import FakeOpenAI
from tests.harness.cli import cli
from tests.harness.scripts import scripted
from tests.harness.servers import ServerFactory

BIG = 1_800_000  # a task file of 1.8 MB: over gRPC's 1 MiB message limit


@pytest.mark.parametrize("length", [20_001, BIG], ids=["just-over", "over-1MiB"])
async def test_a_task_over_the_limit_is_refused_by_the_cli_with_one_clear_line(
    make_server: ServerFactory, tmp_path: Path, length: int
) -> None:
    (tmp_path / "task.txt").write_text("x" * length)
    async with FakeOpenAI(scripted()) as fake:
        h = await make_server(openai=fake)
        code, out, err = await cli(h.target, "run", "--task-file", "task.txt", cwd=tmp_path)
        runs, _ = await h.client.list_runs()
    assert (code, out) == (2, "")
    assert err == f"facilitair: INVALID_ARGUMENT: task: is {length} characters; the limit is 20000\n"
    assert runs == []
    assert fake.requests == []


async def test_the_client_library_refuses_a_context_over_the_limit_before_sending(make_server: ServerFactory) -> None:
    async with FakeOpenAI(scripted()) as fake:
        h = await make_server(openai=fake)
        with pytest.raises(FacilitairError) as refused:
            await h.run("reverse a string", context={"notes": "x" * BIG})
        runs, _ = await h.client.list_runs()
    assert refused.value.code == StatusCode.INVALID_ARGUMENT
    assert refused.value.message.startswith("context: is 18000")
    assert refused.value.message.endswith(" bytes; the limit is 65536")
    assert runs == []


async def test_grpcs_own_message_limit_is_said_in_our_words(make_server: ServerFactory) -> None:
    """A caller that skips the library's checks (or an older one) hits gRPC's limit on the server."""
    async with FakeOpenAI(scripted()) as fake:
        h = await make_server(openai=fake)
        async with grpc.aio.insecure_channel(h.target) as channel:
            stub = pb_grpc.OrchestratorServiceStub(channel)
            with pytest.raises(grpc.RpcError) as refused:
                async for _ in stub.Collaborate(pb.CollaborateRequest(task="x" * BIG)):
                    pass
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # what gRPC itself says
    error = FacilitairError.from_rpc_error(refused.value)
    assert error.code == StatusCode.INVALID_ARGUMENT
    assert error.message.startswith("request: is 18000")
    assert "bytes; the server's limit is 1048576 (a task of at most 20000 characters" in error.message
    assert "larger than max" not in error.message
    assert error.field_violations == [("request", error.message.removeprefix("request: "))]
