"""The grpc.aio server: our service, health, reflection, keepalive for long streams, graceful stop."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import os
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from facilitair.server.domain import chain_text
from facilitair.server.gateway.app import BoundGateway, Gateway, bind_gateway
from facilitair.server.logging_setup import configure_logging
from facilitair.server.metrics import MetricsServer
from facilitair.server.pipeline_file import PipelineConfig
from facilitair.server.providers import ProviderRegistry
from facilitair.server.runs.service import RunService
from facilitair.server.sandbox import Sandbox, SandboxKind
from facilitair.server.settings import ConfigError, Settings
from facilitair.server.store import create_store
from facilitair.server.store.base import EventStore
from facilitair.server.store.sqlite import SqliteStore
from facilitair.server.store.sqlite_lock import SqliteFileLock
from facilitair.server.tasks import TaskSupervisor
from facilitair.server.telemetry import Telemetry, from_environment
from facilitair.server.transport.guard import ApiKeys, GuardInterceptor
from facilitair.server.transport.health import HealthServicer
from facilitair.server.transport.info import server_info
from facilitair.server.transport.loop_lag import LoopLagMonitor
from facilitair.server.transport.requests import check_default_models
from facilitair.server.transport.servicer import OrchestratorServicer
from facilitair.server.transport.status import status_number
from facilitair.server.webhooks.config import WebhookConfig
from facilitair.v1 import orchestrator_pb2, orchestrator_pb2_grpc

log = structlog.get_logger(__name__)

# A worker of `serve --workers` looks this often whether the process that started it is still there.
PARENT_CHECK_SECONDS = 1.0
# How long a stop waits for the last spans and metrics to be exported (an unreachable collector must not hold it).
TELEMETRY_FLUSH = 5.0

SERVICE_NAME = orchestrator_pb2.DESCRIPTOR.services_by_name["OrchestratorService"].full_name


def server_options(settings: Settings) -> list[tuple[str, int]]:
    """Channel options for streams that last many minutes (docs/operations.md, "Long streams").

    The server pings an idle connection every 60 s and drops it if no answer comes in 20 s. It
    accepts client pings as often as every 10 s, below the 30 s our client uses, so a client is
    never sent GOAWAY too_many_pings; a stream quiet at the HTTP/2 level is kept alive by our
    heartbeats, which are data.
    """
    return [
        ("grpc.keepalive_time_ms", settings.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", settings.keepalive_timeout_ms),
        ("grpc.http2.min_ping_interval_without_data_ms", settings.keepalive_min_ping_interval_ms),
        ("grpc.http2.max_ping_strikes", 2),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.max_connection_idle_ms", 300_000),
        # Requests are small (a task and some context); large ones are refused before they are parsed.
        ("grpc.max_receive_message_length", 1024 * 1024),
        # gRPC shares a port between processes by default (SO_REUSEPORT): a second server started by mistake
        # on a port in use would silently take half the connections, and runs would seem to vanish. Only the
        # worker processes of `serve --workers N` share their port, on purpose.
        ("grpc.so_reuseport", 1 if settings.share_port else 0),
    ]


@dataclass
class RunningServer:
    """A started server and what it owns."""

    server: grpc.aio.Server
    port: int
    runs: RunService
    health: HealthServicer
    providers: ProviderRegistry
    metrics: MetricsServer | None = None
    lock: SqliteFileLock | None = None
    loop_lag: LoopLagMonitor | None = None
    tasks: TaskSupervisor = field(default_factory=lambda: TaskSupervisor("server"))
    http: Gateway | None = None  # the HTTP gateway (None with --http-listen off)
    http_port: int = 0
    http_url: str = ""
    telemetry: Telemetry | None = None

    def follow_store_health(self) -> None:
        """SERVING while the store can write, NOT_SERVING while it cannot (load balancers then send elsewhere)."""

        def changed(healthy: bool) -> None:
            status = health_pb2.HealthCheckResponse.SERVING if healthy else health_pb2.HealthCheckResponse.NOT_SERVING
            self.tasks.spawn(self._set_health(status), name="set-health")

        self.runs.events.health.subscribe(changed)
        if not self.runs.events.health.healthy:
            changed(False)

    async def _set_health(self, status: health_pb2.HealthCheckResponse.ServingStatus.ValueType) -> None:
        if not self.runs.stopping:  # once stopping, NOT_SERVING stays
            await self.health.set("", status)
            await self.health.set(SERVICE_NAME, status)

    async def stop(self, grace: float) -> None:
        """NOT_SERVING first, refuse new runs, end streams after `grace`, then interrupt runs."""
        await self.health.enter_graceful_shutdown()
        self.runs.refuse_new_runs()
        try:
            if self.http is not None:  # both servers end their streams after the same grace
                await asyncio.gather(self.server.stop(grace), self.http.stop(grace))
            else:
                await self.server.stop(grace)
        finally:
            await self.tasks.close()  # what calls handed off (a cancel on disconnect): the runs are handed over
            if self.loop_lag is not None:
                await self.loop_lag.stop()
            try:
                await self.runs.stop()
            finally:
                if self.lock is not None:
                    self.lock.release()  # the store is closed: the next server may take the file
            await self.providers.aclose()
            if self.metrics is not None:
                self.metrics.stop()
            if self.telemetry is not None:
                await _flush(self.telemetry)


async def create_server(
    settings: Settings,
    *,
    providers: ProviderRegistry | None = None,
    store: EventStore | None = None,
    config: PipelineConfig | None = None,
    telemetry: Telemetry | None = None,
) -> RunningServer:
    """Build, bind and start the server; `settings.listen` may use port 0 (the bound port is returned).

    The order matters. Everything that can fail on a bad setting comes first; then the port is bound, then a
    SQLite file is locked, and only then is the store opened and are its runs claimed (at start a one-process
    store claims every unfinished run). A server that cannot listen, or whose file another server holds, so
    stops before it touches that server's runs, and creates no database file. Whatever was set up is undone
    when a later step fails: no half-started server.

    `telemetry` defaults to what the OTEL_* environment configures (telemetry.from_environment): nothing unless an
    OTLP endpoint is set and the `otel` extra is installed.
    """
    config = config if config is not None else PipelineConfig.load(settings.pipeline)
    settings = settings.with_file(config)
    key_names = settings.load_api_keys()
    keys = ApiKeys(key_names)
    settings.check_exposure(bool(keys))
    credentials = _tls_credentials(settings)
    webhooks = WebhookConfig.from_settings(settings)  # the webhooks file read and checked before anything starts
    store = store if store is not None else create_store(settings)  # not opened: no file or connection yet
    providers = providers if providers is not None else ProviderRegistry.from_settings(settings, config)
    # Probed before any run can start or resume here: a run's Test run step reads what was found.
    sandbox = Sandbox(SandboxKind(settings.sandbox))
    await sandbox.start()
    telemetry = telemetry if telemetry is not None else from_environment()
    async with contextlib.AsyncExitStack() as undo:
        undo.push_async_callback(providers.aclose)
        metrics_server = _metrics_server(settings.metrics_listen)
        if metrics_server is not None:
            undo.callback(metrics_server.stop)
        server, port = _bound_server(settings, keys, credentials, telemetry)
        undo.push_async_callback(_unbind, server)
        http: BoundGateway | None = bind_gateway(settings, key_names)
        if http is not None:
            undo.callback(http.sock.close)
        lock = None
        if isinstance(store, SqliteStore):
            lock = SqliteFileLock(store.path)
            lock.acquire(f"{settings.listen.rpartition(':')[0]}:{port}")
            undo.callback(lock.release)
        runs = RunService(
            settings, store, providers, config, status_number, webhooks=webhooks, sandbox=sandbox, telemetry=telemetry
        )
        # Before the start: one that fails midway (the store opened, its writer started, then listening
        # refused) stops what it started and closes the store; stop() is safe on a partial start.
        undo.push_async_callback(runs.stop)
        await runs.start()
        info = server_info(
            settings,
            config,
            providers=providers.names(),
            store_kind=runs.store.kind,
            replica_id=runs.replica_id,
            sandbox=sandbox,
        )
        tasks = TaskSupervisor("server")
        info.http_url = http.url if http is not None else ""
        gateway = await http.start(runs, settings, config, info, telemetry) if http is not None else None
        if gateway is not None:
            undo.push_async_callback(gateway.stop, 0.0)
        health = await _start(server, settings, runs, OrchestratorServicer(runs, settings, config, info, tasks))
        undo.pop_all()  # started: RunningServer.stop undoes it all from now on
    running = RunningServer(
        server, port, runs, health, providers, metrics_server, lock, tasks=tasks, telemetry=telemetry
    )
    if http is not None:
        running.http, running.http_port, running.http_url = gateway, http.port, http.url
    running.follow_store_health()
    running.loop_lag = LoopLagMonitor(settings.loop_stall_seconds)
    running.loop_lag.start()
    return running


def _bound_server(
    settings: Settings, keys: ApiKeys, credentials: grpc.ServerCredentials | None, telemetry: Telemetry
) -> tuple[grpc.aio.Server, int]:
    """A gRPC server bound to `settings.listen` (not started, no services yet) and its port; ConfigError if not."""
    server = grpc.aio.server(
        options=server_options(settings),
        interceptors=[GuardInterceptor(keys, mtls=settings.tls_client_ca is not None, telemetry=telemetry)],
    )
    try:
        if credentials is None:
            port = server.add_insecure_port(settings.listen)
        else:
            port = server.add_secure_port(settings.listen, credentials)
    except RuntimeError:  # grpc raises this when it cannot bind
        port = 0
    if port == 0:
        raise ConfigError(f"cannot listen on {settings.listen}: {_why_not_bindable(settings.listen)}")
    return server, port


async def _start(
    server: grpc.aio.Server, settings: Settings, runs: RunService, servicer: OrchestratorServicer
) -> HealthServicer:
    """Add our service, health and reflection to the bound server and start it."""
    orchestrator_pb2_grpc.add_OrchestratorServiceServicer_to_server(servicer, server)
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    if settings.reflection:
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server
        )
    # SERVING only while the store takes writes (RunningServer.follow_store_health keeps this true). Set before
    # the start, which is the last step: nothing after it can fail and leave a started server behind.
    serving = runs.events.health.healthy
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    await health.set("", status)
    await health.set(SERVICE_NAME, status)
    await server.start()
    return health


async def _flush(telemetry: Telemetry) -> None:
    """Export the spans and metrics still buffered, in a thread (the exporter blocks), at most TELEMETRY_FLUSH s."""
    try:
        await asyncio.wait_for(asyncio.to_thread(telemetry.shutdown), TELEMETRY_FLUSH)
    except TimeoutError:
        log.warning("telemetry_flush_timed_out", seconds=TELEMETRY_FLUSH)
    except Exception:
        log.warning("telemetry_flush_failed", exc_info=True)


async def _unbind(server: grpc.aio.Server) -> None:
    """Give the port of a bound server that was never started back (a later step of the start failed).

    grpc.aio keeps it bound until the process ends otherwise, even after stop(). Started with no service for
    that instant, the server answers UNIMPLEMENTED to whatever comes in meanwhile.
    """
    await server.start()
    await server.stop(None)


def _why_not_bindable(listen: str) -> str:
    """Why an address cannot be listened on, in the operating system's words (gRPC does not say)."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    try:
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    except (OSError, ValueError) as exc:
        return f"the address does not resolve ({exc})"
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as sock:
            try:
                sock.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return (
                        "address already in use (another server listens there; several servers on one port is "
                        "what --workers is for)"
                    )
                return exc.strerror or str(exc)
    return "gRPC refused the address"


def _metrics_server(listen: str | None) -> MetricsServer | None:
    """The /metrics endpoint, bound now; ConfigError naming the address when it cannot be."""
    if listen is None:
        return None
    try:
        return MetricsServer(listen)
    except (OSError, ValueError, OverflowError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not HOST:PORT"
        raise ConfigError(f"cannot serve metrics on {listen}: {why}") from None


def _tls_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """Server TLS from --tls-cert/--tls-key; with --tls-client-ca, client certificates are required."""
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    try:
        cert = settings.tls_cert.read_bytes()
        key = settings.tls_key.read_bytes()
        client_ca = settings.tls_client_ca.read_bytes() if settings.tls_client_ca is not None else None
    except OSError as exc:
        raise ConfigError(f"cannot read a TLS file ({exc.filename}): {exc.strerror}") from None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def tune_runtime() -> None:
    """Process-wide settings for a server holding many streams (measured in bench/, see docs/benchmarks.md).

    The store's writer thread waits for the GIL whenever the event loop is busy: 1 ms instead of the
    default 5 ms bounds that wait. Objects made at start-up are frozen out of the cyclic GC and young
    collections run every 50,000 allocations instead of 700: with hundreds of runs, full collections
    stopped the loop for 100-200 ms and young ones for 5-10 ms several times a second.
    """
    sys.setswitchinterval(0.001)
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop for `auto` when it is installed and for `uvloop`; None (asyncio's) otherwise.

    The event loop thread is what saturates first under load; on uvloop's loop the same load left it
    more headroom (docs/benchmarks.md). grpc.aio, aiohttp and the store's threads run unchanged on either.
    """
    if choice == "asyncio":
        return None
    try:
        import uvloop  # noqa: PLC0415 - optional: not on Windows
    except ImportError:
        if choice == "uvloop":
            raise ConfigError("FACILITAIR_EVENT_LOOP=uvloop but uvloop is not installed (pip install uvloop)") from None
        return None
    return uvloop.new_event_loop


async def until_signalled() -> None:
    """Return at the first SIGINT or SIGTERM, or, for a worker of `serve --workers`, once its parent is gone."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    parent = os.environ.get("FACILITAIR_PARENT_PID")
    while True:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(PARENT_CHECK_SECONDS):
                await stop.wait()
            return
        if parent is not None and os.getppid() != int(parent):
            log.warning("parent_gone", parent=parent)
            return


async def usable_providers(settings: Settings, config: PipelineConfig) -> ProviderRegistry:
    """The providers `settings` configure; ConfigError, with nothing left open, when every run would fail.

    Said at start, naming what to install or set (requests.check_default_models), by `serve` and by the parent
    of `serve --workers` before any worker: a worker that refused to start would be restarted forever.
    """
    settings = settings.with_file(config)
    providers = ProviderRegistry.from_settings(settings, config)
    try:
        check_default_models(providers, settings, config)
    except BaseException:
        await providers.aclose()
        raise
    return providers


async def serve(settings: Settings, config: PipelineConfig | None = None) -> None:
    """Run until SIGINT or SIGTERM, then stop gracefully."""
    configure_logging(settings.log_level, settings.log_format, replica=settings.replica_id)
    config = config if config is not None else PipelineConfig.load(settings.pipeline)
    providers = await usable_providers(settings, config)
    running = await create_server(settings, providers=providers, config=config)
    tune_runtime()
    host = settings.listen.rpartition(":")[0]
    if settings.insecure and not (settings.api_keys or settings.api_keys_file or settings.tls_client_ca):
        log.warning(
            "insecure_listener",
            message=f"listening on {settings.listen} with NO authentication: anyone who can reach it can start runs "
            "on your provider keys",
        )
    if running.metrics is not None:
        metrics_host = (settings.metrics_listen or "").rpartition(":")[0]
        log.info("metrics", address=f"{metrics_host}:{running.metrics.port}", port=running.metrics.port)
    defaults = settings.default_models()
    note = {}
    if "model" not in settings.model_fields_set and defaults[0].provider == "local":
        note["note"] = (
            "no provider key is set (OPENAI_API_KEY, ANTHROPIC_API_KEY): runs use local:default, a tiny model on this "
            "machine; its answers are poor, but every part of the service works"
        )
    log.info(
        "serving",
        address=f"{host}:{running.port}",
        port=running.port,
        store=running.runs.store.kind,
        db=str(settings.db) if running.runs.store.kind == "sqlite" else None,
        healthy=running.runs.events.health.healthy,
        providers=running.providers.names(),
        http=running.http_url or None,
        http_port=running.http_port or None,
        default_model=chain_text(defaults),
        event_loop=type(asyncio.get_running_loop()).__module__.split(".")[0],
        **note,
    )
    try:
        await until_signalled()
        log.info("stopping", grace_seconds=settings.grace_seconds, active_runs=running.runs.active_runs)
    finally:
        await running.stop(settings.grace_seconds)
        log.info("stopped")
