"""The one interceptor every call passes: who is calling, and a request that really parses.

- Authentication: with API keys configured, a call must send `authorization: Bearer <key>`; keys are
  compared in constant time against every configured key, and no part of one is ever logged. With
  client-certificate TLS (mTLS) the certificate's subject is the principal. Health and reflection
  need no key.
- Decoding: requests reach our handlers as bytes and are parsed here, so corrupt bytes become
  INVALID_ARGUMENT with a clear message instead of UNKNOWN with grpc's internal text.
- The principal and the RPC's name are bound in contextvars for the servicer and the logs.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextvars import ContextVar
from typing import Any, TypeAlias

import grpc
import structlog
from google.protobuf.message import DecodeError

from facilitair.server.errors import FacilitairError, Reason, Unauthenticated
from facilitair.server.transport.status import abort

Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"  # generic only in the type stubs
PRINCIPAL: ContextVar[str] = ContextVar("principal", default="local")


def current_principal() -> str:
    """Who is calling (set by the interceptor for the call being handled); every run belongs to one principal."""
    return PRINCIPAL.get()


EXEMPT_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


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


def _subject(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    """The client certificate's subject (or common name) when the connection is mutual TLS."""
    auth = context.auth_context()
    for key in ("x509_subject", "x509_common_name"):
        values = auth.get(key)
        if values:
            return bytes(next(iter(values))).decode(errors="replace")
    return None


class GuardInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Authenticate, parse, bind the principal."""

    def __init__(self, keys: ApiKeys, *, mtls: bool) -> None:
        self._keys = keys
        self._mtls = mtls

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        details: grpc.HandlerCallDetails,
    ) -> Handler:
        """Wrap our handlers; pass health and reflection through."""
        handler = await continuation(details)
        method: str = details.method
        if handler is None or method.startswith(EXEMPT_PREFIXES) or handler.request_streaming:
            return handler
        principal = None
        if self._keys:
            principal = self._keys.principal(details.invocation_metadata)
            if principal is None:
                return _deny(handler, "missing or invalid API key: send the header 'authorization: Bearer <key>'")
        return _guarded(handler, method.rpartition("/")[2], principal, self._mtls)


def _deny(handler: Handler, message: str) -> Handler:
    """A handler of the same shape that refuses the call without reading the request."""

    async def refuse(_request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await abort(context, Unauthenticated(message))

    if handler.response_streaming:
        return handler._replace(request_deserializer=None, unary_stream=refuse)  # type: ignore[attr-defined,no-any-return]
    return handler._replace(request_deserializer=None, unary_unary=refuse)  # type: ignore[attr-defined,no-any-return]


def _guarded(handler: Handler, rpc: str, principal: str | None, mtls: bool) -> Handler:
    parse: Callable[[bytes], Any] = handler.request_deserializer  # type: ignore[assignment]

    async def enter(raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        who = principal or (_subject(context) if mtls else None) or PRINCIPAL.get()
        PRINCIPAL.set(who)
        structlog.contextvars.bind_contextvars(rpc=rpc, principal=who)
        try:
            return parse(raw)
        except (DecodeError, ValueError, RuntimeError):
            message = f"the request is not a valid {rpc}Request message"
            invalid = FacilitairError(message, reason=Reason.INVALID_ARGUMENT)
            await abort(context, invalid)

    if handler.response_streaming:
        inner_stream: Any = handler.unary_stream

        async def unary_stream(raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            request = await enter(raw, context)
            async for response in inner_stream(request, context):
                yield response

        return handler._replace(request_deserializer=None, unary_stream=unary_stream)  # type: ignore[attr-defined,no-any-return]

    inner_unary: Any = handler.unary_unary

    async def unary_unary(raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        request = await enter(raw, context)
        return await inner_unary(request, context)

    return handler._replace(request_deserializer=None, unary_unary=unary_unary)  # type: ignore[attr-defined,no-any-return]
