"""The `facilitair` command: run, watch, files, status, runs, cancel, info, completion, and approve, revise, edit
and reject for runs paused at an approval gate; `serve` and `config`
come from the server package when it is installed (server_commands.py).

Exit codes: 0 completed, 1 run failed or cancelled (or the server refused the request, or
--require-approval and the review did not approve), 2 usage error, 3 server unavailable, 4 not
authenticated, 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import os
import re
import shlex
import sys
from collections.abc import Sequence
from importlib import metadata
from typing import NoReturn

from facilitair.cli.approvals import approval_command
from facilitair.cli.args import add_client_commands
from facilitair.cli.commands import unary_command
from facilitair.cli.common import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, CommandFailed, exit_code_for
from facilitair.cli.completion import SCRIPTS
from facilitair.cli.follow import run_command, watch_command
from facilitair.cli.inputs import UsageError
from facilitair.cli.server_commands import add_server_commands
from facilitair.client import FacilitairError, ServerUnreachable, StatusCode

__all__ = ["exit_code_for", "main"]


def _version() -> str:
    try:
        return metadata.version("facilitair")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


# argparse's words for a value not among the choices (of a flag, or of the subcommands: dest command, action).
_INVALID_CHOICE = re.compile(r"argument (?P<arg>\S+): invalid choice: '(?P<word>.*?)' \(choose from (?P<choices>.*)\)$")
_SUBCOMMAND_DESTS = ("command", "action")


class _Parser(argparse.ArgumentParser):
    """argparse, with a suggestion for a mistyped command or value instead of the list of every choice."""

    def error(self, message: str) -> NoReturn:
        """Exit 2 with the usage and one line saying what is wrong."""
        invalid = _INVALID_CHOICE.match(message)
        if invalid is not None:
            word = invalid["word"]
            choices = re.findall(r"'([^']*)'", invalid["choices"])
            close = difflib.get_close_matches(word, choices, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"choose from: {', '.join(choices)}"
            what = "unknown command" if invalid["arg"] in _SUBCOMMAND_DESTS else f"{invalid['arg']}: invalid choice"
            self.print_usage(sys.stderr)
            self.exit(EXIT_USAGE, f"{self.prog}: {what} {word!r}; {hint}\n")
        super().error(message)


def _parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = _Parser(prog="facilitair", description="Run a team of LLM agents on a coding task.")
    parser.add_argument("--version", action="version", version=f"facilitair {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    add_server_commands(sub, argv)
    add_client_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `facilitair` command."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = _parser(argv)
    args, extra = parser.parse_known_args(argv)
    if extra:
        _refuse_extra(parser, args, extra)
    if args.command == "completion":
        print(SCRIPTS[args.shell](parser), end="")
        return EXIT_OK
    try:
        return _dispatch(args)
    except BrokenPipeError:
        # The reader went away (e.g. `status | head`): stop quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK


def _refuse_extra(parser: argparse.ArgumentParser, args: argparse.Namespace, extra: list[str]) -> NoReturn:
    """Words argparse did not take; words after a task are most likely the rest of an unquoted task."""
    if args.command == "run" and args.task not in (None, "-") and not any(e.startswith("-") for e in extra):
        task = " ".join([args.task, *extra])
        shown = f'"{task}"' if not set(task) & set('"$`\\!') else shlex.quote(task)
        parser.exit(EXIT_USAGE, f"facilitair: the task is one argument: quote it, as in facilitair run {shown}\n")
    parser.error(f"unrecognized arguments: {' '.join(extra)}")


def _unauthenticated(args: argparse.Namespace, err: FacilitairError) -> str:
    """What to do about UNAUTHENTICATED, in the CLI's words (the server's name an HTTP header)."""
    if getattr(args, "cert", None) is not None:  # mutual TLS: the server's words say what the certificate lacks
        return err.message
    if not getattr(args, "api_key", None):
        return "the server needs an API key: give it with --api-key KEY or FACILITAIR_API_KEY"
    return "the server refused the API key given (--api-key or FACILITAIR_API_KEY)"


def _dispatch(args: argparse.Namespace) -> int:
    handler = getattr(args, "handler", None)
    if handler is not None:  # a command another package added (server_commands.py)
        return int(handler(args))
    try:
        if args.command == "run":
            return asyncio.run(run_command(args))
        if args.command == "watch":
            return asyncio.run(watch_command(args))
        if args.command in ("approve", "revise", "edit", "reject"):
            return asyncio.run(approval_command(args))
        return asyncio.run(unary_command(args))
    except UsageError as exc:
        print(f"facilitair: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except CommandFailed as exc:
        print(f"facilitair: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except ServerUnreachable as err:
        print(err.message, file=sys.stderr)
        return exit_code_for(err)
    except FacilitairError as err:
        message = _unauthenticated(args, err) if err.code == StatusCode.UNAUTHENTICATED else err.message
        print(f"facilitair: {err.code.name}: {message}", file=sys.stderr)
        for field, description in err.field_violations:
            if description not in err.message:
                print(f"  {field}: {description}", file=sys.stderr)
        return exit_code_for(err)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
