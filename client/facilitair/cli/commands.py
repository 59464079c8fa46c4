"""The one-call commands: `status`, `cancel`, `runs`, `files` and `info`."""

from __future__ import annotations

import argparse
import json
import shutil
import sys

from google.protobuf import json_format

from facilitair.cli.approvals import decision_commands
from facilitair.cli.common import EXIT_OK, CommandFailed, make_client
from facilitair.cli.info import print_info
from facilitair.cli.output import make_folder, write_files
from facilitair.cli.render import agent_name, json_of, money, plural, requested_line, state_name, tokens
from facilitair.client import ArtifactKind, Client, EventKind, RunState, event_kind
from facilitair.v1 import orchestrator_pb2 as pb

_PAGE_MAX = 100  # the server's largest page
_DEFAULT_LIMIT = 20
_UNFINISHED = (RunState.QUEUED, RunState.RUNNING, RunState.INTERRUPTED, RunState.AWAITING_APPROVAL)


def one_line(text: str, width: int) -> str:
    """`text` on one line, cut to `width` characters with an ellipsis."""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: max(width - 1, 0)] + "…"


def _print_summary(run: pb.RunSummary, as_json: bool) -> None:
    if as_json:
        print(json_of(run))
        return
    print(f"run      {run.run_id}\nstate    {state_name(run.state)}\ntask     {one_line(run.task, 200)}")
    if run.current_stage:
        print(f"stage    {run.current_stage} ({agent_name(run.current_agent)})")
    print(f"events   {run.last_seq}\nusage    {tokens(run.usage)}, {money(run.usage)}")
    if run.HasField("pending_approval"):
        print(f"gate     {requested_line(run.pending_approval).removeprefix('?? ')}")
        print("\n".join(["answer   with one of:", *decision_commands(run.run_id)]))
    if run.HasField("failure"):
        print(f"failure  {run.failure.message}")
    if run.result.artifacts:
        print(f"files    {plural(len(run.result.artifacts), 'file')}: facilitair files {run.run_id} [DIR]")
        if not run.result.approved:
            print("review   not approved")


async def _runs(client: Client, args: argparse.Namespace) -> None:
    state = RunState[args.state.upper().replace("-", "_")] if args.state else None
    runs: list[pb.RunSummary] = []
    token = args.page_token
    while True:  # pages of at most 100 until --limit runs or the last page
        page, token = await client.list_runs(
            state=state, page_size=min(args.limit - len(runs), _PAGE_MAX), page_token=token
        )
        runs += page
        if not token or len(runs) >= args.limit:
            break
    if args.json:
        print(json.dumps({"runs": [json_format.MessageToDict(r) for r in runs], "nextPageToken": token}))
        return
    if not runs:
        print(f"no runs{' in state ' + args.state if args.state else ''}")
        return
    # The state column as wide as the longest state shown ("awaiting-approval" only when one is listed).
    wide = max(11, *(len(state_name(r.state)) for r in runs))
    head = f"{'RUN':<36}  {'CREATED':<19}  {'STATE':<{wide}}  {'COST':>9}  "
    width = max(shutil.get_terminal_size((120, 24)).columns - len(head), 20) if sys.stdout.isatty() else 60
    print(head + "TASK")
    for r in runs:
        created = r.created_at.ToDatetime().strftime("%Y-%m-%d %H:%M:%S")
        shown = state_name(r.state)
        print(f"{r.run_id:<36}  {created}  {shown:<{wide}}  {money(r.usage):>9}  {one_line(r.task, width)}")
    if token:
        more = f"facilitair runs --page-token {token}"
        more += f" --state {args.state}" if args.state else ""
        more += f" --limit {args.limit}" if args.limit != _DEFAULT_LIMIT else ""
        print(f"more: {more}")


async def _produced(client: Client, run_id: str) -> list[pb.Artifact]:
    """The latest version of each file a run announced, in the order the paths were first written.

    A run that ended early (cancelled, failed) has no result, but its artifact_produced events hold every file
    it stored: those are its files.
    """
    latest: dict[str, pb.Artifact] = {}
    async for event in client.watch(run_id, 0, coalesce_tokens=True):
        if event_kind(event) is EventKind.ARTIFACT_PRODUCED:
            latest[event.artifact_produced.artifact.path] = event.artifact_produced.artifact
    return list(latest.values())


async def _files(client: Client, args: argparse.Namespace) -> None:
    run = await client.get_run(args.run_id)
    state = state_name(run.state)
    if RunState(run.state) in _UNFINISHED:
        raise CommandFailed(
            f"run {run.run_id} is {state}; its files come when it completes: facilitair watch {run.run_id}"
        )
    if RunState(run.state) is RunState.COMPLETED:
        artifacts = list(run.result.artifacts)
    else:
        artifacts = await _produced(client, run.run_id)
        if not artifacts:
            raise CommandFailed(f"run {run.run_id} was {state} before it produced any file")
        print(
            f"run {run.run_id} was {state}: these are the files it produced before it ended "
            "(the latest version of each)",
            file=sys.stderr,
        )
    if args.json:
        print(json.dumps([json_format.MessageToDict(a) for a in artifacts], indent=2))
        return
    if args.dir is None:
        width = max((len(a.path) for a in artifacts), default=0)
        for a in artifacts:
            kind = ArtifactKind(a.kind).name.lower() if a.kind in ArtifactKind._value2member_map_ else "?"
            print(f"{a.path:<{width}}  {kind:<6}  {plural(len(a.content.splitlines()), 'line')}")
        print(f"Write them with: facilitair files {run.run_id} DIR", file=sys.stderr)
        return
    make_folder(args.dir)
    written, refused = write_files(args.dir, artifacts)
    for path in written:
        print(f"wrote {args.dir / path}")
    for path in refused:
        print(f"facilitair: did not write {path}: it would leave {args.dir}", file=sys.stderr)


async def unary_command(args: argparse.Namespace) -> int:
    """status, cancel, runs, files, info."""
    async with make_client(args) as client:
        if args.command == "info":
            print_info(await client.server_info(), client.target, args.json)
        elif args.command == "status":
            _print_summary(await client.get_run(args.run_id), args.json)
        elif args.command == "cancel":
            _print_summary(await client.cancel_run(args.run_id), args.json)
        elif args.command == "files":
            await _files(client, args)
        else:
            await _runs(client, args)
    return EXIT_OK
