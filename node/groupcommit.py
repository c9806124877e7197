"""Group commit: many callers each wait until their item is durable, and one transaction stores them all.

Durable before acknowledged (DESIGN.md) costs one commit per batch instead of one per call: while a
batch commits, the next one gathers. One committer serves the whole node (the journal): audit records
and replay-protection claims made by the same requests share a commit. Each item carries the function
that writes its kind; a batch calls each function once with its items, in order of first appearance.

The writing functions are plain (synchronous) SQLAlchemy code. On SQLite a batch's whole transaction
runs in one worker thread on its own connection (`sqlite_writer_twin`): through aiosqlite each of its
statements would be a round trip between threads, and under load each round trip waits for the busy
event loop, so a commit took ~10 ms of waiting for well under 1 ms of work. On PostgreSQL the batch runs
for the same reason on an event loop of its own, in a thread, over its own connection (`PgWriterLoop`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from node.db import PgWriterLoop, database_unavailable, queued_write, sqlite_writer_twin, write_tx
from node.errors import ApiError

log = logging.getLogger("govnode.groupcommit")

T = TypeVar("T")
WriteBatch = Callable[[sa.Connection, list[T]], None]
Batch = list[tuple[WriteBatch[Any], Any, "asyncio.Future[None]", float]]


@dataclass
class JournalStats:
    """Running totals of one committer, for /metrics: how often it commits, how much each commit carries,
    and how long callers wait. `wait_seconds` sums, over items, the time from being queued to being durable
    (what durable-before-acknowledged adds to a call); `commit_seconds` sums, over batches, the time from
    asking for the writer's turn to the commit returning."""

    commits: int = 0
    items: int = 0
    failures: int = 0
    commit_seconds: float = 0.0
    wait_seconds: float = 0.0


class GroupCommitter:
    def __init__(self, engine: AsyncEngine, name: str = "journal", window_ms: int = 2, max_batch: int = 5000) -> None:
        self.engine = engine
        self.name = name
        self.window_s = window_ms / 1000
        self.max_batch = max_batch
        self._pending: Batch = []
        self.stats = JournalStats()
        self._callers: set[int] = set()  # the tasks that queued what is pending
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._last_callers = 0
        self._twin: sa.Engine | None = None
        self._thread: ThreadPoolExecutor | None = None
        self._conn: sa.Connection | None = None  # the twin's connection, used only in that thread
        self._pg: PgWriterLoop | None = None  # PostgreSQL: the batches' own loop and connection

    def start(self) -> None:
        self._twin = sqlite_writer_twin(self.engine)
        if self._twin is not None:
            self._thread = ThreadPoolExecutor(1, thread_name_prefix=f"group-commit-{self.name}")
        else:
            self._pg = PgWriterLoop.for_engine(self.engine, f"group-commit-{self.name}")
        self._task = asyncio.create_task(self._run(), name=f"group-commit-{self.name}")

    async def close(self) -> None:
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
        if self._thread is not None:
            twin, thread = self._twin, self._thread
            self._twin = self._thread = None
            await asyncio.get_running_loop().run_in_executor(thread, self._dispose_in_thread, twin)
            thread.shutdown(wait=True)
        if self._pg is not None:
            pg, self._pg = self._pg, None
            await pg.close()

    async def submit(self, write: WriteBatch[T], item: T) -> None:
        """Returns once `item` is committed; raises ApiError(UNAVAILABLE) if it could not be."""
        await self.enqueue(write, item)

    def enqueue(self, write: WriteBatch[T], item: T) -> asyncio.Future[None]:
        """Queue `item`; the future completes when it is committed (so the caller can overlap the wait)."""
        if self._task is None or self._task.done():
            raise ApiError(f"the {self.name} writer is not running", code="UNAVAILABLE")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((write, item, fut, time.perf_counter()))
        self._callers.add(id(asyncio.current_task()))
        self._wake.set()
        return fut

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            # Wait a moment for company only when calls are arriving together (the last batch came from
            # several callers); a lone call, even one queuing several items, commits at once.
            if self.window_s and not self._closing and self._last_callers > 1:
                await asyncio.sleep(self.window_s)
            self._wake.clear()
            batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch:]
            self._last_callers, self._callers = len(self._callers), set()
            if self._pending:
                self._wake.set()
            if batch:
                await self._commit(batch)
            if self._closing and not self._pending:
                return

    @staticmethod
    def _apply(conn: sa.Connection, batch: Batch) -> None:
        # Writers run in order of first appearance, except that a writer may ask to run earlier or later
        # (`commit_order`, default 0): on PostgreSQL every batch of every worker then takes its row locks in
        # the same order (replay claims, …, the audit chain's counter), so two batches cannot deadlock.
        for write in sorted(dict.fromkeys(w for w, _, _, _ in batch), key=lambda w: getattr(w, "commit_order", 0)):
            write(conn, [item for w, item, _, _ in batch if w is write])

    def _commit_in_thread(self, batch: Batch) -> None:
        assert self._twin is not None
        if self._conn is None:  # kept open between batches: a checkout per batch cost more than its SQL
            self._conn = self._twin.connect()
            self._conn.info["write"] = True  # BEGIN IMMEDIATE
        try:
            with self._conn.begin():
                self._apply(self._conn, batch)
        except Exception:
            self._close_conn()  # the next batch starts from a fresh connection
            raise

    def _close_conn(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - a broken connection is being dropped anyway
                log.debug("%s: closing the writer connection failed", self.name, exc_info=True)

    def _dispose_in_thread(self, twin: sa.Engine) -> None:
        self._close_conn()
        twin.dispose()

    async def _commit(self, batch: Batch) -> None:
        started = time.perf_counter()
        try:
            if self._thread is not None:
                async with queued_write(self.engine):  # in turn with the node's other writers
                    await asyncio.get_running_loop().run_in_executor(self._thread, self._commit_in_thread, batch)
            elif self._pg is not None:
                await self._pg.run(self._apply, batch)
            else:
                async with write_tx(self.engine) as conn:
                    await conn.run_sync(self._apply, batch)
        except Exception as exc:  # noqa: BLE001 - every waiter learns that its item is not durable
            # A batch waits no longer than the database's bounds (a busy SQLite file, a stalled PostgreSQL);
            # the connection it failed on is dropped (`_commit_in_thread`, or the pool's invalidation).
            down = database_unavailable(exc)
            if down:  # a cut or a stall: one line a batch, not a trace
                log.warning("%s: a batch of %d could not be committed: the database is unavailable (%s)",
                            self.name, len(batch), type(exc).__name__)
            else:
                log.exception("%s: a batch of %d could not be committed", self.name, len(batch))
            self.stats.failures += 1
            why = "; the database is unreachable or did not answer in time" if down else ""
            for _, _, fut, _ in batch:
                if not fut.done():
                    fut.set_exception(ApiError(f"the {self.name} record could not be stored{why}", code="UNAVAILABLE"))
            return
        done = time.perf_counter()
        stats = self.stats
        stats.commits += 1
        stats.items += len(batch)
        stats.commit_seconds += done - started
        for _, _, fut, queued in batch:
            stats.wait_seconds += done - queued
            if not fut.done():
                fut.set_result(None)
