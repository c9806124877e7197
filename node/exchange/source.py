"""A department's own database as a source of records: the URL (driver as named, credentials hidden), the
table's columns, and the reads of a table exchange (full load in key order, increments by the updated column,
all keys for reconciliation).

Every read is a plain synchronous function of a SQLAlchemy `Connection`; `SourceDB.run` executes it on a fresh
connection (no pool, so an outage never leaves a broken connection behind): through the async engine's
`run_sync` when the URL names an async driver (aiosqlite, asyncpg …), in a worker thread when it names a
synchronous one (pysqlite …). SQLite sources are opened read-only, so a missing file is an error rather than a
new empty database.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Callable

import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, NoSuchTableError, SQLAlchemyError
from sqlalchemy.pool import NullPool

from node.errors import InvalidInput

CONNECT_TIMEOUT_S = 10
_SECRET_PARAMS = ("pass", "secret", "token", "key", "pwd")


class SourceProblem(Exception):
    """A source that cannot be read as bound; `kind` says why (see SourceError)."""

    def __init__(self, kind: str, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.details = details


def parse_url(raw: str) -> URL:
    """The source URL, checked: parseable, and its driver (as named, or the dialect's default) installed."""
    try:
        url = make_url(raw)
    except (ArgumentError, ValueError) as exc:
        raise InvalidInput(f"url is not a SQLAlchemy URL: {exc}", [{"field": "url", "error": "malformed"}]) from None
    try:
        dialect = url.get_dialect()
        dialect.import_dbapi()
    except (NoSuchModuleError, ImportError) as exc:
        hint = {"postgresql": " (e.g. postgresql+asyncpg://…)", "sqlite": " (e.g. sqlite:///path)"}.get(
            url.get_backend_name(), "")
        raise InvalidInput(f"the driver {url.drivername} named in the URL is not installed on this node{hint}",
                           [{"field": "url", "error": f"driver not installed: {type(exc).__name__}"}]) from None
    if url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:"):
        raise InvalidInput("a SQLite source names its database file", [{"field": "url", "error": "no file"}])
    return url


def shown_url(url: URL) -> str:
    """The URL as it may be shown and logged: password and secret-looking query values hidden."""
    query = {k: ("***" if any(s in k.lower() for s in _SECRET_PARAMS) else v) for k, v in url.query.items()}
    return url.set(query=query).render_as_string(hide_password=True)


def secrets_of(url: URL) -> list[str]:
    out = [url.password] if url.password else []
    out += [v for k, v in url.query.items() if isinstance(v, str) and any(s in k.lower() for s in _SECRET_PARAMS)]
    return [s for s in out if s and len(s) >= 3]


def split_table(name: str) -> tuple[str | None, str]:
    if "." in name:
        schema, table = name.split(".", 1)
        return schema, table
    return None, name


# Cursors (the last key read, the last (updated, key) pulled) stored as tagged JSON ---------------------------

def encode_value(v: Any) -> Any:
    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, int):
        return {"int": str(v)}
    if isinstance(v, float):
        return {"float": repr(v)}
    if isinstance(v, Decimal):
        return {"decimal": str(v)}
    if isinstance(v, dt.datetime):
        return {"datetime": v.isoformat()}
    if isinstance(v, dt.date):
        return {"date": v.isoformat()}
    if isinstance(v, dt.time):
        return {"time": v.isoformat()}
    if isinstance(v, (bytes, bytearray, memoryview)):
        return {"bytes": base64.b64encode(bytes(v)).decode("ascii")}
    if isinstance(v, uuid.UUID):
        return {"uuid": str(v)}
    return {"str": str(v)}


def decode_value(v: Any) -> Any:
    if not isinstance(v, dict):
        return v
    (tag, text), = v.items()
    return {
        "int": int, "float": float, "decimal": Decimal, "datetime": dt.datetime.fromisoformat,
        "date": dt.date.fromisoformat, "time": dt.time.fromisoformat, "bytes": base64.b64decode,
        "uuid": uuid.UUID, "str": str,
    }[tag](text)


def fetch_all(conn: sa.Connection, stmt: sa.Select) -> list[Any]:
    """The rows of a statement. With the standard library's sqlite3 driver the statement goes straight to the
    driver (values read from SQLite bind back as they are), skipping the result machinery: a full load reads
    every row of the table through here."""
    if conn.dialect.driver == "pysqlite":
        compiled = stmt.compile(dialect=conn.dialect)
        params = compiled.construct_params()
        args = [params[name] for name in compiled.positiontup or ()]
        return conn.connection.driver_connection.execute(str(compiled), args).fetchall()  # type: ignore[union-attr]
    return list(conn.execute(stmt).all())


@dataclass
class Layout:
    """The columns read from the source table, in a fixed order: key, updated, delete flag, then the items'."""

    schema: str | None
    table: str
    columns: list[str]
    key: int
    updated: int
    delete: int | None
    fields: list[tuple[str, int]]  # (item field, index into columns)

    @classmethod
    def of(cls, spec: dict[str, Any]) -> "Layout":
        schema, table = split_table(spec["table"])
        cols: list[str] = []

        def idx(c: str) -> int:
            if c not in cols:
                cols.append(c)
            return cols.index(c)

        key = idx(spec["key_column"])
        updated = idx(spec["updated_column"])
        delete = idx(spec["delete_column"]) if spec.get("delete_column") else None
        fields = [(f, idx(c)) for f, c in spec["columns"].items()]
        return cls(schema, table, cols, key, updated, delete, fields)

    def table_clause(self) -> sa.TableClause:
        return sa.table(self.table, *(sa.column(c) for c in self.columns), schema=self.schema)

    def check(self, conn: sa.Connection) -> None:
        """Raise SourceProblem("schema") unless the table and every column read exist."""
        try:
            present = {c["name"] for c in sa.inspect(conn).get_columns(self.table, schema=self.schema)}
        except NoSuchTableError:
            raise SourceProblem("schema", f"the source table {self.qualified} does not exist") from None
        if not present:
            raise SourceProblem("schema", f"the source table {self.qualified} does not exist or has no columns")
        missing = [c for c in self.columns if c not in present]
        if missing:
            raise SourceProblem("schema", f"the source table {self.qualified} has no column(s) {', '.join(missing)}",
                                [{"column": c, "error": "missing in the source table"} for c in missing])

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.table}" if self.schema else self.table

    # Reads -----------------------------------------------------------------------------------------

    def count_and_high_water(self, conn: sa.Connection) -> tuple[int, Any]:
        t = self.table_clause()
        row = conn.execute(sa.select(sa.func.count(), sa.func.max(t.c[self.columns[self.updated]]))).first()
        return int(row[0]), row[1]

    def after_key(self, conn: sa.Connection, after: Any, limit: int) -> list[Any]:
        t = self.table_clause()
        key = t.c[self.columns[self.key]]
        q = sa.select(*t.c).where(key.is_not(None))
        if after is not None:
            q = q.where(key > sa.bindparam("after", after))
        return fetch_all(conn, q.order_by(key).limit(limit))

    def after_update(self, conn: sa.Connection, cursor: tuple[Any, Any] | None, limit: int) -> list[Any]:
        t = self.table_clause()
        key = t.c[self.columns[self.key]]
        upd = t.c[self.columns[self.updated]]
        q = sa.select(*t.c).where(upd.is_not(None), key.is_not(None))
        if cursor is not None:
            u, k = cursor
            if k is None:
                q = q.where(upd >= sa.bindparam("u", u))
            else:
                q = q.where(sa.or_(upd > sa.bindparam("u", u),
                                   sa.and_(upd == sa.bindparam("u2", u), key > sa.bindparam("k", k))))
        return fetch_all(conn, q.order_by(upd, key).limit(limit))

    def all_keys(self, conn: sa.Connection) -> list[tuple[Any, Any]]:
        """(key, delete flag or None) of every row."""
        t = self.table_clause()
        key = t.c[self.columns[self.key]]
        flag = t.c[self.columns[self.delete]] if self.delete is not None else sa.null()
        return [(r[0], r[1]) for r in conn.execute(sa.select(key, flag).where(key.is_not(None))).all()]


class SourceDB:
    """Connections to one source database."""

    def __init__(self, url: URL) -> None:
        self.url = url
        self.shown = shown_url(url)
        self._secrets = secrets_of(url) + [url.render_as_string(hide_password=False)]
        dialect = url.get_dialect()
        self.is_async = bool(getattr(dialect, "is_async", False))
        target = url
        connect_args: dict[str, Any] = {}
        if url.get_backend_name() == "sqlite":
            path = url.database or ""
            if not path.startswith("file:"):
                target = url.set(database=f"file:{path}", query={**url.query, "mode": "ro", "uri": "true"})
            connect_args["timeout"] = CONNECT_TIMEOUT_S
        elif url.get_driver_name() == "asyncpg":
            connect_args["timeout"] = CONNECT_TIMEOUT_S
        elif url.get_backend_name() == "postgresql":
            connect_args["connect_timeout"] = CONNECT_TIMEOUT_S
        if self.is_async:
            from sqlalchemy.ext.asyncio import create_async_engine

            self.engine: Any = create_async_engine(target, poolclass=NullPool, connect_args=connect_args)
            self._pool = None
        else:
            self.engine = sa.create_engine(target, poolclass=NullPool, connect_args=connect_args)
            self._pool = ThreadPoolExecutor(2, thread_name_prefix="exchange-source")

    def sanitize(self, text: str) -> str:
        for s in self._secrets:
            if s:
                text = text.replace(s, "***")
        return text

    def _sync_run(self, fn: Callable[[sa.Connection], Any]) -> Any:
        with self.engine.connect() as conn:
            return fn(conn)

    async def run(self, fn: Callable[[sa.Connection], Any], timeout_s: float = 300) -> Any:
        """Run `fn(connection)` on a fresh connection; failures become SourceProblem (credentials hidden)."""
        try:
            async with asyncio.timeout(timeout_s):
                if self.is_async:
                    async with self.engine.connect() as conn:
                        return await conn.run_sync(fn)
                return await asyncio.get_running_loop().run_in_executor(self._pool, self._sync_run, fn)
        except SourceProblem as exc:
            exc.message = self.sanitize(exc.message)
            raise
        except TimeoutError:
            raise SourceProblem("unreachable", f"the source did not answer within {timeout_s:g} s") from None
        except NoSuchTableError as exc:
            raise SourceProblem("schema", self.sanitize(f"the source table {exc} does not exist")) from None
        except SQLAlchemyError as exc:
            raise self._problem(exc) from None
        except (OSError, ConnectionError) as exc:
            raise SourceProblem("unreachable", self.sanitize(f"cannot connect to the source: {exc}")) from None

    def _problem(self, exc: SQLAlchemyError) -> SourceProblem:
        orig = getattr(exc, "orig", None)
        text = str(orig if orig is not None else exc).strip().splitlines()[0] if str(orig or exc).strip() else ""
        text = self.sanitize(text)[:300]
        low = text.lower()
        if "password" in low or "authentication" in low or "permission denied" in low:
            return SourceProblem("credentials", f"the source refused the credentials or access: {text}")
        if "no such table" in low or "no such column" in low or "does not exist" in low:
            return SourceProblem("schema", f"the source table changed: {text}")
        if isinstance(exc, (sa.exc.OperationalError, sa.exc.InterfaceError)) or getattr(exc, "connection_invalidated",
                                                                                      False):
            return SourceProblem("unreachable", f"cannot read the source: {text}")
        return SourceProblem("source", f"the source database answered with an error: {text}")

    async def close(self) -> None:
        try:
            if self.is_async:
                await self.engine.dispose()
            else:
                self.engine.dispose()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=False)
