"""One webhook attempt: the target's address vetted, the body signed (Standard Webhooks), one bounded POST.

The address check is on what the host name resolves to, in the resolver the connection itself uses, so a name
that resolves to a private address (or re-resolves to one later: DNS rebinding) is refused, not just a literal
one. Redirects are not followed (a 3xx is a failed attempt), the attempt has one overall timeout (connecting
included), and at most MAX_RESPONSE bytes of the answer are read.
"""

from __future__ import annotations

import enum
import ipaddress
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from standardwebhooks import Webhook

from facilitair.server.webhooks.config import AllowList, Endpoint

MAX_RESPONSE = 64 * 1024
CONNECT_TIMEOUT = 10.0
USER_AGENT = "facilitair-webhooks"


class TargetRefused(Exception):
    """The target's address is private, loopback or link-local and not allowed (--webhook-allow-hosts)."""


class Outcome(enum.Enum):
    """How an attempt ended."""

    DELIVERED = "delivered"  # a 2xx answer
    GONE = "gone"  # 410: the receiver asks for no more (the endpoint is disabled)
    FAILED = "failed"  # worth another attempt: an error status, a redirect, a timeout, a connection failure
    REFUSED = "refused"  # not sent: the target is not allowed (another attempt would be refused as well)


@dataclass(frozen=True, slots=True)
class Attempt:
    """The result of one attempt; `error` is a short plain cause (no response body, no secret)."""

    outcome: Outcome
    status: int | None = None
    error: str | None = None
    retry_after: float | None = None


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text.split("%", 1)[0])  # an IPv6 scope (fe80::1%eth0) is not part of the address


class VettedResolver(AbstractResolver):
    """Resolves as usual, then keeps only the addresses the allow-list permits (TargetRefused when none is)."""

    def __init__(self, allow: AllowList) -> None:
        self._allow = allow
        self._inner = aiohttp.ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """The permitted addresses of `host`."""
        found = await self._inner.resolve(host, port, family)
        kept = [r for r in found if self._allow.permits(host, _address(r["host"]))]
        if not kept:
            shown = ", ".join(sorted({r["host"] for r in found}))
            raise TargetRefused(f"{host} resolves to {shown}: private, loopback or link-local, not allowed")
        return kept

    async def close(self) -> None:
        """Close the inner resolver."""
        await self._inner.close()


def signature(endpoint: Endpoint, msg_id: str, timestamp: int, payload: bytes) -> str:
    """The webhook-signature header: v1 with the secret, and with the previous one too during a rotation."""
    when = datetime.fromtimestamp(timestamp, UTC)
    text = payload.decode()
    signatures = [Webhook(endpoint.secret).sign(msg_id, when, text)]
    if endpoint.previous_secret is not None:
        signatures.append(Webhook(endpoint.previous_secret).sign(msg_id, when, text))
    return " ".join(signatures)


def _retry_after(value: str | None) -> float | None:
    """Retry-After as seconds (a number, or an HTTP date), None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # HTTP's DIGIT: str.isdigit alone takes "²", which float() refuses
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds()) if when.tzinfo is not None else None


class Sender:
    """Sends attempts over one connection pool; closed with `aclose`."""

    def __init__(self, allow: AllowList, timeout: float, *, connections: int) -> None:
        self._allow = allow
        self._timeout = timeout
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                resolver=VettedResolver(self._allow), use_dns_cache=False, limit=self._connections
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=self._timeout, connect=min(CONNECT_TIMEOUT, self._timeout)),
                headers={"User-Agent": USER_AGENT},
                trust_env=False,  # no proxy from the environment: it would reach targets the checks did not see
            )
        return self._session

    async def aclose(self) -> None:
        """Close the connections."""
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    def _check_literal(self, url: str) -> None:
        """A literal address in the URL never reaches the resolver: check it here."""
        host = urlsplit(url).hostname or ""
        try:
            address = _address(host)
        except ValueError:
            return
        if not self._allow.permits(host, address):
            raise TargetRefused(f"{host} is private, loopback or link-local, not allowed")

    async def send(self, endpoint: Endpoint, msg_id: str, payload: bytes, event_type: str) -> Attempt:
        """POST the payload to the endpoint, signed now; never raises for what the network or the receiver does."""
        timestamp = int(datetime.now(UTC).timestamp())
        headers = {
            "Content-Type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature(endpoint, msg_id, timestamp, payload),
            "facilitair-event": event_type,
        }
        try:
            self._check_literal(endpoint.url)
            async with self._client().post(endpoint.url, data=payload, headers=headers, allow_redirects=False) as resp:
                await resp.content.read(MAX_RESPONSE)  # bounded; the answer's body is not kept
                return _classify(resp.status, resp.headers)
        except TargetRefused as exc:
            return Attempt(Outcome.REFUSED, error=f"target refused: {exc}")
        except TimeoutError:
            return Attempt(Outcome.FAILED, error=f"no answer within {self._timeout:g} s")
        except aiohttp.ClientError as exc:
            refused = _refusal(exc)
            if refused is not None:
                return Attempt(Outcome.REFUSED, error=f"target refused: {refused}")
            return Attempt(Outcome.FAILED, error=f"connection failed ({type(exc).__name__})")
        except OSError as exc:
            return Attempt(Outcome.FAILED, error=f"connection failed ({exc.strerror or type(exc).__name__})")
        except ValueError:  # a URL no request can be made to (a name the resolver cannot encode): never will be
            return Attempt(Outcome.REFUSED, error="target refused: the URL's host or port cannot be connected to")


def _refusal(exc: BaseException) -> TargetRefused | None:
    """The TargetRefused aiohttp may have wrapped."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, TargetRefused):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _classify(status: int, headers: Any) -> Attempt:
    if 200 <= status < 300:
        return Attempt(Outcome.DELIVERED, status)
    if status == 410:
        return Attempt(Outcome.GONE, status, "410 Gone: the endpoint is disabled")
    if 300 <= status < 400:
        return Attempt(Outcome.FAILED, status, f"redirect not followed (HTTP {status})")
    return Attempt(Outcome.FAILED, status, f"HTTP {status}", _retry_after(headers.get("Retry-After")))
