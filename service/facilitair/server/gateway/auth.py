"""Who sends an HTTP request: a Bearer key, or a browser's session cookie (with its CSRF header), or nobody.

The same keys and principals as gRPC (transport/guard.py's ApiKeys). A browser logs in once with a key and gets
a session cookie: `<payload>.<mac>`, the payload naming the principal and the expiry, the MAC an HMAC-SHA256
under a secret derived from the configured keys. Every replica with the same keys file derives the same secret,
so a cookie one replica issued is accepted by all of them, and changing the keys logs everybody out. The
cookie is HttpOnly (no script reads it) and SameSite=Strict; since the page cannot read it, a state-changing
request with a cookie must also send `X-CSRF-Token`, a second MAC of the same cookie that login (and
`GET /v1/session`) hand to the page. With no keys configured there is nothing to log in with: every request is
the principal "local" (or, under client-certificate TLS, whom the certificate names, as over gRPC), and a
state-changing one sent by a page of another site (its Origin or Sec-Fetch-Site says so) is refused, so a page
on the web cannot start or cancel runs on a local server through a browser.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass

from aiohttp import web

from facilitair.server.errors import FacilitairError, Reason, Unauthenticated
from facilitair.server.gateway.certs import peer_identity
from facilitair.server.transport.guard import NO_IDENTITY, NO_KEY, ApiKeys

SESSION_COOKIE = "facilitair_session"
CSRF_HEADER = "X-CSRF-Token"
# How long a login lasts; then the page asks for the key again.
SESSION_SECONDS = 12 * 3600
# A cookie we issue is about 120 characters; anything much longer is not one of ours.
MAX_COOKIE_CHARS = 1024
LOCAL = "local"
# Methods that change nothing: no CSRF check.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
NO_CSRF = f"a request made with a session cookie that changes something must send the {CSRF_HEADER} header"
CROSS_SITE = "refused: the request comes from a page of another site"


@dataclass(frozen=True)
class Caller:
    """Who sent a request, and how."""

    principal: str
    by_cookie: bool = False


class Sessions:
    """Turns requests into principals, and keys into session cookies."""

    def __init__(self, keys: Mapping[str, str], *, secure: bool, mtls: bool = False) -> None:
        self._keys = ApiKeys(keys)
        self._mtls = mtls  # with no keys, the client certificate names the principal (as over gRPC)
        self._principals = frozenset(keys)
        self.secure = secure  # under TLS: the cookie is Secure
        material = "\0".join(f"{name}:{key}" for name, key in sorted(keys.items()))
        self._secret = hashlib.sha256(b"facilitair-session-v1\0" + material.encode()).digest()

    @property
    def required(self) -> bool:
        """Whether callers must authenticate (keys are configured)."""
        return bool(self._keys)

    def caller(self, request: web.Request) -> Caller:
        """Who sent `request`; Unauthenticated when keys are configured and it carries none that is valid."""
        if not self.required:
            if not self._mtls:
                return Caller(LOCAL)
            transport = request.transport
            ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
            who = peer_identity(ssl_object.getpeercert() if ssl_object is not None else None)
            if who is None:
                raise Unauthenticated(NO_IDENTITY)
            return Caller(who)
        header = request.headers.get("Authorization")
        if header is not None:
            principal = self._keys.principal([("authorization", header)])
            if principal is None:
                raise Unauthenticated(NO_KEY)
            return Caller(principal)
        cookie = request.cookies.get(SESSION_COOKIE)
        principal = self.verify(cookie) if cookie else None
        if principal is None:
            raise Unauthenticated(NO_KEY + ", or log in (POST /v1/login) for a session cookie")
        return Caller(principal, by_cookie=True)

    def check_csrf(self, request: web.Request, caller: Caller) -> None:
        """Refuse a state-changing request made with the session cookie but without its CSRF token."""
        if request.method in SAFE_METHODS:
            return
        if caller.by_cookie:
            sent = request.headers.get(CSRF_HEADER, "").encode()
            expected = self.csrf_token(request.cookies.get(SESSION_COOKIE, "")).encode()
            if not hmac.compare_digest(sent, expected):
                raise FacilitairError(NO_CSRF, reason=Reason.CSRF_REFUSED)

    def login(self, key: str, now: float | None = None) -> tuple[str, str]:
        """The session cookie's value and its CSRF token for the key's principal; Unauthenticated for a wrong key."""
        principal = self._keys.principal([("authorization", f"Bearer {key}")]) if self.required else None
        if principal is None:
            raise Unauthenticated("wrong key" if self.required else "this server has no keys: no login is needed")
        expires = int((time.time() if now is None else now) + SESSION_SECONDS)
        payload = _b64(json.dumps([principal, expires]).encode())
        cookie = f"{payload}.{self._mac(b'session', payload)}"
        return cookie, self.csrf_token(cookie)

    def verify(self, cookie: str, now: float | None = None) -> str | None:
        """The principal a valid, unexpired cookie of ours names (still a configured one), else None."""
        if len(cookie) > MAX_COOKIE_CHARS:
            return None
        payload, _, mac = cookie.partition(".")
        if not hmac.compare_digest(mac.encode(), self._mac(b"session", payload).encode()):
            return None
        try:
            principal, expires = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        except (ValueError, TypeError, binascii.Error):
            return None
        if not isinstance(principal, str) or not isinstance(expires, int):
            return None
        if expires <= (time.time() if now is None else now) or principal not in self._principals:
            return None
        return principal

    def csrf_token(self, cookie: str) -> str:
        """The CSRF token that goes with a session cookie (a MAC of it: nothing to store)."""
        return self._mac(b"csrf", cookie)

    def _mac(self, purpose: bytes, text: str) -> str:
        return _b64(hmac.new(self._secret, purpose + b"\0" + text.encode(), hashlib.sha256).digest())


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def refuse_cross_site(request: web.Request) -> None:
    """Refuse any state-changing request (a login too) that a browser says another site's page sent."""
    if request.method not in SAFE_METHODS and _cross_site(request):
        raise FacilitairError(CROSS_SITE, reason=Reason.CSRF_REFUSED)


def _cross_site(request: web.Request) -> bool:
    """Whether a browser says the request comes from another site's page (curl and other clients say nothing)."""
    if request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
        return True
    origin = request.headers.get("Origin")
    if origin is None:
        return False
    return origin.partition("://")[2] != request.host
