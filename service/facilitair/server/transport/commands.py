"""The server's commands of the `facilitair` CLI: `serve` and `config show`.

Their flags are made from the Settings model by pydantic-settings (one flag per setting, its description as
help, FACILITAIR_* as the environment fallback), so a new setting is a new flag with nothing else to keep in
step. The client package's CLI finds these commands through the `facilitair.commands` entry point group and
never names a server module; `python -m facilitair.server` is `facilitair serve`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Sequence
from typing import Any

from pydantic import ValidationError
from pydantic_settings import CliSettingsSource

from facilitair.server.domain import chain_text
from facilitair.server.pipeline_file import PipelineConfig
from facilitair.server.providers import ProviderRegistry
from facilitair.server.settings import ConfigError, Settings
from facilitair.server.store.base import StoreUnavailable
from facilitair.server.store.sqlite_lock import StoreInUse
from facilitair.server.transport import flag_help
from facilitair.server.transport.workers import check_workers, run_workers

EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE = 0, 1, 2

# What argparse puts in the namespace besides the settings; not fields of Settings.
_NOT_SETTINGS = ("command", "action", "handler")


def add_serve(subparsers: Any) -> None:
    """Add `serve` to the CLI's subcommands."""
    parser = subparsers.add_parser(
        "serve",
        help="run the server",
        description="Run the Facilitair server until SIGINT or SIGTERM. Every flag has a FACILITAIR_* variable "
        "(--max-runs is FACILITAIR_MAX_RUNS); provider keys come from OPENAI_API_KEY and ANTHROPIC_API_KEY.",
    )
    source = _settings_source(parser)
    parser.set_defaults(handler=lambda args: _serve(source, args))


def add_config(subparsers: Any) -> None:
    """Add `config show` to the CLI's subcommands."""
    parser = subparsers.add_parser(
        "config", help="show the server settings this machine would use (local settings, not a running server's)"
    )
    actions = parser.add_subparsers(dest="action", required=True)
    show = actions.add_parser(
        "show",
        help="print the effective settings as JSON, secrets masked",
        description="Print the settings `facilitair serve` would use with these flags, the FACILITAIR_* variables "
        "and the pipeline file, secrets masked. To ask a running server what it offers, use `facilitair info`.",
    )
    source = _settings_source(show)
    show.set_defaults(handler=lambda args: _config_show(source, args))


def _settings_source(parser: argparse.ArgumentParser) -> CliSettingsSource[Settings]:
    source: CliSettingsSource[Settings] = CliSettingsSource(Settings, root_parser=parser)
    flag_help.rewrite(parser)
    return source


def _given(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given as flags (argparse leaves the others out)."""
    return {k: v for k, v in vars(args).items() if k not in _NOT_SETTINGS}


def _settings(source: CliSettingsSource[Settings], args: argparse.Namespace) -> tuple[Settings, PipelineConfig]:
    """Settings from the flags, the environment and the pipeline file (in that order of precedence)."""
    settings = Settings(_cli_settings_source=source(parsed_args=_given(args)))  # type: ignore[call-arg]
    config = PipelineConfig.load(settings.pipeline)
    return settings.with_file(config), config


def _serve(source: CliSettingsSource[Settings], args: argparse.Namespace) -> int:
    try:
        settings, config = _settings(source, args)
        check_workers(settings)
        from facilitair.server.transport.app import loop_factory, serve, usable_providers  # noqa: PLC0415 - serving

        if settings.workers > 1:
            # Here as well as in each worker: a worker that refuses to start would be restarted forever.
            asyncio.run(_close(usable_providers(settings, config)))
            return run_workers(settings, _given(args))

        with asyncio.Runner(loop_factory=loop_factory(settings.event_loop)) as runner:
            runner.run(serve(settings, config))
    except (ConfigError, ValidationError) as exc:
        return config_error(exc)
    except StoreUnavailable as exc:  # its message is the plain cause, password masked
        print(f"facilitair: cannot open the store: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except StoreInUse as exc:  # another server holds the SQLite file: its message names the file and that server
        print(f"facilitair: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    return EXIT_OK


async def _close(providers: Awaitable[ProviderRegistry]) -> None:
    """Close the providers once made: only their check was wanted (ConfigError passes on)."""
    await (await providers).aclose()


def _config_show(source: CliSettingsSource[Settings], args: argparse.Namespace) -> int:
    try:
        settings, config = _settings(source, args)
        keys = settings.load_api_keys()
    except (ConfigError, ValidationError) as exc:
        return config_error(exc)
    shown = settings.model_dump(mode="json")  # SecretStr fields dump as "**********"
    shown["api_keys"] = {name: "**********" for name in keys}
    # The model runs will get (it follows the provider keys when not set), not the field's own default.
    shown["model"] = chain_text(settings.default_models())
    print(json.dumps({"settings": shown, "pipeline": config.model_dump(mode="json")}, indent=2, sort_keys=True))
    return EXIT_OK


def config_error(exc: ConfigError | ValidationError) -> int:
    """One line per problem, naming the flag or variable, never pydantic's multi-line dump."""
    if isinstance(exc, ValidationError):
        for error in exc.errors():
            name = str(error["loc"][0]) if error["loc"] else "settings"
            flag = "--" + name.replace("_", "-")
            variable = name.upper() if name.isupper() else f"FACILITAIR_{name.upper()}"
            message = str(error["msg"]).removeprefix("Value error, ")
            print(f"facilitair: configuration error: {flag} ({variable}): {message}", file=sys.stderr)
    else:
        print(f"facilitair: configuration error: {exc}", file=sys.stderr)
    return EXIT_USAGE


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m facilitair.server [flags]`: the same as `facilitair serve [flags]`."""
    parser = argparse.ArgumentParser(prog="python -m facilitair.server")
    commands = parser.add_subparsers(dest="command", required=True)
    add_serve(commands)
    args = parser.parse_args(["serve", *(sys.argv[1:] if argv is None else argv)])
    return int(args.handler(args))
