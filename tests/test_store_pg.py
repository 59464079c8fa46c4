"""What only the PostgreSQL store does: notifications across replicas, the listener's reconnection, migrations
under concurrency, errors when the database cannot work, and no password in any message. A real server
(tests/harness/pg.py), never a mock.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import urllib.parse
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from pydantic import SecretStr

from facilitair.server.settings import ConfigError, Settings
from facilitair.server.store import create_store, pg_sql
from facilitair.server.store.base import Batch, SchemaError, StoreUnavailable
from facilitair.server.store.pg_errors import mask_url
from facilitair.server.store.postgres import PostgresStore
from facilitair.server.store.sqlite import SqliteStore
from tests.harness.logs import captured_logs
from tests.harness.pg import Databases, PgServer
from tests.harness.processes import free_port
from tests.harness.stores import Heard, batch_of, new_run

LISTENER_PIDS = (
    "SELECT array_agg(pid) FROM pg_stat_activity "
    "WHERE datname = current_database() AND application_name = 'facilitair-listener'"
)
ROOT = Path(__file__).resolve().parent.parent  # the repository: children import `tests` and `facilitair` from it


async def _opened(url: str, stores: list[PostgresStore]) -> PostgresStore:
    store = PostgresStore(url)
    await store.open()
    stores.append(store)
    return store


@pytest.fixture
async def replicas(pg_url: str) -> AsyncIterator[list[PostgresStore]]:
    """Two opened stores on one new database: replicas A and B."""
    stores: list[PostgresStore] = []
    try:
        await _opened(pg_url, stores)
        await _opened(pg_url, stores)
        yield stores
    finally:
        for store in stores:
            await store.close()


async def _admin(url: str, sql: str, *args: object) -> object:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


async def test_one_notification_per_batch_to_other_replicas_only(replicas: list[PostgresStore]) -> None:
    a, b = replicas
    heard_by_a, heard_by_b = Heard(), Heard()
    await a.listen(heard_by_a.on_commit, heard_by_a.on_cancel, heard_by_a.on_released)
    await b.listen(heard_by_b.on_commit, heard_by_b.on_cancel, heard_by_b.on_released)
    x, y = await new_run(a), await new_run(a)

    assert await a.write_batch(batch_of((x, 1, 3), (y, 1, 2))) == set()
    assert await a.write_batch(batch_of((x, 4, 1))) == set()
    assert await a.write_batch(Batch([], [x], [], {x.run_id: 1})) == set()  # a row alone: nothing to watch
    assert await a.write_batch(batch_of((y, 3, 5))) == set()
    await heard_by_b.until(lambda: len(heard_by_b.commits) >= 3)
    # Notifications arrive in commit order on one connection: once the last batch's is in, all are.
    assert heard_by_b.commits == [{x.run_id: 3, y.run_id: 2}, {x.run_id: 4}, {y.run_id: 7}]
    # B's own commit reaches A, not B.
    (z,) = [await new_run(b, "B")]
    assert await b.write_batch(batch_of((z, 1, 1))) == set()
    await heard_by_a.until(lambda: heard_by_a.commits)
    assert heard_by_a.commits == [{z.run_id: 1}]
    assert len(heard_by_b.commits) == 3


async def test_a_batch_of_too_many_runs_for_one_notification_says_recheck(replicas: list[PostgresStore]) -> None:
    a, b = replicas
    heard = Heard()
    await b.listen(heard.on_commit, heard.on_cancel, heard.on_released)
    runs = [await new_run(a) for _ in range(250)]  # 250 x "uuid:1," is past the 8000-byte payload limit
    assert await a.write_batch(batch_of(*((r, 1, 1) for r in runs))) == set()
    await heard.until(lambda: heard.commits)
    assert heard.commits == [{}]
    assert all([await b.last_seq(r.run_id) == 1 for r in runs[:5]])


async def test_cancel_requests_reach_every_listener(replicas: list[PostgresStore]) -> None:
    a, b = replicas
    heard_by_a, heard_by_b = Heard(), Heard()
    await a.listen(heard_by_a.on_commit, heard_by_a.on_cancel, heard_by_a.on_released)
    await b.listen(heard_by_b.on_commit, heard_by_b.on_cancel, heard_by_b.on_released)
    run = await new_run(a, "A")
    assert await b.request_cancel(run.run_id, "the user pressed ^C") is True
    await heard_by_a.until(lambda: heard_by_a.cancels)
    await heard_by_b.until(lambda: heard_by_b.cancels)
    assert heard_by_a.cancels == heard_by_b.cancels == [run.run_id]
    renewed = await a.renew_leases("A", {run.run_id: 1}, 10)
    assert renewed.cancel_requested == {run.run_id: "the user pressed ^C"}


async def test_the_listener_reconnects_and_asks_for_a_recheck(pg_url: str, replicas: list[PostgresStore]) -> None:
    a, b = replicas
    heard = Heard()
    await b.listen(heard.on_commit, heard.on_cancel, heard.on_released)
    killed = await _admin(
        pg_url,
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE datname = current_database() AND application_name = 'facilitair-listener'",
    )
    assert killed == 1
    await heard.until(lambda: heard.commits)
    assert heard.commits == [{}], "after a reconnection every follower re-checks"

    run = await new_run(a)
    assert await a.write_batch(batch_of((run, 1, 2))) == set()
    await heard.until(lambda: len(heard.commits) == 2)
    assert heard.commits[1] == {run.run_id: 2}


async def _pids(url: str) -> list[int]:
    pids = await _admin(url, LISTENER_PIDS)
    assert isinstance(pids, list)
    return [int(p) for p in pids]


def _is_postgres(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == "postgres"
    except OSError:
        return False


async def test_the_listener_notices_a_database_gone_silent(pg_url: str) -> None:
    """A backend that stops answering (as behind a network cut) is noticed by the ping; the listener reconnects."""
    store = PostgresStore(pg_url, listen_check=0.3)
    await store.open()
    heard = Heard()
    stopped: int | None = None
    try:
        await store.listen(heard.on_commit, heard.on_cancel, heard.on_released)
        (backend,) = await _pids(pg_url)
        where = await _admin(pg_url, "SELECT coalesce(host(inet_server_addr()), 'socket')")
        if where not in ("socket", "127.0.0.1", "::1") or not _is_postgres(backend):
            pytest.skip("the server is not on this machine (FACILITAIR_TEST_DATABASE_URL): no backend to stop")
        stopped = backend
        os.kill(stopped, signal.SIGSTOP)  # the connection stays open; nothing answers on it any more
        await heard.until(lambda: heard.commits)
        assert heard.commits == [{}]
        assert set(await _pids(pg_url)) - {stopped}, "a new LISTEN connection"
    finally:
        if stopped is not None:
            os.kill(stopped, signal.SIGCONT)
        await store.close()


async def test_the_listener_tries_again_while_the_database_refuses_connections(
    pg_server: PgServer, pg_url: str, replicas: list[PostgresStore]
) -> None:
    """As during a restart: the store's connect says StoreUnavailable, and the listener keeps trying until it
    can listen again (it used to end at the first refusal, silently and for good)."""
    a, b = replicas
    heard = Heard()
    await b.listen(heard.on_commit, heard.on_cancel, heard.on_released)
    name = urllib.parse.urlsplit(pg_url).path.lstrip("/")
    with captured_logs() as logs:
        await _admin(pg_server.admin_url, f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
        await _admin(
            pg_server.admin_url,
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = $1 AND application_name = 'facilitair-listener'",
            name,
        )
        await logs.until("store_listener_reconnect_failed")
        await logs.until("store_listener_reconnect_failed", retry_in=0.1)  # a second refusal: it goes on
        await _admin(pg_server.admin_url, f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')
        await heard.until(lambda: heard.commits)
        assert heard.commits == [{}], "after a reconnection every follower re-checks"
        assert heard.releases == 1, "and the lease keeper looks for what was released or cancelled meanwhile"
        run = await new_run(a)
        assert await a.write_batch(batch_of((run, 1, 2))) == set()
        await heard.until(lambda: len(heard.commits) == 2)
    assert heard.commits[1] == {run.run_id: 2}
    said = [e["event"] for e in logs.entries if e["log_level"] != "debug" and "listener" in e["event"]]
    assert said == ["store_listener_lost", "store_listener_restored"]
    assert "not currently accepting connections" in logs.of("store_listener_reconnect_failed")[0]["cause"]


async def test_a_database_that_refuses_connections_is_unavailable_until_it_takes_them(
    pg_server: PgServer, pg_url: str, replicas: list[PostgresStore]
) -> None:
    a, _ = replicas
    run = await new_run(a)
    assert await a.write_batch(batch_of((run, 1, 1))) == set()
    name = urllib.parse.urlsplit(pg_url).path.lstrip("/")
    await _admin(pg_server.admin_url, f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
    await _admin(
        pg_server.admin_url, "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = $1", name
    )
    for _ in range(2):  # the broken connection, then the refused reconnection
        with pytest.raises(StoreUnavailable, match="PostgreSQL") as err:
            await a.write_batch(batch_of((run, 2, 1)))
        assert "Traceback" not in str(err.value)
    with pytest.raises(StoreUnavailable, match="not currently accepting connections"):
        await a.get_run(run.run_id)
    await _admin(pg_server.admin_url, f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')
    assert await a.write_batch(batch_of((run, 2, 1))) == set()
    assert await a.last_seq(run.run_id) == 2


async def test_a_read_only_database_is_unavailable_until_it_is_writable(
    pg_server: PgServer, pg_url: str, replicas: list[PostgresStore]
) -> None:
    a, _ = replicas
    run = await new_run(a)
    name = urllib.parse.urlsplit(pg_url).path.lstrip("/")
    await _admin(pg_server.admin_url, f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
    await _admin(
        pg_server.admin_url, "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = $1", name
    )
    with pytest.raises(StoreUnavailable, match="cannot"):  # the first call meets the terminated connection
        await a.write_batch(batch_of((run, 1, 1)))
    with pytest.raises(StoreUnavailable, match="read-only"):
        await a.write_batch(batch_of((run, 1, 1)))
    await _admin(pg_server.admin_url, f'ALTER DATABASE "{name}" RESET default_transaction_read_only')
    assert await a.write_batch(batch_of((run, 1, 1))) == set()


async def test_passwords_never_appear_in_errors(pg_databases: Databases) -> None:
    url = pg_databases.new()
    parts = urllib.parse.urlsplit(url)
    secret = "s3cr3t-" + uuid.uuid4().hex
    port = free_port()
    with_password = urllib.parse.urlunsplit(
        parts._replace(netloc=f"nobody_here:{secret}@127.0.0.1:{port}", query="")  # nothing listens there
    )
    store = PostgresStore(with_password)
    with pytest.raises(StoreUnavailable) as err:
        await store.open()
    assert secret not in str(err.value)
    assert f"nobody_here:***@127.0.0.1:{port}" in str(err.value)
    assert secret not in repr(store)
    assert mask_url(with_password) == f"postgresql://nobody_here:***@127.0.0.1:{port}{parts.path}"
    settings = Settings(database_url=SecretStr(f"mysql://root:{secret}@db/x"))
    with pytest.raises(ConfigError) as bad:
        create_store(settings)
    assert secret not in str(bad.value)
    assert "postgresql://" in str(bad.value)
    assert secret not in repr(settings)


def test_the_database_url_selects_the_store(tmp_path: Path) -> None:
    pg = create_store(Settings(database_url=SecretStr("postgresql://u:p@h/d"), db=tmp_path / "x.db"))
    assert isinstance(pg, PostgresStore)
    assert (pg.kind, pg.shared) == ("postgresql", True)
    lite = create_store(Settings(db=tmp_path / "x.db"))
    assert isinstance(lite, SqliteStore)
    assert (lite.kind, lite.shared) == ("sqlite", False)


async def test_replicas_starting_at_once_migrate_once(pg_url: str) -> None:
    stores = [PostgresStore(pg_url) for _ in range(4)]
    try:
        await asyncio.gather(*(s.open() for s in stores))
        assert await _admin(pg_url, "SELECT count(*) FROM schema_version") == 1
        assert await _admin(pg_url, "SELECT version FROM schema_version") == pg_sql.VERSION
        run = await new_run(stores[0])
        assert await stores[3].get_run(run.run_id) == run
    finally:
        for store in stores:
            await store.close()


async def test_a_newer_schema_is_refused(pg_url: str) -> None:
    store = PostgresStore(pg_url)
    await store.open()
    await store.close()
    await _admin(pg_url, "UPDATE schema_version SET version = 99")
    with pytest.raises(SchemaError, match=rf"version 99, newer than this server knows \({pg_sql.VERSION}\)"):
        await PostgresStore(pg_url).open()


async def test_a_database_with_someone_elses_runs_table_is_refused(pg_url: str) -> None:
    await _admin(pg_url, "CREATE TABLE runs (id int)")
    with pytest.raises(SchemaError, match="did not make"):
        await PostgresStore(pg_url).open()


async def test_inserts_from_two_processes_make_one_run_per_request_within_the_limit(
    pg_url: str, tmp_path: Path
) -> None:
    """Two real processes (two interpreters, two pools) insert 8 request ids twice each, limit 5, at once."""
    script = tmp_path / "insert.py"
    script.write_text(
        "import asyncio, sys\n"
        "from facilitair.server.store.postgres import PostgresStore\n"
        "from tests.harness.stores import run_row\n"
        "async def main() -> None:\n"
        "    store = PostgresStore(sys.argv[1]); await store.open()\n"
        "    results = await asyncio.gather(*(store.insert_run(run_row('alice', f'req-{i % 8}'), owner=sys.argv[2],\n"
        "        lease_seconds=60, max_active_per_principal=5) for i in range(16)))\n"
        "    await store.close()\n"
        "    print(' '.join(f'{r.outcome.value}:{r.row.run_id if r.row else \"-\"}' for r in results))\n"
        "asyncio.run(main())\n"
    )
    store = PostgresStore(pg_url)
    await store.open()  # the schema first, so the children race on inserts only
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            str(script),
            pg_url,
            f"P{i}",
            stdout=asyncio.subprocess.PIPE,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        for i in range(2)
    ]
    outs = [(await p.communicate())[0].decode().split() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    results = [item.split(":", 1) for out in outs for item in out]
    created = {run for outcome, run in results if outcome == "created"}
    assert len(created) == 5, "never more than the limit"
    assert {run for outcome, run in results if outcome == "existing"} <= created
    assert {outcome for outcome, _ in results} == {"created", "existing", "limited"}
    assert len(results) == 32
    assert await store.count_active("alice") == 5
    assert {r.run_id for r in await store.list_runs("alice", None, None, 100)} == created
    await store.close()


async def test_a_server_whose_database_is_down_says_so_in_one_line() -> None:
    secret = "s3cr3t-" + uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FACILITAIR_", "OPENAI_", "ANTHROPIC_"))}
    env |= {
        "FACILITAIR_DATABASE_URL": f"postgresql://someone:{secret}@127.0.0.1:{free_port()}/db",
        "FACILITAIR_LISTEN": "127.0.0.1:0",
        "FACILITAIR_HTTP_LISTEN": "off",
        "OPENAI_API_KEY": "test-key",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "facilitair.server",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    text = (out + err).decode()
    assert proc.returncode == 1, text
    assert secret not in text
    assert "Traceback" not in text
    assert (
        text.strip()
        .splitlines()[-1]
        .startswith(
            "facilitair: cannot open the store: cannot connect to PostgreSQL at postgresql://someone:***@127.0.0.1:"
        )
    )
