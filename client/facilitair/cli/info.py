"""`facilitair info`: what the server at --target offers, as the server itself says (GetServerInfo).

`config show` prints the local settings a `serve` here would read; `info` asks the running server, which is
what a person using someone else's server needs: its providers, the models a run gets, its limits.
"""

from __future__ import annotations

import json

from google.protobuf import json_format

from facilitair.cli.render import seconds
from facilitair.client import Agent, ServerInfo, StoreKind

_LABEL = 12  # width of the label column
_STORES = {StoreKind.SQLITE: "sqlite (one server process)", StoreKind.POSTGRESQL: "postgresql (shared by replicas)"}


def _line(label: str, text: str) -> str:
    return f"{label:<{_LABEL}}{text}"


def _usd(value: float) -> str:
    return f"${value:g}"


def _budget(default: str | None, limit: str | None, flag: str) -> str:
    """ "none by default, at most $5 (--max-cost USD)"."""
    first = f"{default} by default" if default is not None else "none by default"
    second = f"at most {limit}" if limit is not None else "no upper bound"
    return f"{first}, {second} ({flag})"


def info_lines(info: ServerInfo, target: str) -> list[str]:
    """The server's description as a person reads it, one line each."""
    listed = info.store in StoreKind._value2member_map_
    store = _STORES.get(StoreKind(info.store), "not said") if listed else f"unknown ({info.store})"
    lines = [
        _line("server", f"facilitair {info.version or '?'} at {target} (replica {info.replica_id or '?'})"),
        _line("store", store),
        _line("web", f"{info.http_url} (the runs' pages, the HTTP API)" if info.http_url else "none"),
        _line("providers", ", ".join(info.providers) or "none: no provider key, no local engine"),
    ]
    known = [a.name.lower() for a in Agent if a is not Agent.UNSPECIFIED]
    agents = [a for a in known if a in info.agent_models] + sorted(set(info.agent_models) - set(known))
    width = max((len(a) for a in ["default", *agents]), default=7) + 2
    lines.append(_line("models", f"{'default':<{width}}{info.default_model}"))
    lines += [_line("", f"{agent:<{width}}{info.agent_models[agent]}") for agent in agents]
    lines.append(_line("", "(a request's --model or --agent-model wins over these)"))
    sandbox = info.sandbox
    if sandbox.kind == "off" or not sandbox.kind:
        tests = "not run (--sandbox off)" if sandbox.kind else "not said"
    elif sandbox.available:
        tests = f"run in {sandbox.detail}"
    else:
        tests = f"not run: {sandbox.detail}"
    lines.append(_line("tests", tests))
    limits = info.limits
    lines += [
        _line(
            "runs",
            f"{limits.max_runs} in flight on the server, {limits.max_runs_per_principal} per caller; "
            f"{limits.runs_per_minute:g} new runs a minute per caller",
        ),
        _line("timeout", f"{seconds(limits.run_timeout.ToNanoseconds() / 1e9)} per run"),
        _line(
            "refinements",
            f"{limits.max_refinements_default} by default, at most {limits.max_refinements_limit} "
            "(--max-refinements N)",
        ),
        _line(
            "cost",
            _budget(
                _usd(limits.max_cost_usd_default) if limits.HasField("max_cost_usd_default") else None,
                _usd(limits.max_cost_usd_limit) if limits.HasField("max_cost_usd_limit") else None,
                "--max-cost USD",
            ),
        ),
        _line(
            "tokens",
            _budget(
                str(limits.max_tokens_default) if limits.HasField("max_tokens_default") else None,
                str(limits.max_tokens_limit) if limits.HasField("max_tokens_limit") else None,
                "--max-tokens N",
            ),
        ),
    ]
    return lines


def print_info(info: ServerInfo, target: str, as_json: bool) -> None:
    """Print the server's description: for people, or as protobuf JSON with every field present."""
    if as_json:
        print(json.dumps(json_format.MessageToDict(info, always_print_fields_with_no_presence=True), indent=2))
        return
    print("\n".join(info_lines(info, target)))
