"""The pipeline file (TOML): each agent's model, fallbacks, prompt and bounds, price overrides, and some settings.

Its [settings] table may set the server settings marked `_in_file` in settings.py (flags and FACILITAIR_* win
over it); everything is validated at start, and an error names the file and the key.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from facilitair.server.domain import GATED_AGENTS, MAX_APPROVAL_TIMEOUT, AgentRole, ModelRef
from facilitair.server.errors import InvalidArgument
from facilitair.server.pricing import Price
from facilitair.server.settings import FILE_SETTINGS, ConfigError, check_model


class AgentConfig(BaseModel):
    """One agent's settings in the pipeline file."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    max_tokens: int = Field(default=4096, ge=16, le=64_000)
    # The model's context window in tokens (prompt plus output), when the provider cannot tell: a local
    # model served with a small window. The server then shortens what the prompt carries of earlier
    # stages and lowers max_tokens so that each request fits (pipeline/context.py). Unset: no fitting.
    context_window: int | None = Field(default=None, ge=512, le=10_000_000)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    # Replaces the agent's role text; the output contract the parsers need is always appended.
    system_prompt: str | None = Field(default=None, min_length=1, max_length=20_000)
    # Approval gates (a request's pause_after wins over these): whether a run waits for a person after this
    # agent's stage, how long at most (seconds; unset: 24 hours) and what an unanswered gate decides then.
    pause_after: bool = False
    approval_timeout: float | None = Field(default=None, gt=0, le=MAX_APPROVAL_TIMEOUT)
    on_approval_timeout: Literal["reject", "approve"] = "reject"

    @field_validator("model")
    @classmethod
    def _valid_model(cls, v: str | None) -> str | None:
        return None if v is None else check_model(v, "model")


class PriceConfig(BaseModel):
    """A price override in the pipeline file."""

    model_config = ConfigDict(extra="forbid")

    input_per_mtok: float = Field(ge=0)
    output_per_mtok: float = Field(ge=0)


class PipelineConfig(BaseModel):
    """The pipeline file (TOML): per-agent models and prompts, price overrides, and some server settings."""

    model_config = ConfigDict(extra="forbid")

    agents: dict[str, AgentConfig] = Field(default_factory=dict)
    prices: dict[str, PriceConfig] = Field(default_factory=dict)
    # Server settings the file may set (budgets, limits, bounds); flags and FACILITAIR_* win over them.
    settings: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _top_level_max_refinements(cls, data: Any) -> Any:
        """`max_refinements` at the top of the file (as older files have it) is the setting of that name."""
        if isinstance(data, dict) and "max_refinements" in data:
            data = dict(data)
            table = dict(data.get("settings") or {})
            if "max_refinements" in table:
                raise ValueError("max_refinements is given twice: at the top and in [settings]; keep one")
            table["max_refinements"] = data.pop("max_refinements")
            data["settings"] = table
        return data

    @field_validator("settings")
    @classmethod
    def _known_settings(cls, v: dict[str, Any]) -> dict[str, Any]:
        for name in v:
            if name not in FILE_SETTINGS:
                raise ValueError(f"{name!r} cannot be set in the file; it may set: {', '.join(sorted(FILE_SETTINGS))}")
        return v

    @field_validator("agents")
    @classmethod
    def _known_agents(cls, v: dict[str, AgentConfig]) -> dict[str, AgentConfig]:
        for name, agent in v.items():
            try:
                role = AgentRole.from_label(name, field=f"agents.{name}")
            except InvalidArgument as exc:
                raise ValueError(exc.violations[0][1]) from None
            if agent.pause_after and role not in GATED_AGENTS:
                gated = ", ".join(r.label for r in GATED_AGENTS)
                raise ValueError(f"{name}: pause_after is for the agents {gated}")
        return v

    @field_validator("prices")
    @classmethod
    def _valid_price_keys(cls, v: dict[str, PriceConfig]) -> dict[str, PriceConfig]:
        for name in v:
            check_model(name, f"prices.{name}")
        return v

    def agent(self, role: AgentRole) -> AgentConfig:
        """The settings of one agent (defaults when the file says nothing of it)."""
        return self.agents.get(role.label) or AgentConfig()

    def price_overrides(self) -> dict[str, Price]:
        """Price overrides keyed by normalised "provider:model"."""
        return {
            str(ModelRef.parse(k, field="prices")): Price(p.input_per_mtok, p.output_per_mtok)
            for k, p in self.prices.items()
        }

    @classmethod
    def load(cls, path: Path | None) -> PipelineConfig:
        """Read and validate the file; errors name the file and the bad key."""
        if path is None:
            return cls()
        try:
            data: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
            return cls.model_validate(data)
        except OSError as exc:
            raise ConfigError(f"cannot read pipeline file {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"pipeline file {path} is not valid TOML: {exc}") from None
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
            raise ConfigError(f"pipeline file {path}: {problems}") from None
