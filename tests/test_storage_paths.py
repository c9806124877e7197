"""The per-call storage paths: the journal (group commit in one hop on SQLite), batched point reads, and
the queue in which a node's writers take their turn at its SQLite database."""

from __future__ import annotations

import asyncio

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from node.audit.service import AuditLog
from node.config import DatabaseConfig
from node.data import store as data_store
import node.db
from node.db import make_engine, sqlite_writer_twin, upgrade, write_tx
from node.errors import ApiError
from node.groupcommit import GroupCommitter


@pytest.fixture
async def sqlite_engine(tmp_path):
    engine = make_engine(DatabaseConfig(url=f"sqlite+aiosqlite:///{tmp_path}/j.db"), synchronous="FULL")
    await upgrade(engine)
    try:
        yield engine
    finally:
        await engine.dispose()


def test_the_twin_has_the_engines_settings(tmp_path):
    engine = make_engine(DatabaseConfig(url=f"sqlite+aiosqlite:///{tmp_path}/t.db"), synchronous="NORMAL")
    twin = sqlite_writer_twin(engine)
    assert twin is not None
    try:
        with twin.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    finally:
        twin.dispose()
    assert sqlite_writer_twin(create_async_engine("sqlite+aiosqlite:///:memory:")) is None
    pg = make_engine(DatabaseConfig(url="postgresql+asyncpg://postgres@127.0.0.1:5432/test"))
    assert sqlite_writer_twin(pg) is None


async def test_concurrent_audit_records_form_one_chain(sqlite_engine):
    audit = AuditLog(sqlite_engine, batch_ms=2)
    await audit.start()
    try:
        await asyncio.gather(*(audit.record(action="t", path=f"/p/{i}", actor="a") for i in range(300)))
        assert await audit.verify() is None
        async with sqlite_engine.connect() as conn:
            rows = (await conn.execute(sa.text("SELECT seq, path FROM audit_log ORDER BY seq"))).all()
        assert [r.seq for r in rows] == list(range(1, 301))
        assert sorted(r.path for r in rows) == sorted(f"/p/{i}" for i in range(300))
    finally:
        await audit.close()


async def test_a_failed_batch_fails_its_waiters_and_stores_nothing(sqlite_engine):
    journal = GroupCommitter(sqlite_engine, "test", window_ms=0)
    journal.start()

    def good(conn: sa.Connection, items: list[int]) -> None:
        conn.execute(sa.text("INSERT INTO counters (name, value) VALUES (:n, 1)"), [{"n": f"k{i}"} for i in items])

    def bad(conn: sa.Connection, items: list[int]) -> None:
        raise RuntimeError("disk on fire")

    try:
        # Queued in one tick, so they share a batch: the failing writer takes the good items down with it.
        futures = [journal.enqueue(good, 1), journal.enqueue(bad, 2), journal.enqueue(good, 3)]
        results = await asyncio.gather(*futures, return_exceptions=True)
        assert all(isinstance(r, ApiError) and r.code == "UNAVAILABLE" for r in results)
        await journal.submit(good, 4)  # the journal goes on after a failed batch
        async with sqlite_engine.connect() as conn:
            names = (await conn.execute(sa.text("SELECT name FROM counters WHERE name LIKE 'k%'"))).scalars().all()
        assert names == ["k4"]
    finally:
        await journal.close()
    with pytest.raises(ApiError):
        journal.enqueue(good, 5)


async def test_lone_caller_commits_without_waiting_for_company(sqlite_engine):
    journal = GroupCommitter(sqlite_engine, "test", window_ms=1000)
    journal.start()

    def write(conn: sa.Connection, items: list[str]) -> None:
        conn.execute(sa.text("INSERT INTO counters (name, value) VALUES (:n, 1)"), [{"n": n} for n in items])

    try:
        # One caller queuing three items, twice: neither batch may wait the 1 s window.
        for round_ in range(2):
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            await asyncio.gather(*(journal.enqueue(write, f"lone{round_}-{i}") for i in range(3)))
            assert loop.time() - t0 < 0.9
    finally:
        await journal.close()


async def test_batched_point_reads(tmp_path, sqlite_engine):
    rows = [{"resource_code": "101001/3703210001", "key": f"k{i}", "data": {"n": i},
             "deleted": i % 10 == 0, "change_id": i + 1, "updated_at": 0} for i in range(500)]
    async with sqlite_engine.begin() as conn:
        cols = {c.name for c in data_store.records.columns}
        await conn.execute(sa.insert(data_store.records), [{k: v for k, v in r.items() if k in cols} for r in rows])
    reader = data_store.SqliteReader.for_engine(sqlite_engine)
    assert reader is not None
    keys = [f"k{i}" for i in range(500)] + ["absent"]

    def check(got):
        for i in range(500):
            assert got[i] == (None if i % 10 == 0 else {"n": i})
        assert got[-1] is None

    try:
        # Read on the event loop: the same answers, and no thread was started for them.
        check([await reader.get("101001/3703210001", k) for k in keys])
        assert not reader._pool._threads
        # When SQLite cannot answer on the loop at once, reads go to the threads, gathered.
        reader._on_loop.read = lambda sql, params: None
        check(await asyncio.gather(*(reader.get("101001/3703210001", k) for k in keys)))
        assert reader._pool._threads
        # A caller that gives up does not disturb the others waiting in the same batch.
        tasks = [asyncio.ensure_future(reader.get("101001/3703210001", f"k{i}")) for i in range(1, 6)]
        tasks[2].cancel()
        done = await asyncio.gather(*tasks, return_exceptions=True)
        assert isinstance(done[2], asyncio.CancelledError)
        assert [done[i] for i in (0, 1, 3, 4)] == [{"n": 1}, {"n": 2}, {"n": 4}, {"n": 5}]
    finally:
        reader.close()
    with pytest.raises(RuntimeError):
        await reader.get("101001/3703210001", "k1")


async def test_postgresql_point_reads_are_one_statement_outside_a_transaction():
    """On PostgreSQL a point read is one statement in autocommit (no BEGIN, no ROLLBACK), and reads that
    arrive while one is in flight go together: one statement per resource, whatever the number of keys."""
    from support import PG_URL, drop_pg_schema, pg_schema

    schema = pg_schema()
    engine = make_engine(DatabaseConfig(url=PG_URL, schema=schema))
    statements: list[str] = []
    try:
        await upgrade(engine, schema)
        rows = [{"resource_code": code, "key": f"k{i}", "data": {"n": i, "code": code}, "deleted": i % 10 == 0,
                 "change_id": i + 1, "updated_at": 0} for code in ("101001/3703210001", "101002/3703210001")
                for i in range(300)]
        async with engine.begin() as conn:
            await conn.execute(sa.insert(data_store.records), rows)
        reader = data_store.PgReader.for_engine(engine)
        assert reader is not None and data_store.SqliteReader.for_engine(engine) is None

        @sa.event.listens_for(engine.sync_engine, "before_cursor_execute")
        def seen(conn, cursor, statement, params, context, executemany):  # noqa: ANN001
            statements.append(statement)

        # Whether PostgreSQL had a transaction open when a statement returned (a BEGIN was sent before it).
        begins: list[bool] = []

        @sa.event.listens_for(engine.sync_engine, "after_cursor_execute")
        def in_transaction(conn, cursor, statement, params, context, executemany):  # noqa: ANN001
            if conn.connection.driver_connection.is_in_transaction():
                begins.append(True)

        assert await reader.get("101001/3703210001", "k1") == {"n": 1, "code": "101001/3703210001"}
        assert len(statements) == 1 and not begins  # a lone read: one statement, no transaction
        async with engine.connect() as conn:  # (through the engine: inside BEGIN … ROLLBACK)
            await data_store.get(conn, "101001/3703210001", "k1")
        assert begins == [True]
        begins.clear()

        statements.clear()
        asks = [(code, f"k{i}") for i in range(300) for code in ("101001/3703210001", "101002/3703210001")]
        asks += [("101001/3703210001", "absent"), ("101001/3703210001", "k7"), ("101003/3703210001", "k1")]
        got = await asyncio.gather(*(reader.get(code, key) for code, key in asks))
        for (code, key), value in zip(asks, got):
            i = int(key[1:]) if key.startswith("k") else None
            expected = None if i is None or i % 10 == 0 or code.startswith("101003") else {"n": i, "code": code}
            assert value == expected, (code, key)
        # 603 reads gathered: the first alone (it was in flight), the rest one statement per resource.
        assert len(statements) <= 1 + 3, statements
        assert not begins

        # A caller that gives up does not disturb the others in its batch.
        tasks = [asyncio.ensure_future(reader.get("101001/3703210001", f"k{i}")) for i in range(1, 6)]
        tasks[2].cancel()
        done = await asyncio.gather(*tasks, return_exceptions=True)
        assert isinstance(done[2], asyncio.CancelledError)
        assert [done[i]["n"] for i in (0, 1, 3, 4)] == [1, 2, 4, 5]

        # A read that fails tells every caller of its batch, and the next read is served again.
        async with engine.begin() as conn:
            await conn.execute(sa.text("ALTER TABLE records RENAME TO records_away"))
        failed = await asyncio.gather(*(reader.get("101001/3703210001", f"k{i}") for i in range(1, 4)),
                                      return_exceptions=True)
        assert all(isinstance(f, sa.exc.DBAPIError) for f in failed), failed
        async with engine.begin() as conn:
            await conn.execute(sa.text("ALTER TABLE records_away RENAME TO records"))
        assert (await reader.get("101001/3703210001", "k3"))["n"] == 3
    finally:
        await engine.dispose()
        await drop_pg_schema(schema)


@pytest.fixture
async def audit_log(sqlite_engine):
    audit = AuditLog(sqlite_engine, batch_ms=2)
    await audit.start()
    try:
        yield audit
    finally:
        await audit.close()


async def _hold_the_database(engine, table: str, first: int) -> tuple[asyncio.Task, asyncio.Event]:
    """Make `table (n)` and start a writer that inserts `first` and keeps its write transaction open
    until the returned event is set."""
    async with write_tx(engine) as conn:
        await conn.execute(sa.text(f"CREATE TABLE {table} (n INTEGER)"))
    release = asyncio.Event()

    async def holder():
        async with write_tx(engine) as conn:
            await conn.execute(sa.text(f"INSERT INTO {table} VALUES (:n)"), {"n": first})
            await release.wait()

    held = asyncio.create_task(holder())
    await asyncio.sleep(0.05)
    return held, release


async def test_writers_take_their_turn_in_arrival_order(sqlite_engine, audit_log):
    """SQLite's busy handler lets waiting writers retry in no order (one can lose every race until its
    timeout); the node's writers, the journal among them, queue first come first served instead."""
    held, release = await _hold_the_database(sqlite_engine, "turns", -1)

    async def writer(n):
        async with write_tx(sqlite_engine) as conn:
            await conn.execute(sa.text("INSERT INTO turns VALUES (:n)"), {"n": n})

    tasks = []
    for n in range(40):
        tasks.append(asyncio.create_task(writer(n)))
        await asyncio.sleep(0)  # each one queues before the next starts
        if n == 20:
            record = audit_log.enqueue(action="t", path="/queued", actor="a")  # the journal queues too
            await asyncio.sleep(0)
    await asyncio.sleep(0.3)  # everyone waits behind the holder
    release.set()
    await asyncio.gather(held, *tasks)
    await record
    async with sqlite_engine.connect() as conn:
        order = [r.n for r in await conn.execute(sa.text("SELECT n FROM turns ORDER BY rowid"))]
    assert order == [-1, *range(40)]
    assert await audit_log.verify() is None


async def test_a_writer_kept_waiting_too_long_is_told_unavailable(sqlite_engine, audit_log, monkeypatch):
    monkeypatch.setattr(node.db, "WRITE_QUEUE_TIMEOUT_S", 0.2)
    held, release = await _hold_the_database(sqlite_engine, "kept", 1)
    with pytest.raises(ApiError) as info:
        async with write_tx(sqlite_engine) as conn:
            await conn.execute(sa.text("INSERT INTO kept VALUES (2)"))
    assert info.value.code == "UNAVAILABLE" and "busy" in info.value.message
    with pytest.raises(ApiError) as info:
        await audit_log.record(action="t", path="/late", actor="a")
    assert info.value.code == "UNAVAILABLE"
    release.set()
    await held
    await audit_log.record(action="t", path="/after", actor="a")  # the journal goes on
    async with sqlite_engine.connect() as conn:
        assert [r.n for r in await conn.execute(sa.text("SELECT n FROM kept"))] == [1]
        paths = [r.path for r in await conn.execute(sa.text("SELECT path FROM audit_log ORDER BY seq"))]
    assert paths == ["/after"]
    assert await audit_log.verify() is None
