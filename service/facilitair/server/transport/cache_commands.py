"""`facilitair cache stats | clear`: the response cache in the store this machine's settings name.

Server-side admin commands like `config show`, added to the CLI through the `facilitair.commands` entry point
group. They open the store directly (the same --db or FACILITAIR_DATABASE_URL as `serve`), so they work with
the server running or not; on PostgreSQL `clear` empties the cache of every replica at once.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
from typing import Any

from pydantic import ValidationError
from pydantic_settings import CliSettingsSource

from facilitair.server.settings import ConfigError, Settings
from facilitair.server.store import create_store
from facilitair.server.store.base import CacheStats, StoreUnavailable
from facilitair.server.transport.commands import (
    EXIT_OK,
    EXIT_UNAVAILABLE,
    _given,
    _settings,
    _settings_source,
    config_error,
)

# The command's own argument, not a setting.
_PRINCIPAL = "principal"


def add_cache(subparsers: Any) -> None:
    """Add `cache stats|clear` to the CLI's subcommands."""
    parser = subparsers.add_parser("cache", help="the response cache in the server's store: its size, or empty it")
    actions = parser.add_subparsers(dest="action", required=True)
    for name, text in (
        ("stats", "print what the response cache holds as JSON: entries, characters, tokens and cost they saved"),
        ("clear", "delete the response cache's entries (every caller's, or --principal's) and print how many"),
    ):
        action = actions.add_parser(name, help=text, description=text)
        action.add_argument("--principal", metavar="NAME", help="only this caller's entries (the name its API key has)")
        source = _settings_source(action)
        action.set_defaults(handler=lambda args, source=source: _cache(source, args))


def _cache(source: CliSettingsSource[Settings], args: argparse.Namespace) -> int:
    principal = getattr(args, _PRINCIPAL, None)
    settings_args = argparse.Namespace(**{k: v for k, v in _given(args).items() if k != _PRINCIPAL})
    try:
        settings, _ = _settings(source, settings_args)
        return asyncio.run(_act(settings, str(args.action), principal))
    except (ConfigError, ValidationError) as exc:
        return config_error(exc)
    except StoreUnavailable as exc:
        print(f"facilitair: cannot open the store: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE


async def _act(settings: Settings, action: str, principal: str | None) -> int:
    store = create_store(settings)
    await store.open()
    try:
        if action == "clear":
            removed = await store.cache_clear(principal)
            print(json.dumps({"removed": removed}))
        else:
            stats: CacheStats = await store.cache_stats(principal)
            print(json.dumps(dataclasses.asdict(stats), sort_keys=True))
    finally:
        await store.close()
    return EXIT_OK
