"""Records of every resource held at this node: one row a key, deletions kept as tombstones, and a change
id that orders the change feed by commit."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from node.db import JsonDoc, LoopRead, metadata, on_conflict_statement, sqlite_file

records = sa.Table(
    "records",
    metadata,
    sa.Column("resource_code", sa.String(40), nullable=False),
    sa.Column("key", sa.String(200), nullable=False),
    sa.Column("data", JsonDoc, nullable=True),
    sa.Column("deleted", sa.Boolean, nullable=False),
    sa.Column("change_id", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
    sa.PrimaryKeyConstraint("resource_code", "key", name="pk_records"),
    sa.Index("ix_records_resource_code_change_id", "resource_code", "change_id"),
)

CHANGE_COUNTER = "record_change"


def _upsert(dialect: str) -> Any:
    """INSERT … ON CONFLICT DO UPDATE for executemany, `data` bound as JSON text the caller serialized."""
    pg = dialect == "postgresql"

    def build(insert: Any) -> Any:
        data = sa.bindparam("p_data", type_=sa.Text)
        ins = insert.values(
            resource_code=sa.bindparam("p_code", type_=sa.String),
            key=sa.bindparam("p_key", type_=sa.String),
            data=sa.cast(data, JSONB) if pg else data,
            deleted=sa.bindparam("p_deleted", type_=sa.Boolean),
            change_id=sa.bindparam("p_change", type_=sa.BigInteger),
            updated_at=sa.bindparam("p_at", type_=sa.BigInteger),
        )
        return ins.on_conflict_do_update(
            index_elements=[records.c.resource_code, records.c.key],
            set_={
                "data": ins.excluded.data,
                "deleted": ins.excluded.deleted,
                "change_id": ins.excluded.change_id,
                "updated_at": ins.excluded.updated_at,
            },
        )

    return on_conflict_statement(dialect, records, "upsert", build)


# SQLite takes the rows straight to the driver's executemany (no per-row work in SQLAlchemy): the ingest
# hot path. The statement is the one `_upsert("sqlite")` builds.
_SQLITE_UPSERT = (
    "INSERT INTO records (resource_code, key, data, deleted, change_id, updated_at) VALUES (?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (resource_code, key) DO UPDATE SET data = excluded.data, deleted = excluded.deleted, "
    "change_id = excluded.change_id, updated_at = excluded.updated_at"
)


async def upsert_many(conn: AsyncConnection, code: str, rows: list[tuple[str, str | None]], first_change: int,
                      at: int) -> None:
    """Write (key, JSON text or None for a tombstone) rows with consecutive change ids from `first_change`.
    Keys must not repeat within one call."""
    if conn.dialect.name == "sqlite":
        await conn.exec_driver_sql(
            _SQLITE_UPSERT,
            [(code, key, doc, doc is None, first_change + i, at) for i, (key, doc) in enumerate(rows)],
        )
        return
    params = [
        {"p_code": code, "p_key": key, "p_data": doc, "p_deleted": doc is None, "p_change": first_change + i,
         "p_at": at}
        for i, (key, doc) in enumerate(rows)
    ]
    await conn.execute(_upsert(conn.dialect.name), params)


async def changes(conn: AsyncConnection, code: str, since: int, limit: int) -> list[sa.Row]:
    q = (
        sa.select(records.c.key, records.c.data, records.c.deleted, records.c.change_id)
        .where(records.c.resource_code == code, records.c.change_id > since)
        .order_by(records.c.change_id)
        .limit(limit)
    )
    return list((await conn.execute(q)).all())


async def get(conn: AsyncConnection, code: str, key: str) -> dict[str, Any] | None:
    """A live record's data, or None (absent or deleted)."""
    q = sa.select(records.c.data).where(
        records.c.resource_code == code, records.c.key == key, records.c.deleted.is_(False)
    )
    return (await conn.execute(q)).scalar()


def _deliver(answers: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for fut, value, exc in answers:
        if fut.done():  # the caller gave up (cancelled)
            continue
        if exc is None:
            fut.set_result(value)
        else:
            fut.set_exception(exc)


class SqliteReader:
    """Point reads of live records on SQLite.

    A verify or a query by key is one indexed read. It is read on the event loop (`LoopRead`: a read-only
    connection that never waits for a lock); only when SQLite cannot answer at once does it go to a small
    pool of threads that each hold a plain read-only sqlite3 connection (WAL: readers see every committed
    write and never block the writer). PostgreSQL has its own (`PgReader`).

    Even one hop to a thread costs more CPU than the indexed read it carries (a future, a lock, waking the
    worker, waking the loop), so reads that do go there queue up: one worker drains the queue, reading every
    key waiting, and hands the answers back to the loop in one wake-up.
    """

    GET = "SELECT data FROM records WHERE resource_code = ? AND key = ? AND deleted = 0"

    def __init__(self, path: str, threads: int = 2) -> None:
        self.path = path
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="records-read")
        self._waiting: list[tuple[str, str, asyncio.Future[dict[str, Any] | None]]] = []
        self._draining = False
        self._on_loop = LoopRead(path)
        self._closed = False

    @classmethod
    def for_engine(cls, engine: AsyncEngine) -> "SqliteReader | None":
        path = sqlite_file(engine)
        return None if path is None else cls(path)

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA query_only=ON")
            conn.execute("PRAGMA busy_timeout=30000")
            self._local.conn = conn
            with self._lock:
                self._conns.append(conn)
        return conn

    def _get(self, code: str, key: str) -> dict[str, Any] | None:
        row = self._conn().execute(self.GET, (code, key)).fetchone()
        return None if row is None or row[0] is None else json.loads(row[0])

    async def get(self, code: str, key: str) -> dict[str, Any] | None:
        rows = None if self._closed else self._on_loop.read(self.GET, (code, key))
        if rows is not None:
            return json.loads(rows[0][0]) if rows and rows[0][0] is not None else None
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[dict[str, Any] | None] = loop.create_future()
        with self._lock:
            self._waiting.append((code, key, fut))
            start, self._draining = not self._draining, True
        if start:
            try:
                self._pool.submit(self._drain, loop)
            except RuntimeError:  # the pool is shut down: the node is stopping
                with self._lock:
                    waiting, self._waiting, self._draining = self._waiting, [], False
                for _, _, f in waiting:
                    if not f.done():
                        f.set_exception(RuntimeError("the record reader is closed"))
        return await fut

    def _drain(self, loop: asyncio.AbstractEventLoop) -> None:
        """In a worker thread: read every waiting key, answer them with one wake-up of the loop, repeat
        until nothing waits."""
        while True:
            with self._lock:
                batch, self._waiting = self._waiting, []
                if not batch:
                    self._draining = False
                    return
            answers: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
            for code, key, fut in batch:
                try:
                    answers.append((fut, self._get(code, key), None))
                except Exception as exc:  # noqa: BLE001 - handed to the waiting caller
                    answers.append((fut, None, exc))
            try:
                loop.call_soon_threadsafe(_deliver, answers)
            except RuntimeError:  # the loop is closed; nobody waits any more
                pass

    def _compare(self, code: str, fields: list[str], submitted: list[list[Any]]) -> list[tuple[Any, ...]]:
        sql, params = _compare_sql(False, code, fields, submitted)
        return self._conn().execute(sql, params).fetchall()

    async def compare(self, code: str, fields: list[str], submitted: list[list[Any]]) -> list[tuple[Any, ...]]:
        """`compare` below, run whole (encoding, query, fetch) in a reader thread."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._compare, code, fields, submitted)

    def close(self) -> None:
        self._closed = True
        self._on_loop.close()
        self._pool.shutdown(wait=True)
        with self._lock:
            for conn in self._conns:
                conn.close()
            self._conns.clear()


# One statement for any number of keys of one resource: `= ANY(array)` keeps one SQL text (and so one
# prepared statement a connection) whatever the batch's size, where an expanding IN made one a size.
_PG_GET_MANY = sa.select(records.c.key, records.c.data).where(
    records.c.resource_code == sa.bindparam("code"),
    records.c.key == sa.any_(sa.bindparam("keys", type_=ARRAY(sa.String(200)))),
    records.c.deleted.is_(False),
)


class PgReader:
    """Point reads of live records on PostgreSQL, gathered, outside a transaction.

    Through the engine a point read was three round trips (BEGIN, the SELECT, the pool's ROLLBACK) for one
    index probe, and each round trip is a send and a wake-up on both sides: `scripts/bench_local.py
    --workers 2` profiled a worker spending a fifth of its time in the socket send alone. Here a read is
    one statement on a connection in autocommit (PostgreSQL's READ COMMITTED gives a lone statement the
    same snapshot it would have inside BEGIN … ROLLBACK), and reads that arrive while one is in flight
    wait and go together in the next statement, one per resource. A lone read still costs one round trip.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._waiting: list[tuple[str, str, asyncio.Future[dict[str, Any] | None]]] = []
        self._draining = False

    @classmethod
    def for_engine(cls, engine: AsyncEngine) -> "PgReader | None":
        return cls(engine) if engine.dialect.name == "postgresql" else None

    async def get(self, code: str, key: str) -> dict[str, Any] | None:
        fut: asyncio.Future[dict[str, Any] | None] = asyncio.get_running_loop().create_future()
        self._waiting.append((code, key, fut))
        if not self._draining:
            self._draining = True
            asyncio.get_running_loop().create_task(self._drain(), name="records-read")
        return await fut

    async def _drain(self) -> None:
        batch: list[tuple[str, str, asyncio.Future[dict[str, Any] | None]]] = []
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                keys: dict[str, set[str]] = {}
                for code, key, _ in batch:
                    keys.setdefault(code, set()).add(key)
                found: dict[tuple[str, str], Any] = {}
                async with self.engine.connect() as conn:
                    for code, wanted in keys.items():
                        for key, data in await conn.execute(_PG_GET_MANY, {"code": code, "keys": list(wanted)}):
                            found[(code, key)] = data
                _deliver([(fut, found.get((code, key)), None) for code, key, fut in batch])
                batch = []
        except BaseException as exc:  # every caller waiting learns why (a cut, a timeout, the node stopping)
            failed = batch + self._waiting
            self._waiting = []
            _deliver([(fut, None, exc if isinstance(exc, Exception) else RuntimeError("the record reader stopped"))
                      for _, _, fut in failed])
            if not isinstance(exc, Exception):
                raise
        finally:
            self._draining = False

    async def compare(self, code: str, fields: list[str], submitted: list[list[Any]]) -> list[tuple[Any, ...]]:
        """`compare` below, one statement outside a transaction."""
        async with self.engine.connect() as conn:
            return await compare(conn, code, fields, submitted)

    def close(self) -> None:
        pass


async def find(conn: AsyncConnection, code: str, where: dict[str, Any], limit: int) -> list[dict[str, Any]]:
    """Live records whose fields equal the given (already normalized) values, in key order."""
    pg = conn.dialect.name == "postgresql"
    conds = ["resource_code = :code", "deleted = false" if pg else "deleted = 0"]
    params: dict[str, Any] = {"code": code, "limit": limit}
    for i, (field, value) in enumerate(where.items()):
        params[f"f{i}"] = field if pg else f'$."{field}"'
        if pg:
            conds.append(f"data -> :f{i} = CAST(:v{i} AS jsonb)")
            params[f"v{i}"] = json.dumps(value, ensure_ascii=False)
        else:
            conds.append(f"json_extract(data, :f{i}) = :v{i}")
            params[f"v{i}"] = value
    sql = f"SELECT data FROM records WHERE {' AND '.join(conds)} ORDER BY key LIMIT :limit"
    rows = (await conn.execute(sa.text(sql).columns(sa.column("data", JsonDoc)), params)).all()
    return [r[0] for r in rows]


def _compare_sql(pg: bool, code: str, fields: list[str], submitted: list[list[Any]]) -> tuple[str, dict[str, Any]]:
    params: dict[str, Any] = {"code": code, "doc": json.dumps(submitted, ensure_ascii=False, separators=(",", ":"))}
    cols = []
    for i, field in enumerate(fields):
        if pg:
            params[f"f{i}"] = field
            cols.append(f"(r.data -> :f{i}) = (j.value -> {i + 1})")
        else:
            params[f"f{i}"] = f'$."{field}"'
            cols.append(f"json_extract(r.data, :f{i}) = json_extract(j.value, '$[{i + 1}]')")
    if pg:
        select = ", ".join(["j.idx - 1"] + cols)
        sql = (
            f"SELECT {select} FROM jsonb_array_elements(CAST(:doc AS jsonb)) WITH ORDINALITY AS j(value, idx) "
            "JOIN records r ON r.resource_code = :code AND r.key = (j.value ->> 0) AND NOT r.deleted"
        )
    else:
        select = ", ".join(["j.key"] + cols)
        # CROSS JOIN keeps the submitted rows as the outer loop, so each is one primary-key lookup.
        sql = (
            f"SELECT {select} FROM json_each(:doc) AS j "
            "CROSS JOIN records r ON r.resource_code = :code AND r.key = json_extract(j.value, '$[0]') "
            "AND r.deleted = 0"
        )
    return sql, params


async def compare(conn: AsyncConnection, code: str, fields: list[str], submitted: list[list[Any]]
                  ) -> list[tuple[Any, ...]]:
    """Set-based comparison of submitted rows `[key, value of fields[0], value of fields[1], …]` with the
    live records of a resource, in one statement: the rows travel as one JSON array parameter that the
    database unnests (json_each / jsonb_array_elements) and joins with `records` on its primary key.

    Returns (0-based index into `submitted`, equal flag per field …) for each submitted row whose key was
    found; a flag is None (or false) when the record or the submitted row lacks the value.
    """
    sql, params = _compare_sql(conn.dialect.name == "postgresql", code, fields, submitted)
    result = await conn.execute(sa.text(sql), params)
    return [tuple(r) for r in result.all()]


async def count(conn: AsyncConnection, code: str) -> int:
    q = sa.select(sa.func.count()).select_from(records).where(records.c.resource_code == code,
                                                             records.c.deleted.is_(False))
    return int((await conn.execute(q)).scalar_one())


async def last_write(conn: AsyncConnection, code: str) -> tuple[int, int] | None:
    """(change id, epoch ms) of the last write to a resource's records (one step down its change index)."""
    q = (sa.select(records.c.change_id, records.c.updated_at).where(records.c.resource_code == code)
         .order_by(records.c.change_id.desc()).limit(1))
    row = (await conn.execute(q)).first()
    return None if row is None else (int(row[0]), int(row[1]))
