"""Approval gates in the CLI: `approve`, `revise`, `edit` and `reject`, the commands a paused run prints when
nobody is at a terminal, and the question a paused `run` asks in one.

The commands name the run as every other command does (an id, a unique prefix, or `last`); approve, revise and
reject send the decision for the gate the run waits at now; edit first fetches that gate (GetRun) to show its
files in $EDITOR, and sends its edit for that gate only, so it cannot land on a later one.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Awaitable, Callable

from facilitair.cli.common import EXIT_OK, CommandFailed, make_client
from facilitair.cli.editor import edit_in_editor
from facilitair.cli.render import Renderer, agent_name, decided_line, json_of, plural, state_name
from facilitair.client import (
    DECIDED_ALREADY,
    Approval,
    ApprovalRequest,
    ApprovalResult,
    Client,
    Decision,
    EventKind,
    FacilitairError,
    RunState,
    approval_request,
    event_kind,
)
from facilitair.v1 import orchestrator_pb2 as pb

_DECISIONS = {"approve": Decision.APPROVE, "revise": Decision.REVISE, "reject": Decision.REJECT}


def decision_commands(run_id: str) -> list[str]:
    """The commands that answer a paused run, as printed when the CLI cannot ask: each runs as it is."""
    return [
        f"  facilitair approve {run_id}",
        f'  facilitair revise {run_id} "what to change"',
        f"  facilitair edit {run_id}",
        f'  facilitair reject {run_id} "why"',
    ]


async def _gate(client: Client, run_ref: str) -> ApprovalRequest:
    run = await client.get_run(run_ref)
    if RunState(run.state) is not RunState.AWAITING_APPROVAL or not run.HasField("pending_approval"):
        raise CommandFailed(f"run {run.run_id} is not waiting for a decision (it is {state_name(run.state)})")
    return approval_request(run.run_id, run.pending_approval)


def _print_result(result: ApprovalResult, as_json: bool) -> None:
    if as_json:
        print(json_of(pb.SubmitApprovalResponse(decided=result.decided, run=result.run)))
        return
    line = decided_line(result.decision, result.principal, result.comment, result.timed_out, result.edited)
    print(f"run {result.run_id}: {line}")


async def approval_command(args: argparse.Namespace) -> int:
    """approve, revise, edit, reject."""
    async with make_client(args) as client:
        if args.command == "edit":
            gate = await _gate(client, args.run_id)
            approval = await edit_in_editor(gate, args.paths, args.comment)
            if approval is None:
                keep = f"facilitair approve {gate.run_id} takes it as it is"
                raise CommandFailed(f"nothing changed; run {gate.run_id} still waits ({keep})")
            result = await client.submit_approval(gate.run_id, approval, approval_id=gate.approval_id)
        else:
            decision = _DECISIONS[args.command]
            result = await client.submit_approval(args.run_id, decision, comment=args.comment)
    _print_result(result, args.json)
    return EXIT_OK


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class LineReader:
    """Lines typed at the terminal, read without blocking the event loop (the run's events keep coming)."""

    def __init__(self, fd: int = 0) -> None:
        self._fd = fd
        self._buffer = b""
        self._eof = False

    async def line(self) -> str | None:
        """The next line, without its newline; None at end of input (Ctrl-D)."""
        loop = asyncio.get_running_loop()
        while b"\n" not in self._buffer and not self._eof:
            ready: asyncio.Future[None] = loop.create_future()
            loop.add_reader(self._fd, _settle, ready)
            try:
                await ready
            finally:
                loop.remove_reader(self._fd)
            try:
                data = os.read(self._fd, 4096)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            self._buffer += data
            self._eof = not data
        if not self._buffer:
            return None
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode("utf-8", errors="replace").strip()


class Prompt:
    """Asks the person at the terminal to decide a gate, and sends the decision."""

    QUESTION = "Approve, revise, edit or reject? [a/r/e/j; w to leave it waiting] "

    def __init__(self, client: Client, renderer: Renderer, read: Callable[[], Awaitable[str | None]]) -> None:
        self.client = client
        self.renderer = renderer
        self._read = read
        self._open = False  # a question is on the screen, waiting for its answer

    async def _ask(self, question: str) -> str | None:
        self.renderer.prompt(question)
        self._open = True
        try:
            return await self._read()
        finally:
            self._open = False

    def abandon(self, why: str) -> None:
        """No answer is wanted any more (decided elsewhere, the run ended): end an open question's row saying
        why, before anything else is written there (called before the task asking is cancelled)."""
        if self._open:
            self._open = False
            self.renderer.note(f"({why})")

    def _show(self, gate: ApprovalRequest, streamed: bool) -> None:
        """What is to be approved: the text when this view did not stream it, and the files."""
        who = f"{agent_name(gate.agent)}'s output (stage {gate.stage})"
        self.renderer.note(f"Waiting for your decision on the {who}.")
        if gate.text and not streamed:
            for line in gate.text.splitlines():
                self.renderer.note(f"  | {line}")
        for artifact in gate.files:
            self.renderer.note(f"  + {artifact.path} ({plural(len(artifact.content.splitlines()), 'line')})")

    async def _decision(self, gate: ApprovalRequest) -> Approval | None:
        """Ask until there is a decision; None when the person leaves the gate waiting."""
        while True:
            answer = await self._ask(self.QUESTION)
            choice = (answer or "w").lower()[:1]
            if choice == "a":
                return Approval.approve()
            if choice == "r":
                comment = await self._ask("What should change? ")
                if comment:
                    return Approval.revise(comment)
                self.renderer.note("A revision needs a comment.", warning=True)
            elif choice == "e":
                try:
                    edited = await edit_in_editor(gate)
                except CommandFailed as exc:
                    self.renderer.note(str(exc), warning=True)
                    continue
                if edited is not None:
                    return edited
                self.renderer.note("Nothing changed.", warning=True)
            elif choice == "j":
                return Approval.reject(await self._ask("Why? (optional) ") or "")
            elif choice == "w":
                return None
            else:
                self.renderer.note("Answer a (approve), r (revise), e (edit), j (reject) or w (wait).", warning=True)

    async def run(self, gate: ApprovalRequest, *, streamed: bool) -> None:
        """Show the gate, ask, send; a gate decided elsewhere meanwhile ends the question (the caller cancels)."""
        self._show(gate, streamed)
        while True:
            approval = await self._decision(gate)
            if approval is None:
                self.renderer.note("Left waiting. Decide later with:")
                for line in decision_commands(gate.run_id):
                    self.renderer.note(line)
                return
            try:
                await self.client.submit_approval(gate.run_id, approval, approval_id=gate.approval_id)
                return
            except FacilitairError as err:
                self.renderer.note(f"Not sent: {err.code.name}: {err.message}", warning=True)
                if err.reason in DECIDED_ALREADY:
                    return  # decided already: the run's events say how


class Gates:
    """What a followed run's approval gates do in the CLI: ask the person here, or print the commands.

    Each approval_requested starts a task that first checks the gate is the one the run waits at now (a `watch`
    replays gates decided long ago), then asks or prints; the gate's approval_decided (from here or anywhere
    else) ends the question before the decision's line is shown.
    """

    def __init__(self, client: Client, renderer: Renderer, *, ask: bool) -> None:
        self.client = client
        self.renderer = renderer
        self._prompt = Prompt(client, renderer, LineReader().line) if ask else None
        self._open: tuple[str, asyncio.Task[None]] | None = None  # the gate being handled, and its task

    @property
    def asking(self) -> bool:
        """A gate is being handled (its question may be open)."""
        return self._open is not None

    def before(self, event: pb.RunEvent) -> None:
        """Before the renderer shows `event`: a decision of the gate asked about ends the question."""
        decided = event_kind(event) is EventKind.APPROVAL_DECIDED
        if decided and self._open is not None and self._open[0] == event.approval_decided.approval_id:
            self.stop("decided elsewhere")

    def after(self, event: pb.RunEvent) -> None:
        """After the renderer showed `event`: a gate opened starts its question (or its printed commands)."""
        if event_kind(event) is EventKind.APPROVAL_REQUESTED:
            self.stop("not answered")
            gate_id = event.approval_requested.approval.approval_id
            self._open = (gate_id, asyncio.ensure_future(self._handle(event.run_id, gate_id)))

    def stop(self, why: str) -> None:
        """No question stays open: the gate was decided, the run ended, or Ctrl-C."""
        if self._open is not None:
            if self._prompt is not None:
                self._prompt.abandon(why)
            self._open[1].cancel()
            self._open = None

    async def _handle(self, run_id: str, gate_id: str) -> None:
        try:
            gate = await self.client.pending_approval(run_id)
            if gate is None or gate.approval_id != gate_id:
                return  # decided already: a replayed event
            if self._prompt is not None:
                streamed = self.renderer.view.shown.get(gate.stage, 0) > 0
                await self._prompt.run(gate, streamed=streamed)
                return
            self.renderer.note(f"Run {run_id} waits for a decision; answer with one of:")
        except FacilitairError as err:  # following goes on; the commands still work
            self.renderer.note(f"could not ask about the pause: {err.code.name}: {err.message}", warning=True)
        for line in decision_commands(run_id):
            self.renderer.note(line)
