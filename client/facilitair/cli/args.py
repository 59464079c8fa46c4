"""The client commands' flags: run, watch, files, status, cancel, runs, info, completion.

Numbers are checked here, so a bad one is a usage error (exit 2) with a sentence, never a traceback.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path
from typing import Any

from facilitair.client import RunState

DEFAULT_TARGET = "127.0.0.1:50051"
STATES = [s.name.lower() for s in RunState if s is not RunState.UNSPECIFIED]


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
        "--cache",
        choices=("off", "read-write", "read-only", "refresh"),
        help="the response cache: reuse and store answers (read-write), only reuse (read-only), only store "
        "(refresh), or neither (off); default: the server's",
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

    info = sub.add_parser("info", help="what the server offers: version, providers, models, limits, store")
    _client_args(info)
    info.add_argument("--json", action="store_true", help="print the server's answer as JSON")

    completion = sub.add_parser("completion", help="print a shell completion script")
    completion.add_argument("shell", choices=("bash", "zsh", "fish"))
