"""The client library at approval gates: `submit_approval` (async and sync) and `run(..., on_approval=...)`.

A real server on both stores with the fake OpenAI behind it; what the fake was asked shows what each decision did.
"""

from __future__ import annotations

import asyncio

import pytest

from facilitair.client import (
    Agent,
    Approval,
    ApprovalRequest,
    Decision,
    EventKind,
    FacilitairError,
    OnApprovalTimeout,
    RunCancelled,
    RunState,
    StatusCode,
    SyncClient,
    event_kind,
)
from tests.fakes.providers import FakeOpenAI
from tests.harness.events import kind
from tests.harness.scripts import agent_of, prompt_of, scripted
from tests.harness.servers import ServerFactory

TASK = "Write a function that reverses a string"


def prompts_of(fake: FakeOpenAI, agent: str) -> list[str]:
    """The user prompts the fake got for one agent, in order."""
    return [prompt_of(body) for body in fake.requests if agent_of(body) == agent]


@pytest.mark.both_stores
async def test_submit_approval_records_the_decision_and_the_run_goes_on(make_server: ServerFactory) -> None:
    async with FakeOpenAI(scripted()) as fake:
        h = await make_server(openai=fake)
        async with asyncio.timeout(60):
            stream = h.client.collaborate(TASK, pause_after=["architect"])
            seen = []
            async for event in stream:
                seen.append(event)
                if event_kind(event) is EventKind.APPROVAL_REQUESTED:
                    break
            run_id = seen[-1].run_id
            pending = await h.client.pending_approval(run_id[:8])
            result = await h.client.submit_approval(run_id[:8], Decision.APPROVE, comment="fine")
            # The gate named from now on: the run may have gone past it already, and then "the gate it waits at now"
            # is none.
            gate_id = result.approval_id
            again = await h.client.submit_approval(run_id, Decision.APPROVE, comment="fine", approval_id=gate_id)
            with pytest.raises(FacilitairError) as refused:
                await h.client.submit_approval(run_id, Decision.REJECT, comment="changed my mind", approval_id=gate_id)
            rest = [e async for e in stream]
    assert [kind(e) for e in seen][-2:] == ["stage_completed", "approval_requested"]
    assert pending is not None
    assert (pending.run_id, pending.stage, pending.agent, pending.revisions) == (run_id, 1, Agent.ARCHITECT, 0)
    assert pending.text.startswith("# Design")
    assert pending.on_timeout is OnApprovalTimeout.REJECT
    assert (result.run_id, result.approval_id, result.decision) == (run_id, pending.approval_id, Decision.APPROVE)
    assert (result.comment, result.edited, result.timed_out) == ("fine", False, False)
    assert (again.approval_id, again.decision) == (gate_id, Decision.APPROVE), "the same answer again"
    assert refused.value.code == StatusCode.FAILED_PRECONDITION
    assert refused.value.reason == "APPROVAL_ALREADY_DECIDED"
    assert "approve" in refused.value.message.lower(), "the refusal names the recorded decision"
    kinds = [kind(e) for e in rest]
    assert kinds.count("approval_decided") == 1
    assert kinds[-1] == "run_completed"
    decided = next(e.approval_decided for e in rest if kind(e) == "approval_decided")
    assert (Decision(decided.decision), decided.comment) == (Decision.APPROVE, "fine")
    assert len(prompts_of(fake, "architect")) == 1, "an approved stage is not asked again"


async def test_on_approval_revises_then_approves_and_sees_each_gate_once(make_server: ServerFactory) -> None:
    asked: list[ApprovalRequest] = []

    async def decide(gate: ApprovalRequest) -> Approval:
        asked.append(gate)
        return Approval.revise("name it reverse_string") if len(asked) == 1 else Approval.approve()

    events: list[str] = []
    async with FakeOpenAI(scripted()) as fake:
        h = await make_server(openai=fake)
        done = await h.client.run(
            TASK, pause_after=["architect"], on_approval=decide, on_event=lambda e: events.append(kind(e))
        )
    assert done.approved
    assert events.count("approval_requested") == events.count("approval_decided") == 2
    assert [(g.agent, g.revisions) for g in asked] == [(Agent.ARCHITECT, 0), (Agent.ARCHITECT, 1)]
    assert asked[0].stage != asked[1].stage, "the revised stage is a new stage"
    first, second = prompts_of(fake, "architect")
    assert "name it reverse_string" not in first
    assert "name it reverse_string" in second, "the person's comment is in the stage's second prompt"


async def test_on_approval_edit_gives_the_coder_the_edited_design(make_server: ServerFactory) -> None:
    edited = "# Design\nPut `reverse_string` in src/strings.py, with a loop, no slicing.\n"
    async with FakeOpenAI(scripted()) as fake:
        h = await make_server(openai=fake)
        done = await h.client.run(
            TASK, pause_after=[Agent.ARCHITECT], on_approval=lambda gate: Approval.edit(text=edited)
        )
    assert done.approved
    [coder] = prompts_of(fake, "coder")
    assert "with a loop, no slicing" in coder
    assert "Edge case: empty string." not in coder, "the design the Coder reads is the edited one"


async def test_on_approval_none_leaves_the_gate_to_someone_else(make_server: ServerFactory) -> None:
    asked: list[ApprovalRequest] = []
    was_asked = asyncio.Event()

    def leave(gate: ApprovalRequest) -> None:
        asked.append(gate)
        was_asked.set()

    async with FakeOpenAI(scripted()) as fake:
        h = await make_server(openai=fake)
        running = asyncio.ensure_future(h.client.run(TASK, pause_after=["coder"], on_approval=leave))
        async with asyncio.timeout(60):
            await was_asked.wait()
            [waiting], _ = await h.client.list_runs(state=RunState.AWAITING_APPROVAL)
            await h.client.submit_approval("last", Decision.APPROVE)
            done = await running
    assert done.approved
    assert [g.agent for g in asked] == [Agent.CODER]
    assert waiting.run_id == done.run_id
    assert waiting.pending_approval.approval_id == asked[0].approval_id


def _sync_calls(target: str) -> tuple[FacilitairError, FacilitairError, RunCancelled, list[str]]:
    """The blocking client, on a thread of its own (the server runs on the test's loop)."""
    seen: list[str] = []

    def reject(gate: ApprovalRequest) -> Approval:
        seen.append(gate.agent.name)
        return Approval.reject("not this design")

    with SyncClient(target) as client:
        with pytest.raises(FacilitairError) as bad:
            client.submit_approval("last", Decision.APPROVE, edited_text="x")
        with pytest.raises(FacilitairError) as nobody:
            next(client.collaborate(TASK, pause_after=["documenter"]))
        with pytest.raises(RunCancelled) as cancelled:
            client.run(
                TASK,
                pause_after=["architect"],
                on_approval=reject,
            )
    return bad.value, nobody.value, cancelled.value, seen


async def test_the_sync_client_decides_in_on_approval_and_refuses_a_bad_answer_before_sending(
    make_server: ServerFactory,
) -> None:
    async with FakeOpenAI(scripted()) as fake:
        h = await make_server(openai=fake)
        bad, nobody, cancelled, seen = await asyncio.wait_for(asyncio.to_thread(_sync_calls, h.target), 60)
    assert bad.code == StatusCode.INVALID_ARGUMENT
    assert bad.field_violations == [("decision", "edited text or files go with EDIT only")]
    assert nobody.code == StatusCode.INVALID_ARGUMENT
    assert nobody.field_violations[0][0] == "pause_after"
    assert seen == ["ARCHITECT"]
    assert "not this design" in cancelled.cancel_reason
    assert prompts_of(fake, "coder") == [], "a rejected design is never coded"


async def test_wait_asks_on_approval_only_about_the_gate_the_run_waits_at(make_server: ServerFactory) -> None:
    asked: list[ApprovalRequest] = []

    def approve(gate: ApprovalRequest) -> Approval:
        asked.append(gate)
        return Approval.approve("second look ok")

    async with FakeOpenAI(scripted()) as fake:
        h = await make_server(openai=fake)
        events = h.client.collaborate(TASK, pause_after=["architect"])
        gates = []
        async with asyncio.timeout(60):
            async for event in events:  # the first gate revised here, the second left open
                if event_kind(event) is EventKind.APPROVAL_REQUESTED:
                    gates.append(event.approval_requested.approval.approval_id)
                    if len(gates) == 2:
                        break
                    await h.client.submit_approval(event.run_id, Decision.REVISE, comment="shorter")
            await events.aclose()
            done = await h.client.wait(event.run_id, on_approval=approve)
    assert done.approved
    assert [g.approval_id for g in asked] == [gates[1]], "the replayed gate, decided already, is not asked about"
    assert asked[0].revisions == 1
