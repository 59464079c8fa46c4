"""How the CLI shows a run: `pretty` (rich, live), `plain` (text, no escape codes), `jsonl` (one JSON per message).

Every renderer gets the events in seq order exactly once (the client library resumes and drops
duplicates) and writes tokens the moment they arrive.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from typing import IO, Protocol

from google.protobuf import json_format
from rich.console import Console, RenderableType
from rich.live import Live
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from facilitair.v1 import orchestrator_pb2 as pb

STATUS_NAMES = {
    0: "OK", 1: "CANCELLED", 2: "UNKNOWN", 3: "INVALID_ARGUMENT", 4: "DEADLINE_EXCEEDED", 5: "NOT_FOUND",
    6: "ALREADY_EXISTS", 7: "PERMISSION_DENIED", 8: "RESOURCE_EXHAUSTED", 9: "FAILED_PRECONDITION", 10: "ABORTED",
    11: "OUT_OF_RANGE", 12: "UNIMPLEMENTED", 13: "INTERNAL", 14: "UNAVAILABLE", 15: "DATA_LOSS", 16: "UNAUTHENTICATED",
}  # fmt: skip


def agent_name(agent: int) -> str:
    """ "Architect" for AGENT_ARCHITECT."""
    if agent not in pb.Agent.values():
        return "?"
    return pb.Agent.Name(pb.Agent.ValueType(agent)).removeprefix("AGENT_").capitalize()


def money(usage: pb.Usage) -> str:
    """Cost as text; a lower bound is marked, an unknown cost says so."""
    if usage.cost_unknown and usage.cost_usd == 0:
        return "unknown"
    cost = usage.cost_usd
    text = f"${cost:.4f}" if cost >= 0.01 or cost == 0 else f"${cost:.6f}"
    return text + ("+" if usage.cost_unknown else "")


def seconds(d: float) -> str:
    """A duration for people."""
    return f"{d:.1f}s" if d < 60 else f"{int(d // 60)}m{int(d % 60):02d}s"


@dataclass
class StageRow:
    """What the summary table shows of one stage."""

    agent: str
    model: str
    round: int
    usage: pb.Usage | None = None
    duration: float = 0.0


@dataclass
class RunView:
    """What renderers remember of a run."""

    run_id: str = ""
    stages: dict[int, StageRow] = field(default_factory=dict)
    final: pb.RunEvent | None = None

    def track(self, event: pb.RunEvent) -> None:
        """Remember what the summary needs."""
        self.run_id = self.run_id or event.run_id
        kind = event.WhichOneof("payload")
        if kind == "stage_started":
            s = event.stage_started
            self.stages[s.stage] = StageRow(agent_name(s.agent), s.model, s.round)
        elif kind == "stage_completed":
            c = event.stage_completed
            row = self.stages.setdefault(c.stage, StageRow(agent_name(c.agent), c.model, 0))
            row.usage = c.usage
            row.model = c.model
            row.duration = c.duration.ToNanoseconds() / 1e9
        elif kind in ("run_completed", "run_failed", "run_cancelled"):
            self.final = event

    def summary_rows(self) -> list[tuple[str, str, str, str, str, str]]:
        """(stage, agent, model, tokens, time, cost) per completed stage."""
        rows = []
        for number, s in sorted(self.stages.items()):
            if s.usage is None:
                continue
            label = s.agent + (f" (round {s.round})" if s.round else "")
            tokens = f"{s.usage.input_tokens} in / {s.usage.output_tokens} out"
            rows.append((str(number), label, s.model, tokens, seconds(s.duration), money(s.usage)))
        return rows


class Renderer(Protocol):
    """Shows events and messages of the CLI itself."""

    view: RunView

    def event(self, event: pb.RunEvent) -> None:
        """Show one event."""
        ...

    def note(self, text: str) -> None:
        """Tell the user something that is not an event (reconnecting, how to watch again)."""
        ...

    def close(self) -> None:
        """Finish the output."""
        ...


class JsonlRenderer:
    """One protobuf-JSON object per streamed message, one per line, flushed per line."""

    def __init__(self, out: IO[str] = sys.stdout, err: IO[str] = sys.stderr) -> None:
        self.view = RunView()
        self._out = out
        self._err = err

    def event(self, event: pb.RunEvent) -> None:
        """Write the message carrying the event."""
        self.view.track(event)
        message = json_format.MessageToDict(pb.WatchRunResponse(event=event))
        self._out.write(json.dumps(message, separators=(",", ":")) + "\n")
        self._out.flush()

    def note(self, text: str) -> None:
        """Notes go to stderr so stdout stays pure JSON lines."""
        print(text, file=self._err, flush=True)

    def close(self) -> None:
        """Nothing to finish."""


class PlainRenderer:
    """Readable text with no escape codes, for pipes and logs."""

    def __init__(self, out: IO[str] = sys.stdout, err: IO[str] = sys.stderr) -> None:
        self.view = RunView()
        self._out = out
        self._err = err
        self._at_line_start = True

    def _line(self, text: str) -> None:
        if not self._at_line_start:
            self._out.write("\n")
        self._out.write(text + "\n")
        self._out.flush()
        self._at_line_start = True

    def event(self, event: pb.RunEvent) -> None:
        """Write the event as text; tokens are written as they come."""
        self.view.track(event)
        kind = event.WhichOneof("payload")
        if kind == "token_delta":
            text = event.token_delta.text
            self._out.write(text)
            self._out.flush()
            self._at_line_start = text.endswith("\n")
            return
        for line in describe(event, self.view):
            self._line(line)
        if kind in ("run_completed", "run_failed", "run_cancelled"):
            self._summary()

    def _summary(self) -> None:
        rows = self.view.summary_rows()
        if rows:
            self._line("")
            for row in rows:
                self._line("  ".join(f"{cell:<{w}}" for cell, w in zip(row, (3, 22, 32, 24, 8, 10), strict=True)))

    def note(self, text: str) -> None:
        """Notes go to stderr."""
        print(text, file=self._err, flush=True)

    def close(self) -> None:
        """End on a fresh line."""
        if not self._at_line_start:
            self._out.write("\n")
            self._out.flush()


def describe(event: pb.RunEvent, view: RunView) -> list[str]:
    """The lines plain text shows for an event other than a token (none for heartbeats)."""
    kind = event.WhichOneof("payload")
    if kind == "run_started":
        plan = event.run_started.plan
        steps = " -> ".join(agent_name(s.agent) for s in plan.stages)
        cost = f"~${plan.estimated_cost_usd:.4f}" if plan.HasField("estimated_cost_usd") else "cost unknown"
        return [
            f"Run {event.run_id}",
            f"Plan: {steps} (up to {plan.max_refinements} refinement rounds), "
            f"~{seconds(plan.estimated_seconds)}, {cost}",
        ]
    if kind == "stage_started":
        s = event.stage_started
        return [f"== [{s.stage}] {agent_name(s.agent)} - {s.model}" + (f" - round {s.round}" if s.round else "")]
    if kind == "thinking":
        return [f"   ... waiting for the model ({event.thinking.waited_seconds:.0f}s)"]
    if kind == "stage_completed":
        c = event.stage_completed
        return [
            f"-- [{c.stage}] done in {seconds(c.duration.ToNanoseconds() / 1e9)}: "
            f"{c.usage.input_tokens} in / {c.usage.output_tokens} out tokens, {money(c.usage)}"
        ]
    if kind == "review_verdict":
        v = event.review_verdict
        head = "approved" if v.approved else f"changes requested ({len(v.issues)} issues)"
        if not v.well_formed:
            head += " - the verdict was malformed"
        return [f"Review: {head}"] + [
            f"  - [{i.severity}] {i.file + ': ' if i.file else ''}{i.description}" for i in v.issues
        ]
    if kind == "artifact_produced":
        a = event.artifact_produced.artifact
        kind_name = pb.ArtifactKind.Name(a.kind).removeprefix("ARTIFACT_KIND_").lower()
        return [f"+ {a.path} ({kind_name}, {len(a.content.splitlines())} lines)"]
    if kind == "attempt_reset":
        r = event.attempt_reset
        return [f"!! [{r.stage}] attempt {r.attempt}: the partial output above is discarded ({r.reason})"]
    if kind == "run_completed":
        done = event.run_completed
        verdict = "approved" if done.result.approved else "not approved"
        return [
            f"Run completed in {seconds(done.duration.ToNanoseconds() / 1e9)}: {len(done.result.artifacts)} files, "
            f"review {verdict}, {done.result.refinements} refinements, "
            f"{done.usage.input_tokens} in / {done.usage.output_tokens} out tokens, {money(done.usage)}"
        ]
    if kind == "run_failed":
        f = event.run_failed
        hint = " (retrying may help)" if f.retryable else ""
        return [f"Run failed: {STATUS_NAMES.get(f.code, str(f.code))}: {f.message}{hint}"]
    if kind == "run_cancelled":
        return [f"Run cancelled: {event.run_cancelled.reason} ({money(event.run_cancelled.usage)} spent)"]
    return []


class _Waiting:
    """A spinner line whose elapsed time counts up on every refresh."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.since = time.monotonic()
        self.spinner = Spinner("dots")

    def __rich__(self) -> RenderableType:
        self.spinner.update(text=Text(f"{self.label} {time.monotonic() - self.since:.0f}s", style="dim"))
        return self.spinner


class PrettyRenderer:
    """A live terminal view: a header per stage, tokens as they come, a spinner while waiting, a summary."""

    def __init__(self, console: Console | None = None) -> None:
        self.view = RunView()
        self.console = console or Console(highlight=False)
        self._live: Live | None = None
        self._in_text = False

    def _stop_spinner(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def _spinner(self, label: str) -> None:
        self._stop_spinner()
        self._live = Live(_Waiting(label), console=self.console, transient=True, refresh_per_second=8)
        self._live.start()

    def _print(self, renderable: RenderableType | str, style: str | None = None) -> None:
        self._stop_spinner()
        if self._in_text:
            self.console.file.write("\n")
            self._in_text = False
        self.console.print(renderable, style=style, markup=False)

    def event(self, event: pb.RunEvent) -> None:
        """Show one event."""
        self.view.track(event)
        kind = event.WhichOneof("payload")
        if kind == "token_delta":
            self._stop_spinner()
            self.console.file.write(event.token_delta.text)
            self.console.file.flush()
            self._in_text = not event.token_delta.text.endswith("\n")
        elif kind == "stage_started":
            s = event.stage_started
            title = f"[{s.stage}] {agent_name(s.agent)} · {s.model}" + (f" · round {s.round}" if s.round else "")
            self._stop_spinner()
            self.console.rule(Text(title, style="bold cyan"))
            self._spinner(f"{agent_name(s.agent)} is thinking…")
        elif kind in ("thinking", "heartbeat"):
            pass  # the spinner counts the waiting time itself
        elif kind == "run_started":
            for line in describe(event, self.view):
                self._print(line, style="bold")
        elif kind == "review_verdict":
            style = "green" if event.review_verdict.approved else "yellow"
            for line in describe(event, self.view):
                self._print(line, style=style)
        elif kind in ("run_failed", "run_cancelled"):
            for line in describe(event, self.view):
                self._print(line, style="bold red")
            self._table()
        elif kind == "run_completed":
            for line in describe(event, self.view):
                self._print(line, style="bold green")
            self._table()
        else:
            for line in describe(event, self.view):
                self._print(line, style="dim")

    def _table(self) -> None:
        rows = self.view.summary_rows()
        if not rows:
            return
        table = Table(title="Stages", title_justify="left")
        for column in ("#", "Agent", "Model", "Tokens", "Time", "Cost"):
            table.add_column(column, justify="right" if column in ("#", "Time", "Cost") else "left")
        for row in rows:
            table.add_row(*row)
        self._print(table)

    def note(self, text: str) -> None:
        """Notes go to the terminal's stderr."""
        self._stop_spinner()
        Console(stderr=True, highlight=False).print(text, style="yellow", markup=False)

    def close(self) -> None:
        """Stop the spinner and end on a fresh line."""
        self._stop_spinner()
        if self._in_text:
            self.console.file.write("\n")
            self._in_text = False
