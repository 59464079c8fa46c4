"""Commands that other installed packages add to `facilitair` (the server's `serve`, `config`, ...).

They are found through the `facilitair.commands` entry point group, so this package never names a server
module. Each entry point is a function that adds one subcommand to the parser, with a `handler(args) -> int`
default. Only the command being run is loaded (the server's modules are heavier than the client's), except
for `facilitair --help` and `facilitair completion`, which load them all: the help says what each command
does, and the completion script knows every flag. A command whose package is installed without its extra
says which extra to install instead of failing with an ImportError.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib.metadata import EntryPoint, entry_points
from typing import Any

GROUP = "facilitair.commands"
EXIT_USAGE = 2


def add_server_commands(subparsers: Any, argv: Sequence[str]) -> None:
    """Add every installed command; load the one `argv` runs, list the rest."""
    wanted = next((a for a in argv if not a.startswith("-")), None)
    every = wanted == "completion" or (wanted is None and bool({"-h", "--help"} & set(argv)))
    for entry in sorted(entry_points(group=GROUP), key=lambda e: e.name):
        if every or entry.name == wanted:
            _load(entry, subparsers)
        else:
            subparsers.add_parser(entry.name, help=f"the server's {entry.name} command", add_help=False)


def _load(entry: EntryPoint, subparsers: Any) -> None:
    try:
        add = entry.load()
    except ImportError as exc:
        missing = exc.name or "a dependency"
        parser = subparsers.add_parser(
            entry.name, add_help=False, help="needs the server: pip install 'facilitair[server]'"
        )
        parser.add_argument("rest", nargs=argparse.REMAINDER)
        parser.set_defaults(handler=lambda _args: _not_installed(entry.name, missing))
        return
    add(subparsers)


def _not_installed(command: str, missing: str) -> int:
    print(
        f"facilitair: `{command}` needs the server, which is not installed ({missing} is missing): "
        "pip install 'facilitair[server]', or pip install '.[server]' in a clone of the repository",
        file=sys.stderr,
    )
    return EXIT_USAGE
