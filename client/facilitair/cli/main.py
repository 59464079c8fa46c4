"""The `facilitair` command: serve, run, watch, status, runs, cancel.

Exit codes: 0 completed, 1 run failed or cancelled (or the server refused the request), 2 usage
error, 3 server unavailable, 4 not authenticated, 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from facilitair.cli.output import OutputDir
from facilitair.cli.render import JsonlRenderer, PlainRenderer, PrettyRenderer, Renderer, agent_name, money
from facilitair.cli.server_commands import add_server_commands
from facilitair.client import Client, FacilitairError, StatusCode
from facilitair.v1 import orchestrator_pb2 as pb

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE, EXIT_UNAUTHENTICATED, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130
DEFAULT_TARGET = "127.0.0.1:50051"


def exit_code_for(err: FacilitairError) -> int:
    """The exit code for a failed call."""
    if err.code == StatusCode.UNAVAILABLE:
        return EXIT_UNAVAILABLE
    if err.code == StatusCode.UNAUTHENTICATED:
        return EXIT_UNAUTHENTICATED
    if err.code == StatusCode.INVALID_ARGUMENT:
        return EXIT_USAGE
    return EXIT_FAILED


def _coalesce(args: argparse.Namespace) -> bool:
    """Text views ask for coalesced tokens (less work for everyone); jsonl and --output-dir keep every event."""
    return args.format != "jsonl" and args.output_dir is None


def _renderer(fmt: str | None) -> Renderer:
    fmt = fmt or ("pretty" if sys.stdout.isatty() else "plain")
    if fmt == "jsonl":
        return JsonlRenderer()
    if fmt == "plain":
        return PlainRenderer()
    return PrettyRenderer()


def _parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="facilitair", description="Run a team of LLM agents on a coding task.")
    sub = parser.add_subparsers(dest="command", required=True)
    add_server_commands(sub, argv)

    def client_args(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--target",
            default=os.environ.get("FACILITAIR_TARGET", DEFAULT_TARGET),
            help="server HOST:PORT (env FACILITAIR_TARGET)",
        )
        p.add_argument(
            "--api-key",
            default=os.environ.get("FACILITAIR_API_KEY") or os.environ.get("FAC_API_KEY"),
            help="API key (env FACILITAIR_API_KEY; FAC_API_KEY is read too)",
        )
        p.add_argument("--tls", action="store_true", help="connect with TLS (implied by --ca/--cert)")
        p.add_argument("--ca", type=Path, help="CA certificate to trust, PEM (default: the system's)")
        p.add_argument("--cert", type=Path, help="client certificate, PEM (mutual TLS)")
        p.add_argument("--key", type=Path, help="client private key, PEM (mutual TLS)")

    def stream_args(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--format", choices=("pretty", "plain", "jsonl"), help="default: pretty on a terminal, plain otherwise"
        )
        p.add_argument("--output-dir", type=Path, help="write the final files, run.json and events.jsonl here")
        p.add_argument(
            "--reconnect-timeout",
            type=float,
            default=60.0,
            help="give up (exit 3) after this many seconds without the server (default 60)",
        )

    run = sub.add_parser("run", help="start a run and follow it")
    run.add_argument("task", help="the coding task")
    client_args(run)
    stream_args(run)
    run.add_argument("--model", default="", help="provider:model for every agent")
    run.add_argument(
        "--agent-model",
        action="append",
        default=[],
        metavar="AGENT=PROVIDER:MODEL",
        help="model for one agent (repeatable), e.g. coder=anthropic:claude-sonnet-4-6",
    )
    run.add_argument("--context", help='JSON object, e.g. \'{"language": "python"}\'')
    run.add_argument("--max-refinements", type=int, help="bound on refinement rounds")
    run.add_argument("--detach", action="store_true", help="print the run id and return; the run goes on")
    run.add_argument("--request-id", help="idempotency key: retrying with it attaches to the same run")

    watch = sub.add_parser("watch", help="follow a run (replays what you missed)")
    watch.add_argument("run_id")
    watch.add_argument("--after", type=int, default=0, metavar="SEQ", help="only events after this seq")
    client_args(watch)
    stream_args(watch)

    for name, text in (("status", "show a run"), ("cancel", "cancel a run")):
        p = sub.add_parser(name, help=text)
        p.add_argument("run_id")
        client_args(p)
        p.add_argument("--json", action="store_true", help="print the run as JSON")

    runs = sub.add_parser("runs", help="list your runs, newest first")
    client_args(runs)
    runs.add_argument("--state", choices=[n.removeprefix("RUN_STATE_").lower() for n in pb.RunState.keys()[1:]])
    runs.add_argument("--limit", type=int, default=20)
    runs.add_argument("--page-token", default="")
    runs.add_argument("--json", action="store_true", help="print JSON")
    return parser


def _context(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"--context is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise UsageError("--context must be a JSON object")
    return value


def _agent_models(pairs: Sequence[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        agent, sep, model = pair.partition("=")
        if not sep:
            raise UsageError(f"--agent-model {pair!r} is not AGENT=PROVIDER:MODEL")
        out[agent.strip()] = model.strip()
    return out


class UsageError(Exception):
    """A command line the CLI can refuse before asking the server."""


def _client(args: argparse.Namespace, **kwargs: Any) -> Client:
    """A client from the common flags."""

    def read(path: Path | None) -> bytes | None:
        if path is None:
            return None
        try:
            return path.read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read {path}: {exc.strerror}") from None

    if (args.cert is None) != (args.key is None):
        raise UsageError("--cert and --key go together")
    return Client(
        args.target,
        api_key=args.api_key,
        tls=args.tls,
        root_certificates=read(args.ca),
        certificate_chain=read(args.cert),
        private_key=read(args.key),
        **kwargs,
    )


async def _follow(
    client: Client, events: AsyncIterator[pb.RunEvent], renderer: Renderer, output: OutputDir | None
) -> int:
    """Show every event; return the exit code the run's end calls for."""
    try:
        async for event in events:
            renderer.event(event)
            if output is not None:
                output.event(event)
    finally:
        renderer.close()
        if output is not None:
            for path in output.finish(renderer.view.final):
                renderer.note(f"wrote {output.root / path}")
    final = renderer.view.final
    return EXIT_OK if final is not None and final.WhichOneof("payload") == "run_completed" else EXIT_FAILED


def _views(args: argparse.Namespace) -> tuple[Renderer, OutputDir | None]:
    """The renderer and the optional output directory of run and watch."""
    return _renderer(args.format), OutputDir(args.output_dir) if args.output_dir else None


def _following_client(args: argparse.Namespace, renderer: Renderer) -> Client:
    """A client for run and watch that tells the user when it reconnects."""
    client = _client(args, reconnect_timeout=args.reconnect_timeout)
    client.on_reconnect = lambda n, delay, err: renderer.note(
        f"connection lost ({err.message}); reconnecting in {delay:.1f}s (attempt {n})"
    )
    return client


async def _run(args: argparse.Namespace) -> int:
    renderer, output = _views(args)
    async with _following_client(args, renderer) as client:
        events = client.collaborate(
            args.task,
            context=_context(args.context),
            model=args.model,
            agent_models=_agent_models(args.agent_model),
            max_refinements=args.max_refinements,
            client_request_id=args.request_id,
            coalesce_tokens=_coalesce(args),
        )
        if args.detach:
            first = await anext(events)
            await events.aclose()
            print(first.run_id)
            return EXIT_OK
        return await _interruptible(client, events, renderer, output, cancel_on_interrupt=True)


async def _watch(args: argparse.Namespace) -> int:
    renderer, output = _views(args)
    async with _following_client(args, renderer) as client:
        events = client.watch(args.run_id, args.after, coalesce_tokens=_coalesce(args))
        return await _interruptible(client, events, renderer, output, cancel_on_interrupt=False, run_id=args.run_id)


async def _interruptible(
    client: Client,
    events: AsyncIterator[pb.RunEvent],
    renderer: Renderer,
    output: OutputDir | None,
    *,
    cancel_on_interrupt: bool,
    run_id: str = "",
) -> int:
    """Follow a run; Ctrl-C cancels it (run) or detaches (watch); a second Ctrl-C quits at once."""
    loop = asyncio.get_running_loop()
    follow = asyncio.ensure_future(_follow(client, events, renderer, output))
    presses = 0
    background: set[asyncio.Task[None]] = set()

    async def cancel(current: str) -> None:
        try:
            await client.cancel_run(current)
        except FacilitairError as err:
            renderer.note(f"could not cancel run {current}: {err.code.name}: {err.message}")

    def on_sigint() -> None:
        nonlocal presses
        presses += 1
        current = renderer.view.run_id or run_id
        if cancel_on_interrupt and presses == 1 and current:
            renderer.note(f"cancelling run {current}... (Ctrl-C again to quit and leave it running)")
            task = loop.create_task(cancel(current))
            background.add(task)
            task.add_done_callback(background.discard)
            return
        follow.cancel()

    loop.add_signal_handler(signal.SIGINT, on_sigint)
    try:
        code = await follow
    except asyncio.CancelledError:
        current = renderer.view.run_id or run_id
        if current:
            renderer.note(f"detached; the run goes on. Watch it again with: facilitair watch {current}")
        return EXIT_INTERRUPTED
    finally:
        loop.remove_signal_handler(signal.SIGINT)
    if presses:
        final = renderer.view.final
        if final is not None and final.WhichOneof("payload") == "run_cancelled":
            renderer.note(f"run cancelled. See it with: facilitair status {final.run_id}")
        return EXIT_INTERRUPTED
    return code


def _print_summary(run: pb.RunSummary, as_json: bool) -> None:
    if as_json:
        print(json.dumps(json_format.MessageToDict(run), indent=2))
        return
    state = pb.RunState.Name(run.state).removeprefix("RUN_STATE_").lower()
    print(f"run      {run.run_id}\nstate    {state}\ntask     {run.task}")
    if run.current_stage:
        print(f"stage    {run.current_stage} ({agent_name(run.current_agent)})")
    print(
        f"events   {run.last_seq}\nusage    {run.usage.input_tokens} in / {run.usage.output_tokens} out tokens, "
        f"{money(run.usage)}"
    )
    if run.HasField("failure"):
        print(f"failure  {run.failure.message}")
    for artifact in run.result.artifacts:
        print(f"file     {artifact.path}")


async def _unary(args: argparse.Namespace) -> int:
    async with _client(args) as client:
        if args.command == "status":
            _print_summary(await client.get_run(args.run_id), args.json)
        elif args.command == "cancel":
            run = await client.cancel_run(args.run_id)
            _print_summary(run, args.json)
        else:
            state = pb.RunState.Value("RUN_STATE_" + args.state.upper()) if args.state else 0
            runs, token = await client.list_runs(state=state, page_size=args.limit, page_token=args.page_token)
            if args.json:
                print(json.dumps({"runs": [json_format.MessageToDict(r) for r in runs], "next_page_token": token}))
                return EXIT_OK
            for r in runs:
                created = r.created_at.ToDatetime().strftime("%Y-%m-%d %H:%M:%S")
                state_name = pb.RunState.Name(r.state).removeprefix("RUN_STATE_").lower()
                print(f"{r.run_id}  {created}  {state_name:<11}  {money(r.usage):>9}  {r.task[:60]}")
            if token:
                print(f"more: facilitair runs --page-token {token}")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `facilitair` command."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser(argv).parse_args(argv)
    try:
        return _dispatch(args)
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): stop quietly; a run goes on on the server.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK


def _dispatch(args: argparse.Namespace) -> int:
    handler = getattr(args, "handler", None)
    if handler is not None:  # a command another package added (server_commands.py)
        return int(handler(args))
    try:
        if args.command == "run":
            return asyncio.run(_run(args))
        if args.command == "watch":
            return asyncio.run(_watch(args))
        return asyncio.run(_unary(args))
    except UsageError as exc:
        print(f"facilitair: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except FacilitairError as err:
        print(f"facilitair: {err.code.name}: {err.message}", file=sys.stderr)
        for field, description in err.field_violations:
            print(f"  {field}: {description}", file=sys.stderr)
        return exit_code_for(err)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
