"""Approval gates (issue 22): a run waits for a person after a stage, on both stores, and goes on as decided.

Each test starts a real server on the test's store with every agent on the fake vendor, starts a run that pauses
after a stage, and decides its gate with SubmitApproval through the generated stub. The fake's record of requests
shows which stages were asked of a model, and with which prompt; the events show the order around the gate.
Timeouts are a second long, so the gate's own expiry (swept by the lease keeper) decides.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from facilitair.server.settings import ConfigError
from facilitair.server.store.base import Batch
from facilitair.server.transport.app import create_server
from facilitair.v1 import orchestrator_pb2 as pb
from facilitair.v1 import orchestrator_pb2_grpc as pb_grpc
from tests.fakes.providers import FakeOpenAI, Reply
from tests.harness.events import EventCall, kind, read_rest, read_until, wire
from tests.harness.scripts import default_replies, prompt_of, scripted, text_of
from tests.harness.servers import Harness, ServerFactory, quiet_settings
from tests.harness.stores import CommitGate, Stores, Target

pytestmark = pytest.mark.both_stores

HANG_GUARD = 60.0
TASK = "Write a function that reverses a string"
MINI = "openai:gpt-4.1-mini"
ALICE_KEY = "alice-key-0123456789abcdef"
BOB_KEY = "bob-key-0123456789abcdef00"
CAROL_KEY = "carol-key-0123456789abcdef"
ALL_AGENTS = ["architect", "coder", "reviewer", "tester", "documenter"]
Metadata = tuple[tuple[str, str], ...]


def as_(key: str) -> Metadata:
    """The call metadata of a caller with this key."""
    return (("authorization", f"Bearer {key}"),)


def at(name: str) -> Callable[[list[pb.RunEvent]], bool]:
    """Read until an event of this kind."""
    return lambda events: bool(events) and kind(events[-1]) == name


def kinds(events: Sequence[pb.RunEvent]) -> list[str]:
    return [kind(e) for e in events]


async def server(make_server: ServerFactory, fake: FakeOpenAI, **settings: Any) -> Harness:
    """A server with every agent on the fake and a silent watchdog: a run's events are all the script's."""
    return await make_server(openai=fake, model=MINI, thinking_interval=60, heartbeat_interval=60, **settings)


async def paused(
    stub: pb_grpc.OrchestratorServiceAsyncStub, metadata: Metadata = (), **fields: Any
) -> tuple[EventCall, list[pb.RunEvent]]:
    """Start a run that pauses after the Architect (unless told otherwise); read it up to its gate."""
    fields.setdefault("pause_after", [pb.AGENT_ARCHITECT])
    call: EventCall = stub.Collaborate(pb.CollaborateRequest(task=TASK, **fields), metadata=metadata)
    return call, await read_until(call, at("approval_requested"))


def decide(decision: int, run_id: str, **fields: Any) -> pb.SubmitApprovalRequest:
    return pb.SubmitApprovalRequest(run_id=run_id, decision=decision, **fields)  # type: ignore[arg-type]


async def test_a_run_waits_at_its_gate_asking_nothing_and_goes_on_once_approved(make_server: ServerFactory) -> None:
    script = scripted()
    async with asyncio.timeout(HANG_GUARD), FakeOpenAI(script) as fake:
        h = await server(make_server, fake)
        async with grpc.aio.insecure_channel(h.target) as channel:
            stub = pb_grpc.OrchestratorServiceStub(channel)
            call, head = await paused(stub)
            run_id = head[0].run_id
            watch: EventCall = stub.WatchRun(pb.WatchRunRequest(run_id=run_id))
            replayed = await read_until(watch, at("approval_requested"))
            summary = (await stub.GetRun(pb.GetRunRequest(run_id=run_id))).run
            listed = await stub.ListRuns(pb.ListRunsRequest(state=pb.RUN_STATE_AWAITING_APPROVAL))
            asked_while_waiting = script.agents()
            response = await stub.SubmitApproval(decide(pb.APPROVAL_DECISION_APPROVE, run_id, comment="looks right"))
            rest, watched = await read_rest(call), await read_rest(watch)
    # The Architect's stage ends, then its gate opens: nothing of the Coder before a decision.
    assert kinds(head) == [
        "run_started", "stage_started", *["token_delta"] * len(default_replies()["architect"].chunks),
        "artifact_produced", "stage_completed", "approval_requested",
    ]  # fmt: skip
    assert wire(replayed) == wire(head)
    gate = head[-1].approval_requested.approval
    assert (gate.stage, gate.agent, gate.round, gate.revisions) == (1, pb.AGENT_ARCHITECT, 0, 0)
    assert gate.text == text_of(default_replies()["architect"])
    assert [(a.path, a.version) for a in gate.artifacts] == [("DESIGN.md", 1)]
    assert gate.on_timeout == pb.ON_APPROVAL_TIMEOUT_REJECT
    assert gate.expires_at.seconds - gate.requested_at.seconds == 24 * 3600
    # While it waits: its state and gate for GetRun and ListRuns, held by no replica, and no provider asked.
    assert summary.state == pb.RUN_STATE_AWAITING_APPROVAL
    assert summary.pending_approval == gate
    assert summary.replica_id == ""
    assert summary.last_seq == head[-1].seq
    assert [r.run_id for r in listed.runs] == [run_id]
    assert asked_while_waiting == ["architect"]
    # The decision is said once, first, and the run goes on to its end on the stream that started it.
    assert response.decided.decision == pb.APPROVAL_DECISION_APPROVE
    assert (response.decided.approval_id, response.decided.comment) == (gate.approval_id, "looks right")
    assert kinds(rest)[:2] == ["approval_decided", "stage_started"]
    assert rest[0].approval_decided == response.decided
    assert kinds(rest).count("approval_decided") == 1
    assert kind(rest[-1]) == "run_completed"
    assert [e.seq for e in head + rest] == list(range(1, len(head) + len(rest) + 1))
    assert wire(watched) == wire(rest)
    assert script.agents() == ALL_AGENTS  # no stage asked twice


async def test_revise_runs_the_stage_again_with_the_comment_and_asks_again(make_server: ServerFactory) -> None:
    script = scripted()
    async with asyncio.timeout(HANG_GUARD), FakeOpenAI(script) as fake:
        h = await server(make_server, fake)
        async with grpc.aio.insecure_channel(h.target) as channel:
            stub = pb_grpc.OrchestratorServiceStub(channel)
            call, head = await paused(stub, max_refinements=1)
            run_id = head[0].run_id
            comment = "Handle None input by raising TypeError"
            await stub.SubmitApproval(decide(pb.APPROVAL_DECISION_REVISE, run_id, comment=comment))
            again = await read_until(call, at("approval_requested"))
            second = again[-1].approval_requested.approval
            with pytest.raises(grpc.aio.AioRpcError) as too_many:  # the bound: max_refinements revisions
                await stub.SubmitApproval(decide(pb.APPROVAL_DECISION_REVISE, run_id, comment="again"))
            await stub.SubmitApproval(decide(pb.APPROVAL_DECISION_APPROVE, run_id))
            rest = await read_rest(call)
    assert again[0].approval_decided.decision == pb.APPROVAL_DECISION_REVISE
    assert again[0].approval_decided.comment == comment
    assert [e.stage_started.agent for e in again if kind(e) == "stage_started"] == [pb.AGENT_ARCHITECT]
    assert (second.stage, second.agent, second.revisions) == (2, pb.AGENT_ARCHITECT, 1)
    assert too_many.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    architect = script.requests("architect")
    assert len(architect) == 2
    assert comment not in prompt_of(architect[0])
    assert comment in prompt_of(architect[1])
    assert text_of(default_replies()["architect"]) in prompt_of(architect[1])  # its previous answer, to revise
    assert kind(rest[-1]) == "run_completed"
    assert script.agents() == ["architect", *ALL_AGENTS]


async def test_edit_makes_the_edited_design_what_the_coder_reads(make_server: ServerFactory) -> None:
    script = scripted()
    edited = "# Design\nOne module `rev.py` with `rev(s)` using reversed() and ''.join, EDITED-BY-A-PERSON.\n"
    async with asyncio.timeout(HANG_GUARD), FakeOpenAI(script) as fake:
        h = await server(make_server, fake)
        async with grpc.aio.insecure_channel(h.target) as channel:
            stub = pb_grpc.OrchestratorServiceStub(channel)
            call, head = await paused(stub)
            run_id = head[0].run_id
            response = await stub.SubmitApproval(decide(pb.APPROVAL_DECISION_EDIT, run_id, edited_text=edited))
            rest = await read_rest(call)
    assert response.decided.edited
    assert kinds(rest)[:3] == ["approval_decided", "artifact_produced", "stage_started"]
    design = rest[1].artifact_produced.artifact
    assert (design.path, design.version, design.content) == ("DESIGN.md", 2, edited)
    (coder,) = script.requests("coder")
    assert edited.strip() in prompt_of(coder)
    assert text_of(default_replies()["architect"]).strip() not in prompt_of(coder)
    final = {a.path: a for a in rest[-1].run_completed.result.artifacts}
    assert (final["DESIGN.md"].content, final["DESIGN.md"].version) == (edited, 2)


async def test_edit_of_the_coders_files_makes_new_versions(make_server: ServerFactory) -> None:
    script = scripted()
    code = "def rev(s: str) -> str:\n    return ''.join(reversed(s))  # edited\n"
    async with asyncio.timeout(HANG_GUARD), FakeOpenAI(script) as fake:
        h = await server(make_server, fake)
        async with grpc.aio.insecure_channel(h.target) as channel:
            stub = pb_grpc.OrchestratorServiceStub(channel)
            call, head = await paused(stub, pause_after=[pb.AGENT_CODER])
            gate = head[-1].approval_requested.approval
            (path,) = [a.path for a in gate.artifacts]
            with pytest.raises(grpc.aio.AioRpcError) as unknown:
                await stub.SubmitApproval(
                    decide(
                        pb.APPROVAL_DECISION_EDIT,
                        gate_run(head),
                        edited_files=[pb.EditedFile(path="x.py", content="x")],
                    )
                )
            await stub.SubmitApproval(
                decide(pb.APPROVAL_DECISION_EDIT, gate_run(head), edited_files=[pb.EditedFile(path=path, content=code)])
            )
            rest = await read_rest(call)
    assert unknown.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "x.py" in (unknown.value.details() or "")
    produced = rest[1].artifact_produced.artifact
    assert (produced.path, produced.version, produced.content) == (path, 2, code)
    (reviewer,) = script.requests("reviewer")
    assert "# edited" in prompt_of(reviewer)
    assert kind(rest[-1]) == "run_completed"


def gate_run(events: Sequence[pb.RunEvent]) -> str:
    return events[0].run_id


async def test_reject_ends_the_run_cancelled_naming_who_and_why(make_server: ServerFactory) -> None:
    script = scripted()
    async with asyncio.timeout(HANG_GUARD), FakeOpenAI(script) as fake:
        h = await server(make_server, fake)
        async with grpc.aio.insecure_channel(h.target) as channel:
            stub = pb_grpc.OrchestratorServiceStub(channel)
            call, head = await paused(stub)
            await stub.SubmitApproval(decide(pb.APPROVAL_DECISION_REJECT, gate_run(head), comment="wrong approach"))
            rest = await read_rest(call)
            summary = (await stub.GetRun(pb.GetRunRequest(run_id=gate_run(head)))).run
    assert kinds(rest) == ["approval_decided", "run_cancelled"]
    reason = rest[-1].run_cancelled.reason
    assert "rejected by" in reason
    assert "wrong approach" in reason
    assert "architect" in reason
    assert summary.state == pb.RUN_STATE_CANCELLED
    assert not summary.HasField("pending_approval")
    assert script.agents() == ["architect"]


@pytest.mark.parametrize(
    ("policy", "last"),
    [(pb.ON_APPROVAL_TIMEOUT_REJECT, "run_cancelled"), (pb.ON_APPROVAL_TIMEOUT_APPROVE, "run_completed")],
    ids=["reject", "approve"],
)
async def test_an_unanswered_gate_decides_by_its_policy_once_it_expires(
    make_server: ServerFactory, policy: int, last: str
) -> None:
    script = scripted()
    async with asyncio.timeout(HANG_GUARD), FakeOpenAI(script) as fake:
        h = await server(make_server, fake)
        async with grpc.aio.insecure_channel(h.target) as channel:
            stub = pb_grpc.OrchestratorServiceStub(channel)
            call, head = await paused(stub, approval_timeout=Duration(seconds=1), on_approval_timeout=policy)
            rest = await read_rest(call)
            with pytest.raises(grpc.aio.AioRpcError) as late:
                await stub.SubmitApproval(decide(pb.APPROVAL_DECISION_APPROVE, gate_run(head)))
    gate = head[-1].approval_requested.approval
    assert gate.on_timeout == policy
    decided = rest[0].approval_decided
    assert decided.timed_out
    assert decided.principal == ""
    assert decided.decision == (
        pb.APPROVAL_DECISION_REJECT if policy == pb.ON_APPROVAL_TIMEOUT_REJECT else pb.APPROVAL_DECISION_APPROVE
    )
    assert kinds(rest).count("approval_decided") == 1
    assert kind(rest[-1]) == last
    if last == "run_cancelled":
        assert "timed out" in rest[-1].run_cancelled.reason
        assert script.agents() == ["architect"]
        # A person too late is told what the timeout decided.
        assert late.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "APPROVAL_DECISION_REJECT by its timeout" in (late.value.details() or "")
    else:
        assert script.agents() == ALL_AGENTS
        assert late.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_two_different_decisions_raced_one_wins_the_other_is_told_which(make_server: ServerFactory) -> None:
    script = scripted()
    async with asyncio.timeout(HANG_GUARD), FakeOpenAI(script) as fake:
        h = await server(make_server, fake)
        async with grpc.aio.insecure_channel(h.target) as channel:
            stub = pb_grpc.OrchestratorServiceStub(channel)
            call, head = await paused(stub)
            run_id = gate_run(head)
            outcomes = await asyncio.gather(
                stub.SubmitApproval(decide(pb.APPROVAL_DECISION_APPROVE, run_id)),
                stub.SubmitApproval(decide(pb.APPROVAL_DECISION_REJECT, run_id, comment="no")),
                return_exceptions=True,
            )
            rest = await read_rest(call)
    won = [o for o in outcomes if isinstance(o, pb.SubmitApprovalResponse)]
    lost = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    assert (len(won), len(lost)) == (1, 1), outcomes
    recorded = won[0].decided.decision
    assert lost[0].code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"already decided: {pb.ApprovalDecision.Name(recorded)}" in (lost[0].details() or "")
    assert kinds(rest).count("approval_decided") == 1
    assert rest[0].approval_decided.decision == recorded
    assert kind(rest[-1]) == ("run_completed" if recorded == pb.APPROVAL_DECISION_APPROVE else "run_cancelled")


async def test_a_retried_decision_gets_the_same_answer(make_server: ServerFactory) -> None:
    script = scripted()
    async with asyncio.timeout(HANG_GUARD), FakeOpenAI(script) as fake:
        h = await server(make_server, fake)
        async with grpc.aio.insecure_channel(h.target) as channel:
            stub = pb_grpc.OrchestratorServiceStub(channel)
            call, head = await paused(stub)
            run_id = gate_run(head)
            approval_id = head[-1].approval_requested.approval.approval_id
            first = await stub.SubmitApproval(decide(pb.APPROVAL_DECISION_APPROVE, run_id, client_request_id="k-1"))
            rest = await read_rest(call)
            # After the run went on (and ended): the same key gets the same answer, whatever the retry says.
            again = await stub.SubmitApproval(
                decide(pb.APPROVAL_DECISION_REJECT, run_id, approval_id=approval_id, client_request_id="k-1")
            )
            same = await stub.SubmitApproval(decide(pb.APPROVAL_DECISION_APPROVE, run_id, approval_id=approval_id))
            with pytest.raises(grpc.aio.AioRpcError) as other:
                await stub.SubmitApproval(
                    decide(pb.APPROVAL_DECISION_REJECT, run_id, approval_id=approval_id, client_request_id="k-2")
                )
    assert again.decided == first.decided == same.decided
    assert other.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "APPROVAL_DECISION_APPROVE" in (other.value.details() or "")
    assert kinds(rest).count("approval_decided") == 1
    assert script.agents() == ALL_AGENTS


async def test_only_the_runs_principal_and_approvers_see_and_decide(
    make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = scripted()
    async with asyncio.timeout(HANG_GUARD), FakeOpenAI(script) as fake:
        monkeypatch.setenv("FACILITAIR_API_KEYS", f"alice:{ALICE_KEY},bob:{BOB_KEY},carol:{CAROL_KEY} approver")
        h = await server(make_server, fake)
        async with grpc.aio.insecure_channel(h.target) as channel:
            stub = pb_grpc.OrchestratorServiceStub(channel)
            call, head = await paused(stub, as_(ALICE_KEY))
            run_id = gate_run(head)
            refusals = []
            for attempt in (
                stub.GetRun(pb.GetRunRequest(run_id=run_id), metadata=as_(BOB_KEY)),
                stub.SubmitApproval(decide(pb.APPROVAL_DECISION_APPROVE, run_id), metadata=as_(BOB_KEY)),
                stub.SubmitApproval(
                    decide(pb.APPROVAL_DECISION_APPROVE, run_id.replace(run_id[:8], "00000000")),
                    metadata=as_(ALICE_KEY),
                ),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await attempt
                refusals.append(refused.value)
            seen = (await stub.GetRun(pb.GetRunRequest(run_id=run_id), metadata=as_(CAROL_KEY))).run
            response = await stub.SubmitApproval(decide(pb.APPROVAL_DECISION_APPROVE, run_id), metadata=as_(CAROL_KEY))
            rest = await read_rest(call)
    # Bob is told what a missing run gets: the same code, and nothing of the run.
    assert [r.code() for r in refusals] == [grpc.StatusCode.NOT_FOUND] * 3
    assert "not found" in (refusals[1].details() or "")
    assert seen.pending_approval.approval_id == head[-1].approval_requested.approval.approval_id
    assert response.decided.principal == "carol"
    assert rest[0].approval_decided.principal == "carol"
    assert kind(rest[-1]) == "run_completed"


async def test_budgets_are_checked_again_after_an_edit_that_makes_the_design_huge(make_server: ServerFactory) -> None:
    script = scripted()
    huge = "# Design\n" + "Every function is documented at length, with examples. " * 8_000
    async with asyncio.timeout(HANG_GUARD), FakeOpenAI(script) as fake:
        h = await server(make_server, fake)
        async with grpc.aio.insecure_channel(h.target) as channel:
            stub = pb_grpc.OrchestratorServiceStub(channel)
            call, head = await paused(stub, max_tokens=50_000)
            await stub.SubmitApproval(decide(pb.APPROVAL_DECISION_EDIT, gate_run(head), edited_text=huge))
            rest = await read_rest(call)
    assert kinds(rest)[:2] == ["approval_decided", "artifact_produced"]
    assert kind(rest[-1]) == "run_failed"
    assert rest[-1].run_failed.reason == "BUDGET_EXCEEDED"
    assert script.agents() == ["architect"]  # the Coder was never asked with the huge prompt


async def test_a_bad_decision_is_refused_with_the_field_named(make_server: ServerFactory) -> None:
    async with asyncio.timeout(HANG_GUARD), FakeOpenAI(scripted()) as fake:
        h = await server(make_server, fake)
        async with grpc.aio.insecure_channel(h.target) as channel:
            stub = pb_grpc.OrchestratorServiceStub(channel)
            call, head = await paused(stub)
            run_id = gate_run(head)
            bad = [
                decide(pb.APPROVAL_DECISION_UNSPECIFIED, run_id),
                decide(pb.APPROVAL_DECISION_REVISE, run_id),
                decide(pb.APPROVAL_DECISION_EDIT, run_id),
                decide(pb.APPROVAL_DECISION_APPROVE, run_id, edited_text="x"),
            ]
            codes = []
            for request in bad:
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await stub.SubmitApproval(request)
                codes.append((refused.value.code(), (refused.value.details() or "").split(":")[0]))
            with pytest.raises(grpc.aio.AioRpcError) as bad_agent:
                await stub.Collaborate(pb.CollaborateRequest(task=TASK, pause_after=[pb.AGENT_DOCUMENTER])).read()
            await stub.CancelRun(pb.CancelRunRequest(run_id=run_id))
            rest = await read_rest(call)
    assert codes == [
        (grpc.StatusCode.INVALID_ARGUMENT, "decision"),
        (grpc.StatusCode.INVALID_ARGUMENT, "comment"),
        (grpc.StatusCode.INVALID_ARGUMENT, "edited_text"),
        (grpc.StatusCode.INVALID_ARGUMENT, "edited_text"),
    ]
    assert bad_agent.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "pause_after" in (bad_agent.value.details() or "")
    # A waiting run is cancelled like any other: its one terminal event.
    assert kinds(rest) == ["run_cancelled"]


async def test_a_waiting_run_writes_no_heartbeat_and_its_timeout_does_not_count_the_wait(
    make_server: ServerFactory,
) -> None:
    script = scripted()
    async with asyncio.timeout(HANG_GUARD), FakeOpenAI(script) as fake:
        # Heartbeats after 0.2 s of silence; the gate waits 6 s, longer than the whole run may take (5 s).
        h = await make_server(openai=fake, model=MINI, thinking_interval=60, heartbeat_interval=0.2, run_timeout=5)
        async with grpc.aio.insecure_channel(h.target) as channel:
            stub = pb_grpc.OrchestratorServiceStub(channel)
            call, head = await paused(
                stub, approval_timeout=Duration(seconds=6), on_approval_timeout=pb.ON_APPROVAL_TIMEOUT_APPROVE
            )
            rest = await read_rest(call)
    waited = rest[0].approval_decided.decided_at.seconds - head[-1].approval_requested.approval.requested_at.seconds
    assert waited >= 5
    # The gate's two events are neighbours: nothing was written while the run waited.
    assert rest[0].seq == head[-1].seq + 1
    assert rest[0].approval_decided.timed_out
    assert kind(rest[-1]) == "run_completed"


async def test_the_pipeline_file_sets_gates_per_agent_and_a_request_wins(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    pipeline = tmp_path / "pipeline.toml"
    pipeline.write_text(
        '[agents.coder]\npause_after = true\napproval_timeout = 1\non_approval_timeout = "approve"\n', encoding="utf-8"
    )
    script = scripted()
    async with asyncio.timeout(HANG_GUARD), FakeOpenAI(script) as fake:
        h = await server(make_server, fake, pipeline=pipeline)
        async with grpc.aio.insecure_channel(h.target) as channel:
            stub = pb_grpc.OrchestratorServiceStub(channel)
            by_file = await read_rest(stub.Collaborate(pb.CollaborateRequest(task=TASK)))
            call, head = await paused(stub)  # the request's pause_after wins: the Architect's gate, not the Coder's
            await stub.SubmitApproval(decide(pb.APPROVAL_DECISION_APPROVE, gate_run(head)))
            by_request = head + await read_rest(call)
    gates = [e.approval_requested.approval for e in by_file if kind(e) == "approval_requested"]
    assert [(g.stage, g.agent, g.on_timeout) for g in gates] == [(2, pb.AGENT_CODER, pb.ON_APPROVAL_TIMEOUT_APPROVE)]
    assert gates[0].expires_at.ToNanoseconds() - gates[0].requested_at.ToNanoseconds() == 1_000_000_000
    assert kind(by_file[-1]) == "run_completed"
    gates = [e.approval_requested.approval for e in by_request if kind(e) == "approval_requested"]
    assert [g.agent for g in gates] == [pb.AGENT_ARCHITECT]
    assert kind(by_request[-1]) == "run_completed"


async def test_a_keys_line_with_an_unknown_role_is_named_without_its_key(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text(f"alice:{ALICE_KEY}\ncarol:{CAROL_KEY} admin\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        await make_server(api_keys_file=keys)
    assert f"{keys} line 2" in str(err.value)
    assert "approver" in str(err.value)
    assert CAROL_KEY[:12] not in str(err.value)


class RecordingGate(CommitGate):
    """A commit gate that keeps the batch it held (the one with the stage's checkpoint)."""

    held: Batch | None = None

    async def passing(self, batch: Batch) -> None:
        if self.held is None and any(c.stage == self.stage for c in batch.checkpoints):
            self.held = batch
        await super().passing(batch)


async def test_the_gate_commits_in_one_transaction_with_its_stage(stores: Stores, store_target: Target) -> None:
    gate = RecordingGate(stage=1)
    async with asyncio.timeout(HANG_GUARD), FakeOpenAI(scripted()) as fake:
        running = await create_server(quiet_settings(store_target, fake.base_url), store=stores.gated(gate))
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
                stub = pb_grpc.OrchestratorServiceStub(channel)
                call: EventCall = stub.Collaborate(pb.CollaborateRequest(task=TASK, pause_after=[pb.AGENT_ARCHITECT]))
                await gate.reached.wait()
                held = gate.held
                gate.opened.set()
                head = await read_until(call, at("approval_requested"))
                await stub.SubmitApproval(decide(pb.APPROVAL_DECISION_APPROVE, gate_run(head)))
                rest = await read_rest(call)
        finally:
            await running.stop(0)
    assert held is not None
    in_batch = [kind(pb.RunEvent.FromString(e.data)) for e in held.events]
    assert in_batch[-2:] == ["stage_completed", "approval_requested"]
    (row,) = held.runs
    assert row.state == pb.RUN_STATE_AWAITING_APPROVAL
    assert row.approval_id == head[-1].approval_requested.approval.approval_id
    assert [c.stage for c in held.checkpoints] == [1]
    assert kind(rest[-1]) == "run_completed"


async def test_a_refinement_rounds_refiner_pauses_again_after_a_gated_coder(make_server: ServerFactory) -> None:
    rejecting = Reply(chunks=['```json\n{"approved": false, "summary": "no", "issues": []}\n```'])
    script = scripted(reviewer=[rejecting, default_replies()["reviewer"]])
    async with asyncio.timeout(HANG_GUARD), FakeOpenAI(script) as fake:
        h = await server(make_server, fake)
        async with grpc.aio.insecure_channel(h.target) as channel:
            stub = pb_grpc.OrchestratorServiceStub(channel)
            call, events = await paused(stub, pause_after=[pb.AGENT_CODER], max_refinements=1)
            await stub.SubmitApproval(decide(pb.APPROVAL_DECISION_APPROVE, gate_run(events)))
            events += await read_until(call, at("approval_requested"))
            await stub.SubmitApproval(decide(pb.APPROVAL_DECISION_APPROVE, gate_run(events)))
            events += await read_rest(call)
    gates = [e.approval_requested.approval for e in events if kind(e) == "approval_requested"]
    assert [(g.stage, g.agent, g.round) for g in gates] == [(2, pb.AGENT_CODER, 0), (4, pb.AGENT_REFINER, 1)]
    assert kind(events[-1]) == "run_completed"
