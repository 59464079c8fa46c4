"""GetServerInfo: what a server offers, so that a person learns it from the server instead of its config files.

The answer is built once at start (nothing in it changes while the server runs) from the same settings and
the same model resolution that requests go through, so it cannot drift from what a run would really get.
Provider credentials and endpoints are never part of it: only the names of the providers that have a key.
"""

from __future__ import annotations

from importlib import metadata

from facilitair.server.domain import chain_text
from facilitair.server.events import wire
from facilitair.server.events.wire import ServerInfo
from facilitair.server.pipeline_file import PipelineConfig
from facilitair.server.sandbox import Sandbox
from facilitair.server.settings import Settings
from facilitair.server.transport.requests import MAX_REFINEMENTS, default_models


def package_version() -> str:
    """The installed facilitair package's version ("unknown" when it runs from a tree that is not installed)."""
    try:
        return metadata.version("facilitair")
    except metadata.PackageNotFoundError:
        return "unknown"


def server_info(
    settings: Settings,
    config: PipelineConfig,
    *,
    providers: list[str],
    store_kind: str,
    replica_id: str,
    sandbox: Sandbox | None = None,
) -> ServerInfo:
    """The GetServerInfo answer for a server with these settings, providers, store and replica id."""
    return wire.server_info(
        settings,
        version=package_version(),
        providers=providers,
        agent_models={role.label: chain_text(chain) for role, chain in default_models(settings, config).items()},
        max_refinements_limit=MAX_REFINEMENTS,
        store_kind=store_kind,
        replica_id=replica_id,
        sandbox_available=sandbox is not None and sandbox.availability.usable,
        sandbox_detail=sandbox.availability.detail if sandbox is not None else "",
    )
