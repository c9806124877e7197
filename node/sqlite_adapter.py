"""SQLAlchemy's aiosqlite adapter, with one thread hop a statement instead of four.

aiosqlite runs each call on a connection's own thread and wakes the event loop when it is done. SQLAlchemy's
adapter makes four such calls for a statement that returns rows (open a cursor, execute, fetch all, close)
and three for one that does not; a transaction's `BEGIN` is a statement like any other. Each hop costs the
event loop a wake-up and the caller a thread switch: on the 2-core development VM, ~0.2 ms a hop, so that
checking out a connection and running `SELECT 1` took 2.6 ms against 0.2 ms for aiosqlite's own
`execute_fetchall` (3 Dec 2026), and a single-subject list check sat idle 54 % of its time waiting on hops.

Here a statement's whole cursor life (open, execute, fetch all, close) is one function run on the
connection's thread, and a transaction's `BEGIN` waits and goes with the transaction's first statement; a
transaction that ends before running any statement costs no hop at all, and a rollback is queued without
waiting for it (the next use of the connection queues behind it). What SQLAlchemy sees does not
change: the rows, `description`, `rowcount` and `lastrowid` are those of the same sqlite3 cursor, and errors
are the same sqlite3 exceptions, raised from the same call (`BEGIN IMMEDIATE`'s "database is locked" from
the first statement instead of from the begin, which the node answers the same way).

Used through `make_engine` for every SQLite database the node opens with SQLAlchemy's asyncio engine.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import sqlite3
from collections.abc import Sequence
from typing import Any

import aiosqlite
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
)
from sqlalchemy.util.concurrency import await_

log = logging.getLogger("govnode.db")

_BEGINS = frozenset({"BEGIN", "BEGIN IMMEDIATE", "BEGIN DEFERRED", "BEGIN EXCLUSIVE"})


def _run(conn: sqlite3.Connection, begin: str | None, operation: str, parameters: Any,
         many: bool) -> tuple[Any, int, int | None, list[Any] | None]:
    """On the connection's thread: the pending BEGIN, then the statement with its cursor's whole life."""
    if begin is not None:
        conn.execute(begin).close()
    cur = conn.cursor()
    try:
        if many:
            cur.executemany(operation, parameters)
        elif parameters is None:
            cur.execute(operation)
        else:
            cur.execute(operation, parameters)
        description = cur.description
        rows = cur.fetchall() if description else None
        return description, cur.rowcount, cur.lastrowid, rows
    finally:
        cur.close()


class OneHopCursor(AsyncAdapt_aiosqlite_cursor):
    """A buffered cursor whose statement is one call on the connection's thread."""

    __slots__ = ("_description", "_rowcount", "_lastrowid", "_arraysize")

    def __init__(self, adapt_connection: "OneHopConnection") -> None:
        # No sqlite3 cursor is opened here: each statement opens and closes its own on the connection's
        # thread. `_cursor` stays None, which the base class's close() reads as "nothing to close".
        self._adapt_connection = adapt_connection
        self._connection = adapt_connection._connection
        self._cursor = None  # type: ignore[assignment]
        self._soft_closed_memoized = {}  # type: ignore[assignment]
        self._rows = collections.deque()
        self._description: Any = None
        self._rowcount = -1
        self._lastrowid: int | None = None
        self._arraysize = 1

    @property
    def description(self) -> Any:
        return self._description

    @property
    def rowcount(self) -> int:
        return self._rowcount

    @property
    def lastrowid(self) -> int:  # type: ignore[override]
        return self._lastrowid  # type: ignore[return-value]

    @property
    def arraysize(self) -> int:
        return self._arraysize

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._arraysize = value

    async def _async_soft_close(self) -> None:
        return None

    def close(self) -> None:
        self._rows.clear()

    def execute(self, operation: Any, parameters: Any = None) -> Any:
        conn = self._adapt_connection
        if not parameters and operation in _BEGINS:
            # Deferred to the transaction's first statement (or dropped if it has none).
            conn._pending_begin = operation
            return None
        try:
            return await_(self._one_hop(operation, parameters, many=False))
        except Exception as error:
            conn._handle_exception(error)

    def executemany(self, operation: Any, seq_of_parameters: Sequence[Any]) -> Any:
        try:
            return await_(self._one_hop(operation, seq_of_parameters, many=True))
        except Exception as error:
            self._adapt_connection._handle_exception(error)

    async def _one_hop(self, operation: Any, parameters: Any, many: bool) -> None:
        conn = self._adapt_connection
        async with conn._execute_mutex:
            begin, conn._pending_begin = conn._pending_begin, None
            aio = self._connection
            description, rowcount, lastrowid, rows = await aio._execute(
                _run, aio._conn, begin, operation, parameters, many)
        self._description, self._rowcount, self._lastrowid = description, rowcount, lastrowid
        self._rows = collections.deque(rows) if rows is not None else collections.deque()

    def nextset(self) -> None:
        return None


class OneHopConnection(AsyncAdapt_aiosqlite_connection):
    __slots__ = ("_pending_begin", "_closing")

    _cursor_cls = OneHopCursor

    def __init__(self, dbapi: Any, connection: Any) -> None:
        super().__init__(dbapi, connection)
        self._pending_begin: str | None = None
        self._closing = False

    # Terminating a connection (SQLAlchemy does when one is invalidated: a cut, a cancelled call) closes it
    # gracefully in a shielded task and, if the caller is cancelled or the close fails meanwhile, also stops
    # the connection's thread at once. aiosqlite (0.22) queues a stop for the thread at every stop and waits
    # for the thread to reach it; its close stops the thread when it ends. With both, the first stop ends
    # the thread and the close waits for the second forever: a test run hung at teardown on such a task (the
    # event loop cancels it once and then waits for it), and so would a node's shutdown. While a graceful
    # close is under way it stops the thread itself, so the forced stop is left out.
    async def _terminate_graceful_close(self) -> None:
        self._closing = True
        await super()._terminate_graceful_close()

    def _terminate_force_close(self) -> None:
        if not self._closing:
            super()._terminate_force_close()

    def commit(self) -> None:
        if self._pending_begin is not None:
            # BEGIN and COMMIT with nothing between them: nothing reached the database.
            self._pending_begin = None
            return
        super().commit()

    def rollback(self) -> None:
        if self._pending_begin is not None:
            self._pending_begin = None
            return
        aio = self._connection
        if aio._connection is None:
            return
        # Queued on the connection's thread and not waited for: whatever uses this connection next (the
        # pool hands it out again, closes it) is queued behind it on the same thread, so it still runs
        # first, and the caller does not wait a hop for an answer it has no use for. This is the pool's
        # reset after every read. A failed rollback is logged; the connection's next BEGIN would then
        # fail in turn ("within a transaction") and be seen there.
        try:
            done = asyncio.get_running_loop().create_future()
        except RuntimeError:  # not on the event loop (a connection cleaned up at exit): wait as usual
            super().rollback()
            return
        done.add_done_callback(_rollback_done)
        aio._tx.put_nowait((done, aio._connection.rollback))


def _rollback_done(fut: "asyncio.Future[Any]") -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.warning("a SQLite rollback failed: %s", fut.exception())


class OneHopDBAPI(AsyncAdapt_aiosqlite_dbapi):
    def connect(self, *arg: Any, **kw: Any) -> OneHopConnection:
        connection = aiosqlite.connect(*arg, **kw)
        # aiosqlite's worker thread must not keep the interpreter alive at exit (as SQLAlchemy's own
        # adapter does).
        connection._thread.daemon = True
        return OneHopConnection(self, await_(connection))


def dbapi() -> OneHopDBAPI:
    """The DB-API module to hand to `create_async_engine(..., module=...)` for an aiosqlite URL."""
    return OneHopDBAPI(aiosqlite, sqlite3)
