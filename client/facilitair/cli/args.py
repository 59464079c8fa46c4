"""The client commands' flags: run, watch, files, status, cancel, runs, info, completion, and the approval
gates' approve, revise, edit and reject.

Numbers are checked here, so a bad one is a usage error (exit 2) with a sentence, never a traceback.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path
from typing import Any

from facilitair.client import Agent, RunState

DEFAULT_TARGET = "127.0.0.1:50051"
# As people type them: "awaiting-approval" for RUN_STATE_AWAITING_APPROVAL.
STATES = [s.name.lower().replace("_", "-") for s in RunState if s is not RunState.UNSPECIFIED]
# The agents a run may pause after (the server's rule; the Refiner is reviewed anyway, the Documenter ends the run).
PAUSABLE = ("architect", "coder", "reviewer", "tester")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _number(kind: str, low: float, text: str) -> float:
    try:
        value = float(text) if kind == "number" else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a {kind}") from None
    if not math.isfinite(value) or value < low:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least {low:g}")
    return value


def count(text: str) -> int:
    """A whole number, 0 or more."""
    return int(_number("whole number", 0, text))


def positive(text: str) -> int:
    """A whole number, 1 or more."""
    return int(_number("whole number", 1, text))


def amount(text: str) -> float:
    """A number above 0 (dollars, seconds)."""
    value = _number("number", 0, text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be more than 0")
    return value


def agents(text: str) -> list[Agent]:
    """--pause-after architect,coder: a comma-separated list of the agents a run may pause after."""
    names = [name.strip().lower() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"name at least one agent: {', '.join(PAUSABLE)}")
    for name in names:
        if name not in PAUSABLE:
            raise argparse.ArgumentTypeError(f"{name!r} is not one of {', '.join(PAUSABLE)}")
    return [Agent[name.upper()] for name in dict.fromkeys(names)]


def duration(text: str) -> float:
    """Seconds, or a number with s, m, h or d: "90", "30m", "2h", "7d"."""
    unit = text[-1:].lower()
    scale = _UNITS.get(unit, 1)
    try:
        return amount(text[:-1] if unit in _UNITS else text) * scale
    except argparse.ArgumentTypeError:
        why = f"{text!r} is not a duration: seconds, or a number with s, m, h or d"
        raise argparse.ArgumentTypeError(why) from None


def _client_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--target",
        default=os.environ.get("FACILITAIR_TARGET", DEFAULT_TARGET),
        metavar="HOST[:PORT]",
        help="server HOST[:PORT] (port 50051 by default), PORT alone (this machine), http://... or https://... "
        "(env FACILITAIR_TARGET)",
    )
    p.add_argument(
        "--api-key",
        default=os.environ.get("FACILITAIR_API_KEY") or os.environ.get("FAC_API_KEY"),
        metavar="KEY",
        help="API key (env FACILITAIR_API_KEY; FAC_API_KEY is read too)",
    )
    p.add_argument("--tls", action="store_true", help="connect with TLS (implied by https://, --ca and --cert)")
    p.add_argument("--ca", type=Path, metavar="FILE", help="CA certificate to trust, PEM (default: the system's)")
    p.add_argument("--cert", type=Path, metavar="FILE", help="client certificate, PEM (mutual TLS)")
    p.add_argument("--key", type=Path, metavar="FILE", help="client private key, PEM (mutual TLS)")


def _stream_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--format", choices=("pretty", "plain", "jsonl"), help="default: pretty on a terminal, plain otherwise"
    )
    p.add_argument(
        "--output-dir",
        type=Path,
        metavar="DIR",
        help="write the final files here, and .facilitair/run.json and .facilitair/events.jsonl",
    )
    p.add_argument(
        "--reconnect-timeout",
        type=amount,
        default=60.0,
        metavar="SECONDS",
        help="if the server goes away, give up (exit 3) after this long without it (default 60)",
    )
    p.add_argument(
        "--require-approval",
        action="store_true",
        help="exit 1 when the run completes but the last review did not approve the code",
    )


def add_client_commands(sub: Any) -> None:
    """Add the client commands to the `facilitair` parser's subcommands."""
    run = sub.add_parser("run", help="start a run and follow it")
    run.add_argument("task", nargs="?", help="the coding task; - reads it from stdin")
    run.add_argument("--task-file", type=Path, metavar="FILE", help="read the task from FILE")
    _client_args(run)
    _stream_args(run)
    run.add_argument("--model", default="", metavar="PROVIDER:MODEL", help="provider:model for every agent")
    run.add_argument(
        "--agent-model",
        action="append",
        default=[],
        metavar="AGENT=PROVIDER:MODEL",
        help="model for one agent (repeatable), e.g. coder=anthropic:claude-sonnet-4-6",
    )
    run.add_argument("--context", metavar="JSON", help='JSON object, e.g. \'{"language": "python"}\'')
    run.add_argument("--context-file", type=Path, metavar="FILE", help="read the context (a JSON object) from FILE")
    run.add_argument(
        "--file",
        action="append",
        type=Path,
        default=[],
        metavar="PATH",
        help='existing code for the agents (repeatable): sent as context {"files": {PATH: content}}',
    )
    run.add_argument("--max-refinements", type=count, metavar="N", help="bound on refinement rounds")
    run.add_argument("--max-cost", type=amount, metavar="USD", help="budget for the run in USD")
    run.add_argument("--max-tokens", type=positive, metavar="N", help="budget for the run in tokens (in + out)")
    run.add_argument(
        "--on-disconnect",
        choices=("continue", "cancel"),
        default="continue",
        help="if this command stops following (killed, output closed): the run goes on (default) or is cancelled",
    )
    run.add_argument(
        "--pause-after",
        type=agents,
        default=[],
        metavar="AGENT[,AGENT...]",
        help="wait for a person after these agents' stages (architect, coder, reviewer, tester): in a terminal "
        "you answer in place, otherwise the approve/revise/edit/reject commands are printed",
    )
    run.add_argument(
        "--approval-timeout",
        type=duration,
        metavar="DURATION",
        help="how long a pause waits for an answer: seconds, or 30m, 2h, 7d (default 24h, at most 7d)",
    )
    run.add_argument(
        "--on-approval-timeout",
        choices=("reject", "approve"),
        help="what a pause nobody answered decides: reject ends the run (default), approve goes on",
    )
    run.add_argument(
        "--cache",
        choices=("off", "read-write", "read-only", "refresh"),
        help="the response cache: reuse and store answers (read-write), only reuse (read-only), only store "
        "(refresh), or neither (off); default: the server's",
    )
    run.add_argument(
        "--webhook",
        metavar="URL",
        help="a URL the server posts the run's end to, signed (only if the server allows request URLs and the host)",
    )
    run.add_argument("--detach", action="store_true", help="print the run id and return; the run goes on")
    run.add_argument("--request-id", metavar="ID", help="idempotency key: retrying with it attaches to the same run")

    watch = sub.add_parser("watch", help="follow a run (replays what you missed)")
    watch.add_argument("run_id")
    watch.add_argument("--after", type=count, default=0, metavar="SEQ", help="only events after this seq")
    _client_args(watch)
    _stream_args(watch)

    files = sub.add_parser("files", help="list a finished run's files, or write them into DIR")
    files.add_argument("run_id")
    files.add_argument("dir", nargs="?", type=Path, help="write the files here (created if missing)")
    _client_args(files)
    files.add_argument("--json", action="store_true", help="print the files (paths and contents) as JSON")

    for name, text in (("status", "show a run"), ("cancel", "cancel a run")):
        p = sub.add_parser(name, help=text)
        p.add_argument("run_id")
        _client_args(p)
        p.add_argument("--json", action="store_true", help="print the run as JSON")

    runs = sub.add_parser("runs", help="list your runs, newest first")
    _client_args(runs)
    runs.add_argument("--state", choices=STATES)
    runs.add_argument("--limit", type=positive, default=20, metavar="N", help="how many runs (default 20)")
    runs.add_argument(
        "--page-token", default="", metavar="TOKEN", help="start after the runs a previous listing showed"
    )
    runs.add_argument("--json", action="store_true", help="print JSON")

    _approval_commands(sub)

    info = sub.add_parser("info", help="what the server offers: version, providers, models, limits, store")
    _client_args(info)
    info.add_argument("--json", action="store_true", help="print the server's answer as JSON")

    completion = sub.add_parser("completion", help="print a shell completion script")
    completion.add_argument("shell", choices=("bash", "zsh", "fish"))


def _approval_commands(sub: Any) -> None:
    """approve, revise, edit, reject: answer a run that waits at an approval gate (run --pause-after)."""
    run_help = "the run: its id, a unique prefix of it, or last"
    approve = sub.add_parser("approve", help="approve the output a paused run waits on; the run goes on")
    approve.add_argument("run_id", metavar="RUN", help=run_help)
    approve.add_argument("--comment", default="", metavar="TEXT", help="a note recorded with the approval")
    revise = sub.add_parser("revise", help="run the paused stage again with your comment in its prompt")
    revise.add_argument("run_id", metavar="RUN", help=run_help)
    revise.add_argument("comment", metavar="COMMENT", help="what to change")
    edit = sub.add_parser(
        "edit", help="edit the paused stage's design or files in $EDITOR; later stages read your version"
    )
    edit.add_argument("run_id", metavar="RUN", help=run_help)
    edit.add_argument(
        "paths",
        nargs="*",
        metavar="RUN_PATH",  # a path among the stage's files, not a local one (no file-name completion)
        help="the stage's files to edit (default: all of them, or its text)",
    )
    edit.add_argument("--comment", default="", metavar="TEXT", help="a note recorded with the edit")
    reject = sub.add_parser("reject", help="reject the paused stage's output: the run ends, cancelled")
    reject.add_argument("run_id", metavar="RUN", help=run_help)
    reject.add_argument("comment", nargs="?", default="", metavar="WHY", help="the reason, recorded with the run")
    for p in (approve, revise, edit, reject):
        _client_args(p)
        p.add_argument("--json", action="store_true", help="print the recorded decision as JSON")
