"""How the CLI shows a Test run step: where the tests run, their output, their results and failures."""

from __future__ import annotations

from facilitair.v1 import orchestrator_pb2 as pb

# Lines of a failure's traceback shown under it; the event carries more (`--json` shows all of it).
EXCERPT_LINES = 6


def started_line(started: pb.TestsStarted, position: str) -> str:
    """ "== [4/6] Test run - 1 file in bwrap (/usr/bin/bwrap)"."""
    files = ", ".join(started.files) or "no test file"
    return f"== [{position}] Test run - {files} in {started.sandbox}"


def output_line(output: pb.TestsOutput) -> str:
    """One line the tests printed, indented under the step."""
    return f"   | {output.line}"


def finished_lines(done: pb.TestsFinished) -> list[str]:
    """The results, then each failure with its message and the end of its traceback."""
    if not done.executed:
        return [f"-- [{done.stage}] tests not run: {done.not_run_reason}"]
    seconds = done.duration.ToNanoseconds() / 1e9
    counts = f"{done.passed} passed, {done.failed} failed, {done.errors} errors, {done.skipped} skipped"
    head = "tests passed" if done.tests_passed else "tests FAILED"
    notes = [n for n in ("timed out" if done.timed_out else "", done.stopped and f"stopped by {done.stopped}") if n]
    if done.truncated:
        notes.append("output cut")
    extra = f" ({'; '.join(notes)})" if notes else ""
    lines = [f"-- [{done.stage}] {head}: {counts} in {seconds:.1f}s{extra}"]
    for failure in done.failures:
        lines.append(f"  x {failure.name}: {failure.message.splitlines()[0] if failure.message else ''}")
        lines += [f"      {line}" for line in failure.excerpt.splitlines()[-EXCERPT_LINES:]]
    return lines


def result_note(result: pb.RunResult) -> str:
    """What the completed line says of the last test run ("" when the server runs no tests)."""
    if not result.HasField("tests"):
        return ""
    tests = result.tests
    if not tests.executed:
        return ", tests not run"
    return ", tests passed" if result.tests_passed else f", tests failing ({tests.failed + tests.errors})"
