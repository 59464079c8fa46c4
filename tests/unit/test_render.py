"""The CLI's renderers (cli/render.py): the words for each event, amounts of money, time and tokens, the plain
and JSON-lines output of a whole run, written into a StringIO exactly as a pipe would receive them."""

from __future__ import annotations

import io
from typing import Any, TypeAlias

import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from facilitair.cli.render import (
    JsonlRenderer,
    PlainRenderer,
    RunView,
    agent_name,
    cost_text,
    describe,
    money,
    plural,
    seconds,
    tokens,
)
from facilitair.v1 import orchestrator_pb2 as pb

MINI = "openai:gpt-4.1-mini"
Agent: TypeAlias = pb.Agent.ValueType
FIVE = [pb.AGENT_ARCHITECT, pb.AGENT_CODER, pb.AGENT_REVIEWER, pb.AGENT_TESTER, pb.AGENT_DOCUMENTER]


def event(seq: int, at: float = 1000.0, **payload: Any) -> pb.RunEvent:
    """An event of run r-1 at server time `at`."""
    return pb.RunEvent(run_id="r-1", seq=seq, time=Timestamp(seconds=int(at), nanos=int(at % 1 * 1e9)), **payload)


def plan(
    agents: list[Agent], *, refinements: int = 2, secs: float = 77.5, cost: float | None = 0.0123, history: int = 0
) -> pb.Plan:
    """A plan of these agents' stages."""
    stages = [pb.PlannedStage(agent=a, model=MINI) for a in agents]
    return pb.Plan(
        stages=stages,
        max_refinements=refinements,
        estimated_seconds=secs,
        estimated_cost_usd=cost,
        history_stages=history,
    )


def started(agents: list[Agent] = FIVE, **how: Any) -> pb.RunEvent:
    """run_started with a plan."""
    return event(1, 1000.0, run_started=pb.RunStarted(task="t", plan=plan(agents, **how)))


def stage(n: int, agent: Agent, round_: int = 0) -> pb.RunEvent:
    """stage_started."""
    return event(n + 1, 1001.0, stage_started=pb.StageStarted(stage=n, agent=agent, model=MINI, round=round_))


def usage(i: int, o: int, cost: float, *, unknown: bool = False, estimated: bool = False) -> pb.Usage:
    """A Usage."""
    return pb.Usage(input_tokens=i, output_tokens=o, cost_usd=cost, cost_unknown=unknown, estimated=estimated)


def completed(n: int, agent: Agent, spent: pb.Usage, secs: float, *, truncated: bool = False) -> pb.RunEvent:
    """stage_completed, 4.5 s after the run started."""
    done = pb.StageCompleted(
        stage=n, agent=agent, model=MINI, usage=spent, duration=Duration(seconds=int(secs), nanos=int(secs % 1 * 1e9))
    )
    done.truncated = truncated
    return event(20, 1004.5, stage_completed=done)


def artifact(path: str, kind: pb.ArtifactKind.ValueType, *, version: int = 1, requested: str = "") -> pb.RunEvent:
    """artifact_produced."""
    made = pb.Artifact(path=path, kind=kind, content="a\nb\n", version=version, requested_path=requested)
    return event(30, 1002.0, artifact_produced=pb.ArtifactProduced(artifact=made))


def verdict(approved: bool, issues: list[pb.ReviewIssue], *, well_formed: bool = True) -> pb.RunEvent:
    """review_verdict."""
    said = pb.ReviewVerdict(stage=3, approved=approved, issues=issues, summary="s", well_formed=well_formed)
    return event(40, 1003.0, review_verdict=said)


def reset(delay: float) -> pb.RunEvent:
    """attempt_reset of stage 2."""
    again = pb.AttemptReset(stage=2, attempt=2, reason="openai overloaded", model=MINI)
    again.delay.FromNanoseconds(int(delay * 1e9))
    return event(50, 1003.0, attempt_reset=again)


def token(text: str) -> pb.RunEvent:
    """A token of stage 2."""
    return event(60, 1002.0, token_delta=pb.TokenDelta(stage=2, text=text))


def run_completed(secs: float, files: int, refinements: int, approved: bool) -> pb.RunEvent:
    """run_completed."""
    result = pb.RunResult(artifacts=[pb.Artifact(path=f"f{i}") for i in range(files)], approved=approved)
    result.refinements = refinements
    done = pb.RunCompleted(result=result, usage=usage(1000, 200, 0.0123), duration=Duration(seconds=int(secs)))
    return event(99, 1000.0 + secs, run_completed=done)


# (events tracked first, the event described, the lines shown). The view always saw run_started (5 stages) and
# the Coder's stage_started first.
DESCRIBE: list[tuple[str, list[pb.RunEvent], pb.RunEvent, list[str]]] = [
    (
        "run-started",
        [],
        started(),
        [
            "Run r-1",
            "Plan: Architect -> Coder -> Reviewer -> Tester -> Documenter (up to 2 refinement rounds), "
            "~1m17s, ~$0.0123",
        ],
    ),
    (
        "run-started-cost-unknown",
        [],
        started([pb.AGENT_ARCHITECT], refinements=1, secs=5.0, cost=None),
        ["Run r-1", "Plan: Architect (up to 1 refinement round), ~5.0s, cost unknown"],
    ),
    (
        "run-started-estimated-from-history",
        [],
        started([pb.AGENT_ARCHITECT], refinements=0, secs=51.0, cost=0.0, history=7),
        ["Run r-1", "Plan: Architect (up to 0 refinement rounds), ~51.0s, ~$0.0000 (estimate from 7 earlier stages)"],
    ),
    ("stage-started", [], stage(2, pb.AGENT_CODER), ["== [2/5] Coder - openai:gpt-4.1-mini"]),
    (
        "a-refinement-round-adds-two-stages",
        [],
        stage(6, pb.AGENT_REFINER, round_=1),
        ["== [6/7] Refiner (round 1) - openai:gpt-4.1-mini"],
    ),
    # A Tester runs once, so no round in its label; a stage past the expected count counts itself.
    ("a-tester-runs-once", [], stage(8, pb.AGENT_TESTER, round_=1), ["== [8/8] Tester - openai:gpt-4.1-mini"]),
    ("token", [], token("abc"), []),
    ("heartbeat", [], event(9, heartbeat=pb.Heartbeat()), []),
    (
        "thinking",
        [],
        event(9, thinking=pb.Thinking(stage=2, waited_seconds=12.4)),
        ["   ... waiting for the model (12s)"],
    ),
    (
        "stage-completed",
        [],
        completed(2, pb.AGENT_CODER, usage(240, 42, 0.000163), 3.5),
        ["-- [2] done in 3.5s: 240 in / 42 out tokens, $0.000163 (run so far: 4.5s, $0.000163)"],
    ),
    (
        "stage-completed-truncated-estimated-unpriced",
        [],
        completed(2, pb.AGENT_CODER, usage(10, 20, 0.0, unknown=True, estimated=True), 1.0, truncated=True),
        [
            "-- [2] done in 1.0s; output truncated (the model reached max_tokens): ~10 in / ~20 out tokens, unknown "
            "(run so far: 4.5s, unknown)"
        ],
    ),
    ("approved", [], verdict(True, []), ["Review: approved"]),
    (
        "changes-requested",
        [],
        verdict(
            False,
            [
                pb.ReviewIssue(severity="major", file="src/rev.py", description="no check"),
                pb.ReviewIssue(severity="minor", description="docs"),
            ],
        ),
        ["Review: changes requested (2 issues)", "  - [major] src/rev.py: no check", "  - [minor] docs"],
    ),
    (
        "malformed-verdict",
        [],
        verdict(False, [], well_formed=False),
        ["Review: changes requested (0 issues) - the verdict was malformed"],
    ),
    ("artifact", [], artifact("src/rev.py", pb.ARTIFACT_KIND_CODE), ["+ src/rev.py (code, 2 lines)"]),
    (
        "artifact-version-2",
        [],
        artifact("src/rev.py", pb.ARTIFACT_KIND_CODE, version=2),
        ["+ src/rev.py (code, 2 lines, version 2)"],
    ),
    (
        "artifact-moved-off-anothers-path",
        [artifact("README.md", pb.ARTIFACT_KIND_DOC)],
        artifact("tests/README.md", pb.ARTIFACT_KIND_TEST, requested="README.md"),
        ["+ tests/README.md (test, 2 lines; written as README.md, the doc's path)"],
    ),
    (
        "artifact-moved-off-an-unknown-path",
        [],
        artifact("tests/x.py", pb.ARTIFACT_KIND_TEST, requested="x.py"),
        ["+ tests/x.py (test, 2 lines; written as x.py, another file's path)"],
    ),
    ("reset-nothing-shown", [], reset(0.0), ["!! [2] attempt 2: openai overloaded"]),
    (
        "reset-after-text",
        [token("abc")],
        reset(12.0),
        ["!! [2] attempt 2 in 12.0s: openai overloaded; the partial output above is discarded"],
    ),
    (
        "fallback",
        [],
        event(
            70, model_fallback=pb.ModelFallback(stage=2, from_model="openai:a", to_model="anthropic:b", reason="gone")
        ),
        ["!! [2] giving up on openai:a (gone); falling back to anthropic:b"],
    ),
    (
        "run-completed",
        [],
        run_completed(75, 4, 1, True),
        ["Run completed in 1m15s, review approved: 4 files, 1 refinement, 1000 in / 200 out tokens, $0.0123"],
    ),
    (
        "run-completed-unapproved",
        [],
        run_completed(2, 1, 0, False),
        ["Run completed in 2.0s, review not approved: 1 file, 0 refinements, 1000 in / 200 out tokens, $0.0123"],
    ),
    (
        "run-failed",
        [],
        event(99, run_failed=pb.RunFailed(code=8, message="rate limited", retryable=True, usage=usage(5, 6, 0.02))),
        ["Run failed: RESOURCE_EXHAUSTED: rate limited (retrying may help) (5 in / 6 out tokens, $0.0200 spent)"],
    ),
    (
        "run-failed-unknown-code",
        [],
        event(99, run_failed=pb.RunFailed(code=99, message="odd", usage=usage(0, 0, 0.0))),
        ["Run failed: 99: odd (0 in / 0 out tokens, $0.0000 spent)"],
    ),
    (
        "run-cancelled",
        [],
        event(
            99, run_cancelled=pb.RunCancelled(reason="cancelled by the caller", usage=usage(5, 6, 0.02, estimated=True))
        ),
        ["Run cancelled: cancelled by the caller (~5 in / ~6 out tokens, ~$0.0200 spent)"],
    ),
]


@pytest.mark.parametrize(("before", "shown", "lines"), [r[1:] for r in DESCRIBE], ids=[r[0] for r in DESCRIBE])
def test_each_event_is_described_in_its_own_words(
    before: list[pb.RunEvent], shown: pb.RunEvent, lines: list[str]
) -> None:
    view = RunView()
    for seen in [started(), stage(2, pb.AGENT_CODER), *before, shown]:
        view.track(seen)  # as a renderer does, before it describes the event
    assert describe(shown, view) == lines


@pytest.mark.parametrize(
    ("cost", "unknown", "estimated", "text"),
    [
        (0.0, False, False, "$0.0000"),
        (0.01, False, False, "$0.0100"),
        (0.009, False, False, "$0.009000"),
        (1.23456, False, False, "$1.2346"),
        (0.0, True, False, "unknown"),
        (0.5, True, False, "$0.5000+"),
        (0.5, False, True, "~$0.5000"),
        (0.001, True, True, "~$0.001000+"),
    ],
    ids=["zero", "a-cent", "under-a-cent", "rounded", "unknown", "lower-bound", "estimate", "estimated-lower-bound"],
)
def test_money(cost: float, unknown: bool, estimated: bool, text: str) -> None:
    assert cost_text(cost, unknown, estimated) == text
    assert money(usage(0, 0, cost, unknown=unknown, estimated=estimated)) == text


@pytest.mark.parametrize(
    ("spent", "text"),
    [(usage(360, 73, 0), "360 in / 73 out tokens"), (usage(360, 73, 0, estimated=True), "~360 in / ~73 out tokens")],
    ids=["reported", "estimated"],
)
def test_tokens(spent: pb.Usage, text: str) -> None:
    assert tokens(spent) == text


@pytest.mark.parametrize(
    ("secs", "text"),
    [(0.0, "0.0s"), (3.25, "3.2s"), (59.9, "59.9s"), (60.0, "1m00s"), (125.7, "2m05s"), (3600.0, "60m00s")],
    ids=["zero", "fraction", "under-a-minute", "a-minute", "minutes", "an-hour"],
)
def test_seconds(secs: float, text: str) -> None:
    assert seconds(secs) == text


@pytest.mark.parametrize(
    ("count", "text"), [(0, "0 files"), (1, "1 file"), (2, "2 files")], ids=["none", "one", "several"]
)
def test_plural(count: int, text: str) -> None:
    assert plural(count, "file") == text


@pytest.mark.parametrize(
    ("agent", "name"),
    [(pb.AGENT_ARCHITECT, "Architect"), (pb.AGENT_DOCUMENTER, "Documenter"), (0, "?"), (99, "?")],
    ids=["architect", "documenter", "unspecified", "unknown"],
)
def test_agent_names(agent: int, name: str) -> None:
    assert agent_name(agent) == name


def a_run() -> list[pb.RunEvent]:
    """A one-stage run: its plan, the Architect's tokens, its completion."""
    return [
        started([pb.AGENT_ARCHITECT], refinements=0, secs=5.0, cost=0.001),
        event(2, 1000.5, stage_started=pb.StageStarted(stage=1, agent=pb.AGENT_ARCHITECT, model=MINI)),
        event(3, 1001.0, token_delta=pb.TokenDelta(stage=1, text="# Design\n")),
        event(4, 1001.5, token_delta=pb.TokenDelta(stage=1, text="One module.")),
        event(
            5,
            1003.0,
            stage_completed=pb.StageCompleted(
                stage=1,
                agent=pb.AGENT_ARCHITECT,
                model=MINI,
                usage=usage(100, 20, 0.00018),
                duration=Duration(seconds=2),
            ),
        ),
        run_completed(4, 1, 0, True),
    ]


def test_plain_output_of_a_whole_run() -> None:
    out, err = io.StringIO(), io.StringIO()
    renderer = PlainRenderer(out, err)
    for e in a_run():
        renderer.event(e)
    renderer.close()
    row = "  ".join(
        cell.ljust(width)
        for cell, width in zip(
            ("1", "Architect", MINI, "100 in / 20 out", "2.0s", "$0.000180"), (3, 22, 32, 24, 8, 10), strict=True
        )
    ).rstrip()
    assert out.getvalue().splitlines() == [
        "Run r-1",
        "Plan: Architect (up to 0 refinement rounds), ~5.0s, ~$0.0010",
        "== [1/1] Architect - openai:gpt-4.1-mini",
        "# Design",
        "One module.",  # ended by the next line, not glued to it
        "-- [1] done in 2.0s: 100 in / 20 out tokens, $0.000180 (run so far: 3.0s, $0.000180)",
        "Run completed in 4.0s, review approved: 1 file, 0 refinements, 1000 in / 200 out tokens, $0.0123",
        "",
        row,
    ]
    assert "\x1b" not in out.getvalue()
    assert err.getvalue() == ""


def test_plain_summary_says_output_truncated_after_the_cost_not_in_the_agent_column() -> None:
    # The Agent column holds the agent: "Architect, output truncated" there widened the column for every row and
    # read as an agent's name (issue 21 item 13). The note ends the row instead; the columns still line up.
    run = a_run()
    run[4].stage_completed.truncated = True
    run.insert(
        5,
        event(
            6,
            1003.5,
            stage_completed=pb.StageCompleted(
                stage=2, agent=pb.AGENT_CODER, model=MINI, usage=usage(5, 6, 0.0001), duration=Duration(seconds=1)
            ),
        ),
    )
    out = io.StringIO()
    renderer = PlainRenderer(out, io.StringIO())
    for e in run:
        renderer.event(e)
    renderer.close()
    rows = out.getvalue().splitlines()[-2:]
    assert rows[0].startswith("1    Architect  ")
    assert "Architect," not in rows[0]
    assert rows[0].endswith("$0.000180   output truncated")
    assert rows[1].startswith("2    Coder  ")
    assert "truncated" not in rows[1]
    for first, second in ((MINI, MINI), ("100 in", "5 in"), ("2.0s", "1.0s"), ("$0.000180", "$0.000100")):
        assert rows[0].index(first) == rows[1].index(second)
    assert rows == [row.rstrip() for row in rows]  # no trailing blanks


def test_plain_notes_go_to_stderr_once_per_break() -> None:
    out, err = io.StringIO(), io.StringIO()
    renderer = PlainRenderer(out, err)
    renderer.event(token("half a line"))
    renderer.connection_lost(1, "UNAVAILABLE")
    renderer.connection_lost(2, "UNAVAILABLE")
    renderer.connection_back(3.0, "UNAVAILABLE")
    renderer.note("watch it again with: facilitair watch r-1")
    renderer.close()
    assert out.getvalue() == "half a line\n"  # stdout and stderr are different places: nothing glued
    assert err.getvalue() == "connection lost (UNAVAILABLE); reconnecting\nwatch it again with: facilitair watch r-1\n"


def test_jsonl_writes_one_line_per_event_as_protobuf_json() -> None:
    out = io.StringIO()
    renderer = JsonlRenderer(out, io.StringIO())
    renderer.event(pb.RunEvent(run_id="r-1", seq=3, heartbeat=pb.Heartbeat()))
    renderer.event(event(4, 1000.25, token_delta=pb.TokenDelta(stage=2, text="é\n")))
    renderer.close()
    assert out.getvalue().splitlines() == [
        '{"event":{"runId":"r-1","seq":"3","heartbeat":{}}}',
        '{"event":{"runId":"r-1","seq":"4","time":"1970-01-01T00:16:40.250Z",'
        '"tokenDelta":{"stage":2,"text":"\\u00e9\\n"}}}',  # ASCII JSON
    ]
    assert renderer.view.run_id == "r-1"
