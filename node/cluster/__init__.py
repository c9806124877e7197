"""This process among the workers that serve one node.

On PostgreSQL any number of workers serve a node (`govnode run --workers N`, and several hosts behind a
load balancer). What each worker may keep in memory, and what must live in the database, is written
down in docs/architecture.md ("Process model"); this module gives the workers the three things they
share besides their tables:

- **A lease.** Background work (outbox senders, feed pulls, schedulers, subscriptions, table sources,
  quality checks, the audit sweep) runs on one worker at a time: the one holding the `background`
  lease row. Every worker beats once a second; the holder renews the lease for LEASE_TTL_MS, and
  another worker takes it once it has run out, or at once when the holder is a process of the same
  host that no longer exists. The holder gives up its work as soon as it cannot renew in time.
- **Announcements.** A write that makes other workers' caches stale (a revoked grant, a disabled
  department, a changed catalog entry, a new certificate) announces it with NOTIFY in its own
  transaction, so the announcement leaves exactly when the change commits. Each worker listens on
  one asyncpg connection; when that connection is lost, every cache is dropped, since announcements
  may have been missed meanwhile.
- **Telling the holder.** A worker that queued work for the background (an outbox row, a feed to
  pull) tells the holder, which wakes the loop concerned.

On SQLite a node is one process (the home's lock): it holds the background work from its start, and
announcements have no one to reach.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import socket
import time
import weakref
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import sqlalchemy as sa
from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from node.cluster import store

log = logging.getLogger("govnode.cluster")

LEASE = "background"
# The holder renews every BEAT_S; the lease outlives a missed beat or four, and another worker takes
# over within LEASE_TTL_MS + BEAT_S of the holder's death (the bound is 10 s).
BEAT_S = 1.0
LEASE_TTL_MS = 5_000
# The holder stops its background work if it could not renew for this long: before anyone else can
# take the lease (LEASE_TTL_MS after its last renewal).
STEP_DOWN_S = (LEASE_TTL_MS / 1000) - 1.5
# A worker not seen for this long is dead: its audit intents are recovered, its row eventually dropped.
DEAD_AFTER_MS = 3 * LEASE_TTL_MS
FORGET_AFTER_MS = 24 * 3600 * 1000

Handler = Callable[[str], None]  # runs on the event loop: what takes time, it spawns
Hook = Callable[[], Awaitable[None]]

# The worker id of each engine made for a worker, so that a write can say who announced it (a worker
# skips its own announcements) and an audit intent which worker's call it belongs to.
_worker_of: "weakref.WeakKeyDictionary[sa.Engine, str]" = weakref.WeakKeyDictionary()

_NOTIFY = sa.text("SELECT pg_notify('govnode:' || md5(current_schema()), :msg)")
_CHANNEL = sa.text("SELECT 'govnode:' || md5(current_schema())")


def worker_of(engine: sa.Engine) -> str | None:
    """The worker serving through `engine` (None for a command's engine)."""
    return _worker_of.get(engine)


async def announce(conn: AsyncConnection, topic: str, payload: str = "") -> None:
    """Tell the node's other workers, when this transaction commits, that `topic` changed (PostgreSQL;
    nothing to do on SQLite). Works from a command's engine too (`govnode dept revoke`)."""
    if conn.dialect.name == "postgresql":
        await conn.execute(_NOTIFY, {"msg": json.dumps([_worker_of.get(conn.sync_engine, ""), topic, payload])})


def announce_sync(conn: sa.Connection, topic: str, payload: str = "") -> None:
    """`announce` on a plain connection (a journal writer)."""
    if conn.dialect.name == "postgresql":
        conn.execute(_NOTIFY, {"msg": json.dumps([_worker_of.get(conn.engine, ""), topic, payload])})


@asynccontextmanager
async def node_lock(engine: AsyncEngine, name: str) -> AsyncIterator[None]:
    """Hold the node's lock `name` while the body runs, across its workers (PostgreSQL: an advisory lock
    keyed by the schema; nothing on SQLite, whose node is one process). Steps that make something once
    for the whole node (the root's first certificate, the holder key at start-up, a department's licence
    resource) run in one worker at a time, and the next finds it made."""
    if engine.dialect.name != "postgresql":
        yield
        return
    async with engine.connect() as conn:
        key = {"k": f"govnode {name} "}
        await conn.execute(sa.text("SELECT pg_advisory_lock(hashtextextended(:k || current_schema(), 0))"), key)
        await conn.commit()
        try:
            yield
        finally:
            await conn.execute(sa.text("SELECT pg_advisory_unlock(hashtextextended(:k || current_schema(), 0))"), key)
            await conn.commit()


def _place() -> str:
    """The host, and the pid namespace within it: where a pid names one process."""
    try:
        ns = os.readlink("/proc/self/ns/pid")
    except OSError:
        ns = ""
    return f"{socket.gethostname()}#{ns}"[:200]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Cluster:
    def __init__(self, engine: AsyncEngine, node_id: str, schema: str | None = None) -> None:
        self.engine = engine
        self.node_id = node_id
        self.schema = schema
        self.shared = engine.dialect.name == "postgresql"
        self.place = _place()
        self.pid = os.getpid()
        self.worker = f"{socket.gethostname()[:40]}:{self.pid}:{secrets.token_hex(4)}"
        _worker_of[engine.sync_engine] = self.worker
        self.leader = False
        self._leads: list[tuple[Hook, Hook]] = []
        self._handlers: dict[str, list[Handler]] = defaultdict(list)
        self._renewed = 0.0  # when the lease was last renewed (monotonic)
        self._beats: asyncio.Task[None] | None = None
        self._turn = asyncio.Lock()  # taking up and giving up the background work, one at a time
        self._listener: Any = None
        self._channel = ""
        self._closing = False
        self._taking: asyncio.Task[None] | None = None

    # What the services register -----------------------------------------------------------------

    def on_lead(self, start: Hook, stop: Hook) -> None:
        """Run `start` when this worker takes up the background work and `stop` when it gives it up (or
        the node stops); both in the order services registered, `stop` in reverse."""
        self._leads.append((start, stop))

    def on(self, topic: str, handler: Handler) -> None:
        """Call `handler(payload)` when another worker announces or tells `topic`; with payload "" when
        announcements may have been missed (every cache is dropped then)."""
        self._handlers[topic].append(handler)

    async def tell(self, topic: str, payload: str = "") -> None:
        """Tell the worker holding the background work (this one, or another through the database)."""
        if self.leader or not self.shared:
            self._dispatch(topic, payload)
            return
        try:
            async with self.engine.connect() as conn:
                await announce(conn, topic, payload)
                await conn.commit()
        except Exception as exc:  # noqa: BLE001 - the holder's loops also look again on their own
            log.warning("could not tell the background worker about %s: %s", topic, exc)

    # Life cycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        if not self.shared:
            await self._take_up()
            return
        await self._listen()
        if await self._beat():  # the first election now: a lone worker serves with its background work running
            await self._take_up()
        self._beats = asyncio.create_task(self._beat_loop(), name="cluster-beat")

    async def close(self) -> None:
        self._closing = True
        for task in (self._beats, self._taking):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        await self._give_up()
        if self.shared:
            try:
                async with self.engine.begin() as conn:
                    await store.release(conn, LEASE, self.worker)
            except Exception as exc:  # noqa: BLE001 - the lease then runs out by itself
                log.warning("could not release the background lease: %s", exc)
            await self._unlisten()

    # The lease ------------------------------------------------------------------------------------

    async def _beat_loop(self) -> None:
        while True:
            await asyncio.sleep(BEAT_S)
            try:
                if await self._beat() and not self.leader and (self._taking is None or self._taking.done()):
                    # In a task of its own: the beats go on renewing the lease while the work starts.
                    self._taking = asyncio.create_task(self._take_up(), name="cluster-take-up")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the next beat tries again
                log.warning("%s: heartbeat failed: %s", self.worker, exc)
            if self.leader and time.monotonic() - self._renewed > STEP_DOWN_S:
                log.warning("%s: could not renew the background lease; giving up the background work", self.worker)
                await self._give_up()
            if self._listener is None or self._listener.is_closed():
                await self._relisten()

    async def _beat(self) -> bool:
        """Say this worker lives, and take or keep the lease; True when this worker holds it."""
        async with self.engine.begin() as conn:
            await store.beat(conn, self.worker, self.place, self.pid)
            gone = ""
            row = await store.holder(conn, LEASE)
            if row is not None and row.holder != self.worker and row.place == self.place and row.pid \
                    and not _alive(row.pid):
                gone = row.holder  # a process of this host that died: no need to wait for the lease to run out
            won = await store.take(conn, LEASE, self.worker, LEASE_TTL_MS, gone)
            if won and not self.leader:
                await store.forget_dead(conn, FORGET_AFTER_MS)
        if won:
            self._renewed = time.monotonic()
        elif self.leader:
            await self._give_up()
        return won

    async def _take_up(self) -> None:
        async with self._turn:
            if self.leader or self._closing:
                return
            self.leader = True
            log.info("%s: this worker does the node's background work", self.worker)
            for start, _ in self._leads:
                try:
                    await start()
                except Exception:  # noqa: BLE001 - the other services' work still starts
                    log.exception("%s: starting background work failed", self.worker)

    async def _give_up(self) -> None:
        async with self._turn:
            if not self.leader:
                return
            self.leader = False
            for _, stop in reversed(self._leads):
                try:
                    await stop()
                except Exception:  # noqa: BLE001
                    log.exception("%s: stopping background work failed", self.worker)

    async def live_workers(self) -> set[str]:
        """The workers seen lately, less those of this host whose process is gone (this one always in)."""
        if not self.shared:
            return {self.worker}
        async with self.engine.connect() as conn:
            rows = await store.seen(conn, DEAD_AFTER_MS)
        return {r.id for r in rows if r.place != self.place or _alive(r.pid)} | {self.worker}

    # Announcements --------------------------------------------------------------------------------

    async def _listen(self) -> None:
        import asyncpg

        dsn = self.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        conn = await asyncpg.connect(dsn, timeout=10,
                                     server_settings={"search_path": self.schema} if self.schema else None)
        try:
            self._channel = await conn.fetchval(str(_CHANNEL))
            await conn.add_listener(self._channel, self._notified)
        except BaseException:
            await conn.close()
            raise
        self._listener = conn

    async def _relisten(self) -> None:
        await self._unlisten()
        try:
            await self._listen()
        except Exception as exc:  # noqa: BLE001 - the next beat tries again
            log.warning("%s: cannot listen for other workers' changes: %s", self.worker, exc)
            return
        log.info("%s: listening again; every cache is dropped, as changes may have been missed", self.worker)
        for topic in list(self._handlers):
            self._dispatch(topic, "")

    async def _unlisten(self) -> None:
        conn, self._listener = self._listener, None
        if conn is not None:
            try:
                await asyncio.wait_for(conn.close(), 2)
            except Exception:  # noqa: BLE001 - a connection already lost
                conn.terminate()

    def _notified(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        try:
            sender, topic, what = json.loads(payload)
        except (ValueError, TypeError):
            return
        if sender != self.worker:
            self._dispatch(topic, what)

    def _dispatch(self, topic: str, payload: str) -> None:
        for handler in self._handlers.get(topic, ()):
            try:
                handler(payload)
            except Exception:  # noqa: BLE001 - one handler's failure leaves the others
                log.exception("%s: handling %s failed", self.worker, topic)


CLUSTER = web.AppKey("cluster", Cluster)
