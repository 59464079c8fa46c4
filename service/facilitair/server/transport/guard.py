"""The one interceptor every call passes: who is calling, and a request that really parses.

Deny by default: every method of every service, whatever its shape, is served through here.

- Authentication: with API keys configured, a call must send `authorization: Bearer <key>` (keys are
  compared in constant time, and no part of one is ever logged). With client-certificate TLS (mTLS)
  the certificate names the principal (`certificate_identity`); one that names nobody is refused.
  Only health and reflection need no credentials; every other method does, including any added later.
- Decoding: every request message, of every service (health and reflection too) and every shape, is
  parsed here, so corrupt bytes become INVALID_ARGUMENT with a clear message instead of UNKNOWN with
  the decoder's text and an error in the log that anyone could flood.
- Storable text: every string of every request of our own service (facilitair.v1) is checked here, once, for
  what both stores can hold (no NUL character; proto3 already guarantees UTF-8), so a field no handler reads
  with care, or one added later, is INVALID_ARGUMENT naming the field on SQLite and PostgreSQL alike.
- Every handler is served as a request stream, so that a unary method's one message is read here
  too: a call that ends without one gets INVALID_ARGUMENT instead of no status at all.
- Whatever a handler lets escape goes through the one status table (transport/status.py): this is the one
  place errors become statuses, for our service and every other, so the servicer just raises.
- The principal and the RPC's name are bound in contextvars for the servicer and the logs.
- Each call of facilitair.v1 is covered by its trace span (tracing.py), here where every call already passes, so
  that tracing adds no step per message sent.
- A streaming handler may yield bytes already serialised (`_passing_bytes`): the servicer sends each committed
  event's response bytes, made once, to every watcher of the run.
"""

from __future__ import annotations

import contextlib
import hmac
import inspect
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeAlias

import grpc
import structlog
from google.protobuf.message import DecodeError, Message

from facilitair.server.errors import FacilitairError, InvalidArgument, Reason, Unauthenticated
from facilitair.server.telemetry import Telemetry
from facilitair.server.transport.requests import unstorable_strings
from facilitair.server.transport.status import abort
from facilitair.server.transport.tracing import CallTrace, call_trace

Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"  # generic only in the type stubs
Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
PRINCIPAL: ContextVar[str] = ContextVar("principal", default="local")

# The requests whose strings may be stored (health's and reflection's never are).
OUR_PACKAGE = "facilitair.v1"
# The services anyone may call: a load balancer's health check, grpcurl's and buf curl's reflection.
EXEMPT_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
NO_KEY = "missing or invalid API key: send the header 'authorization: Bearer <key>'"
NO_IDENTITY = "the client certificate names no identity: it needs a subject, or exactly one URI SAN (a SPIFFE ID)"
NO_MESSAGE = "the call ended without a request message"


def current_principal() -> str:
    """Who is calling (set by the interceptor for the call being handled); every run belongs to one principal."""
    return PRINCIPAL.get()


class ApiKeys:
    """The configured keys, by principal name."""

    def __init__(self, keys: Mapping[str, str]) -> None:
        # Stored as bytes, once; compare_digest then costs the same whichever key is sent.
        self._keys = [(name, key.encode()) for name, key in keys.items()]

    def __bool__(self) -> bool:
        return bool(self._keys)

    def principal(self, metadata: Sequence[tuple[str, str | bytes]] | None) -> str | None:
        """The principal whose key the metadata carries, or None."""
        sent = b""
        for name, value in metadata or ():
            if name == "authorization":
                raw = value.encode() if isinstance(value, str) else value
                if raw[:7].lower() == b"bearer ":
                    sent = raw[7:].strip()
        found = None
        for name, key in self._keys:  # no early exit: every key is compared
            if hmac.compare_digest(sent, key) and sent:
                found = name
        return found


def certificate_identity(auth_context: Mapping[str, Iterable[bytes]]) -> str | None:
    """Whom a verified client certificate names: its subject, else its one URI SAN (a SPIFFE ID), else nobody.

    SPIFFE certificates usually have an empty subject: read by subject alone, they were all one principal
    ("local"). gRPC reports the subject in RFC 4514 form ("CN=a,O=b"), which no URI ("scheme:...") can equal.
    A certificate with several URIs, or only a DNS name or an e-mail address, names no one principal.
    """
    subject = b"".join(auth_context.get("x509_subject", ()))
    if subject:
        return subject.decode(errors="replace")
    uris = list(auth_context.get("peer_uri", ()))
    return uris[0].decode(errors="replace") if len(uris) == 1 and uris[0] else None


class GuardInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Authenticate, parse, bind the principal: for every method there is."""

    def __init__(self, keys: ApiKeys, *, mtls: bool, telemetry: Telemetry | None = None) -> None:
        self._keys = keys
        self._mtls = mtls
        self._telemetry = telemetry or Telemetry()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        details: grpc.HandlerCallDetails,
    ) -> Handler:
        """Wrap every handler there is."""
        handler = await continuation(details)
        if handler is None:  # an unknown method: grpc answers UNIMPLEMENTED
            return handler
        method: str = details.method
        gate = _Gate(method.rpartition("/")[2], handler.request_deserializer, handler.request_streaming)
        gate.trace = call_trace(self._telemetry, method, details.invocation_metadata)
        if method.startswith(EXEMPT_PREFIXES):
            gate.exempt = True
        elif self._keys:
            gate.principal = self._keys.principal(details.invocation_metadata)
            gate.refusal = NO_KEY if gate.principal is None else None
        else:
            gate.by_certificate = self._mtls
        return _served(handler, gate)


@dataclass
class _Gate:
    """What one call must pass before its handler runs: credentials first, then its request's bytes."""

    rpc: str
    parse: Callable[[bytes], Any] | None
    request_streaming: bool
    exempt: bool = False
    principal: str | None = None  # from the API key
    refusal: str | None = None  # why the call is refused before anything is read
    by_certificate: bool = False  # the principal is whom the client certificate names
    trace: CallTrace | None = None  # the call's span (our service's calls only)

    def traced(self) -> contextlib.AbstractContextManager[None]:
        """The call's span around everything the call does, refusals included."""
        return self.trace.covering() if self.trace is not None else contextlib.nullcontext()

    async def admit(self, raw_requests: AsyncIterable[bytes], context: Context) -> Any:
        """Authenticate, bind the principal, and give the request: its one message, or its stream of messages."""
        structlog.contextvars.bind_contextvars(rpc=self.rpc)
        if not self.exempt:
            await self._authenticate(context)
        if self.request_streaming:
            return (await self._parsed(raw, context) async for raw in raw_requests)
        raw = await anext(aiter(raw_requests), None)
        if raw is None:
            await abort(context, FacilitairError(NO_MESSAGE, reason=Reason.INVALID_ARGUMENT))
        return await self._parsed(raw, context)

    async def _authenticate(self, context: Context) -> None:
        if self.refusal is not None:
            await abort(context, Unauthenticated(self.refusal))
        who = self.principal
        if self.by_certificate:
            who = certificate_identity(context.auth_context())
            if who is None:
                await abort(context, Unauthenticated(NO_IDENTITY))
        PRINCIPAL.set(who or PRINCIPAL.get())
        structlog.contextvars.bind_contextvars(principal=PRINCIPAL.get())

    async def _parsed(self, raw: bytes, context: Context) -> Any:
        if self.parse is None:  # a handler that takes the bytes as they came
            return raw
        try:
            request = self.parse(raw)
        except (DecodeError, ValueError, RuntimeError):
            message_class = getattr(self.parse, "__self__", None)  # FromString is bound to its message class
            name = getattr(getattr(message_class, "DESCRIPTOR", None), "full_name", f"{self.rpc} request")
            invalid = FacilitairError(f"the request is not a valid {name} message", reason=Reason.INVALID_ARGUMENT)
            await abort(context, invalid)
        if isinstance(request, Message) and request.DESCRIPTOR.file.package == OUR_PACKAGE:
            unstorable = unstorable_strings(request)
            if unstorable:
                await abort(context, InvalidArgument.many(unstorable))
        return request


@contextlib.asynccontextmanager
async def _mapped(context: Context) -> AsyncIterator[None]:
    """Send whatever escapes a handler through the status table; grpc's own exceptions (aborts) pass on."""
    try:
        yield
    except grpc.aio.BaseError:
        raise
    except Exception as exc:  # noqa: BLE001  (every escape becomes a status from the one table)
        await abort(context, exc)


def _served(handler: Handler, gate: _Gate) -> Handler:
    """`handler` behind the gate, as a request stream with the same kind of response."""
    takes = "stream" if handler.request_streaming else "unary"
    gives = "stream" if handler.response_streaming else "unary"
    inner: Any = getattr(handler, f"{takes}_{gives}")  # e.g. handler.unary_stream

    if handler.response_streaming:

        async def stream_stream(raw_requests: AsyncIterable[bytes], context: Context) -> AsyncIterator[Any]:
            with gate.traced():
                request = await gate.admit(raw_requests, context)
                async with _mapped(context):
                    responses = inner(request, context)
                    if inspect.isasyncgen(responses):
                        async for response in responses:
                            yield response
                    else:  # a handler that writes with context.write (health's Watch) and returns nothing
                        await responses

        serialize = _passing_bytes(handler.response_serializer)
        return grpc.stream_stream_rpc_method_handler(stream_stream, response_serializer=serialize)

    async def stream_unary(raw_requests: AsyncIterable[bytes], context: Context) -> Any:
        with gate.traced():
            request = await gate.admit(raw_requests, context)
            async with _mapped(context):
                return await inner(request, context)

    return grpc.stream_unary_rpc_method_handler(stream_unary, response_serializer=handler.response_serializer)


def _passing_bytes(serialize: Callable[[Any], bytes] | None) -> Callable[[Any], bytes] | None:
    """The handler's response serialiser, except that bytes (a response serialised already) pass as they are."""
    if serialize is None:  # the handler gives bytes already
        return None

    def serializer(response: Any) -> bytes:
        return response if type(response) is bytes else serialize(response)

    return serializer
