"""Server settings: `facilitair serve` flags and FACILITAIR_* environment (pydantic-settings).

The pipeline file (pipeline_file.py) may set the settings marked `_in_file`; flags and variables win over it.

Provider credentials use the SDKs' own variables (OPENAI_API_KEY, OPENAI_BASE_URL, ANTHROPIC_API_KEY,
ANTHROPIC_BASE_URL) so that a machine already set up for the SDKs needs nothing more.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Protocol

import platformdirs
from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
)
from pydantic_settings import BaseSettings, CliSuppress, SettingsConfigDict

from facilitair.server.domain import ModelRef, parse_chain
from facilitair.server.errors import InvalidArgument


class FileSettings(Protocol):
    """What `Settings.with_file` reads of a pipeline file (pipeline_file.PipelineConfig), which imports this module."""

    @property
    def settings(self) -> Mapping[str, Any]:
        """The file's [settings] table."""
        ...


def check_model(text: str, field: str) -> str:
    """Validate "provider:model" (or a fallback list) for pydantic, which only turns ValueError into an error."""
    try:
        parse_chain(text, field=field)
    except InvalidArgument as exc:
        raise ValueError(exc.violations[0][1]) from None
    return text


def default_replica_id() -> str:
    """host-pid: unique among the processes of a deployment, and says where to look."""
    return f"{socket.gethostname()}-{os.getpid()}"


def default_db_path() -> Path:
    """The SQLite file in the user's data directory."""
    return Path(platformdirs.user_data_dir("facilitair")) / "facilitair.sqlite3"


def default_models_dir() -> Path:
    """Where `facilitair models pull` puts local models: the user's data directory."""
    return Path(platformdirs.user_data_dir("facilitair")) / "models"


DEFAULT_ANTHROPIC_MODEL = "claude-sonnet-4-6"
# With no provider key at all: the small model `facilitair models pull` fetches (the `local` extra runs it).
DEFAULT_LOCAL_MODEL = "default"
# `--http-listen off`: no HTTP gateway.
HTTP_OFF = "off"


class ConfigError(Exception):
    """The configuration is invalid; the message says which key and why."""


def pip_install(extras: str) -> str:
    """How to install facilitair with `extras`, both from a package index and from a clone of the repository."""
    return f"pip install 'facilitair[{extras}]', or pip install '.[{extras}]' in a clone of the repository"


def _in_file(**field: Any) -> Any:
    """A setting the pipeline file's [settings] table may set too (flags and FACILITAIR_* win over it)."""
    return Field(**field, json_schema_extra={"in_file": True})


class Settings(BaseSettings):
    """Everything the server reads at start: `facilitair serve` flags, then FACILITAIR_*, then the file, then defaults.

    Each field's description is its flag's help; `config show` prints them all.
    """

    model_config = SettingsConfigDict(
        env_prefix="FACILITAIR_",
        extra="ignore",
        populate_by_name=True,
        validate_assignment=True,
        cli_kebab_case=True,
        cli_implicit_flags=True,
        cli_hide_none_type=True,
    )

    listen: str = Field(default="127.0.0.1:50051", description="HOST:PORT to serve gRPC on (port 0: any free port)")
    http_listen: str = Field(
        default="127.0.0.1:50052",
        description="HOST:PORT to serve the HTTP/JSON and SSE gateway and the web page on (port 0: any free port; "
        "`off`: none)",
    )
    db: Path = Field(default_factory=default_db_path, description="the SQLite file that stores runs and events")
    # A secret: the URL may hold a password, which must never reach a log or an error (SecretStr masks it).
    database_url: SecretStr | None = Field(
        default=None,
        description="postgresql://user@host:port/db: the shared PostgreSQL store for several replicas (unset: the "
        "SQLite file at --db); give a password through FACILITAIR_DATABASE_URL or PGPASSWORD, not on a command line",
    )
    replica_id: str = Field(
        default_factory=default_replica_id,
        min_length=1,
        max_length=128,
        description="this server's name among the replicas on one store (shown by GetRun and in logs; default "
        "host-pid)",
    )
    lease_seconds: float = Field(
        default=10.0,
        ge=1.0,
        le=300.0,
        description="a replica holds each run it drives under a lease renewed this often; a replica that dies "
        "loses its runs to another after about this long",
    )
    store_grace_seconds: float = Field(
        default=5.0,
        ge=0.0,
        le=600.0,
        description="when the store cannot write for this long, runs are interrupted (their provider streams "
        "closed) and resume once it can",
    )
    # Set by `serve --workers N` for its worker processes, which share one port on purpose (SO_REUSEPORT).
    share_port: CliSuppress[bool] = Field(default=False, description="share the port with the other workers")
    workers: int = Field(
        default=1,
        ge=1,
        le=64,
        description="run this many server processes on one port, each a replica on the shared store (PostgreSQL only)",
    )
    model: str = Field(
        default="openai:gpt-4.1-mini",
        description="default model for every agent, provider:model or a comma-separated fallback list",
    )
    pipeline: Path | None = Field(default=None, description="pipeline file (TOML): agents, models, prompts, prices")
    thinking_interval: float = _in_file(
        default=2.0, gt=0, le=60, description="seconds between thinking events while a model has not answered"
    )
    heartbeat_interval: float = _in_file(
        default=5.0, gt=0, le=60, description="seconds of silence before a heartbeat event"
    )
    grace_seconds: float = Field(
        default=5.0, ge=0, le=300, description="on SIGTERM, how long open streams may finish before they are ended"
    )
    metrics_listen: str | None = Field(default=None, description="HOST:PORT to serve Prometheus /metrics on")
    log_level: Literal["debug", "info", "warning", "error"] = Field(default="info", description="log level")
    log_format: Literal["auto", "json", "console"] = Field(
        default="auto", description="console on a terminal, JSON lines otherwise (auto), or forced"
    )
    event_loop: Literal["auto", "asyncio", "uvloop"] = Field(
        default="auto", description="the event loop: uvloop when installed (auto), or forced"
    )
    loop_stall_seconds: float = Field(
        default=0.25,
        gt=0,
        le=60,
        description="log event_loop_stalled when the event loop wakes a task this many seconds late or more (every "
        "stream, health check and lease renewal of the replica waited that long)",
    )
    retention_days: float = _in_file(
        default=7.0, gt=0, description="finished runs and response cache entries are deleted after this many days"
    )
    cache_default: Literal["off", "read-write", "read-only", "refresh"] = Field(
        default="off", description="how a run that does not say uses the response cache (docs/cache.md)"
    )
    retention_check_seconds: float = Field(default=3600.0, gt=0, description="how often retention runs")
    max_refinements: int = _in_file(
        default=2,
        ge=0,
        le=10,
        description="Refiner/Reviewer rounds after the first review, when a request does not say",
    )
    provider_timeout: float = _in_file(
        default=300.0, gt=0, description="longest wait for the next byte from a provider before the attempt fails"
    )
    # Five attempts with a 2 s base: the waits before the last one add up to 15-45 s, enough to ride out a
    # provider that restarts (a local server is back in about 4 s), within retry_wait_max.
    provider_attempts: int = _in_file(
        default=5, ge=1, le=10, description="attempts per model and stage for retryable provider failures"
    )
    retry_wait_max: float = _in_file(
        default=60.0,
        ge=0,
        description="most seconds a stage waits in all between attempts of one model (each model of a fallback "
        "list has its own)",
    )
    retry_backoff: float = _in_file(
        default=2.0, gt=0, le=30, description="base of the jittered exponential backoff between attempts, seconds"
    )
    run_timeout: float = _in_file(
        default=1800.0, gt=0, description="longest a run may take from its creation (then DEADLINE_EXCEEDED)"
    )
    budget_usd: float | None = _in_file(default=None, gt=0, description="default cost budget of a run, USD")
    budget_usd_max: float | None = _in_file(default=None, gt=0, description="the largest cost budget a request may ask")
    budget_tokens: int | None = _in_file(default=None, gt=0, description="default token budget of a run")
    budget_tokens_max: int | None = _in_file(
        default=None, gt=0, description="the largest token budget a request may ask"
    )
    keepalive_time_ms: int = Field(
        default=60_000, ge=1000, description="the server pings an idle connection this often"
    )
    keepalive_timeout_ms: int = Field(default=20_000, ge=1000, description="and drops it when no answer comes in this")
    keepalive_min_ping_interval_ms: int = Field(
        default=10_000, ge=100, description="clients may ping this often (no GOAWAY too_many_pings)"
    )

    # Secrets never come from flags (a command line is visible to every user of the machine).
    api_keys: CliSuppress[SecretStr | None] = Field(
        default=None, description="API keys of callers, name:key comma-separated (environment only)"
    )
    api_keys_file: Path | None = Field(default=None, description="file of caller API keys, one name:key per line")
    reflection: bool = Field(default=True, description="serve gRPC server reflection (for grpcurl and buf curl)")
    insecure: bool = Field(
        default=False, description="allow a non-loopback address with no authentication (not recommended)"
    )
    tls_cert: Path | None = Field(default=None, description="server certificate, PEM")
    tls_key: Path | None = Field(default=None, description="server private key, PEM")
    tls_client_ca: Path | None = Field(default=None, description="require client certificates from this CA (mTLS)")
    # Generated code runs only in a sandbox unless the operator says otherwise, in so many words.
    sandbox: Literal["bwrap", "off", "unsandboxed"] = Field(
        default="bwrap",
        description="where the Tester's tests run: bwrap (bubblewrap; when it is missing or does not work, the "
        "Test run step is skipped, saying why), off (tests are never run), or unsandboxed (generated code runs "
        "with this server's rights; logs a warning)",
    )
    max_runs: int = _in_file(default=64, ge=1, description="most runs in flight on this server")
    max_runs_per_principal: int = _in_file(default=8, ge=1, description="most runs in flight per caller")
    runs_per_minute: float = _in_file(
        default=30.0, gt=0, description="most new runs per caller in any 60 s, counted by the store (replicas share it)"
    )

    # Webhooks (webhooks/): endpoints in a TOML file, so their secrets never sit on a command line.
    webhooks_file: Path | None = Field(
        default=None,
        description="webhook endpoints (TOML, one [[endpoint]] table each: url, events, secret, previous_secret, "
        "principal) told when runs end",
    )
    webhook_allow_hosts: str | None = Field(
        default=None,
        description="host names, addresses or networks (CIDR), comma-separated, that webhooks may target although "
        "they are private, loopback or link-local (refused otherwise)",
    )
    webhook_timeout: float = Field(
        default=15.0, gt=0, le=120, description="longest one webhook attempt may take, connecting included, seconds"
    )
    webhook_retry_schedule: str = Field(
        default="5,300,1800,7200,18000,36000,36000",
        description="seconds to wait before each retry of a failed webhook, comma-separated (jittered; a longer "
        "Retry-After wins); the default is the Standard Webhooks schedule: 5s, 5m, 30m, 2h, 5h, 10h, 10h",
    )

    # `local:` models (the `local` extra). Threads: llama.cpp's threads spin while they wait for each other, and
    # on a core shared with this server or anything else they slowed down 20-fold here, hence half the CPUs.
    local_models_dir: Path = Field(
        default_factory=default_models_dir,
        description="where `facilitair models pull` puts local models, and where local:<file> names are looked up",
    )
    local_slots: int = _in_file(
        default=2, ge=1, le=64, description="requests a local model serves at once; more wait (producing nothing)"
    )
    local_context: int = _in_file(
        default=4096, ge=256, le=1_048_576, description="context window of each local slot, tokens (prompt + answer)"
    )
    local_threads: int | None = Field(
        default=None, ge=1, le=1024, description="CPU threads of a local model (default: half the logical CPUs)"
    )
    local_max_tokens: int = _in_file(
        default=384, ge=16, le=64_000, description="most tokens one stage may write on a local model"
    )

    # The SDKs' own variables, so a machine set up for the SDKs needs nothing more (environment only).
    openai_api_key: CliSuppress[SecretStr | None] = Field(
        default=None, validation_alias=AliasChoices("OPENAI_API_KEY"), description="OpenAI API key"
    )
    openai_base_url: CliSuppress[str | None] = Field(
        default=None, validation_alias=AliasChoices("OPENAI_BASE_URL"), description="OpenAI-compatible endpoint"
    )
    anthropic_api_key: CliSuppress[SecretStr | None] = Field(
        default=None, validation_alias=AliasChoices("ANTHROPIC_API_KEY"), description="Anthropic API key"
    )
    anthropic_base_url: CliSuppress[str | None] = Field(
        default=None, validation_alias=AliasChoices("ANTHROPIC_BASE_URL"), description="Anthropic-compatible endpoint"
    )

    @field_validator("model")
    @classmethod
    def _valid_model(cls, v: str) -> str:
        return check_model(v, "FACILITAIR_MODEL")

    @field_validator("listen", "metrics_listen", "http_listen")
    @classmethod
    def _valid_listen(cls, v: str | None) -> str | None:
        if v is None or v == HTTP_OFF:
            return v
        host, sep, port = v.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"{v!r} is not HOST:PORT")
        return v

    def with_file(self, config: FileSettings) -> Settings:
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

    @property
    def http_enabled(self) -> bool:
        """Whether the HTTP gateway is served (--http-listen is not `off`)."""
        return self.http_listen != HTTP_OFF

    def check_exposure(self, has_keys: bool) -> None:
        """Secure by default: off loopback, callers must authenticate (keys or mTLS) unless --insecure.

        The same rule for the gRPC address and the HTTP gateway's, which share the keys and the TLS files.
        """
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("--tls-cert and --tls-key go together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ConfigError("--tls-client-ca needs --tls-cert and --tls-key")
        addresses = [self.listen] + ([self.http_listen] if self.http_enabled else [])
        for address in addresses:
            if not is_loopback(address) and not has_keys and self.tls_client_ca is None and not self.insecure:
                raise ConfigError(
                    f"refusing to listen on {address} where anyone could spend your provider credits: configure "
                    "API keys (FACILITAIR_API_KEYS or FACILITAIR_API_KEYS_FILE) or client certificates "
                    "(--tls-client-ca), or pass --insecure to accept that risk"
                )

    def default_models(self) -> list[ModelRef]:
        """The server-wide default model (or fallback list); unset, it follows the provider with a key, else local."""
        if "model" not in self.model_fields_set and self.openai_api_key is None:
            if self.anthropic_api_key is not None:
                return [ModelRef("anthropic", DEFAULT_ANTHROPIC_MODEL)]
            return [ModelRef("local", DEFAULT_LOCAL_MODEL)]
        return parse_chain(self.model, field="FACILITAIR_MODEL")


def is_loopback(address: str) -> bool:
    """Whether HOST:PORT names this machine only (a loopback address or localhost)."""
    host = address.rpartition(":")[0].strip("[]")
    return host in ("localhost", "::1") or host.startswith("127.")


# The settings the pipeline file's [settings] table may set: those declared with _in_file.
FILE_SETTINGS = frozenset(
    name
    for name, f in Settings.model_fields.items()
    if isinstance(f.json_schema_extra, dict) and f.json_schema_extra.get("in_file")
)
