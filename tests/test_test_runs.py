"""The Test run step end to end: a real server, the fake vendor behind the official SDK, the real sandbox.

The Coder's first code fails the Tester's test; the step reports the failure to the Reviewer and the Refiner,
the Refiner fixes it, and the run ends with its tests passing after one round. Around it: the plan shows the
step, tests in another language are written but not run, a server without bubblewrap says so and runs
nothing, GetServerInfo tells where tests run, and CancelRun during a sleeping test kills the sandbox.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import pytest

from facilitair.cli.info import info_lines
from facilitair.cli.render import PlainRenderer
from facilitair.client import RunEvent, result_of
from facilitair.v1 import orchestrator_pb2 as pb
from tests.fakes.providers import FakeOpenAI, Reply
from tests.harness.events import RunStream, kind, of_kind
from tests.harness.sandbox import require_bwrap
from tests.harness.scripts import prompt_of, scripted
from tests.harness.servers import ServerFactory

TASK = "Write a function that reverses a string"
BUGGY = Reply(chunks=["File: src/rev.py\n```python\n", "def rev(s: str) -> str:\n", "    return s\n", "```\n"])


def steps(events: list[RunEvent]) -> list[str]:
    """The run's steps in order: each stage's agent, and "test_run" for each Test run step."""
    names = {v: k.removeprefix("AGENT_").lower() for k, v in pb.Agent.items()}
    out = []
    for e in events:
        if kind(e) == "stage_started":
            out.append(names[e.stage_started.agent])
        elif kind(e) == "tests_started":
            out.append("test_run")
    return out


def work_dirs_of_this_process() -> list[Path]:
    """Work directories the servers of this test process hold in the default sandbox root."""
    work = Path(tempfile.gettempdir()) / f"facilitair-sandbox-{os.geteuid()}" / "work"
    return sorted(work.glob(f"{os.getpid()}-*")) if work.is_dir() else []


@pytest.mark.both_stores
async def test_failing_tests_are_refined_until_they_pass(make_server: ServerFactory) -> None:
    require_bwrap()
    script = scripted(coder=BUGGY)
    async with FakeOpenAI(script) as fake:
        h = await make_server(openai=fake, sandbox="bwrap")
        events = await h.run(TASK, max_refinements=2)

    assert kind(events[-1]) == "run_completed"
    assert steps(events) == [
        "architect", "coder", "tester", "test_run", "reviewer", "refiner", "test_run", "reviewer", "documenter"
    ]  # fmt: skip
    plan = events[0].run_started.plan
    assert [(s.agent, s.test_run, s.sandbox) for s in plan.stages] == [
        (pb.AGENT_ARCHITECT, False, ""),
        (pb.AGENT_CODER, False, ""),
        (pb.AGENT_TESTER, False, ""),
        (pb.AGENT_UNSPECIFIED, True, "bwrap"),
        (pb.AGENT_REVIEWER, False, ""),
        (pb.AGENT_DOCUMENTER, False, ""),
    ]

    started = of_kind(events, "tests_started")
    assert [(s.stage, s.round, list(s.files)) for s in started] == [
        (4, 0, ["tests/test_rev.py"]),
        (7, 1, ["tests/test_rev.py"]),
    ]
    assert all(s.sandbox.startswith("bwrap (") for s in started)
    first, second = of_kind(events, "tests_finished")
    assert (first.stage, first.executed, first.tests_passed, first.passed, first.failed, first.errors) == (
        4, True, False, 0, 1, 0
    )  # fmt: skip
    [failure] = first.failures
    assert failure.name == "tests/test_rev.py::test_rev"
    assert failure.message.startswith("AssertionError: assert 'ab' == 'ba'")
    assert (second.stage, second.tests_passed, second.passed, second.failed) == (7, True, 1, 0)
    # Each step's events sit between its start and its end, before the next stage starts.
    output = [e for e in events if kind(e) == "tests_output"]
    assert output
    assert any("1 failed" in e.tests_output.line for e in output if e.tests_output.stage == 4)

    result = events[-1].run_completed.result
    assert (result.tests_passed, result.refinements, result.approved) == (True, 1, True)
    assert (result.tests.stage, result.tests.passed, result.tests.failed) == (7, 1, 0)

    [refiner] = script.requests("refiner")
    prompt = prompt_of(refiner)
    assert "# Failing tests to fix (the Tester's tests, run in a sandbox)" in prompt
    assert "## FAILED tests/test_rev.py::test_rev" in prompt
    assert failure.message in prompt
    first_review, second_review = script.requests("reviewer")
    assert "0 passed, 1 failed, 0 errors, 0 skipped" in prompt_of(first_review)
    assert "1 passed, 0 failed, 0 errors, 0 skipped" in prompt_of(second_review)
    assert work_dirs_of_this_process() == []

    outcome = result_of(events[-1])  # the client library's view
    assert outcome.tests_passed
    assert outcome.tests is not None
    assert (outcome.tests.passed, outcome.tests.failed) == (1, 0)

    summary = await h.client.get_run(events[0].run_id)
    assert summary.result.tests_passed
    assert summary.result.tests.passed == 1

    # The CLI's plain view shows the step, its output, its results and the failure.
    out = io.StringIO()
    renderer = PlainRenderer(out, io.StringIO())
    for event in events:
        renderer.event(event)
    shown = out.getvalue().splitlines()
    assert shown[1].startswith("Plan: Architect -> Coder -> Tester -> Test run -> Reviewer -> Documenter (up to 2")
    assert [line for line in shown if line.startswith("== [4/") or line.startswith("-- [4]")] == [
        "== [4/6] Test run - tests/test_rev.py in " + started[0].sandbox,
        f"-- [4] tests FAILED: 0 passed, 1 failed, 0 errors, 0 skipped in {first.duration.ToNanoseconds() / 1e9:.1f}s",
    ]
    assert f"  x tests/test_rev.py::test_rev: {failure.message.splitlines()[0]}" in shown
    assert "   | 1 failed in" in "\n".join(shown)
    assert any(line.startswith("-- [7] tests passed: 1 passed, 0 failed") for line in shown)
    [completed] = [line for line in shown if line.startswith("Run completed")]
    assert "review approved: 4 files, 1 refinement, tests passed, " in completed


async def test_tests_in_another_language_are_written_but_not_run(make_server: ServerFactory) -> None:
    require_bwrap()
    js = Reply(chunks=["File: rev.test.js\n```js\n", "test('rev', () => expect(rev('ab')).toBe('ba'));\n", "```\n"])
    async with FakeOpenAI(scripted(tester=js)) as fake:
        h = await make_server(openai=fake, sandbox="bwrap")
        events = await h.run(TASK, max_refinements=1)

    [finished] = of_kind(events, "tests_finished")
    assert (finished.executed, finished.tests_passed) == (False, False)
    assert finished.not_run_reason == "only Python tests (pytest) are run; these are not: rev.test.js"
    assert not of_kind(events, "tests_output")
    result = events[-1].run_completed.result
    assert (result.tests_passed, result.refinements, result.tests.executed) == (False, 0, False)


async def test_without_bubblewrap_the_step_says_why_and_runs_nothing(
    make_server: ServerFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "no-bwrap-here"))
    marker = tmp_path / "ran"
    writes = Reply(
        chunks=["File: tests/test_rev.py\n```python\n", f"def test_mark():\n    open({str(marker)!r}, 'w')\n", "```\n"]
    )
    async with FakeOpenAI(scripted(tester=writes)) as fake:
        h = await make_server(openai=fake, sandbox="bwrap")
        info = await h.client.server_info()
        events = await h.run(TASK)

    why = "bubblewrap (bwrap) is not installed: apt-get install bubblewrap"
    assert (info.sandbox.kind, info.sandbox.available, info.sandbox.detail) == ("bwrap", False, why)
    [started] = of_kind(events, "tests_started")
    assert started.sandbox == why
    [finished] = of_kind(events, "tests_finished")
    assert (finished.executed, finished.not_run_reason) == (False, why)
    assert kind(events[-1]) == "run_completed"
    assert not marker.exists()


async def test_server_info_says_where_tests_run(make_server: ServerFactory) -> None:
    require_bwrap()
    async with FakeOpenAI(scripted()) as fake:
        on = await make_server(openai=fake, sandbox="bwrap")
        off = await make_server(openai=fake, db=on.settings.db.with_name("off.sqlite3"))
        info_on = await on.client.server_info()
        info_off = await off.client.server_info()
    found, none = info_on.sandbox, info_off.sandbox
    assert (found.kind, found.available) == ("bwrap", True)
    assert found.detail.startswith("bwrap (")
    assert (none.kind, none.available, none.detail) == ("off", False, "tests are not run (--sandbox off)")
    shown = info_lines(info_on, "127.0.0.1:1")
    assert f"tests       run in {found.detail}" in shown
    assert "tests       not run (--sandbox off)" in info_lines(info_off, "127.0.0.1:1")


async def test_cancel_during_a_sleeping_test_kills_the_sandbox(make_server: ServerFactory) -> None:
    require_bwrap()
    sleeper = Reply(
        chunks=[
            "File: tests/test_slow.py\n```python\nimport time\n\n\n",
            "def test_slow() -> None:\n    print('sleeping', flush=True)\n    time.sleep(120)\n",
            "```\n",
        ]
    )
    async with FakeOpenAI(scripted(tester=sleeper)) as fake:
        h = await make_server(openai=fake, sandbox="bwrap")
        async with h.stream(TASK) as stream:
            await stream.until(lambda e: kind(e) == "tests_output" and "sleeping" in e.tests_output.line)
            [work] = work_dirs_of_this_process()
            summary = await h.client.cancel_run(stream.events[0].run_id)
            events = await stream.to_end()

    assert summary.state == pb.RUN_STATE_CANCELLED
    assert kind(events[-1]) == "run_cancelled"
    assert not of_kind(events, "tests_finished")  # never half-recorded
    assert work_dirs_of_this_process() == []
    assert not [pid for pid in os.listdir("/proc") if pid.isdigit() and str(work) in _cmdline(pid)]


def _cmdline(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@pytest.mark.both_stores
async def test_a_restart_during_a_test_run_runs_the_tests_again(make_server: ServerFactory) -> None:
    require_bwrap()
    sleeper = Reply(
        chunks=[
            "File: tests/test_slow.py\n```python\nimport time\n\n\n",
            "def test_slow() -> None:\n    print('sleeping', flush=True)\n    time.sleep(120)\n",
            "```\n",
        ]
    )
    script = scripted(tester=sleeper)
    async with FakeOpenAI(script) as fake:
        first = await make_server(openai=fake, sandbox="bwrap")
        async with first.stream(TASK) as stream:
            await stream.until(lambda e: kind(e) == "tests_output" and "sleeping" in e.tests_output.line)
        before = stream.events
        [work] = work_dirs_of_this_process()
        await first.stop()  # the run is interrupted mid test run: the sandbox is killed, its directory removed
        assert work_dirs_of_this_process() == []
        assert not [pid for pid in os.listdir("/proc") if pid.isdigit() and str(work) in _cmdline(pid)]

        second = await make_server(openai=fake, sandbox="bwrap")  # the same store: the run resumes
        run_id = before[0].run_id
        after = RunStream(second.client.watch(run_id, after_seq=before[-1].seq))
        await after.until(lambda e: kind(e) == "tests_output" and "sleeping" in e.tests_output.line)
        await second.client.cancel_run(run_id)
        rest = await after.to_end()

    events = [*before, *rest]
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    # The step ran twice from its start, never recorded a result, and the run ended once.
    assert [(s.stage, s.round) for s in of_kind(events, "tests_started")] == [(4, 0), (4, 0)]
    assert not of_kind(events, "tests_finished")
    assert [kind(e) for e in events if kind(e) in ("run_completed", "run_failed", "run_cancelled")] == ["run_cancelled"]
    # The Tester was asked once: the second server replayed its checkpoint.
    assert script.agents().count("tester") == 1


async def test_tests_that_find_nothing_to_test_make_no_round(make_server: ServerFactory) -> None:
    require_bwrap()
    skipped = Reply(
        chunks=[
            "File: tests/test_rev.py\n```python\nimport pytest\n\n\n",
            "@pytest.mark.skip(reason='later')\ndef test_rev() -> None:\n    assert False\n",
            "```\n",
        ]
    )
    script = scripted(tester=skipped)
    async with FakeOpenAI(script) as fake:
        h = await make_server(openai=fake, sandbox="bwrap")
        events = await h.run(TASK, max_refinements=2)

    [finished] = of_kind(events, "tests_finished")
    assert (finished.executed, finished.tests_passed, finished.passed, finished.skipped) == (True, False, 0, 1)
    result = events[-1].run_completed.result
    assert (result.refinements, result.tests_passed, result.approved) == (0, False, True)
    assert "refiner" not in script.agents()
