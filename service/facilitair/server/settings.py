"""Server settings: flags and FACILITAIR_* environment (pydantic-settings), plus the pipeline file.

Provider credentials use the SDKs' own variables (OPENAI_API_KEY, OPENAI_BASE_URL, ANTHROPIC_API_KEY,
ANTHROPIC_BASE_URL) so that a machine already set up for the SDKs needs nothing more.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import platformdirs
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from facilitair.server.domain import AgentRole, ModelRef, parse_chain
from facilitair.server.errors import InvalidArgument
from facilitair.server.pricing import Price


def _check_model(text: str, field: str) -> str:
    """Validate "provider:model" (or a fallback list) for pydantic, which only turns ValueError into an error."""
    try:
        parse_chain(text, field=field)
    except InvalidArgument as exc:
        raise ValueError(exc.violations[0][1]) from None
    return text


def default_db_path() -> Path:
    """The SQLite file in the user's data directory."""
    return Path(platformdirs.user_data_dir("facilitair")) / "facilitair.sqlite3"


DEFAULT_ANTHROPIC_MODEL = "claude-sonnet-4-6"


class AgentConfig(BaseModel):
    """One agent's settings in the pipeline file."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    max_tokens: int = Field(default=4096, ge=16, le=64_000)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    # Replaces the agent's role text; the output contract the parsers need is always appended.
    system_prompt: str | None = Field(default=None, min_length=1, max_length=20_000)

    @field_validator("model")
    @classmethod
    def _valid_model(cls, v: str | None) -> str | None:
        return None if v is None else _check_model(v, "model")


class PriceConfig(BaseModel):
    """A price override in the pipeline file."""

    model_config = ConfigDict(extra="forbid")

    input_per_mtok: float = Field(ge=0)
    output_per_mtok: float = Field(ge=0)


class PipelineConfig(BaseModel):
    """The pipeline file (TOML): per-agent models, the refinement bound, price overrides."""

    model_config = ConfigDict(extra="forbid")

    max_refinements: int = Field(default=2, ge=0, le=10)
    agents: dict[str, AgentConfig] = Field(default_factory=dict)
    prices: dict[str, PriceConfig] = Field(default_factory=dict)
    # Server settings the file may set (budgets, limits, bounds); flags and FACILITAIR_* win over them.
    settings: dict[str, Any] = Field(default_factory=dict)

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
        for name in v:
            try:
                AgentRole.from_label(name, field=f"agents.{name}")
            except InvalidArgument as exc:
                raise ValueError(exc.violations[0][1]) from None
        return v

    @field_validator("prices")
    @classmethod
    def _valid_price_keys(cls, v: dict[str, PriceConfig]) -> dict[str, PriceConfig]:
        for name in v:
            _check_model(name, f"prices.{name}")
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


FILE_SETTINGS = frozenset({
    "budget_usd", "budget_tokens", "budget_usd_max", "budget_tokens_max", "max_runs", "max_runs_per_principal",
    "runs_per_minute", "run_timeout", "provider_attempts", "provider_timeout", "retry_wait_max", "retry_backoff",
    "thinking_interval", "heartbeat_interval", "retention_days",
})  # fmt: skip


class ConfigError(Exception):
    """The configuration is invalid; the message says which key and why."""


class Settings(BaseSettings):
    """Everything the server reads at start."""

    model_config = SettingsConfigDict(
        env_prefix="FACILITAIR_", extra="ignore", populate_by_name=True, validate_assignment=True
    )

    listen: str = "127.0.0.1:50051"
    db: Path = Field(default_factory=default_db_path)
    model: str = "openai:gpt-4.1-mini"
    pipeline: Path | None = None
    thinking_interval: float = Field(default=2.0, gt=0, le=60)
    heartbeat_interval: float = Field(default=5.0, gt=0, le=60)
    grace_seconds: float = Field(default=5.0, ge=0, le=300)
    metrics_listen: str | None = None
    log_level: str = "info"
    log_format: str = Field(default="auto", pattern="^(auto|json|console)$")
    # auto: uvloop's event loop when it is installed (the server extra installs it except on Windows).
    event_loop: str = Field(default="auto", pattern="^(auto|asyncio|uvloop)$")
    retention_days: float = Field(default=7.0, gt=0)
    retention_check_seconds: float = Field(default=3600.0, gt=0)
    max_refinements: int | None = Field(default=None, ge=0, le=10)
    # Provider calls: the longest wait for the next byte (a stall past it fails the attempt), attempts
    # per model and stage (retryable failures only), and the most one stage may spend waiting to retry.
    # Five attempts 2, 4, 8, 16 s apart (each jittered x0.5-1.5: 15-45 s in all) ride out a provider
    # that restarts in several seconds; the old 3 x 0.5 s gave up after about a second.
    provider_timeout: float = Field(default=300.0, gt=0)
    provider_attempts: int = Field(default=5, ge=1, le=10)
    retry_wait_max: float = Field(default=60.0, ge=0)
    retry_backoff: float = Field(default=2.0, gt=0, le=30)
    # The longest a run may take from its creation; past it the run fails with DEADLINE_EXCEEDED.
    run_timeout: float = Field(default=1800.0, gt=0)
    # Budgets: the default per run (None: none), and the most a request may ask for (None: no bound).
    budget_usd: float | None = Field(default=None, gt=0)
    budget_usd_max: float | None = Field(default=None, gt=0)
    budget_tokens: int | None = Field(default=None, gt=0)
    budget_tokens_max: int | None = Field(default=None, gt=0)
    # Keepalive (see README "Long streams"): the server's pings, and how often it lets clients ping.
    keepalive_time_ms: int = Field(default=60_000, ge=1000)
    keepalive_timeout_ms: int = Field(default=20_000, ge=1000)
    keepalive_min_ping_interval_ms: int = Field(default=10_000, ge=100)

    # Who may call: API keys as "name:key" (comma-separated here, one per line in the file); TLS; limits.
    api_keys: SecretStr | None = None
    api_keys_file: Path | None = None
    reflection: bool = True
    insecure: bool = False
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    max_runs: int = Field(default=64, ge=1)
    max_runs_per_principal: int = Field(default=8, ge=1)
    runs_per_minute: float = Field(default=30.0, gt=0)

    openai_api_key: SecretStr | None = Field(default=None, validation_alias=AliasChoices("OPENAI_API_KEY"))
    openai_base_url: str | None = Field(default=None, validation_alias=AliasChoices("OPENAI_BASE_URL"))
    anthropic_api_key: SecretStr | None = Field(default=None, validation_alias=AliasChoices("ANTHROPIC_API_KEY"))
    anthropic_base_url: str | None = Field(default=None, validation_alias=AliasChoices("ANTHROPIC_BASE_URL"))

    @field_validator("model")
    @classmethod
    def _valid_model(cls, v: str) -> str:
        return _check_model(v, "FACILITAIR_MODEL")

    @field_validator("listen")
    @classmethod
    def _valid_listen(cls, v: str) -> str:
        host, sep, port = v.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"{v!r} is not HOST:PORT")
        return v

    def with_file(self, config: PipelineConfig) -> Settings:
        """These settings with the pipeline file's [settings] filled in where flags and environment said nothing."""
        merged = self.model_copy()
        for name, value in config.settings.items():
            if name in self.model_fields_set:
                continue
            try:
                setattr(merged, name, value)  # validate_assignment checks it like the environment would be
            except ValidationError as exc:
                raise ConfigError(f"pipeline file: settings.{name}: {exc.errors()[0]['msg']}") from None
        return merged

    def load_api_keys(self) -> dict[str, str]:
        """The configured keys by principal name; errors name the line, never the key."""
        entries: list[tuple[str, str]] = []
        if self.api_keys is not None:
            raw = self.api_keys.get_secret_value()
            entries += [("FACILITAIR_API_KEYS entry", part) for part in raw.split(",") if part.strip()]
        if self.api_keys_file is not None:
            try:
                lines = self.api_keys_file.read_text(encoding="utf-8").splitlines()
            except OSError as exc:
                raise ConfigError(f"cannot read {self.api_keys_file}: {exc.strerror}") from None
            entries += [
                (f"{self.api_keys_file} line {n}", line)
                for n, line in enumerate(lines, start=1)
                if line.strip() and not line.lstrip().startswith("#")
            ]
        keys: dict[str, str] = {}
        for where, entry in entries:
            name, sep, key = entry.strip().partition(":")
            if not sep or not name.strip() or len(key.strip()) < 16:
                raise ConfigError(f"{where} is not name:key with a key of at least 16 characters")
            if name.strip() in keys:
                raise ConfigError(f"{where} repeats the principal name {name.strip()!r}")
            keys[name.strip()] = key.strip()
        return keys

    def check_exposure(self, has_keys: bool) -> None:
        """Secure by default: off loopback, callers must authenticate (keys or mTLS) unless --insecure."""
        host = self.listen.rpartition(":")[0].strip("[]")
        loopback = host in ("localhost", "::1") or host.startswith("127.")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("--tls-cert and --tls-key go together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ConfigError("--tls-client-ca needs --tls-cert and --tls-key")
        if not loopback and not has_keys and self.tls_client_ca is None and not self.insecure:
            raise ConfigError(
                f"refusing to listen on {self.listen} where anyone could spend your provider credits: configure "
                "API keys (FACILITAIR_API_KEYS or FACILITAIR_API_KEYS_FILE) or client certificates (--tls-client-ca), "
                "or pass --insecure to accept that risk"
            )

    def default_models(self) -> list[ModelRef]:
        """The server-wide default model (or fallback list); unset, it follows the one provider with a key."""
        if "model" not in self.model_fields_set and self.openai_api_key is None and self.anthropic_api_key is not None:
            return [ModelRef("anthropic", DEFAULT_ANTHROPIC_MODEL)]
        return parse_chain(self.model, field="FACILITAIR_MODEL")
