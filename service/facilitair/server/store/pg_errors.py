"""What PostgreSQL driver errors mean for the service, and database URLs with their password masked."""

from __future__ import annotations

import urllib.parse

import asyncpg

from facilitair.server.store.base import StoreUnavailable

# SQLSTATE classes that mean "the database cannot do it now": 08 connection exception, 53 insufficient
# resources (disk full, out of memory, too many connections), 57 operator intervention (admin shutdown,
# cannot connect now, statement cancelled), 58 system error (I/O).
_UNAVAILABLE_CLASSES = ("08", "53", "57", "58")
_READ_ONLY = "25006"  # read_only_sql_transaction: a standby, or default_transaction_read_only


def mask_url(url: str) -> str:
    """The URL with its password (if any) replaced by ***: safe to log."""
    try:
        parts = urllib.parse.urlsplit(url)
        if parts.password is None:
            return url
        netloc = parts.netloc.rpartition("@")
        user = netloc[0].partition(":")[0]
        return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[2]}"))
    except ValueError:
        return "<a database URL that cannot be parsed>"


def password_of(url: str) -> str | None:
    """The URL's password (for masking it wherever it might be echoed), or None."""
    try:
        password = urllib.parse.urlsplit(url).password
    except ValueError:
        return None
    return urllib.parse.unquote(password) if password else None


def scrub(text: str, url: str) -> str:
    """`text` with the URL's password masked, in clear and percent-encoded form."""
    password = password_of(url)
    if password:
        text = text.replace(urllib.parse.quote(password, safe=""), "***").replace(password, "***")
    return text


def unavailable(exc: BaseException, url: str) -> StoreUnavailable | None:
    """StoreUnavailable with the plain cause when `exc` means the database cannot work now, else None."""
    if isinstance(exc, asyncpg.PostgresError):
        state = exc.sqlstate or ""
        if state == _READ_ONLY:
            cause = "the database is read-only"
        elif state[:2] in _UNAVAILABLE_CLASSES:
            cause = exc.args[0] if exc.args else type(exc).__name__
        else:
            return None
    elif isinstance(exc, OSError) or (isinstance(exc, asyncpg.InterfaceError) and "closed" in str(exc)):
        # The connection went away (closed, reset, refused): the socket's words, or asyncpg's.
        cause = str(exc) or type(exc).__name__
    elif isinstance(exc, asyncpg.InternalClientError):
        # The protocol got out of step, typically on a connection the server ended while it was idle.
        cause = f"the connection to the database broke ({exc})"
    elif isinstance(exc, TimeoutError):
        cause = "the database did not answer in time"
    else:
        return None
    return StoreUnavailable(f"the PostgreSQL store cannot work now: {scrub(str(cause), url)}")
