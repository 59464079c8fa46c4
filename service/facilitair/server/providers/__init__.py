"""Providers behind one small interface, and the registry that builds them from settings."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping

from facilitair.server.domain import ModelRef, parse_chain
from facilitair.server.errors import FailedPrecondition, Reason
from facilitair.server.pipeline_file import PipelineConfig
from facilitair.server.providers.base import (
    ChecksModels,
    CompletionRequest,
    KnowsContextWindows,
    Provider,
    StreamEnd,
    UsageReport,
)
from facilitair.server.settings import Settings, pip_install

__all__ = ["CompletionRequest", "KnowsContextWindows", "Provider", "ProviderRegistry", "StreamEnd", "UsageReport"]

_SETUP_HINT = {
    "openai": "set OPENAI_API_KEY (and OPENAI_BASE_URL for an OpenAI-compatible endpoint) on the server",
    "anthropic": "set ANTHROPIC_API_KEY on the server",
    "local": f"install the local extra on the server ({pip_install('server,local')}) and run "
    "`facilitair models pull`; or set OPENAI_API_KEY or ANTHROPIC_API_KEY to use a vendor's model",
}


class ProviderRegistry:
    """The configured providers, by name."""

    def __init__(self, providers: Mapping[str, Provider]) -> None:
        self._providers = dict(providers)

    @classmethod
    def from_settings(cls, settings: Settings, config: PipelineConfig | None = None) -> ProviderRegistry:
        """Build a provider for each vendor whose API key is set, and `local` when its extra is installed."""
        providers: dict[str, Provider] = {}
        if settings.openai_api_key is not None:
            from facilitair.server.providers.openai_provider import OpenAIProvider

            providers["openai"] = OpenAIProvider(
                settings.openai_api_key.get_secret_value(),
                settings.openai_base_url,
                timeout=settings.provider_timeout,
            )
        if settings.anthropic_api_key is not None:
            from facilitair.server.providers.anthropic_provider import AnthropicProvider

            providers["anthropic"] = AnthropicProvider(
                settings.anthropic_api_key.get_secret_value(),
                settings.anthropic_base_url,
                timeout=settings.provider_timeout,
            )
        if importlib.util.find_spec("xllamacpp") is not None:
            providers["local"] = _local_provider(settings, config)
        return cls(providers)

    def names(self) -> list[str]:
        """The configured provider names."""
        return sorted(self._providers)

    def check(self, model: ModelRef) -> None:
        """FailedPrecondition now, not mid-run, when the model's provider is not set up or cannot serve it."""
        provider = self.get(model.provider)
        if isinstance(provider, ChecksModels):
            provider.check_model(model.model)

    def get(self, name: str) -> Provider:
        """The provider, or FailedPrecondition saying what to set."""
        try:
            return self._providers[name]
        except KeyError:
            hint = _SETUP_HINT.get(name, "configure it on the server")
            raise FailedPrecondition(
                f"provider {name!r} is not configured: {hint}", reason=Reason.PROVIDER_NOT_CONFIGURED
            ) from None

    async def aclose(self) -> None:
        """Close every provider's HTTP client."""
        for provider in self._providers.values():
            await provider.aclose()


def _local_provider(settings: Settings, config: PipelineConfig | None) -> Provider:
    """The local provider; only model paths named by the server's own configuration may lie outside its models dir."""
    from facilitair.server.providers.local.engine import EngineOptions
    from facilitair.server.providers.local_provider import LocalOptions, LocalProvider

    chains = [settings.default_models()]
    if config is not None:
        chains += [parse_chain(a.model, field="agents") for a in config.agents.values() if a.model]
    configured = frozenset(m.model for chain in chains for m in chain if m.provider == "local")
    threads = settings.local_threads or max(1, (os.cpu_count() or 2) // 2)
    engine = EngineOptions(settings.local_slots, settings.local_context, threads)
    return LocalProvider(LocalOptions(settings.local_models_dir, engine, settings.local_max_tokens, configured))
