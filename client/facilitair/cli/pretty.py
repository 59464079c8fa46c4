"""The `pretty` view: a rule per stage, tokens as they come, a status line while nothing streams, a summary.

The status line says why the screen is quiet, counting in place: "waiting for the model (15s)" before
the first token and during a provider stall (thinking and heartbeat events), "retrying in 12s" after an
attempt_reset with a delay, "connection lost ...; reconnecting" while the client reconnects; with the
stage n/N, the run's elapsed time and its cost so far.
"""

from __future__ import annotations

import math
import sys
import time
from typing import IO

from rich.console import Console
from rich.rule import Rule
from rich.table import Table
from rich.text import Text

from facilitair.cli.render import RunView, describe, reset_line, same_terminal, seconds
from facilitair.cli.screen import Screen
from facilitair.client import EventKind, event_kind
from facilitair.v1 import orchestrator_pb2 as pb

_SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
# The style of the lines of events shown as they are described (render.describe); any other kind is dim.
_LINE_STYLES = {EventKind.MODEL_FALLBACK: "yellow", EventKind.RUN_STARTED: "bold"}


def clock(d: float) -> str:
    """Whole seconds for a status line: "42s", "2m07s"."""
    d = max(d, 0.0)
    return f"{int(d)}s" if d < 60 else f"{int(d // 60)}m{int(d % 60):02d}s"


class PrettyRenderer:
    """A live terminal view of a run."""

    def __init__(self, console: Console | None = None, err: IO[str] | None = None) -> None:
        self.view = RunView()
        self.console = console or Console(highlight=False)
        self.screen = Screen(self.console)
        self._err = err or sys.stderr
        # Notes share the screen when stderr shows where stdout does; otherwise they are stderr's lines.
        self._notes_on_screen = console is not None or same_terminal(self.console.file, self._err)
        self._waiting_since: float | None = None
        self._retry_until: float | None = None
        self._lost: tuple[int, str, float] | None = None  # attempt, error, since
        self._status_started = False

    # ----- the status line -------------------------------------------------------------------------------------

    def _status(self) -> Text | None:
        now = time.monotonic()
        if self._lost is not None:
            attempt, error, since = self._lost
            # The count first: gRPC's reasons are long, and the line is cut at the terminal's width.
            head = f"reconnecting, attempt {attempt} ({clock(now - since)}): {error.split(';')[0]}"
        elif self._retry_until is not None and now < self._retry_until:
            head = f"retrying in {math.ceil(self._retry_until - now)}s"
        elif self._waiting_since is not None:
            head = f"waiting for the model ({clock(now - self._waiting_since)})"
        else:
            return None  # text is streaming, or nothing is running: the text says it all
        frame = _SPINNER[int(now * 12) % len(_SPINNER)]
        view = self.view
        where = f" · [{view.position(view.current)}] {view.stages[view.current].agent}" if view.current else ""
        tail = f"{where} · {clock(view.elapsed())} · {view.cost_so_far()}"
        style = "yellow" if self._lost or self._retry_until else "cyan"
        return Text.assemble((f"{frame} {head}", style), (tail, "dim"))

    def _start_status(self) -> None:
        if not self._status_started:
            self._status_started = True
            self.screen.status(self._status)

    # ----- events ------------------------------------------------------------------------------------------------

    def event(self, event: pb.RunEvent) -> None:
        """Show one event."""
        view = self.view
        view.track(event)
        kind = event_kind(event)
        now = time.monotonic()
        if kind is EventKind.TOKEN_DELTA:
            self._waiting_since = None
            self._retry_until = None
            self.screen.text(event.token_delta.text)
            return
        self._start_status()
        if kind is EventKind.STAGE_STARTED:
            s = event.stage_started
            title = (
                f"[{view.position(s.stage)}] {view.stages[s.stage].label} · {s.model} · "
                f"{clock(view.elapsed())} · {view.cost_so_far()}"
            )
            self.screen.end_text()
            self.screen.block(Rule(Text(title, style="bold cyan")))
            self._waiting_since = now
            self._retry_until = None
        elif kind is EventKind.THINKING:
            if self._retry_until is None or now >= self._retry_until:
                self._waiting_since = now - event.thinking.waited_seconds
        elif kind is EventKind.HEARTBEAT:
            if view.current and self._waiting_since is None:
                quiet = view.last_time - view.last_token_time if view.last_token_time else 0.0
                self._waiting_since = now - max(quiet, 0.0)
        elif kind is EventKind.ATTEMPT_RESET:
            reset = event.attempt_reset
            self.screen.end_text()
            self.screen.block(reset_line(reset, view.discarded), style="yellow")
            self._retry_until = now + reset.delay.ToNanoseconds() / 1e9
            self._waiting_since = self._retry_until
        elif kind is EventKind.REVIEW_VERDICT:
            self._lines(event, "green" if event.review_verdict.approved else "yellow")
        elif kind is EventKind.STAGE_COMPLETED:
            self._waiting_since = None
            self._lines(event, "dim")
        elif kind is EventKind.TESTS_STARTED:
            self.screen.end_text()
            self.screen.block(Rule(Text(describe(event, view)[0].removeprefix("== "), style="bold cyan")))
        elif kind is EventKind.TESTS_FINISHED:
            self._lines(event, "green" if event.tests_finished.tests_passed else "yellow")
        elif kind is EventKind.RUN_COMPLETED:
            self._finish(event, "bold green" if event.run_completed.result.approved else "bold yellow")
        elif kind in (EventKind.RUN_FAILED, EventKind.RUN_CANCELLED):
            self._finish(event, "bold red")
        else:
            self._lines(event, _LINE_STYLES.get(kind, "dim"))

    def _lines(self, event: pb.RunEvent, style: str) -> None:
        lines = describe(event, self.view)
        if lines:
            self.screen.end_text()
        for line in lines:
            self.screen.block(line, style=style)

    def _finish(self, event: pb.RunEvent, style: str) -> None:
        self._waiting_since = self._retry_until = None
        self.screen.status(None)
        self._lines(event, style)
        rows = self.view.summary_rows()
        if rows:
            table = Table(title="Stages", title_justify="left")
            noted = any(row[-1] for row in rows)  # the Note column only when a stage has one
            for column in ("#", "Agent", "Model", "Tokens", "Time", "Cost", "Note")[: 7 if noted else 6]:
                table.add_column(column, justify="right" if column in ("#", "Time", "Cost") else "left")
            for row in rows:
                table.add_row(*row[: 7 if noted else 6])
            self.screen.block(table)

    # ----- the CLI's own messages ----------------------------------------------------------------------------------

    def note(self, text: str, *, warning: bool = False) -> None:
        """A line of the CLI's own, on a row of its own (never glued into the model's text)."""
        if self._notes_on_screen:
            self.screen.note(text, style="yellow" if warning else None)
        else:
            print(text, file=self._err, flush=True)

    def connection_lost(self, attempt: int, error: str) -> None:
        """One status line that counts the reconnect attempts in place."""
        since = self._lost[2] if self._lost is not None else time.monotonic()
        self._lost = (attempt, error, since)
        self._start_status()
        if not self.screen.live and attempt == 1:
            self.note(f"connection lost ({error}); reconnecting", warning=True)

    def connection_back(self, after: float, error: str) -> None:
        """The status line turns into one line that stays."""
        self._lost = None
        self.note(f"reconnected after {seconds(after)} (connection lost: {error})", warning=True)

    def close(self) -> None:
        """Take the status line away and end on a fresh row."""
        self.screen.close()
