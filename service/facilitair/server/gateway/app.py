"""The HTTP gateway's aiohttp application and server, on the gRPC server's event loop.

Every request passes one middleware: it binds nothing of the previous request on the connection, finds the
caller (gateway/auth.py), refuses cross-site state changes, answers any error from the shared table
(transport/status.py: the HTTP status grpc-gateway gives the gRPC code, and the same Status as JSON), and
logs the request by its path only (a query string can hold a token; it is never logged). Every response gets
the security headers; the page's get a content-security-policy that allows no inline script.

The socket is bound first, with the gRPC port (so a server that cannot listen stops before it touches the
store), and served once the run service has started. Workers of `serve --workers N` share the port through
SO_REUSEPORT, as they share the gRPC port.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import structlog
from aiohttp import web

from facilitair.server.errors import FacilitairError, NotFound, Reason
from facilitair.server.gateway.api import CALLER, Api
from facilitair.server.gateway.auth import Sessions, refuse_cross_site
from facilitair.server.gateway.bodies import MAX_BODY_BYTES, json_response
from facilitair.server.pipeline_file import PipelineConfig
from facilitair.server.runs.service import RunService
from facilitair.server.settings import ConfigError, Settings, is_loopback
from facilitair.server.telemetry import Telemetry
from facilitair.server.transport.status import error_body, http_status_of
from facilitair.v1 import orchestrator_pb2 as pb

log = structlog.get_logger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Paths anyone may fetch: the page and its files, and the login that gets a session.
OPEN_PREFIXES = ("/static/", "/runs/")
OPEN_PATHS = frozenset({"/", "/v1/login", "/v1/logout", "/v1/session", "/favicon.ico"})
# A stop waits this long at most for requests other than event streams to finish.
STOP_WAIT = 5.0
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "font-src 'self'; manifest-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
NOT_LOCAL = "refused: the Host header does not name this machine (a server with no keys answers only local names)"


@dataclass
class BoundGateway:
    """The gateway's socket, bound at start with the gRPC port, and what it will serve with."""

    sock: socket.socket
    context: ssl.SSLContext | None
    url: str
    keys: Mapping[str, str]

    @property
    def port(self) -> int:
        """The bound port."""
        port: int = self.sock.getsockname()[1]
        return port

    async def start(
        self,
        runs: RunService,
        settings: Settings,
        config: PipelineConfig,
        info: pb.GetServerInfoResponse,
        telemetry: Telemetry | None = None,
    ) -> Gateway:
        """Serve the gateway on the bound socket."""
        sessions = Sessions(self.keys, secure=self.context is not None, mtls=settings.tls_client_ca is not None)
        api = Api(runs, settings, config, info, sessions, telemetry=telemetry or Telemetry())
        gateway = Gateway(api, sessions, settings)
        await gateway.start(self.sock, self.context)
        return gateway


def bind_gateway(settings: Settings, keys: Mapping[str, str]) -> BoundGateway | None:
    """Bind the gateway's port (None with --http-listen off); ConfigError when it cannot serve as configured."""
    if not settings.http_enabled:
        return None
    context = tls_context(settings)
    sock = bind(settings)
    return BoundGateway(sock, context, url_of(settings, sock, tls=context is not None), keys)


def static_dir() -> Path:
    """The page's files, packaged with the server (gateway/static/)."""
    return Path(str(resources.files("facilitair.server.gateway") / "static"))


def bind(settings: Settings) -> socket.socket:
    """The gateway's listening socket; ConfigError naming the address when it cannot be bound."""
    host, _, port = settings.http_listen.rpartition(":")
    host = host.strip("[]")
    try:
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ConfigError(
            f"cannot listen on {settings.http_listen} (--http-listen): the address does not resolve ({exc})"
        ) from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if settings.share_port:  # only the workers of `serve --workers`, on purpose (see transport/app.py)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        sock.listen(128)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {settings.http_listen} (--http-listen): {exc.strerror or exc}") from None
    return sock


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The gRPC server's TLS files as an SSL context; client certificates required under --tls-client-ca."""
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
        if settings.tls_client_ca is not None:
            context.load_verify_locations(settings.tls_client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot use the TLS files for the HTTP gateway: {exc}") from None
    return context


def url_of(settings: Settings, sock: socket.socket, *, tls: bool) -> str:
    """The gateway's base URL, as a client on this machine or beyond reaches it."""
    host = settings.http_listen.rpartition(":")[0]
    if host in ("0.0.0.0", "[::]", ""):  # noqa: S104 - naming the wildcard address, not binding it
        host = socket.gethostname()
    return f"{'https' if tls else 'http'}://{host}:{sock.getsockname()[1]}"


class Gateway:
    """The running HTTP server: its runner, its socket and the event streams it serves."""

    def __init__(self, api: Api, sessions: Sessions, settings: Settings) -> None:
        self._sessions = sessions
        self._local_only = not sessions.required and is_loopback(settings.http_listen)
        self._streams: set[asyncio.Task[object]] = set()
        app = web.Application(middlewares=[self._middleware], client_max_size=MAX_BODY_BYTES + 1)
        app.add_routes(api.routes())
        pages = static_dir()
        app.add_routes([web.get("/", self._index), web.get("/runs/{run_id}", self._index)])
        if pages.is_dir():
            app.router.add_static("/static/", pages, follow_symlinks=False, append_version=False)
        app.on_response_prepare.append(_secure_headers)
        self.app = app
        self._runner: web.AppRunner | None = None

    async def start(self, sock: socket.socket, context: ssl.SSLContext | None) -> None:
        """Serve on the bound socket."""
        # handler_cancellation: a client that goes away cancels its handler at once (an event stream's watcher
        # is released then, not at the next write). access_log None: our middleware logs, without query strings.
        self._runner = web.AppRunner(self.app, handler_cancellation=True, access_log=None, shutdown_timeout=STOP_WAIT)
        await self._runner.setup()
        await web.SockSite(self._runner, sock, ssl_context=context).start()

    async def stop(self, grace: float) -> None:
        """Let event streams run for `grace` seconds, end them, then close the server."""
        if self._streams and grace > 0:
            await asyncio.wait(self._streams, timeout=grace)
        for task in self._streams:
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _index(self, request: web.Request) -> web.StreamResponse:
        page = static_dir() / "index.html"
        if not page.is_file():
            raise NotFound("the web page is not installed with this server")
        return web.FileResponse(page, headers={"Cache-Control": "no-cache"})

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        structlog.contextvars.clear_contextvars()  # one connection serves many requests in one task
        structlog.contextvars.bind_contextvars(http=f"{request.method} {request.path[:200]}")
        status = 500
        try:
            if self._local_only and not _local_name(request.url.host):
                raise FacilitairError(NOT_LOCAL, reason=Reason.CSRF_REFUSED)
            refuse_cross_site(request)
            if request.path not in OPEN_PATHS and not request.path.startswith(OPEN_PREFIXES):
                caller = self._sessions.caller(request)
                self._sessions.check_csrf(request, caller)
                request[CALLER] = caller
                structlog.contextvars.bind_contextvars(principal=caller.principal)
            if request.path.endswith("/events"):
                task = asyncio.current_task()
                if task is not None:
                    self._streams.add(task)
            try:
                response = await handler(request)
            finally:
                task = asyncio.current_task()
                if task is not None:
                    self._streams.discard(task)
            status = response.status
            return response
        except web.HTTPException as exc:  # aiohttp's own answers: 404 for an unknown path, 405, ...
            status = exc.status
            if exc.status == 404:
                return _error(NotFound(f"no such path: {request.path[:200]}", reason=Reason.PATH_NOT_FOUND))
            raise
        except (asyncio.CancelledError, ConnectionError):
            status = 499
            raise
        except Exception as exc:  # noqa: BLE001 - every error is answered from the one table
            response = _error(exc)
            status = response.status
            return response
        finally:
            log.info("http_request", status=status)


def _local_name(host: str | None) -> bool:
    """Whether a Host header's name is this machine's (a page of another site rebound to 127.0.0.1 is not).

    A loopback address must parse as one: a prefix test would let `127.evil.example`, a name its owner can
    rebind to 127.0.0.1, through.
    """
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _error(exc: BaseException) -> web.Response:
    body = error_body(exc)
    headers = {}
    retry = getattr(exc, "retry_after", None)
    if isinstance(retry, int | float) and retry > 0:
        headers["Retry-After"] = str(max(1, round(retry)))
    if http_status_of(exc) == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="facilitair"'
    return json_response(body, status=http_status_of(exc), headers=headers)


async def _secure_headers(request: web.Request, response: web.StreamResponse) -> None:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
