"""Storage of runs, events and checkpoints: SQLite for one process, PostgreSQL for several replicas."""

from __future__ import annotations

from typing import TYPE_CHECKING

from facilitair.server.store.base import EventStore

if TYPE_CHECKING:
    from facilitair.server.settings import Settings

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def create_store(settings: Settings) -> EventStore:
    """The store the settings select (not opened yet): PostgreSQL for a postgresql:// database_url, else SQLite."""
    from facilitair.server.settings import ConfigError, pip_install  # noqa: PLC0415  (settings imports nothing from here)

    url = settings.database_url.get_secret_value().strip() if settings.database_url is not None else ""
    if not url:
        from facilitair.server.store.sqlite import SqliteStore  # noqa: PLC0415

        return SqliteStore(settings.db)
    if not url.startswith(POSTGRES_SCHEMES):
        scheme = url.partition(":")[0][:20]
        raise ConfigError(
            f"FACILITAIR_DATABASE_URL must be a postgresql:// URL (it starts with {scheme!r}); "
            "leave it unset for the SQLite file at --db"
        )
    try:
        from facilitair.server.store.postgres import PostgresStore  # noqa: PLC0415
    except ImportError:
        raise ConfigError(
            f"a PostgreSQL database_url needs the postgres extra: {pip_install('server,postgres')}"
        ) from None
    return PostgresStore(url)
