"""The `facilitair` command: serve, run, watch, files, status, runs, cancel, completion.

Exit codes: 0 completed, 1 run failed or cancelled (or the server refused the request, or
--require-approval and the review did not approve), 2 usage error, 3 server unavailable, 4 not
authenticated, 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from importlib import metadata
from typing import Any

from facilitair.cli.args import add_client_commands
from facilitair.cli.commands import unary_command
from facilitair.cli.common import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, CommandFailed, exit_code_for
from facilitair.cli.completion import bash_script, zsh_script
from facilitair.cli.follow import run_command, watch_command
from facilitair.cli.inputs import UsageError
from facilitair.client import FacilitairError, ServerUnreachable

__all__ = ["exit_code_for", "main"]


def _version() -> str:
    try:
        return metadata.version("facilitair")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def _serve_parser(sub: Any) -> None:
    """The `serve` subcommand's flags; each maps onto a FACILITAIR_* setting."""
    serve = sub.add_parser("serve", help="run the server")
    serve.add_argument("--listen", help="HOST:PORT (env FACILITAIR_LISTEN, default 127.0.0.1:50051)")
    serve.add_argument("--db", help="SQLite file (env FACILITAIR_DB, default in the user data directory)")
    serve.add_argument("--model", help="default model provider:model (env FACILITAIR_MODEL)")
    serve.add_argument("--pipeline", help="pipeline config file, TOML (env FACILITAIR_PIPELINE)")
    serve.add_argument("--log-format", choices=("auto", "json", "console"), help="env FACILITAIR_LOG_FORMAT")
    serve.add_argument("--log-level", help="debug, info, warning (env FACILITAIR_LOG_LEVEL)")
    serve.add_argument("--metrics-listen", help="HOST:PORT for Prometheus /metrics (env FACILITAIR_METRICS_LISTEN)")
    serve.add_argument("--tls-cert", help="server certificate, PEM (env FACILITAIR_TLS_CERT)")
    serve.add_argument("--tls-key", help="server private key, PEM (env FACILITAIR_TLS_KEY)")
    serve.add_argument("--tls-client-ca", help="require client certificates from this CA (mTLS)")
    serve.add_argument("--api-keys-file", help="one name:key per line (env FACILITAIR_API_KEYS_FILE)")
    serve.add_argument(
        "--insecure",
        action="store_const",
        const="true",
        help="allow a non-loopback address with no authentication (not recommended)",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="facilitair", description="Run a team of LLM agents on a coding task.")
    parser.add_argument("--version", action="version", version=f"facilitair {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    _serve_parser(sub)

    config = sub.add_parser("config", help="show the server's effective configuration")
    config.add_argument("action", choices=("show",))
    config.add_argument("--pipeline", help="pipeline config file (env FACILITAIR_PIPELINE)")

    add_client_commands(sub)
    return parser


def _server_missing(exc: ImportError) -> int:
    """Say which extra brings the server, for commands that need it."""
    print(f"facilitair: the server is not installed ({exc.name} is missing): pip install 'facilitair[server]'",
          file=sys.stderr)  # fmt: skip
    return EXIT_USAGE


def _serve(args: argparse.Namespace) -> int:
    try:
        from facilitair.server.__main__ import main as serve_main  # noqa: PLC0415 - the server is optional
    except ImportError as exc:
        return _server_missing(exc)
    for flag, env in (
        ("listen", "LISTEN"),
        ("db", "DB"),
        ("model", "MODEL"),
        ("pipeline", "PIPELINE"),
        ("log_format", "LOG_FORMAT"),
        ("log_level", "LOG_LEVEL"),
        ("tls_cert", "TLS_CERT"),
        ("tls_key", "TLS_KEY"),
        ("tls_client_ca", "TLS_CLIENT_CA"),
        ("api_keys_file", "API_KEYS_FILE"),
        ("insecure", "INSECURE"),
        ("metrics_listen", "METRICS_LISTEN"),
    ):
        value = getattr(args, flag)
        if value is not None:
            os.environ[f"FACILITAIR_{env}"] = str(value)
    return serve_main()


def _config_show(args: argparse.Namespace) -> int:
    """Print settings (flags and FACILITAIR_* as the server would read them) with secrets masked."""
    try:
        from pydantic import ValidationError  # noqa: PLC0415 - server-side dependencies, loaded on demand

        from facilitair.server.settings import ConfigError, PipelineConfig, Settings  # noqa: PLC0415
    except ImportError as exc:
        return _server_missing(exc)
    if args.pipeline is not None:
        os.environ["FACILITAIR_PIPELINE"] = args.pipeline
    try:
        settings = Settings()
        pipeline = PipelineConfig.load(settings.pipeline)
        settings = settings.with_file(pipeline)
        keys = settings.load_api_keys()
    except (ConfigError, ValidationError) as exc:
        print(f"facilitair: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    shown = settings.model_dump(mode="json")  # SecretStr fields dump as "**********"
    shown["api_keys"] = {name: "**********" for name in keys}
    shown["default_models"] = [str(m) for m in settings.default_models()]
    print(json.dumps({"settings": shown, "pipeline": pipeline.model_dump(mode="json")}, indent=2, sort_keys=True))
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `facilitair` command."""
    parser = _parser()
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
    if args.command == "serve":
        return _serve(args)
    if args.command == "config":
        return _config_show(args)
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
