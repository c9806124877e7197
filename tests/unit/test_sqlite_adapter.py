"""The SQLite adapter (node/sqlite_adapter.py): one thread hop a statement, BEGIN carried by the first
statement, rollbacks queued in order; and what SQLAlchemy reads of a cursor unchanged."""

from __future__ import annotations

import aiosqlite
import pytest
import sqlalchemy as sa

from node.config import DatabaseConfig
from node.db import make_engine, write_tx

t = sa.table("t", sa.column("k", sa.Integer), sa.column("v", sa.String))


@pytest.fixture
async def engine(tmp_path):
    engine = make_engine(DatabaseConfig(url=f"sqlite+aiosqlite:///{tmp_path / 'a.db'}"), "NORMAL")
    async with engine.begin() as conn:
        await conn.exec_driver_sql("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")
    yield engine
    await engine.dispose()


@pytest.fixture
def hops(monkeypatch):
    """Counts the calls queued on aiosqlite connections' threads through `_execute`."""
    count = {"n": 0}
    real = aiosqlite.Connection._execute

    async def counting(self, fn, *args, **kwargs):
        count["n"] += 1
        return await real(self, fn, *args, **kwargs)

    monkeypatch.setattr(aiosqlite.Connection, "_execute", counting)
    return count


async def test_a_transaction_of_one_statement_is_one_hop_and_its_commit_another(engine, hops):
    async with engine.connect() as conn:  # checked out once, so opening it is not counted below
        pass
    hops["n"] = 0
    async with engine.begin() as conn:
        await conn.execute(sa.insert(t).values(k=1, v="一"))
    assert hops["n"] == 2  # BEGIN with the INSERT, then COMMIT (SQLAlchemy's own adapter: 3 + 3 + 1)
    hops["n"] = 0
    async with engine.connect() as conn:
        assert (await conn.execute(sa.select(t.c.v))).scalar_one() == "一"
    assert hops["n"] == 1  # BEGIN with the SELECT; the pool's rollback is queued, not waited for
    hops["n"] = 0
    async with engine.begin():
        pass
    assert hops["n"] == 0  # nothing ran, nothing reached the thread


async def test_what_sqlalchemy_reads_of_a_cursor_is_the_statements(engine):
    async with engine.begin() as conn:
        r = await conn.execute(sa.text("INSERT INTO t (v) VALUES ('a')"))
        assert r.lastrowid == 1
        await conn.execute(sa.insert(t), [{"k": 2, "v": "b"}, {"k": 3, "v": "c"}])  # executemany
        assert (await conn.execute(sa.update(t).where(t.c.k >= 2).values(v="x"))).rowcount == 2
        rows = (await conn.execute(sa.select(t.c.k, t.c.v).order_by(t.c.k))).all()
        assert [tuple(r) for r in rows] == [(1, "a"), (2, "x"), (3, "x")]
        assert list((await conn.execute(sa.select(t.c.k, t.c.v).limit(1))).keys()) == ["k", "v"]
        assert (await conn.execute(sa.select(t.c.k).where(t.c.k == 9))).first() is None


async def test_a_rolled_back_write_is_gone_for_the_next_use_of_the_connection(engine):
    with pytest.raises(RuntimeError):
        async with write_tx(engine) as conn:
            await conn.execute(sa.insert(t).values(k=5, v="never"))
            raise RuntimeError("the call failed")
    for _ in range(3):  # whichever pooled connection comes next, its statement queues behind the rollback
        async with write_tx(engine) as conn:
            assert (await conn.execute(sa.select(sa.func.count()).select_from(t))).scalar_one() == 0


async def test_a_statement_error_is_sqlites_and_leaves_nothing_half_written(engine):
    async with engine.begin() as conn:
        await conn.execute(sa.insert(t).values(k=1, v="a"))
    with pytest.raises(sa.exc.IntegrityError):
        async with engine.begin() as conn:
            await conn.execute(sa.insert(t).values(k=2, v="b"))
            await conn.execute(sa.insert(t).values(k=1, v="again"))
    async with engine.connect() as conn:
        assert (await conn.execute(sa.select(t.c.k))).scalars().all() == [1]


async def test_a_writer_waiting_on_the_lock_fails_at_its_first_statement(tmp_path):
    """BEGIN IMMEDIATE travels with the first statement, so "database is locked" comes from there, as the
    same OperationalError the node answers 503 for; and the waiting writer wrote nothing."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'b.db'}"
    holder = make_engine(DatabaseConfig(url=url), "NORMAL")
    other = make_engine(DatabaseConfig(url=url, pool_size=1), "NORMAL")
    try:
        async with holder.begin() as conn:
            await conn.exec_driver_sql("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")
        async with other.connect() as c:  # its one connection waits 0.2 s for the lock, not 30 s
            await c.exec_driver_sql("PRAGMA busy_timeout=200")
        async with write_tx(holder) as held:
            await held.execute(sa.insert(t).values(k=1, v="a"))
            with pytest.raises(sa.exc.OperationalError, match="locked"):
                async with write_tx(other) as conn:
                    await conn.execute(sa.insert(t).values(k=2, v="b"))
        async with other.connect() as conn:
            assert (await conn.execute(sa.select(t.c.k))).scalars().all() == [1]
    finally:
        await holder.dispose()
        await other.dispose()


async def test_a_connection_stopped_while_its_graceful_close_runs_still_closes(tmp_path):
    """SQLAlchemy terminates an invalidated connection by closing it gracefully in a task of its own and, when
    the caller is cancelled meanwhile, by also stopping its thread at once. The close must still end: with
    aiosqlite 0.22 it waited forever for a second stop of a thread the first had already ended (a test run
    hung at teardown on it)."""
    import asyncio

    from node.sqlite_adapter import OneHopConnection, dbapi

    raw = aiosqlite.connect(str(tmp_path / "b.db"))
    raw._thread.daemon = True
    conn = OneHopConnection(dbapi(), await raw)
    closing = asyncio.ensure_future(conn._terminate_graceful_close())  # what terminate() starts, shielded
    await asyncio.sleep(0)  # the close is queued on the connection's thread
    conn._terminate_force_close()  # what terminate() does next when it is cancelled
    await asyncio.wait_for(closing, timeout=5)
    await asyncio.wait_for(asyncio.to_thread(raw._thread.join), timeout=5)
    assert not raw._thread.is_alive()
