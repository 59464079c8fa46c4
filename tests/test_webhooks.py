"""Webhooks (issue 25 part 2): signed deliveries from the outbox to a real receiver on 127.0.0.1, on both stores.

The receiver (tests/harness/webhooks.py) verifies every signature with the `standardwebhooks` library. Tests wait
for the server's own log events (`webhook_delivered`, `webhook_failed`, ...) or for the receiver's Nth request;
retries use a short schedule (--webhook-retry-schedule) so that a test does not wait minutes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import grpc
import pytest
import structlog
from prometheus_client import REGISTRY
from pydantic import SecretStr

from facilitair.server.store.base import DeliveryRow
from facilitair.server.webhooks.dispatcher import CONCURRENCY
from facilitair.v1 import orchestrator_pb2 as pb
from facilitair.v1 import orchestrator_pb2_grpc as pb_grpc
from tests.fakes.providers import FakeOpenAI
from tests.harness.events import EventCall, RunStream, kind, payload, read_rest, read_until
from tests.harness.logs import captured_logs, on_log
from tests.harness.scripts import default_replies, held, scripted
from tests.harness.servers import Harness, ServerFactory
from tests.harness.webhooks import HANG, Answer, Receiver, endpoints_file, new_secret

pytestmark = pytest.mark.both_stores

GUARD = 60.0
FAST = "0.05,0.05,0.05"


def hooks(tmp_path: Path, *tables: dict[str, Any], schedule: str = FAST, **more: Any) -> dict[str, Any]:
    """Settings for a server with these endpoints, allowed to reach 127.0.0.1."""
    return {
        "webhooks_file": endpoints_file(tmp_path, *tables),
        "webhook_allow_hosts": "127.0.0.1",
        "webhook_retry_schedule": schedule,
        **more,
    }


def attempts_counted(outcome: str) -> float:
    """facilitair_webhook_attempts_total{outcome} in this process so far."""
    return REGISTRY.get_sample_value("facilitair_webhook_attempts_total", {"outcome": outcome}) or 0.0


async def rows(h: Harness, run_id: str) -> list[DeliveryRow]:
    """The run's stored deliveries."""
    return await h.server.runs.store.webhooks.recent(100, run_id)


@contextlib.contextmanager
def counted(event: str, count: int) -> Iterator[asyncio.Event]:
    """An event set once the server has logged `event` `count` times."""
    seen = asyncio.Event()
    tally = [0]

    def processor(_logger: object, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        if event_dict.get("event") == event:
            tally[0] += 1
            if tally[0] >= count:
                seen.set()
        return event_dict

    processors = structlog.get_config()["processors"]
    processors.insert(0, processor)
    try:
        yield seen
    finally:
        processors.remove(processor)


async def test_a_completed_run_is_delivered_once_signed_with_ids_usage_and_file_names(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    old, new = new_secret(), new_secret()
    async with Receiver(new) as receiver, Receiver(old) as rotating, FakeOpenAI(scripted()) as fake:
        settings = hooks(
            tmp_path,
            {"url": receiver.url, "events": ["run.completed"], "secret": new},
            # During a rotation the receiver still checks with the previous secret: both signatures are sent.
            {"url": rotating.url, "secret": new, "previous_secret": old},
        )
        h = await make_server(openai=fake, **settings)
        with counted("webhook_delivered", 2) as delivered:
            events = await h.run("Write a function that reverses a string; secret-task-text")
            run_id = events[0].run_id
            got = await receiver.until(1)
            got_rotating = await rotating.until(1)
            await asyncio.wait_for(delivered.wait(), GUARD)
        done = payload(events[-1])
        assert kind(events[-1]) == "run_completed"
        assert [r.verified for r in got + got_rotating] == [True, True]
        sent = got[0]
        assert sent.headers["webhook-signature"].count("v1,") == 1
        assert got_rotating[0].headers["webhook-signature"].count("v1,") == 2
        body = sent.json
        assert body["type"] == "run.completed"
        data = body["data"]
        assert data["run_id"] == run_id
        assert data["state"] == "completed"
        assert data["files"] == [a.path for a in done.result.artifacts]
        assert "src/rev.py" in data["files"]
        assert data["usage"]["input_tokens"] == done.usage.input_tokens
        assert data["usage"]["output_tokens"] == done.usage.output_tokens
        assert data["cost_usd"] == done.usage.cost_usd
        assert data["approved"] is True
        # Never the task, prompts, outputs or file contents.
        text = sent.body.decode()
        assert "secret-task-text" not in text
        assert "return s[::-1]" not in text
        assert "Edge case" not in text
        stored = await rows(h, run_id)
        assert sorted((r.url, r.state, r.attempts, r.event_type) for r in stored) == sorted(
            [(receiver.url, "delivered", 1, "run.completed"), (rotating.url, "delivered", 1, "run.completed")]
        )
        assert sent.id in {r.id for r in stored}
        assert all(r.payload == sent.body for r in stored)
        assert len(receiver.requests) == 1


async def test_a_crash_of_the_delivery_loop_is_logged_and_the_loop_starts_again(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    secret = new_secret()
    async with Receiver(secret) as receiver, FakeOpenAI(scripted()) as fake:
        h = await make_server(openai=fake, **hooks(tmp_path, {"url": receiver.url, "secret": secret}))
        dispatcher = h.server.runs.webhooks
        sleep = dispatcher._sleep
        crashes: list[bool] = []

        async def crash_once() -> None:  # an error nobody planned for, once, where the loop waits for work
            if not crashes:
                crashes.append(True)
                raise RuntimeError("unexpected")
            await sleep()

        dispatcher._sleep = crash_once  # type: ignore[method-assign]
        with captured_logs() as logs:
            first = await h.run("task one")
            await receiver.until(1)
            await logs.until("webhook_dispatcher_restarted")
            second = await h.run("task two")  # delivered by the loop started again, not lost
            got = await receiver.until(2)
        [failed] = logs.of("background_task_failed")
        assert (failed["task"], str(failed["exc_info"])) == ("webhook-dispatcher", "unexpected")
        assert len(logs.of("webhook_dispatcher_restarted")) == 1
        assert sorted(r.json["data"]["run_id"] for r in got) == sorted([first[0].run_id, second[0].run_id])
        assert crashes == [True]


async def test_500s_then_success_retry_with_the_same_webhook_id_and_honour_retry_after(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    secret = new_secret()
    answers = [Answer(500), Answer(503, {"Retry-After": "1"}), Answer(200)]
    before = {o: attempts_counted(o) for o in ("failed", "delivered")}
    async with Receiver(secret, answers) as receiver, FakeOpenAI(scripted()) as fake:
        h = await make_server(openai=fake, **hooks(tmp_path, {"url": receiver.url, "secret": secret}))
        with on_log("webhook_delivered") as delivered:
            events = await h.run("task")
            got = await receiver.until(3)
            await asyncio.wait_for(delivered.wait(), GUARD)
        assert [r.verified for r in got] == [True, True, True]
        assert len({r.id for r in got}) == 1
        assert len({r.body for r in got}) == 1
        # The third attempt waited for the Retry-After of the second answer, longer than the schedule's 0.05 s.
        assert got[2].arrived - got[1].arrived >= 1.0
        [row] = await rows(h, events[0].run_id)
        assert (row.state, row.attempts, row.last_status, row.id) == ("delivered", 3, 200, got[0].id)
        assert len(receiver.requests) == 3
        # The Prometheus counters counted each attempt by its outcome.
        assert {o: attempts_counted(o) - n for o, n in before.items()} == {"failed": 2, "delivered": 1}


async def test_410_disables_the_endpoint_and_later_deliveries_are_not_sent(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    secret = new_secret()
    async with Receiver(secret, [Answer(410)]) as receiver, FakeOpenAI(scripted()) as fake:
        h = await make_server(openai=fake, **hooks(tmp_path, {"url": receiver.url, "secret": secret}))
        with on_log("webhook_endpoint_disabled") as disabled:
            first = await h.run("first")
            await asyncio.wait_for(disabled.wait(), GUARD)
        store = h.server.runs.store.webhooks
        assert await store.disabled_endpoints() == {receiver.url: "410 Gone: the endpoint is disabled"}
        [row] = await rows(h, first[0].run_id)
        assert (row.state, row.attempts, row.last_status) == ("disabled", 1, 410)
        second = await h.run("second")
        with on_log("webhook_endpoint_disabled", run_id=second[0].run_id) as disabled_too:
            if (await rows(h, second[0].run_id))[0].state == "pending":
                await asyncio.wait_for(disabled_too.wait(), GUARD)
        [row2] = await rows(h, second[0].run_id)
        assert row2.state == "disabled"
        assert len(receiver.requests) == 1


async def test_a_redirect_is_not_followed(make_server: ServerFactory, tmp_path: Path) -> None:
    secret = new_secret()
    async with Receiver(secret) as receiver, FakeOpenAI(scripted()) as fake:
        receiver.answers = [Answer(302, {"Location": f"http://127.0.0.1:{receiver.port}/elsewhere"})] * 2
        settings = hooks(tmp_path, {"url": receiver.url, "secret": secret}, schedule="0.05")
        h = await make_server(openai=fake, **settings)
        with on_log("webhook_failed") as failed:
            events = await h.run("task")
            await asyncio.wait_for(failed.wait(), GUARD)
        assert [r.path for r in receiver.requests] == ["/hook", "/hook"]
        [row] = await rows(h, events[0].run_id)
        assert (row.state, row.attempts, row.last_status) == ("failed", 2, 302)
        assert row.last_error == "redirect not followed (HTTP 302)"


async def test_a_receiver_that_does_not_answer_times_out_and_is_retried(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    secret = new_secret()
    async with Receiver(secret, [HANG]) as receiver, FakeOpenAI(scripted()) as fake:
        # Long enough that the second attempt, answered at once, is never cut off too on a loaded machine.
        settings = hooks(tmp_path, {"url": receiver.url, "secret": secret}, webhook_timeout=2.0)
        h = await make_server(openai=fake, **settings)
        with (
            on_log("webhook_attempt_failed", error="no answer within 2 s") as timed_out,
            on_log("webhook_delivered") as delivered,
        ):
            events = await h.run("task")
            await asyncio.wait_for(timed_out.wait(), GUARD)
            await asyncio.wait_for(delivered.wait(), GUARD)
        got = receiver.requests
        assert len(got) == 2
        assert got[0].id == got[1].id
        [row] = await rows(h, events[0].run_id)
        assert (row.state, row.attempts) == ("delivered", 2)


async def test_a_dispatcher_with_every_slot_busy_waits_instead_of_spinning(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    """With CONCURRENCY attempts unanswered, a commit's wake-up used to leave the loop's event set: it then looped
    without ever yielding, freezing the server (found with 200 runs on two replicas). Now it waits for a free slot."""
    secret = new_secret()
    async with Receiver(secret, [HANG] * CONCURRENCY) as receiver, FakeOpenAI(scripted()) as fake:
        settings = hooks(tmp_path, {"url": receiver.url, "secret": secret}, webhook_timeout=60.0)
        h = await make_server(openai=fake, **settings)
        for n in range(CONCURRENCY):
            await h.run(f"task {n}")
        await receiver.until(CONCURRENCY)  # every slot holds an unanswered attempt
        # Two more runs end (their commits wake the full dispatcher) and the server still serves them.
        later = [await h.run(f"later {n}") for n in range(2)]
        assert [kind(events[-1]) for events in later] == ["run_completed", "run_completed"]
        assert len(receiver.requests) == CONCURRENCY  # nothing more was sent while every slot was busy
        stored = await h.server.runs.store.webhooks.recent(100)
        assert sorted(r.state for r in stored) == ["pending"] * (CONCURRENCY + 2)


async def test_private_and_loopback_targets_are_refused_unless_allowed(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    secret = new_secret()
    async with Receiver(secret) as receiver, FakeOpenAI(scripted()) as fake:
        by_name = f"http://localhost:{receiver.port}/hook"  # resolves to loopback: the address is what is checked
        settings = hooks(tmp_path, {"url": receiver.url, "secret": secret}, {"url": by_name, "secret": secret})
        settings.pop("webhook_allow_hosts")
        h = await make_server(openai=fake, **settings)
        with on_log("webhook_failed", host="127.0.0.1") as literal, on_log("webhook_failed", host="localhost") as name:
            events = await h.run("task")
            await asyncio.wait_for(literal.wait(), GUARD)
            await asyncio.wait_for(name.wait(), GUARD)
        assert receiver.requests == []
        stored = {r.url: r for r in await rows(h, events[0].run_id)}
        assert {u: (r.state, r.attempts) for u, r in stored.items()} == {
            receiver.url: ("failed", 1),
            by_name: ("failed", 1),
        }
        assert stored[receiver.url].last_error == (
            "target refused: 127.0.0.1 is private, loopback or link-local, not allowed"
        )
        assert (stored[by_name].last_error or "").startswith("target refused: localhost resolves to ")


async def test_failed_and_cancelled_runs_are_told_to_the_endpoints_that_asked(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    secret = new_secret()
    architect, release = held(default_replies()["architect"], after=1)
    async with (
        Receiver(secret) as everything,
        Receiver(secret) as only_failed,
        FakeOpenAI(scripted(architect=[architect, default_replies()["architect"]])) as fake,
    ):
        settings = hooks(
            tmp_path,
            {"url": everything.url, "secret": secret},
            {"url": only_failed.url, "events": ["run.failed"], "secret": secret},
            # Another caller's runs only: never sent here.
            {"url": everything.url.replace("/hook", "/other"), "secret": secret, "principal": "someone-else"},
        )
        h = await make_server(openai=fake, **settings)
        async with RunStream(h.client.collaborate("cancel me")) as live:
            first = await live.until(lambda e: kind(e) == "token_delta")
            await h.client.cancel_run(first.run_id)
            await live.to_end()
        release.set()
        got = await everything.until(1)
        assert got[0].json["type"] == "run.cancelled"
        assert got[0].json["data"]["state"] == "cancelled"
        assert got[0].json["data"]["run_id"] == first.run_id
        assert (await h.client.get_run(first.run_id)).state == pb.RUN_STATE_CANCELLED
        await h.stop()  # the store is the next server's (a SQLite file has one server)

        wrong = await make_server(openai=fake, OPENAI_API_KEY="sk-wrong-0123456789abcdef", **settings)
        failed = await wrong.run("fails")
        assert kind(failed[-1]) == "run_failed"
        both = await everything.until(2)
        [told] = await only_failed.until(1)
        for sent in (both[1], told):
            assert sent.verified
            assert sent.json["type"] == "run.failed"
            assert sent.json["data"]["error"]["reason"] == payload(failed[-1]).reason
            assert "sk-wrong" not in sent.body.decode()
        assert both[1].id != told.id  # one webhook-id per endpoint
        assert [r.path for r in everything.requests] == ["/hook", "/hook"]  # nothing for someone-else's endpoint


async def test_a_run_at_an_approval_gate_is_told_once_as_run_awaiting_approval(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    secret = new_secret()
    async with (
        Receiver(secret) as everything,
        Receiver(secret) as only_gates,
        FakeOpenAI(scripted()) as fake,
    ):
        settings = hooks(
            tmp_path,
            {"url": everything.url, "secret": secret},
            {"url": only_gates.url, "events": ["run.awaiting_approval"], "secret": secret},
        )
        h = await make_server(openai=fake, **settings)
        async with grpc.aio.insecure_channel(h.target) as channel:
            stub = pb_grpc.OrchestratorServiceStub(channel)
            request = pb.CollaborateRequest(task="gated; secret-task-text", pause_after=[pb.AGENT_ARCHITECT])
            call: EventCall = stub.Collaborate(request)
            events = await read_until(call, lambda got: bool(got) and kind(got[-1]) == "approval_requested")
            gate = payload(events[-1]).approval
            [told] = await only_gates.until(1)
            assert told.verified
            body = told.json
            assert body["type"] == "run.awaiting_approval"
            data = body["data"]
            assert data["run_id"] == events[0].run_id
            assert data["state"] == "awaiting_approval"
            assert data["approval"]["approval_id"] == gate.approval_id
            assert data["approval"]["stage"] == gate.stage
            assert data["approval"]["agent"] == "architect"
            assert "finished_at" not in data  # waiting is not an end
            # Neither the task nor the stage's text the person decides on.
            assert "secret-task-text" not in told.body.decode()
            assert gate.text not in told.body.decode()

            approve = pb.SubmitApprovalRequest(
                run_id=events[0].run_id, approval_id=gate.approval_id, decision=pb.APPROVAL_DECISION_APPROVE
            )
            await stub.SubmitApproval(approve)
            rest = await read_rest(call)
        assert kind(rest[-1]) == "run_completed"
        got = await everything.until(2)
        assert sorted(g.json["type"] for g in got) == ["run.awaiting_approval", "run.completed"]
        assert all(g.verified for g in got)
        stored = await rows(h, events[0].run_id)
        assert Counter((r.url, r.event_type) for r in stored) == Counter(
            [
                (everything.url, "run.awaiting_approval"),
                (everything.url, "run.completed"),
                (only_gates.url, "run.awaiting_approval"),
            ]
        )
        assert len(only_gates.requests) == 1


# Not parametrised over the stores: replicas share a PostgreSQL database, which the test brings itself.
@pytest.mark.sqlite_only
async def test_two_replicas_deliver_200_runs_each_once(make_server: ServerFactory, tmp_path: Path, pg_url: str) -> None:
    secret = new_secret()
    total = 200
    async with Receiver(secret) as receiver, FakeOpenAI(scripted()) as fake:
        settings = hooks(
            tmp_path,
            {"url": receiver.url, "secret": secret},
            database_url=SecretStr(pg_url),
            max_runs_per_principal=100,
            runs_per_minute=100_000,
            thinking_interval=60,
            heartbeat_interval=60,
        )
        replicas = [await make_server(openai=fake, replica_id=f"r{n}", **settings) for n in range(2)]
        gate = asyncio.Semaphore(16)

        async def one(n: int) -> str:
            async with gate:
                events = await replicas[n % 2].run(f"task {n}")
                assert kind(events[-1]) == "run_completed"
                return events[0].run_id

        with counted("webhook_delivered", total) as all_recorded:
            run_ids = await asyncio.gather(*(one(n) for n in range(total)))
            # Every delivery recorded as delivered: none is in flight that could still arrive a second time.
            await asyncio.wait_for(all_recorded.wait(), 120)
        stored = await replicas[0].server.runs.store.webhooks.recent(total * 2)
        assert len(stored) == total
        assert {(r.state, r.attempts) for r in stored} == {("delivered", 1)}
        assert all(r.verified for r in receiver.requests)
        assert len(receiver.requests) == total
        assert Counter(r.json["data"]["run_id"] for r in receiver.requests) == Counter(run_ids)
        assert len({r.id for r in receiver.requests}) == total
        # Both replicas sent some (each sends its own runs' at once; the other may claim them too).
        assert {r.headers.get("user-agent") for r in receiver.requests} == {"facilitair-webhooks"}
