"""The `facilitair` command: run, watch, files, status, runs, cancel, info, completion; `serve` and `config`
come from the server package when it is installed (server_commands.py).

Exit codes: 0 completed, 1 run failed or cancelled (or the server refused the request, or
--require-approval and the review did not approve), 2 usage error, 3 server unavailable, 4 not
authenticated, 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from importlib import metadata

from facilitair.cli.args import add_client_commands
from facilitair.cli.commands import unary_command
from facilitair.cli.common import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, CommandFailed, exit_code_for
from facilitair.cli.completion import bash_script, zsh_script
from facilitair.cli.follow import run_command, watch_command
from facilitair.cli.inputs import UsageError
from facilitair.cli.server_commands import add_server_commands
from facilitair.client import FacilitairError, ServerUnreachable

__all__ = ["exit_code_for", "main"]


def _version() -> str:
    try:
        return metadata.version("facilitair")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def _parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="facilitair", description="Run a team of LLM agents on a coding task.")
    parser.add_argument("--version", action="version", version=f"facilitair {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    add_server_commands(sub, argv)
    add_client_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `facilitair` command."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = _parser(argv)
    args = parser.parse_args(argv)
    if args.command == "completion":
        print(bash_script(parser) if args.shell == "bash" else zsh_script(parser), end="")
        return EXIT_OK
    try:
        return _dispatch(args)
    except BrokenPipeError:
        # The reader went away (e.g. `status | head`): stop quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK


def _dispatch(args: argparse.Namespace) -> int:
    handler = getattr(args, "handler", None)
    if handler is not None:  # a command another package added (server_commands.py)
        return int(handler(args))
    try:
        if args.command == "run":
            return asyncio.run(run_command(args))
        if args.command == "watch":
            return asyncio.run(watch_command(args))
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
        print(f"facilitair: {err.code.name}: {err.message}", file=sys.stderr)
        for field, description in err.field_violations:
            if description not in err.message:
                print(f"  {field}: {description}", file=sys.stderr)
        return exit_code_for(err)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
