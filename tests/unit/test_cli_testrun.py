"""How the CLI words a Test run's results: "FAILED" only when a test failed, errored or was stopped."""

from __future__ import annotations

from facilitair.cli.testrun import finished_lines, result_note
from facilitair.v1 import orchestrator_pb2 as pb


def test_a_run_where_no_test_was_collected_is_not_called_failed() -> None:
    # What the tiny local model's Tester writes in the demo: a file with no test in it.
    none = pb.TestsFinished(stage=4, executed=True)
    assert finished_lines(none) == ["-- [4] no test passed: 0 passed, 0 failed, 0 errors, 0 skipped in 0.0s"]
    assert result_note(pb.RunResult(tests=none)) == ", no test passed"


def test_failures_errors_and_limits_are_failed() -> None:
    for done in (
        pb.TestsFinished(stage=4, executed=True, failed=1),
        pb.TestsFinished(stage=4, executed=True, errors=2),
        pb.TestsFinished(stage=4, executed=True, timed_out=True),
        pb.TestsFinished(stage=4, executed=True, passed=1, stopped="memory"),
    ):
        assert finished_lines(done)[0].startswith("-- [4] tests FAILED: ")
        assert result_note(pb.RunResult(tests=done)) == f", tests failing ({done.failed + done.errors})"
    passed = pb.TestsFinished(stage=4, executed=True, tests_passed=True, passed=1)
    assert result_note(pb.RunResult(tests=passed, tests_passed=True)) == ", tests passed"
