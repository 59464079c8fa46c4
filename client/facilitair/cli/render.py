"""How the CLI shows a run: `plain` (text, no escape codes) and `jsonl` (one JSON per message) here,
`pretty` (live, rich) in pretty.py. What they share: RunView, what is remembered of a run, and
`describe`, the words for each event.

Every renderer gets the events in seq order exactly once (the client library resumes and drops
duplicates) and writes tokens the moment they arrive.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from typing import IO, Any, Protocol

from google.protobuf import json_format

from facilitair.cli import testrun
from facilitair.client import Agent, EventKind, StatusCode, event_kind
from facilitair.v1 import orchestrator_pb2 as pb

# Said of a stage whose model stopped at max_tokens (StageCompleted.truncated).
TRUNCATED = "output truncated (the model reached max_tokens)"
# The plain summary's columns (stage, agent, model, tokens, time, cost, note): their least widths.
SUMMARY_WIDTHS = (3, 22, 32, 24, 8, 10, 0)
# The summary's note on a stage whose model stopped at max_tokens: after the cost, never in the Agent column.
TRUNCATED_NOTE = "output truncated"
SummaryRow = tuple[str, str, str, str, str, str, str]
# Agents whose stages belong to a refinement round; the others run once, whatever the round number says.
_ROUND_AGENTS = ("Refiner", "Reviewer")


def agent_name(agent: int) -> str:
    """ "Architect" for AGENT_ARCHITECT."""
    if agent not in Agent._value2member_map_ or agent == 0:
        return "?"
    return Agent(agent).name.capitalize()


def plural(count: int, word: str) -> str:
    """ "1 file", "2 files"."""
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def money(usage: pb.Usage) -> str:
    """Cost as text; a lower bound is marked, an unknown cost says so, an estimate starts with "~"."""
    return cost_text(usage.cost_usd, usage.cost_unknown, usage.estimated)


def tokens(usage: pb.Usage) -> str:
    """ "360 in / 73 out tokens"; "~360 in / ~73 out tokens" when some counts are estimates (Usage.estimated)."""
    about = "~" if usage.estimated else ""
    return f"{about}{usage.input_tokens} in / {about}{usage.output_tokens} out tokens"


def cost_text(cost: float, unknown: bool = False, estimated: bool = False) -> str:
    """A USD amount; small amounts keep their digits; `unknown` marks a lower bound, `estimated` an estimate."""
    if unknown and cost == 0:
        return "unknown"
    text = f"${cost:.4f}" if cost >= 0.01 or cost == 0 else f"${cost:.6f}"
    return ("~" if estimated else "") + text + ("+" if unknown else "")


def seconds(d: float) -> str:
    """A duration for people."""
    return f"{d:.1f}s" if d < 60 else f"{int(d // 60)}m{int(d % 60):02d}s"


def event_json(event: pb.RunEvent) -> str:
    """One event as the line `--format jsonl` and events.jsonl both write: {"event": {...}}."""
    return json.dumps(json_format.MessageToDict(pb.WatchRunResponse(event=event)), separators=(",", ":"))


def same_terminal(out: IO[str], err: IO[str]) -> bool:
    """True when both streams end up in the same place (a terminal, or `2>&1`): notes must not glue into text."""
    try:
        return os.path.samestat(os.fstat(out.fileno()), os.fstat(err.fileno()))
    except (OSError, ValueError, AttributeError):
        return False


@dataclass
class StageRow:
    """What the summary table shows of one stage."""

    agent: str
    model: str
    round: int
    usage: pb.Usage | None = None
    duration: float = 0.0
    truncated: bool = False

    @property
    def label(self) -> str:
        """ "Refiner (round 1)"; Tester and Documenter run once, so no round."""
        return self.agent + (f" (round {self.round})" if self.round and self.agent in _ROUND_AGENTS else "")


@dataclass
class RunView:
    """What renderers remember of a run."""

    run_id: str = ""
    stages: dict[int, StageRow] = field(default_factory=dict)
    final: pb.RunEvent | None = None
    planned: int = 0  # stages in the plan (the first review approving)
    rounds: int = 0  # refinement rounds started: each adds a Refiner and a Reviewer stage (and a Test run)
    round_steps: int = 2  # stages a refinement round adds: 3 when the plan has a Test run step
    current: int = 0  # the stage running now
    cost: float = 0.0
    cost_unknown: bool = False
    cost_estimated: bool = False  # a completed stage's usage holds estimates (an attempt cut off and retried)
    started: float | None = None  # server time of run_started, seconds
    last_time: float = 0.0  # server time of the latest event
    last_seen: float = 0.0  # time.monotonic() when it arrived
    last_token_time: float = 0.0  # server time of the latest token
    shown: dict[int, int] = field(default_factory=dict)  # characters shown of each stage's current attempt
    discarded: bool = False  # the latest attempt_reset voided text that was shown
    files: dict[str, str] = field(default_factory=dict)  # the kind of each file announced, by path

    @property
    def total(self) -> int:
        """Stages the run will have if no further round runs."""
        return self.planned + self.round_steps * self.rounds

    def elapsed(self) -> float:
        """Seconds since the run started, by the server's clock, counting on locally since the last event."""
        if self.started is None:
            return 0.0
        if self.final is not None:
            return self.last_time - self.started
        return self.last_time - self.started + time.monotonic() - self.last_seen

    def track(self, event: pb.RunEvent) -> None:
        """Remember what the summary and the status line need."""
        self.run_id = self.run_id or event.run_id
        self.last_time = event.time.ToNanoseconds() / 1e9
        self.last_seen = time.monotonic()
        kind = event_kind(event)
        if kind is EventKind.RUN_STARTED:
            self.planned = len(event.run_started.plan.stages)
            self.round_steps = 3 if any(s.test_run for s in event.run_started.plan.stages) else 2
            self.started = self.last_time
        elif kind is EventKind.STAGE_STARTED:
            s = event.stage_started
            self.stages[s.stage] = StageRow(agent_name(s.agent), s.model, s.round)
            self.current = s.stage
            self.rounds = max(self.rounds, s.round)
            self.shown[s.stage] = 0
        elif kind is EventKind.TOKEN_DELTA:
            stage = event.token_delta.stage
            self.shown[stage] = self.shown.get(stage, 0) + len(event.token_delta.text)
            self.last_token_time = self.last_time
        elif kind is EventKind.ATTEMPT_RESET:
            self.discarded = self.shown.get(event.attempt_reset.stage, 0) > 0
            self.shown[event.attempt_reset.stage] = 0
        elif kind is EventKind.STAGE_COMPLETED:
            c = event.stage_completed
            row = self.stages.setdefault(c.stage, StageRow(agent_name(c.agent), c.model, 0))
            row.usage = c.usage
            row.model = c.model
            row.duration = c.duration.ToNanoseconds() / 1e9
            row.truncated = c.truncated
            self.cost += c.usage.cost_usd
            self.cost_unknown = self.cost_unknown or c.usage.cost_unknown
            self.cost_estimated = self.cost_estimated or c.usage.estimated
            self.current = 0
        elif kind is EventKind.ARTIFACT_PRODUCED:
            produced = event.artifact_produced.artifact
            self.files[produced.path] = kind_name(produced.kind)
        elif kind in (EventKind.RUN_COMPLETED, EventKind.RUN_FAILED, EventKind.RUN_CANCELLED):
            self.final = event
            self.current = 0

    def cost_so_far(self) -> str:
        """The cost of the stages completed so far, as text."""
        return cost_text(self.cost, self.cost_unknown, self.cost_estimated)

    def position(self, stage: int) -> str:
        """ "3/5": the stage's place among those the run will have."""
        return f"{stage}/{max(self.total, stage)}" if self.total else str(stage)

    def summary_rows(self) -> list[SummaryRow]:
        """(stage, agent, model, tokens, time, cost, note) per completed stage; the note is empty or TRUNCATED_NOTE."""
        rows = []
        for number, s in sorted(self.stages.items()):
            if s.usage is None:
                continue
            counts = tokens(s.usage).removesuffix(" tokens")
            note = TRUNCATED_NOTE if s.truncated else ""
            rows.append((str(number), s.label, s.model, counts, seconds(s.duration), money(s.usage), note))
        return rows


class Renderer(Protocol):
    """Shows events and messages of the CLI itself."""

    view: RunView

    def event(self, event: pb.RunEvent) -> None:
        """Show one event."""
        ...

    def note(self, text: str, *, warning: bool = False) -> None:
        """Tell the user something that is not an event (how to watch again, where the files are)."""
        ...

    def connection_lost(self, attempt: int, error: str) -> None:
        """The stream broke; the client reconnects (called once per attempt)."""
        ...

    def connection_back(self, after: float, error: str) -> None:
        """The stream is back after `after` seconds."""
        ...

    def close(self) -> None:
        """Finish the output."""
        ...


class _Notes:
    """Notes on stderr, for the renderers whose stdout is text or JSON, one line per reconnect."""

    def __init__(self, out: IO[str], err: IO[str]) -> None:
        self._out = out
        self._err = err
        self._glued = same_terminal(out, err)
        self.at_line_start = True

    def note(self, text: str, *, warning: bool = False) -> None:
        """A line on stderr, after ending stdout's unfinished line when both show in one place."""
        del warning  # no colours here
        if self._glued and not self.at_line_start:
            self._out.write("\n")
            self._out.flush()
            self.at_line_start = True
        print(text, file=self._err, flush=True)

    def connection_lost(self, attempt: int, error: str) -> None:
        """Say it once per break, not once per attempt."""
        if attempt == 1:
            self.note(f"connection lost ({error}); reconnecting")

    def connection_back(self, after: float, error: str) -> None:
        """The text going on says it."""


class JsonlRenderer(_Notes):
    """One protobuf-JSON object per streamed message, one per line, flushed per line."""

    def __init__(self, out: IO[str] = sys.stdout, err: IO[str] = sys.stderr) -> None:
        super().__init__(out, err)
        self.view = RunView()

    def event(self, event: pb.RunEvent) -> None:
        """Write the message carrying the event."""
        self.view.track(event)
        self._out.write(event_json(event) + "\n")
        self._out.flush()

    def close(self) -> None:
        """Nothing to finish."""


class PlainRenderer(_Notes):
    """Readable text with no escape codes, for pipes and logs."""

    def __init__(self, out: IO[str] = sys.stdout, err: IO[str] = sys.stderr) -> None:
        super().__init__(out, err)
        self.view = RunView()

    def _line(self, text: str) -> None:
        if not self.at_line_start:
            self._out.write("\n")
        self._out.write(text + "\n")
        self._out.flush()
        self.at_line_start = True

    def event(self, event: pb.RunEvent) -> None:
        """Write the event as text; tokens are written as they come."""
        self.view.track(event)
        kind = event_kind(event)
        if kind is EventKind.TOKEN_DELTA:
            text = event.token_delta.text
            self._out.write(text)
            self._out.flush()
            self.at_line_start = text.endswith("\n") or (self.at_line_start and not text)
            return
        for line in describe(event, self.view):
            self._line(line)
        if self.view.final is event:
            self._summary()

    def _summary(self) -> None:
        rows = self.view.summary_rows()
        if rows:
            # Each column as wide as its widest cell (a fallback chain's model is long), at least the usual width.
            widths = [max(least, *(len(row[i]) for row in rows)) for i, least in enumerate(SUMMARY_WIDTHS)]
            self._line("")
            for row in rows:
                self._line("  ".join(f"{cell:<{w}}" for cell, w in zip(row, widths, strict=True)).rstrip())

    def close(self) -> None:
        """End on a fresh line."""
        if not self.at_line_start:
            self._out.write("\n")
            self._out.flush()
            self.at_line_start = True


def _plan_line(plan: pb.Plan) -> str:
    steps = " -> ".join("Test run" if s.test_run else agent_name(s.agent) for s in plan.stages)
    cost = f"~${plan.estimated_cost_usd:.4f}" if plan.HasField("estimated_cost_usd") else "cost unknown"
    rounds = plural(plan.max_refinements, "refinement round")
    learned = f" (estimate from {plural(plan.history_stages, 'earlier stage')})" if plan.history_stages else ""
    return f"Plan: {steps} (up to {rounds}), ~{seconds(plan.estimated_seconds)}, {cost}{learned}"


def completed_line(done: pb.RunCompleted) -> str:
    """The line that ends a completed run; an unapproved review says so first."""
    verdict = "approved" if done.result.approved else "not approved"
    return (
        f"Run completed in {seconds(done.duration.ToNanoseconds() / 1e9)}, review {verdict}: "
        f"{plural(len(done.result.artifacts), 'file')}, {plural(done.result.refinements, 'refinement')}"
        f"{testrun.result_note(done.result)}, {tokens(done.usage)}, {money(done.usage)}"
    )


def describe(event: pb.RunEvent, view: RunView) -> list[str]:
    """The lines plain text shows for an event other than a token (none for heartbeats)."""
    kind = event_kind(event)
    lines: list[str] = []
    if kind is EventKind.RUN_STARTED:
        lines = [f"Run {event.run_id}", _plan_line(event.run_started.plan)]
    elif kind is EventKind.STAGE_STARTED:
        s = event.stage_started
        row = view.stages[s.stage]
        lines = [f"== [{view.position(s.stage)}] {row.label} - {s.model}"]
    elif kind is EventKind.THINKING:
        lines = [f"   ... waiting for the model ({event.thinking.waited_seconds:.0f}s)"]
    elif kind is EventKind.STAGE_COMPLETED:
        c = event.stage_completed
        cut = f"; {TRUNCATED}" if c.truncated else ""
        lines = [
            f"-- [{c.stage}] done in {seconds(c.duration.ToNanoseconds() / 1e9)}{cut}: "
            f"{tokens(c.usage)}, {money(c.usage)}"
            f" (run so far: {seconds(view.elapsed())}, {view.cost_so_far()})"
        ]
    elif kind is EventKind.REVIEW_VERDICT:
        v = event.review_verdict
        head = "approved" if v.approved else f"changes requested ({plural(len(v.issues), 'issue')})"
        if not v.well_formed:
            head += " - the verdict was malformed"
        lines = [f"Review: {head}"] + [
            f"  - [{i.severity}] {i.file + ': ' if i.file else ''}{i.description}" for i in v.issues
        ]
    elif kind is EventKind.ARTIFACT_PRODUCED:
        lines = [artifact_line(event.artifact_produced.artifact, view)]
    elif kind is EventKind.ATTEMPT_RESET:
        lines = [reset_line(event.attempt_reset, view.discarded)]
    elif kind is EventKind.MODEL_FALLBACK:
        fb = event.model_fallback
        lines = [f"!! [{fb.stage}] giving up on {fb.from_model} ({fb.reason}); falling back to {fb.to_model}"]
    elif kind is EventKind.TESTS_STARTED:
        lines = [testrun.started_line(event.tests_started, view.position(event.tests_started.stage))]
    elif kind is EventKind.TESTS_OUTPUT:
        lines = [testrun.output_line(event.tests_output)]
    elif kind is EventKind.TESTS_FINISHED:
        lines = testrun.finished_lines(event.tests_finished)
    elif kind is EventKind.CACHE_HIT:
        hit = event.cache_hit
        lines = [
            f"   [{hit.stage}] from the response cache (run {hit.source_run_id}, stage {hit.source_stage}): "
            f"saved {tokens(hit.saved)}, {money(hit.saved)}"
        ]
    elif kind is EventKind.RUN_COMPLETED:
        lines = [completed_line(event.run_completed)]
    elif kind is EventKind.RUN_FAILED:
        f = event.run_failed
        hint = " (retrying may help)" if f.retryable else ""
        code = StatusCode(f.code).name if f.code in StatusCode._value2member_map_ else str(f.code)
        lines = [f"Run failed: {code}: {f.message}{hint} ({spent(f.usage)})"]
    elif kind is EventKind.RUN_CANCELLED:
        lines = [f"Run cancelled: {event.run_cancelled.reason} ({spent(event.run_cancelled.usage)})"]
    return lines


def kind_name(kind: int) -> str:
    """ "code" for ARTIFACT_KIND_CODE."""
    return pb.ArtifactKind.Name(pb.ArtifactKind.ValueType(kind)).removeprefix("ARTIFACT_KIND_").lower()


def artifact_line(a: pb.Artifact, view: RunView) -> str:
    """ "+ src/rev.py (code, 4 lines, version 2)"; a file kept beside another kind's says where it was written."""
    about = f"{kind_name(a.kind)}, {plural(len(a.content.splitlines()), 'line')}"
    if a.version > 1:
        about += f", version {a.version}"
    if a.requested_path:
        holder = view.files.get(a.requested_path)
        whose = f"the {holder}'s path" if holder else "another file's path"
        about += f"; written as {a.requested_path}, {whose}"
    return f"+ {a.path} ({about})"


def spent(usage: pb.Usage) -> str:
    """What a run that ended early spent: "~" marks the estimates of a stage cut off before it reported usage."""
    return f"{tokens(usage)}, {money(usage)} spent"


def reset_line(reset: pb.AttemptReset, discarded: bool) -> str:
    """ "!! [3] attempt 2 in 12s: provider overloaded" and, only if text was shown, that it is void."""
    delay = reset.delay.ToNanoseconds() / 1e9
    when = f" in {seconds(delay)}" if delay >= 0.05 else ""
    void = "; the partial output above is discarded" if discarded else ""
    return f"!! [{reset.stage}] attempt {reset.attempt}{when}: {reset.reason}{void}"


def json_of(message: Any) -> str:
    """A message as indented protobuf JSON (status --json, files --json)."""
    return json.dumps(json_format.MessageToDict(message), indent=2)
