"""`facilitair run` and `facilitair watch`: follow a run to its end and say how it ended.

A run that pauses at an approval gate is asked about in place when a person is at the terminal, and
otherwise the commands that answer it are printed (approvals.py's Gates); following goes on either way.

Ctrl-C in `run` cancels the run after CANCEL_GRACE seconds (a second one before then quits and leaves it going);
in `watch` it detaches.
Output closed early (`run | head`): the run is cancelled when --on-disconnect says so, and otherwise
goes on, and stderr says how to watch it. Every run ends with its id, its files and how to get them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator

from facilitair.cli.approvals import Gates
from facilitair.cli.common import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_UNAVAILABLE, make_client, make_renderer
from facilitair.cli.inputs import agent_models, build_context, read_task
from facilitair.cli.output import OutputDir
from facilitair.cli.render import Renderer, plural
from facilitair.client import RECONNECT_GAVE_UP, Client, EventKind, FacilitairError, OnApprovalTimeout, event_kind
from facilitair.v1 import orchestrator_pb2 as pb

# How long the run's page URL is waited for (GetServerInfo) before the events are shown without it.
PAGE_INFO_TIMEOUT = 2.0

# Files named one by one at the end of a run; more are counted.
_LISTED_FILES = 8
# Seconds between the first Ctrl-C in `run` and the cancel it asks for: time for a second one to leave the run going.
CANCEL_GRACE = 2.0
# How long quitting waits for a CancelRun already sent to reach the server (closing the channel would drop it).
CANCEL_SEND_TIMEOUT = 5.0


async def page_url(client: Client, run_id: str) -> str:
    """The run's web page (http(s)://host:port/runs/ID) when the server serves one, else ""."""
    try:
        async with asyncio.timeout(PAGE_INFO_TIMEOUT):
            base = (await client.server_info()).http_url
    except (FacilitairError, TimeoutError):
        return ""  # only a convenience: the run is followed whatever the answer
    return f"{base}/runs/{run_id}" if base else ""


def _interactive(args: argparse.Namespace) -> bool:
    """A person at a terminal can answer an approval gate in place; otherwise the CLI prints the commands."""
    return args.format != "jsonl" and sys.stdin.isatty() and sys.stdout.isatty()


def _on_timeout(choice: str | None) -> OnApprovalTimeout | None:
    return OnApprovalTimeout[choice.upper()] if choice else None


def _coalesce(args: argparse.Namespace) -> bool:
    """Text views ask for coalesced tokens (less work for everyone); jsonl and --output-dir keep every event."""
    return args.format != "jsonl" and args.output_dir is None


class Follower:
    """Shows one run's events until its end and turns that end into an exit code."""

    def __init__(
        self,
        client: Client,
        renderer: Renderer,
        output: OutputDir | None,
        *,
        require_approval: bool,
        cancel_on_interrupt: bool,
        cancel_on_close: bool = False,
        run_id: str = "",
        ask: bool = False,
    ) -> None:
        self.client = client
        self.renderer = renderer
        self.output = output
        self.require_approval = require_approval
        self.cancel_on_interrupt = cancel_on_interrupt
        self.cancel_on_close = cancel_on_close
        self.run_id = run_id
        self.last_seq = 0
        self._page_told = False
        self._lost: tuple[float, str] | None = None
        self._cancel_sent = False
        self._gates = Gates(client, renderer, ask=ask)
        client.on_reconnect = self._reconnecting

    def _reconnecting(self, attempt: int, delay: float, error: FacilitairError) -> None:
        del delay  # the status line counts the time itself
        if self._lost is None:
            self._lost = (time.monotonic(), error.message)
        self.renderer.connection_lost(attempt, error.message)

    @property
    def current(self) -> str:
        """The run's id as far as known."""
        return self.renderer.view.run_id or self.run_id

    async def _tell_page(self, run_id: str) -> None:
        """Say where the run's web page is, once, when the server serves one (its GetServerInfo's http_url)."""
        self._page_told = True
        page = await page_url(self.client, run_id)
        if page:
            self.renderer.note(f"In a browser: {page}")

    async def _show(self, events: AsyncIterator[pb.RunEvent]) -> None:
        async for event in events:
            if not self._page_told:
                await self._tell_page(event.run_id)
            if self._lost is not None:
                since, error = self._lost
                self._lost = None
                self.renderer.connection_back(time.monotonic() - since, error)
            # Gates look only at events that open or close one (no work per token): while a question is open, and
            # when the view's pending gate changed.
            if self._gates.asking:
                self._gates.before(event)
            waiting = self.renderer.view.awaiting
            self.renderer.event(event)
            self.last_seq = event.seq
            if self.output is not None:
                self.output.event(event)
            if self.renderer.view.awaiting is not waiting:
                self._gates.after(event)

    async def follow(self, events: AsyncIterator[pb.RunEvent]) -> int:
        """Follow to the end (or Ctrl-C, or closed output); return the exit code."""
        loop = asyncio.get_running_loop()
        showing = asyncio.ensure_future(self._show(events))
        presses = 0
        cancelling: asyncio.Task[None] | None = None

        def on_sigint() -> None:
            nonlocal presses, cancelling
            presses += 1
            self._gates.stop("interrupted")  # an open question's row ends before the note below
            if self.cancel_on_interrupt and presses == 1 and self.current:
                # The cancel is sent after a short grace, so that a second Ctrl-C can still leave the run going,
                # as the note promises (sent at once, the run was cancelled whatever the user did next).
                self.renderer.note(
                    f"cancelling run {self.current} in {CANCEL_GRACE:.0f}s; Ctrl-C again to leave it running",
                    warning=True,
                )
                cancelling = loop.create_task(self._cancel(after=CANCEL_GRACE))
                return
            if cancelling is not None and not self._cancel_sent:
                cancelling.cancel()
            showing.cancel()

        loop.add_signal_handler(signal.SIGINT, on_sigint)
        try:
            await showing
        except asyncio.CancelledError:
            self._close_view()
            if self._cancel_sent:
                if cancelling is not None:
                    # The CancelRun already sent must reach the server before the channel closes under it.
                    await asyncio.wait({cancelling}, timeout=CANCEL_SEND_TIMEOUT)
                self.renderer.note(f"quit; run {self.current} is being cancelled. See it with: {self._status_hint()}")
            elif self.current:
                self.renderer.note(f"detached; the run goes on. Follow it with: {self._watch_hint()}", warning=True)
            return EXIT_INTERRUPTED
        except BrokenPipeError:
            return await self._output_closed()
        except FacilitairError as err:
            self._close_view()  # the status line goes, the output dir gets what there was
            if err.reason != RECONNECT_GAVE_UP or not self.current:
                raise
            # The run is the server's: it goes on there (or on another replica) without this client.
            self.renderer.note(err.message, warning=True)
            self.renderer.note(
                f"Run {self.current} goes on on the server (it resumes when the server is back, or on another "
                f"replica). Follow it with: {self._watch_hint()} (and --target ANOTHER_REPLICA when there are several)",
                warning=True,
            )
            return EXIT_UNAVAILABLE
        finally:
            self._gates.stop("not answered")
            loop.remove_signal_handler(signal.SIGINT)
            if cancelling is not None and not cancelling.done() and not self._cancel_sent:
                cancelling.cancel()  # the run ended by itself during the grace: nothing to cancel
        self._close_view()
        code = self._ending()
        if presses:
            final = self.renderer.view.final
            if final is not None and event_kind(final) is EventKind.RUN_CANCELLED:
                return EXIT_INTERRUPTED
        return code

    def _watch_hint(self) -> str:
        after = f" --after {self.last_seq}" if self.last_seq else ""
        return f"facilitair watch {self.current}{after}"

    def _status_hint(self) -> str:
        return f"facilitair status {self.current}"

    async def _cancel(self, after: float = 0.0) -> None:
        if after:
            await asyncio.sleep(after)
        self._cancel_sent = True
        try:
            await self.client.cancel_run(self.current)
        except FacilitairError as err:
            self.renderer.note(f"could not cancel run {self.current}: {err.code.name}: {err.message}", warning=True)

    def _close_view(self) -> None:
        self.renderer.close()
        if self.output is not None:
            written, refused = self.output.finish(self.renderer.view.final)
            for path in written:
                self.renderer.note(f"wrote {self.output.root / path}")
            for path in refused:
                self.renderer.note(f"did not write {path}: it would leave {self.output.root} or enter .facilitair/")

    async def _output_closed(self) -> int:
        """stdout's reader went away: cancel the run or say how to watch it; no more writes to stdout."""
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        if not self.current:
            return EXIT_OK
        if self.cancel_on_close:
            await self._cancel()
            print(f"facilitair: output closed; run {self.current} cancelled (--on-disconnect cancel)", file=sys.stderr)
        else:
            print(f"facilitair: output closed; the run goes on. Follow it with: {self._watch_hint()}", file=sys.stderr)
        return EXIT_OK

    def _ending(self) -> int:
        """Say where the run's results are; the exit code its end calls for."""
        final = self.renderer.view.final
        if final is None:
            return EXIT_FAILED
        if event_kind(final) is not EventKind.RUN_COMPLETED:
            self.renderer.note(f"See the run with: {self._status_hint()}")
            return EXIT_FAILED
        result = final.run_completed.result
        if result.artifacts:  # with --output-dir too: the "wrote" lines do not say which run, nor how to get more
            paths = [a.path for a in result.artifacts]
            shown = ", ".join(paths[:_LISTED_FILES]) + (
                f" and {len(paths) - _LISTED_FILES} more" if len(paths) > _LISTED_FILES else ""
            )
            where = f" in {self.output.root}" if self.output is not None else ""
            self.renderer.note(f"Run {final.run_id}: {plural(len(paths), 'file')}{where}: {shown}")
            self.renderer.note(f"Get them with: facilitair files {final.run_id} DIR")
        if not result.approved:
            self.renderer.note("The last review did not approve the code.", warning=True)
            if self.require_approval:
                self.renderer.note("Exit code 1 (--require-approval).", warning=True)
                return EXIT_FAILED
        return EXIT_OK


def _views(args: argparse.Namespace) -> tuple[Renderer, OutputDir | None]:
    return make_renderer(args.format), OutputDir(args.output_dir) if args.output_dir else None


async def run_command(args: argparse.Namespace) -> int:
    """`facilitair run`."""
    task = read_task(args.task, args.task_file)
    context = build_context(args.context, args.context_file, args.file)
    models = agent_models(args.agent_model)
    renderer, output = _views(args)
    async with make_client(args, reconnect_timeout=args.reconnect_timeout) as client:
        events = client.collaborate(
            task,
            context=context,
            model=args.model,
            agent_models=models,
            max_refinements=args.max_refinements,
            max_cost_usd=args.max_cost,
            max_tokens=args.max_tokens,
            cancel_on_disconnect=args.on_disconnect == "cancel",
            client_request_id=args.request_id,
            coalesce_tokens=_coalesce(args),
            pause_after=args.pause_after,
            approval_timeout=args.approval_timeout,
            on_approval_timeout=_on_timeout(args.on_approval_timeout),
            cache=args.cache or "",
            webhook_url=args.webhook or "",
        )
        if args.detach:
            first = await anext(events)
            await events.aclose()
            print(first.run_id)
            print(f"Follow it with: facilitair watch {first.run_id}", file=sys.stderr)
            page = await page_url(client, first.run_id)
            if page:
                print(f"In a browser: {page}", file=sys.stderr)
            return EXIT_OK
        follower = Follower(
            client,
            renderer,
            output,
            require_approval=args.require_approval,
            cancel_on_interrupt=True,
            cancel_on_close=args.on_disconnect == "cancel",
            ask=_interactive(args),
        )
        return await follower.follow(events)


async def watch_command(args: argparse.Namespace) -> int:
    """`facilitair watch`."""
    renderer, output = _views(args)
    async with make_client(args, reconnect_timeout=args.reconnect_timeout) as client:
        events = client.watch(args.run_id, args.after, coalesce_tokens=_coalesce(args))
        follower = Follower(
            client,
            renderer,
            output,
            require_approval=args.require_approval,
            cancel_on_interrupt=False,
            run_id=args.run_id,
            ask=_interactive(args),
        )
        follower.last_seq = args.after
        return await follower.follow(events)
