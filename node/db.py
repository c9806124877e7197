"""Storage plumbing shared by every capability: the engine, the schema's metadata, migrations, counters.

SQLite (aiosqlite, WAL) is the embedded default; PostgreSQL (asyncpg) is chosen by the URL alone.
The tables themselves are declared in each capability's `store` module on `metadata`.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import threading
import traceback
import weakref
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from node import sqlite_adapter
from node.config import DatabaseConfig
from node.errors import ApiError

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# JSON documents: JSON text in SQLite (queried with json_extract), JSONB in PostgreSQL.
JsonDoc = sa.JSON().with_variant(JSONB(), "postgresql")

counters = sa.Table(
    "counters",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.BigInteger, nullable=False),
)

MIGRATIONS = Path(__file__).parent / "migrations"


# Settings of the SQLite engines made here, so that the journal's own writer connection matches them.
_sqlite_synchronous: "weakref.WeakKeyDictionary[sa.Engine, str]" = weakref.WeakKeyDictionary()


def _sqlite_connection_setup(sync_engine: sa.Engine, synchronous: str) -> None:
    """WAL, the durability level, a busy timeout, foreign keys, and BEGIN IMMEDIATE for writers."""

    @event.listens_for(sync_engine, "connect")
    def _pragmas(dbapi_conn, _record):  # noqa: ANN001
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA synchronous={synchronous}")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()
        # Let SQLAlchemy, not pysqlite, decide when transactions begin, so BEGIN is explicit.
        dbapi_conn.isolation_level = None

    @event.listens_for(sync_engine, "begin")
    def _begin(conn):  # noqa: ANN001
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.info.get("write") else "BEGIN")

    _sqlite_synchronous[sync_engine] = synchronous


def make_engine(db: DatabaseConfig, synchronous: str = "FULL") -> AsyncEngine:
    if db.is_sqlite:
        # A fixed pool: each aiosqlite connection owns a thread, so overflow connections that are opened
        # and closed per burst would cost a thread start each.
        # `sqlite_adapter`: one thread hop a statement instead of SQLAlchemy's four (see there).
        engine = create_async_engine(db.url, connect_args={"timeout": 30}, pool_size=db.pool_size, max_overflow=0,
                                     pool_timeout=60, module=sqlite_adapter.dbapi())
        _sqlite_connection_setup(engine.sync_engine, synchronous)
        return engine
    # Every wait for PostgreSQL is bounded on the client, where a stalled server (or a lost route) cannot
    # hold it: asyncpg's `timeout` bounds opening a connection (its default is 60 s), its `command_timeout`
    # every statement, commit, rollback and close (no default: measured behind a proxy that accepts and
    # never answers, a statement waited as long as the stall lasted, and `dispose()` for ever), and
    # `pool_timeout` the wait for a pooled connection. TCP keepalive would not do: the stalled peer's kernel
    # still acknowledges, so the connection looks alive.
    connect_args: dict[str, Any] = {"timeout": db.connect_timeout_s, "command_timeout": db.statement_timeout_s}
    if db.schema_:
        connect_args["server_settings"] = {"search_path": db.schema_}
    # A fixed pool, as on SQLite: overflow connections were opened for a burst and closed on return, so under
    # a steady load above the pool each checkout past it cost a connect (TCP, the SSL offer, a server
    # process forked): `scripts/bench_local.py --workers 2` went from 310 to 467 verifies/s with 1 worker
    # when callers waited for a pooled connection instead.
    engine = create_async_engine(db.url, pool_size=db.pool_size, max_overflow=0,
                                 pool_timeout=db.statement_timeout_s, connect_args=connect_args)
    _drop_dead_connections(engine.sync_engine)
    _pg_connect_args[engine.sync_engine] = connect_args
    return engine


# The connection arguments of the PostgreSQL engines made here, so that migrations can open a connection
# of their own without the statement bound (`upgrade`).
_pg_connect_args: "weakref.WeakKeyDictionary[sa.Engine, dict[str, Any]]" = weakref.WeakKeyDictionary()


def _drop_dead_connections(sync_engine: sa.Engine) -> None:
    """A pooled PostgreSQL connection that the server closed, or that timed out, is replaced, not reused."""

    @event.listens_for(sync_engine, "checkout")
    def _closed(dbapi_conn, _record, _proxy):  # noqa: ANN001
        # asyncpg knows without a round trip that the server closed a connection (a restart, a cut): draw
        # another instead of failing the call. `pool_pre_ping` would find it too, at three round trips per
        # checkout (BEGIN, an empty statement, ROLLBACK), and in a stall its ping waits like any statement.
        if dbapi_conn.driver_connection.is_closed():
            raise sa.exc.DisconnectionError("the server closed this connection")

    @event.listens_for(sync_engine, "handle_error")
    def _timed_out(ctx):  # noqa: ANN001
        # After a command timeout asyncpg waits for the server to confirm the cancel, which a stalled server
        # never does, and SQLAlchemy then spent 2 s trying to close the connection politely (a 3 s bound
        # answered after 5.0 s). Abort it at once; the pool opens a fresh one.
        if isinstance(ctx.original_exception, TimeoutError) and ctx.connection is not None and not ctx.is_pre_ping:
            if not ctx.connection.invalidated:
                ctx.connection.connection.driver_connection.terminate()
            ctx.is_disconnect = True


def sqlite_file(engine: AsyncEngine) -> str | None:
    """The file of an SQLite engine's database; None for PostgreSQL and in-memory databases."""
    url = engine.url
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return url.database


class LoopRead:
    """A read-only SQLite connection used on the event loop itself, for reads that are one index probe.

    Handing a probe of tens of microseconds to a connection's thread and waiting for the answer costs more
    than the probe: a routed verify's province spent 12.5 % of its event loop's time submitting its record
    read to the reader's thread (the loop then waits for the GIL while the woken thread runs; py-spy under
    `scripts/bench_federation.py`'s load), and a one-subject list check spent more on its hops than on its
    read. This connection never waits for a lock (busy timeout 0; in WAL a reader needs none): when SQLite
    says busy, `read` answers None and the caller reads the other way, so the loop is never held."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None

    @classmethod
    def for_engine(cls, engine: AsyncEngine) -> "LoopRead | None":
        path = sqlite_file(engine)
        return None if path is None else cls(path)

    def read(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]] | None:
        """The rows, or None when SQLite could not answer at once (the caller reads elsewhere)."""
        try:
            if self._conn is None:
                conn = sqlite3.connect(self.path, timeout=0, isolation_level=None, check_same_thread=False)
                conn.execute("PRAGMA query_only=ON")
                self._conn = conn
            return self._conn.execute(sql, params).fetchall()
        except sqlite3.OperationalError:
            return None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def sqlite_writer_twin(engine: AsyncEngine) -> sa.Engine | None:
    """For an SQLite file database: a plain (synchronous) engine on the same file with the same settings
    and one connection, for a writer that runs whole transactions in one worker thread (the journal).
    Through aiosqlite every statement is a hop between threads; this makes a transaction one hop.
    None for PostgreSQL and in-memory databases."""
    if sqlite_file(engine) is None:
        return None
    url = engine.url
    twin = sa.create_engine(url.set(drivername="sqlite"), connect_args={"timeout": 30, "check_same_thread": False},
                            pool_size=1, max_overflow=0)
    _sqlite_connection_setup(twin, _sqlite_synchronous.get(engine.sync_engine, "FULL"))
    return twin


class PgWriterLoop:
    """For PostgreSQL: a writer's transactions (the journal's) run on an event loop of their own, in a
    thread, over a connection of their own made with the engine's settings (search path, timeouts).

    On the node's event loop each statement of a journal batch waited for the loop's turn behind the calls
    the node was serving: `scripts/bench_local.py --workers 2` (64 verifies at a time, 3 Dec 2026) measured
    32.5 ms a commit of 24 audit records, of which PostgreSQL spent under 2 ms of CPU, and one worker's
    throughput was bounded by it (24.5 records ÷ 32.5 ms ≈ 750 calls/s). Here the batch's statements are
    answered as soon as PostgreSQL answers. None when the engine was not made by `make_engine`."""

    def __init__(self, engine: AsyncEngine, name: str) -> None:
        args = _pg_connect_args.get(engine.sync_engine)
        if args is None:
            raise ValueError("not an engine made by make_engine")
        self.engine = create_async_engine(engine.url, pool_size=1, max_overflow=0, connect_args=args)
        _drop_dead_connections(self.engine.sync_engine)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=f"{name}-writer", daemon=True)
        self.thread.start()

    @classmethod
    def for_engine(cls, engine: AsyncEngine, name: str) -> "PgWriterLoop | None":
        if engine.dialect.name != "postgresql" or engine.sync_engine not in _pg_connect_args:
            return None
        return cls(engine, name)

    async def _transaction(self, write: Callable[[sa.Connection, Any], None], arg: Any) -> BaseException | None:
        # The failure is handed back as a value: through a concurrent future a TimeoutError is replaced by a
        # new one without its traceback, which is how `database_unavailable` tells the driver's timeouts.
        try:
            async with self.engine.connect() as conn:
                async with conn.begin():
                    await conn.run_sync(write, arg)
        except Exception as exc:  # noqa: BLE001 - raised again by `run`, on the node's loop
            return exc
        return None

    async def run(self, write: Callable[[sa.Connection, Any], None], arg: Any) -> None:
        """`write(conn, arg)` in one transaction on the writer's loop; returns once it committed."""
        failed = await asyncio.wrap_future(
            asyncio.run_coroutine_threadsafe(self._transaction(write, arg), self.loop))
        if failed is not None:
            raise failed

    async def close(self) -> None:
        try:
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self.engine.dispose(), self.loop))
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            await asyncio.to_thread(self.thread.join)
            self.loop.close()


@functools.cache
def _head() -> str | None:
    """The newest revision: reading it executes every migration script, so once a process."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(MIGRATIONS)).get_current_head()


def _upgrade(sync_conn: sa.Connection) -> None:
    from alembic import command
    from alembic.config import Config as AlembicConfig

    if _at_head(sync_conn):
        # Every command and every start asks; a schema already at the head is the usual answer, and Alembic
        # reading its scripts again to say so cost each of them ~80 ms of CPU (most of a `govnode dept add`).
        return
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = sync_conn
    command.upgrade(cfg, "head")


# Alembic's migration context is process-wide, so two upgrades interleaved on one event loop (several
# nodes in one process: the demo, tests, the simulation) would run each other's steps: one at a time.
_upgrade_locks: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock]" = weakref.WeakKeyDictionary()


async def upgrade(engine: AsyncEngine, schema: str | None = None) -> None:
    """Create or upgrade the schema to the newest Alembic revision."""
    if engine.dialect.name == "postgresql" and await at_head(engine):
        # Every command and every start asks, and the answer is nearly always yes: asked on the engine's own
        # pool, which the caller goes on to use, not on a connection opened for migrating (one connection
        # less a command: a `govnode dept add` on PostgreSQL took 75 and 85 ms, now 71 and 74, alternating).
        # A schema that does not exist yet has no revision, and is made below.
        return
    loop = asyncio.get_running_loop()
    lock = _upgrade_locks.setdefault(loop, asyncio.Lock())
    async with lock:
        await _upgrade_now(engine, schema)


def _at_head(sync_conn: sa.Connection) -> bool:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(sync_conn).get_current_revision() == _head()


async def at_head(engine: AsyncEngine) -> bool:
    """Whether the schema is at the newest revision (read only: nothing is created or upgraded)."""
    async with engine.connect() as conn:
        return await conn.run_sync(_at_head)


async def _upgrade_now(engine: AsyncEngine, schema: str | None) -> None:
    # Migrations on PostgreSQL run on a connection of their own without the statement bound: rebuilding an
    # index of a big table may take minutes, and nothing is served until they are done.
    args = _pg_connect_args.get(engine.sync_engine)
    migrator = engine if args is None else create_async_engine(
        engine.url, poolclass=sa.NullPool, connect_args={**args, "command_timeout": None})
    try:
        async with migrator.begin() as conn:
            if conn.dialect.name == "postgresql":
                # Workers starting together: one migrates, the others wait here and then find nothing to do
                # (without it, two CREATE SCHEMA or two upgrades raced into duplicate-object errors).
                await conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"),
                                   {"k": f"govnode migrate {schema or ''}"})
            if schema and conn.dialect.name == "postgresql":
                await conn.exec_driver_sql(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            await conn.run_sync(_upgrade)
    finally:
        if migrator is not engine:
            await migrator.dispose()


# SQLite has one writer per file. Left to SQLite, writers of the same node wait for each other in its busy
# handler, which sleeps and retries (up to 100 ms between tries) in no order: under a burst of writes one
# writer (the audit journal, say) can lose every race until its busy timeout (30 s) runs out. The node's
# own writers therefore queue in first-come order on one asyncio lock per database and event loop, and
# SQLite's busy wait is left to other processes (the `govnode` commands). PostgreSQL needs none of this.
_write_locks: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, weakref.WeakKeyDictionary[sa.Engine, asyncio.Lock]]" = (
    weakref.WeakKeyDictionary()
)


def _write_lock(engine: AsyncEngine) -> asyncio.Lock | None:
    """The lock this event loop's writers of an SQLite database queue on (None for PostgreSQL)."""
    if engine.dialect.name != "sqlite":
        return None
    per_engine = _write_locks.setdefault(asyncio.get_running_loop(), weakref.WeakKeyDictionary())
    lock = per_engine.get(engine.sync_engine)
    if lock is None:
        lock = per_engine[engine.sync_engine] = asyncio.Lock()
    return lock


WRITE_QUEUE_TIMEOUT_S = 30.0  # as long as SQLite's own busy timeout


@asynccontextmanager
async def queued_write(engine: AsyncEngine) -> AsyncIterator[None]:
    """Hold this node's turn to write to its SQLite database before BEGIN IMMEDIATE (nothing for
    PostgreSQL); every write transaction of the node takes it: `write_tx` and the journal. Waiting longer
    than SQLite itself would is answered 503 UNAVAILABLE, as a busy database was before the queue."""
    lock = _write_lock(engine)
    if lock is None:
        yield
        return
    try:
        async with asyncio.timeout(WRITE_QUEUE_TIMEOUT_S):
            await lock.acquire()
    except TimeoutError:
        raise ApiError(f"the database stayed busy for {WRITE_QUEUE_TIMEOUT_S:g} s; try again",
                       code="UNAVAILABLE") from None
    try:
        yield
    finally:
        lock.release()


class CallWrites(Protocol):
    """What a call (an API request, a delivered message) keeps in each write transaction made for it:
    `begin` runs first in the transaction, `end` last before its commit, `committed` after the commit."""

    def begin(self, conn: sa.Connection) -> None: ...

    def end(self, conn: sa.Connection) -> None: ...

    def committed(self) -> None: ...

    def claim_turn(self) -> AbstractAsyncContextManager[None]: ...

    async def settle(self, engine: AsyncEngine) -> bool: ...

    def note(self, **fields: Any) -> None: ...


# The call whose writes are being made, set for the duration of the call (node.audit.service.Call). Every
# write transaction takes part in it, so no write path can commit without its audit intent.
CALL_WRITES: ContextVar[CallWrites | None] = ContextVar("call_writes", default=None)


def note_write(**fields: Any) -> None:
    """Tell the running call's audit what a write touched (a resource code known only once it is made)."""
    call = CALL_WRITES.get()
    if call is not None:
        call.note(**fields)


@asynccontextmanager
async def write_tx(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """One write transaction; on SQLite it takes the write lock at BEGIN (BEGIN IMMEDIATE), so two
    writers never deadlock upgrading read locks, after queuing for it in this process (`queued_write`).
    Commits on success, rolls back on any exception. Made during a call (`CALL_WRITES`), it also stores
    that call's audit intent (and claims its idempotency key), in the same transaction."""
    call = CALL_WRITES.get()
    in_doubt: Exception | None = None
    # Until the call's key is claimed its transactions take turns (Call.claim_turn), commit and settling included.
    async with call.claim_turn() if call is not None else nullcontext():
        async with queued_write(engine):
            async with engine.connect() as conn:
                conn.sync_connection.info["write"] = True  # type: ignore[union-attr]
                ended = False
                try:
                    async with conn.begin():
                        if call is not None:
                            await conn.run_sync(call.begin)
                        yield conn
                        if call is not None:
                            await conn.run_sync(call.end)
                        ended = True
                except Exception as exc:
                    # The COMMIT itself failed because the database went away (a timeout, a cut connection): the
                    # server may have committed and only its reply been lost. Answering 503 then would tell the
                    # caller a stored write failed, and keep no answer for its Idempotency-Key.
                    if not (ended and call is not None and database_unavailable(exc)):
                        raise
                    in_doubt = exc
                finally:
                    # A connection dropped on the way (a statement timed out, the server went away) has nothing to
                    # clear, and asking it would reconnect outside SQLAlchemy's greenlet, raising MissingGreenlet in
                    # place of the error that says the database is unavailable.
                    if not conn.invalidated:
                        conn.sync_connection.info.pop("write", None)  # type: ignore[union-attr]
        if in_doubt is not None and not await call.settle(engine):  # type: ignore[union-attr]
            raise in_doubt
        if call is not None:
            call.committed()


def next_counter_sync(conn: sa.Connection, name: str, n: int = 1) -> int:
    """Reserve `n` values of a monotonic counter inside the caller's transaction; returns the last one.

    The row lock this takes (PostgreSQL) or the write lock (SQLite) makes commit order follow counter
    order, so a change feed read by counter never skips a change committed before its cursor.
    """
    row = conn.execute(_BUMP_COUNTER, {"counter": name, "n": n}).first()
    if row is not None:
        return int(row[0])
    conn.execute(sa.insert(counters).values(name=name, value=n))
    return n


# Built once: building a statement costs several times what executing it does (the journal runs this
# with every batch).
_BUMP_COUNTER = (
    sa.update(counters)
    .where(counters.c.name == sa.bindparam("counter"))
    .values(value=counters.c.value + sa.bindparam("n", type_=sa.BigInteger))
    .returning(counters.c.value)
)


async def next_counter(conn: AsyncConnection, name: str, n: int = 1) -> int:
    """`next_counter_sync` on an async connection."""
    return await conn.run_sync(next_counter_sync, name, n)


_READ_COUNTER = sa.select(counters.c.value).where(counters.c.name == sa.bindparam("counter"))


async def read_counter(conn: AsyncConnection, name: str) -> int:
    return await conn.run_sync(read_counter_sync, name)


def read_counter_sync(conn: sa.Connection, name: str) -> int:
    """`read_counter` on a plain connection (inside a journal batch, in the writer's thread)."""
    v = conn.execute(_READ_COUNTER, {"counter": name}).scalar()
    return int(v) if v is not None else 0


_on_conflict: dict[tuple[str, str, str], Any] = {}


def on_conflict_statement(dialect: str, table: sa.Table, name: str, build: Callable[[Any], Any]) -> Any:
    """An INSERT … ON CONFLICT statement for `table`, built once per dialect: `build` gets the dialect's own
    insert (SQLite's or PostgreSQL's, the ones that have `on_conflict_*`) and adds the clause; `name` tells
    apart several such statements on one table."""
    key = (table.name, name, dialect)
    stmt = _on_conflict.get(key)
    if stmt is None:
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        stmt = _on_conflict[key] = build(insert(table))
    return stmt


def insert_ignoring_duplicates(conn: sa.Connection, table: sa.Table, rows: list[dict]) -> None:
    """Insert rows, skipping those whose primary key is already stored (SQLite and PostgreSQL)."""
    if not rows:
        return
    conn.execute(on_conflict_statement(conn.dialect.name, table, "ignore", lambda ins: ins.on_conflict_do_nothing()),
                 rows)


# SQLite's result codes (the primary code, the low byte) that say the file cannot be used now: busy or
# locked (by another process, after the busy timeout), cannot be opened, I/O error, disk full.
_SQLITE_UNAVAILABLE = {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_IOERR,
                       sqlite3.SQLITE_FULL}
# PostgreSQL's error classes that say the server cannot serve now: 08 connection exception, 53 insufficient
# resources (too many connections, disk full), 57 operator intervention (shutting down, starting up, a
# statement cancelled), 58 system error (I/O).
_PG_UNAVAILABLE = ("08", "53", "57", "58")
_DRIVERS = ("sqlalchemy", "asyncpg", "aiosqlite")


def database_unavailable(exc: BaseException) -> bool:
    """Whether `exc` says that the database could not be reached or did not answer within its bounds (a
    connect, a statement, a pooled connection, SQLite's lock), rather than that something is wrong with what
    was asked of it."""
    if isinstance(exc, sa.exc.TimeoutError):  # no pooled connection came free in time
        return True
    if isinstance(exc, sa.exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        exc = exc.orig
    if isinstance(exc, sqlite3.Error):
        return (getattr(exc, "sqlite_errorcode", 0) & 0xFF) in _SQLITE_UNAVAILABLE
    sqlstate = getattr(exc, "sqlstate", None)  # asyncpg's errors, also as SQLAlchemy's adapter wraps them
    if isinstance(sqlstate, str):
        return sqlstate[:2] in _PG_UNAVAILABLE
    if isinstance(exc, (TimeoutError, OSError)):
        # asyncpg lets these through unwrapped (a connect or command timeout, a refused or reset connection);
        # the same types from anything else (a file, a peer) are not the database's.
        return any(frame.f_globals.get("__name__", "").startswith(_DRIVERS)
                   for frame, _ in traceback.walk_tb(exc.__traceback__))
    return False


def probe_timeout(engine: AsyncEngine) -> float:
    """How long a check that the database answers may take at most: one connect and one statement on
    PostgreSQL, SQLite's busy timeout on SQLite."""
    args = _pg_connect_args.get(engine.sync_engine)
    return WRITE_QUEUE_TIMEOUT_S if args is None else args["timeout"] + args["command_timeout"]


def unavailable_error(exc: BaseException) -> ApiError | None:
    """The answer to a call that failed because the database is unavailable (503 UNAVAILABLE, saying no more:
    no statement, no trace), or None when `exc` is something else."""
    if not database_unavailable(exc):
        return None
    return ApiError("the database is unreachable or did not answer in time; try again later", code="UNAVAILABLE")
