"""A run's own webhook URL (CollaborateRequest.webhook_url, issue 25 part 2), on both stores.

Request URLs are off unless the webhooks file has a `[request_urls]` secret (else FAILED_PRECONDITION) and
`--webhook-allow-hosts` names the URL's host (else INVALID_ARGUMENT on `webhook_url`). An accepted URL is kept
in the run's stored spec and gets the run's end signed with that secret, verified here with `standardwebhooks`.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import grpc
import pytest

from facilitair.client import Client, FacilitairError, StatusCode
from facilitair.v1 import orchestrator_pb2 as pb
from facilitair.v1 import orchestrator_pb2_grpc as pb_grpc
from tests.fakes.providers import FakeOpenAI
from tests.harness.cli import cli
from tests.harness.events import EventCall, kind, read_rest, read_until
from tests.harness.logs import captured_logs, on_log
from tests.harness.processes import clean_environment, server_processes
from tests.harness.scripts import scripted
from tests.harness.servers import ServerFactory, quiet_environment
from tests.harness.stores import Target
from tests.harness.team import Team, collaborate_request
from tests.harness.team import at_hold as held
from tests.harness.webhooks import Receiver, new_secret

pytestmark = pytest.mark.both_stores

GUARD = 60.0
TOKEN = "tok-in-the-query-7f3a"  # a receiver token in the URL query: never logged, never in events


def hooks_file(folder: Path, secret: str | None) -> Path:
    """A webhooks file with no endpoint and, given a secret, a [request_urls] table."""
    path = folder / "webhooks.toml"
    path.write_text("" if secret is None else f"[request_urls]\nsecret = {json.dumps(secret)}\n")
    return path


async def test_a_request_url_is_refused_unless_the_server_accepts_request_urls(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    async with FakeOpenAI(scripted()) as fake:
        h = await make_server(openai=fake, webhooks_file=hooks_file(tmp_path, None), webhook_allow_hosts="127.0.0.1")
        with pytest.raises(FacilitairError) as caught:
            await h.run("task", webhook_url=f"http://127.0.0.1:9/hook?token={TOKEN}")
        assert caught.value.code == StatusCode.FAILED_PRECONDITION
        assert caught.value.message.startswith("webhook_url: this server accepts no request-supplied webhook URLs")
        assert TOKEN not in str(caught.value)
        assert fake.requests == []
        assert await h.server.runs.store.webhooks.recent(100, None) == []


@pytest.mark.parametrize(
    ("url", "why"),
    [
        # A private address the allow-list does not name (the receiver side of an SSRF).
        ("http://127.0.0.2:9/hook", "its host is not in the server's webhook allow-list"),
        # A public host is not enough either: callers name only hosts the operator listed.
        ("https://example.com/hook", "its host is not in the server's webhook allow-list"),
        ("ftp://127.0.0.1/hook", "must be an http:// or https:// URL with a host"),
        ("http://user:pw@127.0.0.1/hook", "must not hold credentials (sign with the secret instead)"),
    ],
)
async def test_a_request_url_the_allow_list_does_not_permit_is_invalid(
    make_server: ServerFactory, tmp_path: Path, url: str, why: str
) -> None:
    async with FakeOpenAI(scripted()) as fake:
        h = await make_server(
            openai=fake, webhooks_file=hooks_file(tmp_path, new_secret()), webhook_allow_hosts="127.0.0.1"
        )
        with pytest.raises(FacilitairError) as caught:
            await h.run("task", webhook_url=url)
        assert caught.value.code == StatusCode.INVALID_ARGUMENT
        assert caught.value.field_violations == [("webhook_url", why)]
        assert "pw@" not in str(caught.value)
        assert fake.requests == []


async def test_an_allowed_request_url_gets_the_end_signed_with_the_request_secret(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    secret = new_secret()
    async with Receiver(secret) as receiver, FakeOpenAI(scripted()) as fake:
        h = await make_server(
            openai=fake,
            webhooks_file=hooks_file(tmp_path, secret),
            webhook_allow_hosts="127.0.0.1",
            webhook_retry_schedule="0.05",
        )
        url = f"{receiver.url}?token={TOKEN}"
        with captured_logs() as logs, on_log("webhook_delivered") as delivered:
            events = await h.run("task", webhook_url=url)
            await asyncio.wait_for(delivered.wait(), GUARD)
        assert kind(events[-1]) == "run_completed"
        [got] = receiver.requests
        assert got.verified
        assert got.json["type"] == "run.completed"
        assert got.json["data"]["run_id"] == events[0].run_id
        stored = await h.server.runs.store.webhooks.recent(100, events[0].run_id)
        assert [(r.url, r.state, r.attempts, r.id) for r in stored] == [(url, "delivered", 1, got.id)]
        assert TOKEN not in repr(logs.entries)
        assert all(TOKEN.encode() not in e.SerializeToString() for e in events)


async def test_a_run_resumed_after_a_restart_still_calls_its_url(store_target: Target, tmp_path: Path) -> None:
    secret = new_secret()
    team = Team()
    team.hold_next("Coder")
    async with (
        asyncio.timeout(GUARD),
        Receiver(secret) as receiver,
        FakeOpenAI(team) as fake,
        server_processes(
            clean_environment(
                **quiet_environment(store_target, fake.base_url),
                FACILITAIR_WEBHOOKS_FILE=str(hooks_file(tmp_path, secret)),
                FACILITAIR_WEBHOOK_ALLOW_HOSTS="127.0.0.1",
                FACILITAIR_WEBHOOK_RETRY_SCHEDULE="0.05",
            )
        ) as [proc],
    ):
        port = await proc.start()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.OrchestratorServiceStub(channel)
            call: EventCall = stub.Collaborate(collaborate_request(webhook_url=receiver.url))
            before = await read_until(call, held)
            run_id = before[0].run_id
            await proc.kill()  # mid-stage: the URL lives only in the stored spec now
            with pytest.raises(grpc.aio.AioRpcError):
                await read_rest(call)
        assert receiver.requests == []

        await proc.start()  # the same database; the run resumes at start
        record = await proc.until_logged("webhook_delivered", within=GUARD)
        async with Client(proc.target) as client:
            summary = await client.get_run(run_id)
        [got] = receiver.requests
        assert got.verified
        assert got.id == record["webhook_id"]
        assert got.json["data"]["run_id"] == run_id
        assert got.json["type"] == "run.completed"
        assert summary.state == pb.RUN_STATE_COMPLETED
        assert [r["run_id"] for r in proc.records("run_resumed")] == [run_id]


async def test_facilitair_run_webhook_sends_the_url_and_shows_a_refusal(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    secret = new_secret()
    async with Receiver(secret) as receiver, FakeOpenAI(scripted()) as fake:
        h = await make_server(openai=fake, webhooks_file=hooks_file(tmp_path, secret), webhook_allow_hosts="127.0.0.1")
        with on_log("webhook_delivered") as delivered:
            code, _, err = await cli(h.target, "run", "task", "--webhook", receiver.url)
            assert code == 0, err
            await asyncio.wait_for(delivered.wait(), GUARD)
        [got] = receiver.requests
        assert got.verified
        assert got.json["type"] == "run.completed"

        code, _, err = await cli(h.target, "run", "task", "--webhook", "http://127.0.0.2/hook")
        assert code != 0
        assert "webhook_url" in err
        assert "not in the server's webhook allow-list" in err
        assert len(receiver.requests) == 1
