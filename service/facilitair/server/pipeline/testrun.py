"""The Test run step: the Tester's tests run against the latest files, in the sandbox; not a model.

The step takes a stage number of its own. Its results are checkpointed with its tests_finished event, so a
resumed run replays them (the control flow after it depends on them); a run stopped during the step (a
restart, a takeover) runs the tests again, and the new tests_started voids the partial output before it.
Only Python tests with pytest run; tests in other languages are written and the step says they did not run.
"""

from __future__ import annotations

import json
import posixpath
from typing import Any

from facilitair.server.domain import Artifact, ArtifactKind, TestFailure, TestReport
from facilitair.server.sandbox import Sandbox

# What the Reviewer's and the Refiner's prompts carry of the failures: the counts always, then failures
# until this many characters (a small model's window is a few thousand tokens).
PROMPT_CHARS = 6000


def test_files(files: list[Artifact]) -> list[str]:
    """The paths of the run's test files."""
    return [a.path for a in files if a.kind == ArtifactKind.TEST]


def not_runnable(files: list[Artifact]) -> str:
    """Why the run's tests cannot run here ("" when they can): none written, or not Python."""
    tests = test_files(files)
    if not tests:
        return "the Tester wrote no test file"
    others = [p for p in tests if posixpath.splitext(p)[1] != ".py"]
    if len(others) == len(tests):
        return f"only Python tests (pytest) are run; these are not: {', '.join(others[:5])}"
    return ""


def sandbox_files(files: list[Artifact]) -> dict[str, str]:
    """What is copied into the work directory: the code and the tests (not the design, not the docs)."""
    return {a.path: a.content for a in files if a.kind in (ArtifactKind.CODE, ArtifactKind.TEST)}


async def run_tests(sandbox: Sandbox, files: list[Artifact], on_line: Any) -> TestReport:
    """Run the tests of `files`, or say why they were not run."""
    reason = not_runnable(files)
    if reason:
        return TestReport(executed=False, not_run_reason=reason)
    return await sandbox.run(sandbox_files(files), on_line)


def as_prompt(report: TestReport) -> str:
    """The results as the Reviewer and the Refiner read them: counts, then each failure, bounded."""
    if not report.executed:
        return f"The tests were not run: {report.not_run_reason}."
    head = (
        f"The Tester's tests were run with pytest: {report.passed} passed, {report.failed} failed, "
        f"{report.errors} errors, {report.skipped} skipped."
    )
    if report.timed_out:
        head += " The run was stopped by its wall-clock limit."
    elif report.stopped:
        head += f" The run was stopped by {report.stopped}."
    parts = [head]
    used = len(head)
    for failure in report.failures:
        block = f"## FAILED {failure.name}\n{failure.message}\n```\n{failure.excerpt}\n```"
        if used + len(block) > PROMPT_CHARS:
            parts.append(f"[... {len(report.failures) - len(parts) + 1} more failures left out ...]")
            break
        parts.append(block)
        used += len(block)
    return "\n\n".join(parts)


def to_json(report: TestReport) -> str:
    """The report as its checkpoint text."""
    document = {
        "executed": report.executed,
        "not_run_reason": report.not_run_reason,
        "passed": report.passed,
        "failed": report.failed,
        "errors": report.errors,
        "skipped": report.skipped,
        "seconds": report.seconds,
        "failures": [[f.name, f.message, f.excerpt] for f in report.failures],
        "timed_out": report.timed_out,
        "truncated": report.truncated,
        "stopped": report.stopped,
    }
    return json.dumps({"test_report": document})


def from_json(text: str) -> TestReport:
    """Read back a report to_json wrote; ValueError for anything else."""
    try:
        d = json.loads(text)["test_report"]
        return TestReport(
            executed=bool(d["executed"]),
            not_run_reason=str(d["not_run_reason"]),
            passed=int(d["passed"]),
            failed=int(d["failed"]),
            errors=int(d["errors"]),
            skipped=int(d["skipped"]),
            seconds=float(d["seconds"]),
            failures=tuple(TestFailure(str(n), str(m), str(e)) for n, m, e in d["failures"]),
            timed_out=bool(d["timed_out"]),
            truncated=bool(d["truncated"]),
            stopped=str(d["stopped"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"not a test report checkpoint: {exc}") from None
