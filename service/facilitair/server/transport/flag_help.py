"""The help of `serve` and `config show` in the user's words.

pydantic-settings makes one flag per setting, with the Python type as its metavar (`--db Path`, `--listen str`)
and the default as Python sees it (`(default factory: default_db_path)`, `(default: null)`). This rewrites
each flag's metavar and help from the Settings field: a metavar that says what to give, the description, and
the default a user would get, or none when unset means "not used".
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from facilitair.server.settings import DEFAULT_ANTHROPIC_MODEL, DEFAULT_LOCAL_MODEL, Settings

# Metavars that the type alone does not say.
METAVARS = {
    "listen": "HOST:PORT",
    "metrics_listen": "HOST:PORT",
    "database_url": "URL",
    "replica_id": "NAME",
    "model": "PROVIDER:MODEL",
    "budget_usd": "USD",
    "budget_usd_max": "USD",
    "retention_days": "DAYS",
    "webhook_allow_hosts": "HOSTS",
    "webhook_retry_schedule": "SECONDS,...",
}
# Defaults said in words (a factory's value per process, or one that depends on the keys); None: the description
# says it already.
DEFAULTS: dict[str, str | None] = {
    "replica_id": None,
    # Settings.default_models: the field's default needs OpenAI's key; without it the model follows the keys.
    "model": f"{Settings.model_fields['model'].default} with OPENAI_API_KEY, else anthropic:{DEFAULT_ANTHROPIC_MODEL} "
    f"with ANTHROPIC_API_KEY, else local:{DEFAULT_LOCAL_MODEL}",
}


def _metavar(name: str, field: FieldInfo) -> str:
    if name in METAVARS:
        return METAVARS[name]
    if name.endswith("_ms"):
        return "MS"
    kinds = set(getattr(field.annotation, "__args__", ())) | {field.annotation}
    if Path in kinds:
        return "DIR" if name.endswith("_dir") else "FILE"
    if float in kinds:
        return "SECONDS" if any(w in name for w in ("seconds", "timeout", "interval", "backoff", "wait")) else "N"
    return "N" if int in kinds else name.upper()


def _default(name: str, field: FieldInfo) -> str | None:
    """The default as a user reads it; None when there is nothing to say (unset, or the description says it)."""
    if name in DEFAULTS:
        return DEFAULTS[name]  # a said default, or None: the description says it
    value: Any = field.default
    if value is PydanticUndefined and field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]  # ours take no arguments
    if value is None or value is PydanticUndefined:
        return None
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def rewrite(parser: argparse.ArgumentParser) -> None:
    """Give each settings flag of `parser` a metavar and help in the user's words."""
    for action in parser._actions:
        field = Settings.model_fields.get(action.dest)
        if field is None or action.help == argparse.SUPPRESS:
            continue
        default = _default(action.dest, field)
        text = (field.description or "") + (f" (default: {default})" if default is not None else "")
        action.help = text.replace("%", "%%")  # argparse formats help with %
        # Flags that take a value, except a choice list ({debug,info,...}), which says it already.
        takes_value = isinstance(action.metavar, str) and action.nargs != 0
        if takes_value and not str(action.metavar).startswith("{"):
            action.metavar = _metavar(action.dest, field)
