"""Webhooks across a SIGKILL, and the operator's `facilitair webhooks list|redeliver|test`, on both stores.

The kill: the run's terminal event and its outbox row commit together; the server sends the webhook to a
receiver that never answers and is SIGKILLed while the attempt is open, before any outcome is recorded. Started
again (on PostgreSQL once the dead process's claim has run out), it delivers the same webhook-id, once.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from facilitair.client import Client
from tests.fakes.providers import FakeOpenAI
from tests.harness.cli import cli, cli_environment
from tests.harness.events import collect, kind
from tests.harness.logs import on_log
from tests.harness.processes import clean_environment, server_processes
from tests.harness.scripts import scripted
from tests.harness.servers import ServerFactory, quiet_environment
from tests.harness.stores import Target
from tests.harness.webhooks import HANG, Receiver, endpoints_file, new_secret

pytestmark = pytest.mark.both_stores

GUARD = 60.0


async def test_sigkill_after_the_terminal_commit_delivers_after_restart_once(
    store_target: Target, tmp_path: Path
) -> None:
    secret = new_secret()
    async with Receiver(secret, [HANG]) as receiver, FakeOpenAI(scripted()) as fake:
        env = clean_environment(
            **quiet_environment(store_target, fake.base_url),
            FACILITAIR_WEBHOOKS_FILE=str(endpoints_file(tmp_path, {"url": receiver.url, "secret": secret})),
            FACILITAIR_WEBHOOK_ALLOW_HOSTS="127.0.0.1",
            # The claim of the killed process runs out 5 s after this timeout (PostgreSQL); SQLite drops it at start.
            FACILITAIR_WEBHOOK_TIMEOUT="5",
            FACILITAIR_WEBHOOK_RETRY_SCHEDULE="0.05",
        )
        async with server_processes(env) as [server]:
            await server.start()
            async with Client(server.target) as client:
                events = await collect(client.collaborate("task"))
            assert kind(events[-1]) == "run_completed"
            [hung] = await receiver.until(1)  # sent, never answered: nothing about it is recorded yet
            await server.kill()
            assert server.records("webhook_delivered") == []
            await server.start()
            record = await server.until_logged("webhook_delivered", within=GUARD)
            got = receiver.requests
            assert len(got) == 2
            assert got[1].id == hung.id == record["webhook_id"]
            assert got[1].body == hung.body
            assert [r.verified for r in got] == [True, True]
            assert hung.json["data"]["run_id"] == events[0].run_id
            await server.terminate()
            assert len(server.records("webhook_delivered")) == 1
            assert len(receiver.requests) == 2


async def test_the_webhooks_commands_list_redeliver_and_test(
    make_server: ServerFactory, store_target: Target, tmp_path: Path
) -> None:
    secret = new_secret()
    async with Receiver(secret) as receiver, FakeOpenAI(scripted()) as fake:
        hooks = endpoints_file(tmp_path, {"url": receiver.url, "secret": secret, "events": ["run.completed"]})
        h = await make_server(openai=fake, webhooks_file=hooks, webhook_allow_hosts="127.0.0.1")
        with on_log("webhook_delivered") as delivered:
            events = await h.run("task")
            await asyncio.wait_for(delivered.wait(), GUARD)
        run_id = events[0].run_id
        [first] = receiver.requests
        env = cli_environment(**store_target.environment(), FACILITAIR_WEBHOOKS_FILE=str(hooks))

        code, out, err = await cli(None, "webhooks", "list", env=env)
        assert (code, err) == (0, "")
        lines = out.splitlines()
        assert lines[0] == "endpoints:"
        assert lines[1] == f"  {receiver.url}  run.completed  enabled"
        assert lines[2] == "deliveries:"
        assert lines[3] == (
            f"  {first.id}  delivered  attempts=1  last=HTTP 200  run.completed  {run_id}  {receiver.url}"
        )
        assert secret not in out

        with on_log("webhook_delivered") as again:
            code, out, err = await cli(None, "webhooks", "redeliver", run_id, env=env)
            assert (code, out.strip(), err) == (
                0,
                "1 delivery queued again (same webhook-id); a running server sends them",
                "",
            )
            await asyncio.wait_for(again.wait(), GUARD)
        assert [r.id for r in receiver.requests] == [first.id, first.id]
        assert receiver.requests[1].body == first.body

        code, out, err = await cli(None, "webhooks", "redeliver", "msg_nothing", env=env)
        assert (code, out) == (1, "")
        assert err.strip() == "facilitair: no delivery has the webhook-id or run id 'msg_nothing'"

        code, out, err = await cli(None, "webhooks", "test", env=env | {"FACILITAIR_WEBHOOK_ALLOW_HOSTS": "127.0.0.1"})
        assert (code, out.strip(), err) == (0, f"{receiver.url}  delivered (HTTP 200)", "")
        test = receiver.requests[2]
        assert test.verified
        assert test.json["type"] == "webhook.test"
        # Without the allow-list the loopback receiver is refused, and nothing is sent.
        code, out, err = await cli(None, "webhooks", "test", env=env)
        assert code == 1
        assert out.strip() == (
            f"{receiver.url}  refused: target refused: 127.0.0.1 is private, loopback or link-local, not allowed"
        )
        assert len(receiver.requests) == 3


async def test_a_bad_webhooks_file_stops_the_server_with_a_clear_error(tmp_path: Path, store_target: Target) -> None:
    bad = tmp_path / "hooks.toml"
    bad.write_text('[[endpoint]]\nurl = "https://example.com/h"\nsecret = "not-a-whsec-secret-value"\n')
    env = cli_environment(
        **store_target.environment(), FACILITAIR_WEBHOOKS_FILE=str(bad), OPENAI_API_KEY="sk-" + "x" * 30
    )
    code, out, err = await cli(None, "serve", "--listen", "127.0.0.1:0", env=env)
    assert (code, out) == (2, "")
    assert err.strip() == (
        "facilitair: configuration error: endpoint 1 (https://example.com/h): secret: must be a Standard Webhooks "
        "secret starting with 'whsec_'"
    )
    assert "not-a-whsec" not in err
