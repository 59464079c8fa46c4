"""The operator's webhook configuration: the endpoints file, the allow-list of private targets, the retry schedule.

The file is TOML with one `[[endpoint]]` table per endpoint:

    [[endpoint]]
    url = "https://hooks.example.com/facilitair"
    events = ["run.completed", "run.failed"]     # optional: every event when left out
    secret = "whsec_..."                          # the Standard Webhooks secret (base64 after whsec_)
    previous_secret = "whsec_..."                 # optional, while receivers move to the new secret
    principal = "alice"                           # optional: only this caller's runs

and at most one `[request_urls]` table, which lets callers name a URL per run (CollaborateRequest.webhook_url):

    [request_urls]
    secret = "whsec_..."                          # what those URLs are signed with (their receivers know it)
    previous_secret = "whsec_..."                 # optional, during rotation

A request URL is still refused unless `--webhook-allow-hosts` names its host (request_endpoint below).

Everything is checked at load, so a server never starts with an endpoint it could not sign for; errors name the
endpoint by its position and never show a secret.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from facilitair.server.settings import ConfigError, Settings

RUN_COMPLETED = "run.completed"
RUN_FAILED = "run.failed"
RUN_CANCELLED = "run.cancelled"
RUN_AWAITING_APPROVAL = "run.awaiting_approval"  # a run stopped at an approval gate (issue 22), not an end
# The events an endpoint may ask for.
EVENT_TYPES = frozenset({RUN_COMPLETED, RUN_FAILED, RUN_CANCELLED, RUN_AWAITING_APPROVAL})
SECRET_PREFIX = "whsec_"  # noqa: S105  (the prefix every Standard Webhooks secret starts with, not a secret)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One configured endpoint."""

    url: str
    events: frozenset[str]
    secret: str
    previous_secret: str | None = None
    principal: str | None = None

    def wants(self, event_type: str, principal: str) -> bool:
        """Whether a run of `principal` ending with `event_type` is sent here."""
        return event_type in self.events and (self.principal is None or self.principal == principal)

    def __repr__(self) -> str:  # the secrets stay out of logs and tracebacks
        return f"Endpoint({redacted(self.url)!r}, events={sorted(self.events)})"


def _secret(value: object, where: str) -> str:
    if not isinstance(value, str) or not value.startswith(SECRET_PREFIX):
        raise ConfigError(f"{where}: must be a Standard Webhooks secret starting with {SECRET_PREFIX!r}")
    try:
        raw = base64.b64decode(value.removeprefix(SECRET_PREFIX), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{where}: the part after {SECRET_PREFIX!r} is not base64") from None
    if not 24 <= len(raw) <= 64:
        raise ConfigError(f"{where}: must hold 24 to 64 bytes (base64 after {SECRET_PREFIX!r}), it holds {len(raw)}")
    return value


def _url(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{where}: must be a string")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{where}: must be an http:// or https:// URL with a host")
    if parts.username or parts.password:
        raise ConfigError(f"{where}: must not hold credentials (sign with the secret instead)")
    # What the client could not connect to is refused now, not found on every attempt (an empty label, as in
    # `a..b`, fails only when the resolver encodes the name; a port out of range when the request is made).
    try:
        if parts.port == 0:
            raise ValueError("port 0")
        try:
            ipaddress.ip_address(parts.hostname.split("%", 1)[0])
        except ValueError:
            parts.hostname.encode("idna")
    except ValueError:  # UnicodeError included
        raise ConfigError(f"{where}: its host or port cannot be connected to") from None
    return value


def _endpoint(table: object, n: int) -> Endpoint:
    where = f"endpoint {n}"
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: must be a table")
    unknown = set(table) - {"url", "events", "secret", "previous_secret", "principal"}
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}")
    url = _url(table.get("url"), f"{where}: url")
    where = f"endpoint {n} ({url})"
    events = table.get("events", sorted(EVENT_TYPES))
    if not isinstance(events, list) or not events or not all(isinstance(e, str) for e in events):
        raise ConfigError(f"{where}: events must be a non-empty list of event names")
    wrong = sorted(set(events) - EVENT_TYPES)
    if wrong:
        raise ConfigError(f"{where}: unknown events {wrong}; known: {sorted(EVENT_TYPES)}")
    previous = table.get("previous_secret")
    principal = table.get("principal")
    if principal is not None and (not isinstance(principal, str) or not principal):
        raise ConfigError(f"{where}: principal must be a non-empty string")
    return Endpoint(
        url=url,
        events=frozenset(events),
        secret=_secret(table.get("secret"), f"{where}: secret"),
        previous_secret=None if previous is None else _secret(previous, f"{where}: previous_secret"),
        principal=principal,
    )


@dataclass(frozen=True, slots=True)
class RequestUrls:
    """The secrets request-supplied URLs are signed with (the `[request_urls]` table)."""

    secret: str
    previous_secret: str | None = None

    def __repr__(self) -> str:  # the secrets stay out of logs and tracebacks
        return "RequestUrls(...)"


def _request_urls(table: object) -> RequestUrls:
    where = "request_urls"
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: must be a table")
    unknown = set(table) - {"secret", "previous_secret"}
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}")
    previous = table.get("previous_secret")
    return RequestUrls(
        _secret(table.get("secret"), f"{where}: secret"),
        None if previous is None else _secret(previous, f"{where}: previous_secret"),
    )


def load_endpoints(path: Path | None) -> tuple[Endpoint, ...]:
    """The endpoints of the webhooks file (none when no file is set); ConfigError when it is not right."""
    return load_file(path)[0]


def load_file(path: Path | None) -> tuple[tuple[Endpoint, ...], RequestUrls | None]:
    """The endpoints and the request-URL secrets of the webhooks file; ConfigError when it is not right."""
    if path is None:
        return (), None
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read the webhooks file {path}: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"the webhooks file {path} is not valid TOML: {exc}") from None
    unknown = set(data) - {"endpoint", "request_urls"}
    if unknown:
        raise ConfigError(
            f"the webhooks file {path}: unknown keys {sorted(unknown)} (expected [[endpoint]] and [request_urls])"
        )
    tables = data.get("endpoint", [])
    if not isinstance(tables, list):
        raise ConfigError(f"the webhooks file {path}: endpoint must be [[endpoint]] tables")
    endpoints = tuple(_endpoint(t, n) for n, t in enumerate(tables, start=1))
    urls = [e.url for e in endpoints]
    if len(set(urls)) != len(urls):
        raise ConfigError(f"the webhooks file {path}: an endpoint url is listed twice")
    request_urls = None if "request_urls" not in data else _request_urls(data["request_urls"])
    return endpoints, request_urls


MAX_REQUEST_URL_CHARS = 2048


def request_url_problem(url: str) -> str | None:
    """Why a request-supplied webhook URL cannot be used as written (None: it can), without echoing it."""
    if len(url) > MAX_REQUEST_URL_CHARS:
        return f"must be at most {MAX_REQUEST_URL_CHARS} characters"
    try:
        _url(url, "webhook_url")
    except ConfigError as exc:
        return str(exc).removeprefix("webhook_url: ")
    return None


def redacted(url: str) -> str:
    """The URL without its query string and fragment, as it may be logged (a query may carry a token)."""
    parts = urlsplit(url)
    return parts._replace(query="", fragment="").geturl()


@dataclass(frozen=True, slots=True)
class AllowList:
    """Targets webhooks may reach although private, loopback or link-local: by host name or by address."""

    names: frozenset[str] = frozenset()
    networks: tuple[Network, ...] = ()

    @classmethod
    def parse(cls, text: str | None) -> AllowList:
        """From `--webhook-allow-hosts`: names, addresses and CIDR networks, comma-separated."""
        names: set[str] = set()
        networks: list[Network] = []
        for given in (text or "").split(","):
            item = given.strip().lower()
            if not item:
                continue
            try:
                networks.append(ipaddress.ip_network(item.strip("[]"), strict=False))
            except ValueError:
                names.add(item.rstrip("."))
        return cls(frozenset(names), tuple(networks))

    def names_host(self, host: str) -> bool:
        """Whether `host` itself is listed: by name, or as an address inside a listed network."""
        host = host.lower().rstrip(".")
        if host in self.names:
            return True
        try:
            address = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        return any(address in n for n in self.networks)

    def permits(self, host: str, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        """Whether `address` (which `host` resolved to) may be reached."""
        if is_public(address):
            return True
        return host.lower().rstrip(".") in self.names or any(address in n for n in self.networks)


def is_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """False for private, loopback, link-local, multicast, reserved and unspecified addresses (IPv4-mapped too).

    Only globally routable addresses pass: 100.64.0.0/10 (shared address space, where some clouds keep their
    metadata service) is neither private nor reserved, yet not global. A 6to4 address (2002::/16) is judged by
    the IPv4 address it carries, so 2002:7f00:1:: does not pass for 127.0.0.1.
    """
    if isinstance(address, ipaddress.IPv6Address):
        address = address.ipv4_mapped or address.sixtofour or address
    return address.is_global and not (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
    )


def retry_schedule(text: str) -> tuple[float, ...]:
    """The waits before each retry, from `--webhook-retry-schedule`; ConfigError when it is not numbers >= 0."""
    try:
        waits = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"--webhook-retry-schedule: {text!r} is not comma-separated seconds") from None
    if any(not 0 <= w <= 7 * 86400 for w in waits):
        raise ConfigError("--webhook-retry-schedule: each wait must be between 0 and 7 days")
    return waits


@dataclass(frozen=True, slots=True)
class WebhookConfig:
    """Everything the webhooks read of the settings, checked."""

    endpoints: tuple[Endpoint, ...]
    allow: AllowList
    schedule: tuple[float, ...]
    timeout: float
    request_urls: RequestUrls | None = None  # None: request-supplied URLs are refused

    @classmethod
    def from_settings(cls, settings: Settings) -> WebhookConfig:
        """Load and check the webhooks file, the allow-list and the schedule (ConfigError)."""
        endpoints, request_urls = load_file(settings.webhooks_file)
        return cls(
            endpoints=endpoints,
            request_urls=request_urls,
            allow=AllowList.parse(settings.webhook_allow_hosts),
            schedule=retry_schedule(settings.webhook_retry_schedule),
            timeout=settings.webhook_timeout,
        )

    @property
    def enabled(self) -> bool:
        """Whether any webhook can be queued: an endpoint is configured, or request URLs are accepted."""
        return bool(self.endpoints) or self.request_urls is not None

    def request_endpoint(self, url: str) -> Endpoint | None:
        """A request-supplied URL as an endpoint of every event, or None when this server does not accept it.

        Accepted only with request-URL secrets configured and the URL's host named by the allow-list (a public
        address is not enough: a caller must not make this server call arbitrary hosts). Checked when the run is
        created and again before each send, since the allow-list may have changed meanwhile.
        """
        host = urlsplit(url).hostname
        if self.request_urls is None or host is None or not self.allow.names_host(host):
            return None
        secrets = self.request_urls
        return Endpoint(url, EVENT_TYPES, secrets.secret, secrets.previous_secret)

    def endpoint(self, url: str) -> Endpoint | None:
        """The configured endpoint with this url, or None (it was removed from the file)."""
        return next((e for e in self.endpoints if e.url == url), None)

    def for_event(self, event_type: str, principal: str) -> Sequence[Endpoint]:
        """The endpoints a run of `principal` ending with `event_type` is sent to."""
        return [e for e in self.endpoints if e.wants(event_type, principal)]
