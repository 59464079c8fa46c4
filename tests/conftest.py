"""The suite's fixtures and hooks; every helper lives in tests/harness (see its __init__ for the map).

Typical use::

    async def test_something(make_server: ServerFactory) -> None:
        async with FakeOpenAI(scripted()) as fake:
            h = await make_server(openai=fake)
            events = await h.run("Write a thing")
        assert kind(events[-1]) == "run_completed"

The store: a test runs on a SQLite file unless its module (``pytestmark = pytest.mark.both_stores``) or the
test itself is marked `both_stores`: then it runs once on SQLite and once on a PostgreSQL database of its own
(`[sqlite]` / `[postgresql]` in its id). `sqlite_only` keeps one test of such a module on SQLite.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.harness.pg import ENV_MODE, USED, Databases, PgServer, pg_server_for
from tests.harness.sandbox import sandbox_root_for_test
from tests.harness.servers import ServerFactory, Servers, clear_server_environment
from tests.harness.stores import DB_NAME, STORE_KINDS, Stores, Target


def pytest_configure(config: pytest.Config) -> None:
    """Register the store markers."""
    config.addinivalue_line("markers", "both_stores: run on SQLite and on PostgreSQL (the store_kind fixture)")
    config.addinivalue_line("markers", "sqlite_only: stay on SQLite inside a both_stores module (say why)")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrise `store_kind` over both stores for tests marked both_stores (and not sqlite_only)."""
    if "store_kind" not in metafunc.fixturenames:
        return
    marked = metafunc.definition.get_closest_marker("both_stores") is not None
    if marked and metafunc.definition.get_closest_marker("sqlite_only") is None:
        metafunc.parametrize("store_kind", STORE_KINDS, indirect=True)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say which PostgreSQL the tests ran against, if any."""
    for how in USED:
        terminalreporter.write_line(f"PostgreSQL for the tests: {how}")


# ----- PostgreSQL -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """The PostgreSQL server of this test session (tests/harness/pg.py says where it comes from)."""
    with pg_server_for(os.environ.get(ENV_MODE, "auto").strip() or "auto") as server:
        USED.append(server.how)
        yield server


@pytest.fixture
def pg_databases(pg_server: PgServer) -> Iterator[Databases]:
    """A maker of fresh databases, all dropped after the test."""
    databases = Databases(pg_server)
    try:
        yield databases
    finally:
        databases.drop_all()


@pytest.fixture
def pg_url(pg_databases: Databases) -> str:
    """A URL to a new, empty database of its own, dropped after the test."""
    return pg_databases.new()


# ----- the store ------------------------------------------------------------------------------------------------


@pytest.fixture
def store_kind(request: pytest.FixtureRequest) -> str:
    """ "sqlite", or each of "sqlite" and "postgresql" for a test marked both_stores."""
    kind: str = getattr(request, "param", "sqlite")
    return kind


@pytest.fixture
def store_target(store_kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Target:
    """The test's store: a SQLite file in tmp_path, or (postgresql) a fresh database dropped after the test."""
    if store_kind == "sqlite":
        return Target("sqlite", tmp_path / DB_NAME)
    url: str = request.getfixturevalue("pg_url")
    return Target("postgresql", tmp_path / DB_NAME, url)


@pytest.fixture
async def stores(store_target: Target) -> AsyncIterator[Stores]:
    """Store objects opened on the test's store (several = several replicas), closed afterwards."""
    made = Stores(store_target)
    try:
        yield made
    finally:
        await made.close_all()


# ----- servers --------------------------------------------------------------------------------------------------


@pytest.fixture
async def make_server(store_target: Target, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[ServerFactory]:
    """Start servers on 127.0.0.1:0 on the test's store; each comes with a connected `Client`.

    `openai=`/`anthropic=` point the provider at a fake; any other keyword is a Settings field (see
    `tests.harness.servers.Servers`). Teardown closes the clients and stops the servers with no grace. Provider
    and FACILITAIR_* environment variables are cleared first.
    """
    clear_server_environment(monkeypatch)
    servers = Servers(store_target)
    try:
        yield servers
    finally:
        await servers.close()


@pytest.fixture
def sandbox_root() -> Iterator[Path]:
    """A sandbox root of the test's own (tests.harness.sandbox)."""
    yield from sandbox_root_for_test()
