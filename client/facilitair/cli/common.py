"""What every client command shares: exit codes, the client built from the common flags, the view."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from facilitair.cli.inputs import UsageError
from facilitair.cli.pretty import PrettyRenderer
from facilitair.cli.render import JsonlRenderer, PlainRenderer, Renderer
from facilitair.client import Client, FacilitairError, StatusCode

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE, EXIT_UNAUTHENTICATED, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130


class CommandFailed(Exception):
    """The command cannot do what was asked (not a usage error): its message, exit code 1."""


def exit_code_for(err: FacilitairError) -> int:
    """The exit code for a failed call."""
    if err.code == StatusCode.UNAVAILABLE:
        return EXIT_UNAVAILABLE
    if err.code == StatusCode.UNAUTHENTICATED:
        return EXIT_UNAUTHENTICATED
    if err.code == StatusCode.INVALID_ARGUMENT:
        return EXIT_USAGE
    return EXIT_FAILED


def make_client(args: argparse.Namespace, **kwargs: Any) -> Client:
    """A client from the common flags (--target, --api-key, --tls, --ca, --cert, --key)."""

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


def make_renderer(fmt: str | None) -> Renderer:
    """The view for --format; pretty on a terminal, plain otherwise."""
    fmt = fmt or ("pretty" if sys.stdout.isatty() else "plain")
    if fmt == "jsonl":
        return JsonlRenderer()
    if fmt == "plain":
        return PlainRenderer()
    return PrettyRenderer()
