"""GetServerInfo: what a server offers, so that a person learns it from the server instead of its config files.

The answer is built once at start (nothing in it changes while the server runs) from the same settings and
the same model resolution that requests go through, so it cannot drift from what a run would really get.
Provider credentials and endpoints are never part of it: only the names of the providers that have a key.
"""

from __future__ import annotations

from importlib import metadata

from facilitair.server.domain import chain_text
from facilitair.server.pipeline_file import PipelineConfig
from facilitair.server.sandbox import Sandbox
from facilitair.server.settings import Settings
from facilitair.server.transport.requests import MAX_REFINEMENTS, default_models
from facilitair.v1 import orchestrator_pb2 as pb

STORE_KINDS = {"sqlite": pb.STORE_KIND_SQLITE, "postgresql": pb.STORE_KIND_POSTGRESQL}


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
) -> pb.GetServerInfoResponse:
    """The GetServerInfo answer for a server with these settings, providers, store and replica id."""
    limits = pb.ServerLimits(
        max_runs=settings.max_runs,
        max_runs_per_principal=settings.max_runs_per_principal,
        runs_per_minute=settings.runs_per_minute,
        max_cost_usd_default=settings.budget_usd,
        max_cost_usd_limit=settings.budget_usd_max,
        max_tokens_default=settings.budget_tokens,
        max_tokens_limit=settings.budget_tokens_max,
        max_refinements_default=settings.max_refinements,
        max_refinements_limit=MAX_REFINEMENTS,
    )
    limits.run_timeout.FromNanoseconds(round(settings.run_timeout * 1e9))
    return pb.GetServerInfoResponse(
        version=package_version(),
        providers=sorted(providers),
        default_model=chain_text(settings.default_models()),
        agent_models={role.label: chain_text(chain) for role, chain in default_models(settings, config).items()},
        limits=limits,
        store=STORE_KINDS.get(store_kind, pb.STORE_KIND_UNSPECIFIED),
        replica_id=replica_id,
        sandbox=pb.SandboxInfo(
            kind=settings.sandbox,
            available=sandbox is not None and sandbox.availability.usable,
            detail=sandbox.availability.detail if sandbox is not None else "",
        ),
    )
