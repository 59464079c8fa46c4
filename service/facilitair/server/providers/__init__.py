"""Providers behind one small interface, and the registry that builds them from settings."""

from __future__ import annotations

from collections.abc import Mapping

from facilitair.server.errors import FailedPrecondition, Reason
from facilitair.server.providers.base import CompletionRequest, KnowsContextWindows, Provider, StreamEnd, UsageReport
from facilitair.server.settings import Settings

__all__ = ["CompletionRequest", "KnowsContextWindows", "Provider", "ProviderRegistry", "StreamEnd", "UsageReport"]

_SETUP_HINT = {
    "openai": "set OPENAI_API_KEY (and OPENAI_BASE_URL for an OpenAI-compatible endpoint) on the server",
    "anthropic": "set ANTHROPIC_API_KEY on the server",
}


class ProviderRegistry:
    """The configured providers, by name."""

    def __init__(self, providers: Mapping[str, Provider]) -> None:
        self._providers = dict(providers)

    @classmethod
    def from_settings(cls, settings: Settings) -> ProviderRegistry:
        """Build a provider for each vendor whose API key is set."""
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
        return cls(providers)

    def names(self) -> list[str]:
        """The configured provider names."""
        return sorted(self._providers)

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
