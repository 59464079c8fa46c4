"""The CLI at approval gates: the question a paused `run` asks in a terminal (a real pty, read through pyte),
the commands it prints without one, and `approve`, `revise`, `edit`, `reject` and `runs --state
awaiting-approval` against a real server whose provider is the fake OpenAI.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from facilitair.client import Decision
from tests.fakes.providers import FakeOpenAI
from tests.harness.cli import cli
from tests.harness.scripts import agent_of, prompt_of, scripted
from tests.harness.servers import ServerFactory
from tests.harness.terminal import terminal

TASK = "Write a function that reverses a string"
QUESTION = "Approve, revise, edit or reject? [a/r/e/j; w to leave it waiting]"
EDITED = "# Design\nPut reverse_string in src/strings.py, with a loop, no slicing.\n"
# An $EDITOR that rewrites every file it is given, as a person would, and exits 0.
EDITOR_SCRIPT = f"""
import sys
from pathlib import Path
for name in sys.argv[1:]:
    Path(name).write_text({EDITED!r})
"""


def prompts_of(fake: FakeOpenAI, agent: str) -> list[str]:
    """The user prompts the fake got for one agent, in order."""
    return [prompt_of(body) for body in fake.requests if agent_of(body) == agent]


@pytest.fixture
def editor(tmp_path: Path) -> dict[str, str]:
    """EDITOR set to a script that rewrites the file it opens."""
    script = tmp_path / "editor.py"
    script.write_text(EDITOR_SCRIPT)
    return {"EDITOR": f"{sys.executable} {script}"}


# ----- in a terminal: the question, answered in place -------------------------------------------------------------


async def test_in_a_terminal_the_paused_run_asks_and_approve_goes_on(make_server: ServerFactory) -> None:
    async with FakeOpenAI(scripted()) as fake:
        h = await make_server(openai=fake)
        async with terminal(h.target, "run", TASK, "--pause-after", "architect") as term:
            await term.wait_for(lambda s: QUESTION in s)
            term.type("a\n")
            code = await term.wait_exit()
    lines = term.lines()
    assert code == 0
    gate = term.row_of("?? [1] Architect's output waits for a decision, 1 file (until ")
    asked = term.row_of("Waiting for your decision on the Architect's output (stage 1).")
    question = term.row_of(QUESTION)
    decided = term.row_of("?? [1] approved by local")
    assert gate < asked < question < decided < term.row_of("Run completed")
    assert lines[question] == f"{QUESTION} a", "the answer is typed after the question"
    assert lines[gate - 1].startswith("-- [1] done in"), "the pause comes after the stage's own line"
    assert lines[asked + 1 : question] == ["  + DESIGN.md (3 lines)"], "the text streamed above; the files listed"
    assert sum(QUESTION in line for line in lines) == 1
    assert len(prompts_of(fake, "architect")) == 1


async def test_in_a_terminal_revise_asks_what_to_change_and_asks_again(make_server: ServerFactory) -> None:
    async with FakeOpenAI(scripted()) as fake:
        h = await make_server(openai=fake)
        async with terminal(h.target, "run", TASK, "--pause-after", "architect") as term:
            await term.wait_for(lambda s: QUESTION in s)
            term.type("r\n")
            await term.wait_for(lambda s: "What should change?" in s)
            term.type("name it reverse_string\n")
            await term.wait_for(lambda s: s.count(QUESTION) == 2)
            term.type("a\n")
            code = await term.wait_exit()
    lines = term.lines()
    assert code == 0
    assert "What should change? name it reverse_string" in lines
    assert any(line.startswith("?? [1] sent back for revision by local: name it reverse_string") for line in lines)
    again = "?? [2] Architect's output waits for a decision, 1 file, revised 1 time"
    assert any(line.startswith(again) for line in lines)
    first, second = prompts_of(fake, "architect")
    assert "name it reverse_string" not in first
    assert "name it reverse_string" in second


async def test_in_a_terminal_edit_opens_the_design_in_the_editor(
    make_server: ServerFactory, editor: dict[str, str]
) -> None:
    async with FakeOpenAI(scripted()) as fake:
        h = await make_server(openai=fake)
        async with terminal(h.target, "run", TASK, "--pause-after", "architect", env=editor) as term:
            await term.wait_for(lambda s: QUESTION in s)
            term.type("e\n")
            code = await term.wait_exit()
    assert code == 0
    assert term.row_of("?? [1] edited by local") < term.row_of("Run completed")
    [coder] = prompts_of(fake, "coder")
    assert "with a loop, no slicing" in coder, "the Coder reads the edited design"
    assert "Edge case: empty string." not in coder


async def test_in_a_terminal_reject_asks_why_and_the_run_ends_cancelled(make_server: ServerFactory) -> None:
    async with FakeOpenAI(scripted()) as fake:
        h = await make_server(openai=fake)
        async with terminal(h.target, "run", TASK, "--pause-after", "architect") as term:
            await term.wait_for(lambda s: QUESTION in s)
            term.type("j\n")
            await term.wait_for(lambda s: "Why? (optional)" in s)
            term.type("too risky\n")
            code = await term.wait_exit()
    lines = term.lines()
    assert code == 1
    assert "Why? (optional) too risky" in lines
    cancelled = term.row_of("Run cancelled:")
    assert term.row_of("?? [1] rejected by local: too risky") < cancelled
    assert "rejected by local: too risky" in " ".join(lines[cancelled : cancelled + 2])
    assert prompts_of(fake, "coder") == []


# ----- without a terminal: the commands are printed, and they work -------------------------------------------------


@contextlib.asynccontextmanager
async def following(target: str, *args: str) -> AsyncIterator[Follower]:
    """`facilitair run TASK --pause-after ...` with pipes for stdin, stdout and stderr (no terminal)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "facilitair.cli.main", "run", TASK, *args, "--target", target,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        yield Follower(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


class Follower:
    """The following CLI: its stderr read line by line, so a test waits for what it printed."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.err: list[str] = []

    async def printed(self, start: str) -> str:
        """Read stderr until a line starts with `start` (the CLI prints it once the run waits); that line."""
        assert self.proc.stderr is not None
        async with asyncio.timeout(30):
            while True:
                line = (await self.proc.stderr.readline()).decode()
                assert line, f"stderr ended without {start!r}: {self.err}"
                self.err.append(line.rstrip("\n"))
                if line.startswith(start):
                    return line.rstrip("\n")

    async def end(self) -> tuple[int, str, str]:
        """Its exit code, stdout and the rest of stderr."""
        out, err = await asyncio.wait_for(self.proc.communicate(), 30)
        self.err += err.decode().splitlines()
        assert self.proc.returncode is not None
        return self.proc.returncode, out.decode(), "\n".join(self.err)


@pytest.mark.both_stores
async def test_without_a_terminal_the_commands_are_printed_and_approve_by_prefix_works(
    make_server: ServerFactory,
) -> None:
    async with FakeOpenAI(scripted()) as fake:
        h = await make_server(openai=fake)
        async with following(h.target, "--pause-after", "architect,coder") as run:
            line = await run.printed("  facilitair approve ")
            run_id = line.split()[2]
            listed = await cli(h.target, "runs", "--state", "awaiting-approval")
            status = await cli(h.target, "status", run_id[:8])
            approved = await cli(h.target, "approve", run_id[:8], "--comment", "design ok")
            await run.printed("  facilitair approve ")  # the Coder's gate
            coded = await cli(h.target, "approve", "last")
            code, out, _ = await run.end()
        late = await cli(h.target, "approve", run_id)  # the same answer, late: told what was recorded
        refused = await cli(h.target, "reject", run_id, "too late")
    assert code == 0
    first = run.err.index(f"Run {run_id} waits for a decision; answer with one of:")
    assert run.err[first : first + 5] == [
        f"Run {run_id} waits for a decision; answer with one of:",
        f"  facilitair approve {run_id}",
        f'  facilitair revise {run_id} "what to change"',
        f"  facilitair edit {run_id}",
        f'  facilitair reject {run_id} "why"',
    ]
    assert listed[0] == 0
    [row] = [r for r in listed[1].splitlines() if r.startswith(run_id)]
    assert "awaiting-approval" in row
    assert status[0] == 0
    assert "state    awaiting-approval" in status[1]
    assert "gate     [1] Architect's output waits for a decision" in status[1]
    assert f'  facilitair reject {run_id} "why"' in status[1]
    assert approved == (0, f"run {run_id}: approved by local: design ok\n", "")
    assert coded == (0, f"run {run_id}: approved by local\n", "")
    lines = out.splitlines()
    assert [line for line in lines if line.startswith("?? ")] == [
        next(x for x in lines if x.startswith("?? [1] Architect's output waits for a decision, 1 file (until ")),
        "?? [1] approved by local: design ok",
        next(x for x in lines if x.startswith("?? [2] Coder's output waits for a decision, 1 file (until ")),
        "?? [2] approved by local",
    ]
    assert late == (0, f"run {run_id}: approved by local\n", "")
    assert refused[0] == 1
    assert refused[2].startswith("facilitair: FAILED_PRECONDITION: ")
    assert "already decided: APPROVAL_DECISION_APPROVE by local" in refused[2], "the refusal names the recorded one"


async def test_revise_with_last_runs_the_stage_again_with_the_comment(make_server: ServerFactory) -> None:
    async with FakeOpenAI(scripted()) as fake:
        h = await make_server(openai=fake)
        async with following(h.target, "--pause-after", "architect") as run:
            await run.printed("  facilitair approve ")
            revised = await cli(h.target, "revise", "last", "name it reverse_string")
            await run.printed("  facilitair approve ")  # asked again after the revision
            await cli(h.target, "approve", "last")
            code, out, _ = await run.end()
    assert code == 0
    assert revised[0] == 0
    assert revised[1].endswith(": sent back for revision by local: name it reverse_string\n")
    assert "revised 1 time" in out
    first, second = prompts_of(fake, "architect")
    assert "name it reverse_string" in second
    assert "name it reverse_string" not in first


async def test_edit_opens_the_coders_files_and_sends_what_changed(
    make_server: ServerFactory, editor: dict[str, str]
) -> None:
    async with FakeOpenAI(scripted()) as fake:
        h = await make_server(openai=fake)
        async with following(h.target, "--pause-after", "coder") as run:
            line = await run.printed("  facilitair approve ")
            run_id = line.split()[2]
            unchanged = await cli(h.target, "edit", run_id, env={**os.environ, "EDITOR": "true"})
            failed = await cli(h.target, "edit", run_id, env={**os.environ, "EDITOR": "false"})
            unknown = await cli(h.target, "edit", run_id, "src/nope.py", env={**os.environ, **editor})
            edited = await cli(h.target, "edit", run_id, "src/rev.py", env={**os.environ, **editor})
            code, out, _ = await run.end()
    assert code == 0
    assert unchanged == (1, "", f"facilitair: nothing changed; run {run_id} still waits "
                         f"(facilitair approve {run_id} takes it as it is)\n")  # fmt: skip
    assert failed == (1, "", "facilitair: the editor 'false' exited with 1; nothing was sent\n")
    assert unknown == (1, "", "facilitair: the stage did not produce src/nope.py (its files: src/rev.py)\n")
    assert edited == (0, f"run {run_id}: edited by local\n", "")
    assert "?? [2] edited by local" in out.splitlines()
    [reviewer] = prompts_of(fake, "reviewer")
    assert "with a loop, no slicing" in reviewer, "the Reviewer reads the edited file"


async def test_reject_ends_the_run_cancelled_with_the_reason(make_server: ServerFactory) -> None:
    async with FakeOpenAI(scripted()) as fake:
        h = await make_server(openai=fake)
        async with following(h.target, "--pause-after", "architect", "--format", "plain") as run:
            await run.printed("  facilitair approve ")
            rejected = await cli(h.target, "reject", "last", "too risky", "--json")
            code, out, _ = await run.end()
    assert code == 1
    assert rejected[0] == 0
    answer = json.loads(rejected[1])
    assert answer["decided"]["decision"] == "APPROVAL_DECISION_REJECT"
    assert (answer["decided"]["principal"], answer["decided"]["comment"]) == ("local", "too risky")
    assert f"Run {answer['run']['runId']}" in out.splitlines(), "the answer names the run followed"
    cancelled = next(line for line in out.splitlines() if line.startswith("Run cancelled: "))
    assert "rejected by local: too risky" in cancelled
    assert prompts_of(fake, "coder") == []


async def test_in_a_terminal_a_decision_made_elsewhere_closes_the_question(make_server: ServerFactory) -> None:
    async with FakeOpenAI(scripted()) as fake:
        h = await make_server(openai=fake)
        async with terminal(h.target, "run", TASK, "--pause-after", "architect") as term:
            await term.wait_for(lambda s: QUESTION in s)
            elsewhere = await cli(h.target, "approve", "last", "--comment", "from my phone")
            code = await term.wait_exit()
    lines = term.lines()
    assert elsewhere[0] == 0
    assert code == 0
    question = term.row_of(QUESTION)
    assert lines[question] == f"{QUESTION} (decided elsewhere)"
    assert lines[question + 1] == "?? [1] approved by local: from my phone"
    assert "Run completed" in lines[term.row_of("Run completed")]


async def test_watch_in_a_terminal_asks_only_about_the_gate_the_run_waits_at(make_server: ServerFactory) -> None:
    async with FakeOpenAI(scripted()) as fake:
        h = await make_server(openai=fake)
        events = h.client.collaborate(TASK, pause_after=["architect"])
        gates = 0
        async with asyncio.timeout(60):
            async for event in events:  # the first gate revised by the library, then the second one left open
                if event.WhichOneof("payload") == "approval_requested":
                    gates += 1
                    if gates == 2:
                        break
                    await h.client.submit_approval(event.run_id, Decision.REVISE, comment="name it reverse_string")
        await events.aclose()
        async with terminal(h.target, "watch", "last") as term:
            await term.wait_for(lambda s: QUESTION in s)
            term.type("a\n")
            code = await term.wait_exit()
    lines = term.lines()
    assert code == 0
    assert sum(QUESTION in line for line in lines) == 1, "the replayed gate, decided long ago, is not asked about"
    assert term.row_of("?? [1] sent back for revision by local") < term.row_of(QUESTION)
    assert term.row_of(QUESTION) < term.row_of("?? [2] approved by local") < term.row_of("Run completed")


async def test_ctrl_c_at_the_question_ends_its_row_and_cancels_the_run(make_server: ServerFactory) -> None:
    async with FakeOpenAI(scripted()) as fake:
        h = await make_server(openai=fake)
        async with terminal(h.target, "run", TASK, "--pause-after", "architect") as term:
            await term.wait_for(lambda s: QUESTION in s)
            term.interrupt()
            code = await term.wait_exit()
    lines = term.lines()
    assert code == 130
    question = term.row_of(QUESTION)
    assert lines[question] == f"{QUESTION} (interrupted)"
    assert lines[question + 1].startswith("cancelling run ")
    assert term.row_of("Run cancelled:") > question + 1
    assert prompts_of(fake, "coder") == []


async def test_a_gate_nobody_answers_decides_by_its_timeout_policy(make_server: ServerFactory) -> None:
    async with FakeOpenAI(scripted()) as fake:
        h = await make_server(openai=fake)
        flags = ("--pause-after", "architect", "--approval-timeout", "1s", "--on-approval-timeout", "approve")
        async with following(h.target, *flags) as run:
            code, out, err = await run.end()
    assert code == 0
    lines = out.splitlines()
    [gate] = [line for line in lines if line.startswith("?? [1] Architect's output waits")]
    assert gate.endswith(", then approved)")
    assert "?? [1] approved (nobody answered in time)" in lines
    assert "facilitair approve " in err, "the commands were printed while it waited"
    assert len(prompts_of(fake, "coder")) == 1


async def test_in_a_terminal_the_plain_format_asks_too(make_server: ServerFactory) -> None:
    async with FakeOpenAI(scripted()) as fake:
        h = await make_server(openai=fake)
        async with terminal(h.target, "run", TASK, "--pause-after", "coder", "--format", "plain") as term:
            await term.wait_for(lambda s: QUESTION in s)
            term.type("x\n")  # not an answer: asked again
            await term.wait_for(lambda s: s.count(QUESTION) == 2)
            term.type("a\n")
            code = await term.wait_exit()
    lines = term.lines()
    assert code == 0
    assert f"{QUESTION} x" in lines
    assert "Answer a (approve), r (revise), e (edit), j (reject) or w (wait)." in lines
    assert f"{QUESTION} a" in lines
    assert term.row_of("?? [2] Coder's output waits") < term.row_of("?? [2] approved by local")
