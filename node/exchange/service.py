"""Table exchange (前置机库表交换, SPEC §12): a resource bound to a table of its providing department's own
database.

The life of a binding:
1. bind: the providing department names the URL, table, key and updated columns and the item ↔ column map;
   the node checks the driver and (if the source answers) the table and columns, and seals the URL;
2. initial load: the whole table in key order (keyset pagination: `key > last key read`), in batches; before the
   first batch the node notes the row count (for progress) and the updated column's high-water mark, from which
   the increments start, so rows changed while the load runs are pulled afterwards. Each batch and the progress
   that records it commit together: a restart resumes after the last committed batch;
3. increments, every `interval_s` (APScheduler): rows with `(updated, key)` past the last pair pulled, ordered by
   both, so rows sharing a timestamp across a batch boundary are neither lost nor repeated. A row equal to the
   stored record writes nothing (no empty changes in the change feed);
4. deletions: a row whose `delete_column` is set (or equals `delete_value`) becomes a tombstone; with
   `reconcile_interval_s`, every live record whose key the source no longer holds is deleted (a source that
   returns no keys at all deletes nothing: that is reported as an error instead);
5. failures (source down, credentials refused, table or columns changed): the attempt stops before writing
   anything of the failing batch, the state and /metrics say why, and the next attempt waits with exponential
   back-off (from min(interval, 30 s) up to 10 minutes). What was loaded stays as it was.

Rows that break the resource's item rules are skipped and counted (`rejected`, with the latest few listed by
masked key, field and reason); they are read again when their row next changes. The source is the resource's
one authoritative source (一数一源): only one binding per resource.
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from node.accounts.service import Account
from node.catalog.service import CatalogService
from node.data import store as data_store
from node.data.rows import RecordSchema, RowError
from node.data.service import DataService
from node.cluster import announce
from node.db import next_counter, write_tx
from node.errors import ApiError, Conflict, Forbidden, InvalidInput, NotFound
from node.exchange import store
from node.exchange.models import SourceCreate
from node.exchange.sealing import SealError, Sealer
from node.exchange.convert import BadRow, compile_rows
from node.exchange.source import Layout, SourceDB, SourceProblem, decode_value, encode_value, parse_url
from node.ids import new_id, now_ms
from node.ops.metrics import Metrics
from node.sharing.masking import masker
from node.workdays import cst_iso
from node.schedule import PeriodicJobs
from node.supervisor import Supervisor

log = logging.getLogger("govnode.exchange")

TICK_S = 0.25  # how often due sources are looked for (the schedule is each source's interval_s)
CHECK_TIMEOUT_S = 15
MAX_BACKOFF_S = 600
MAX_REJECTS_SHOWN = 20
_FALSE_FLAGS = frozenset({"", "0", "n", "no", "f", "false", "否", "off"})


def backoff_s(interval_s: int, failures: int) -> float:
    base = max(1.0, min(float(interval_s), 30.0))
    return min(base * 2 ** max(failures - 1, 0), MAX_BACKOFF_S)


def _iso(ms: int | None) -> str | None:
    return cst_iso(ms) if ms else None


class Source:
    """One binding at run time: its rules, its state (as stored), its database."""

    def __init__(self, row: Any, db: SourceDB | None, problem: SourceProblem | None = None) -> None:
        self.id: str = row.id
        self.resource: str = row.resource
        self.dept: str = row.dept
        self.url_shown: str = row.url_shown
        self.spec: dict[str, Any] = json.loads(row.spec)
        self.state: dict[str, Any] = json.loads(row.state)
        self.db = db
        self.problem = problem  # why the source cannot even be opened (e.g. the sealed URL)
        self.layout = Layout.of(self.spec)
        self.lock = asyncio.Lock()
        self._converter: tuple[RecordSchema, Any] | None = None

    def converter(self, schema: RecordSchema) -> Any:
        """(row → (key, data), key value → key text) for the entry's current rules."""
        if self._converter is None or self._converter[0] is not schema:
            self._converter = (schema, compile_rows(schema, self.layout.fields, self.layout.key))
        return self._converter[1]

    def due(self, now: int) -> bool:
        return now >= int(self.state.get("next_attempt_at") or 0)


def new_state(now: int) -> dict[str, Any]:
    return {"phase": "initial", "load": None, "cursor": None, "upserted": 0, "deleted": 0, "rejected": 0,
            "rejects": [], "last_run_at": None, "last_success_at": None, "last_reconcile_at": None,
            "last_error": None, "failures": 0, "next_attempt_at": now}


class ExchangeService:
    def __init__(self, engine: AsyncEngine, node_id: str, catalog: CatalogService, data: DataService, sealer: Sealer,
                 metrics: Metrics) -> None:
        self.engine = engine
        self.node_id = node_id
        self.catalog = catalog
        self.data = data
        self.sealer = sealer
        self.sources: dict[str, Source] = {}
        self.tasks = Supervisor(node_id, log)  # the tick, and one run a source, by its id
        self._jobs: PeriodicJobs | None = None
        self._closing = False
        self.cluster: Any = None  # node.cluster: the sources are read by the worker doing the background work
        self._m_up = metrics.gauge("govnode_exchange_source_up",
                                   "1 when the last attempt to read the table source succeeded, else 0",
                                   ("resource", "source"))
        self._m_rows = metrics.counter("govnode_exchange_rows_total",
                                       "rows written from table sources (upserted, deleted) or rejected",
                                       ("resource", "source", "kind"))
        self._m_errors = metrics.counter("govnode_exchange_errors_total",
                                         "failed attempts to read a table source, by kind", ("resource", "source", "kind"))
        self._m_success = metrics.gauge("govnode_exchange_last_success_timestamp_seconds",
                                        "when a table source was last read successfully", ("resource", "source"))
        self._m_progress = metrics.gauge("govnode_exchange_initial_load_ratio",
                                         "share of the source table loaded by the initial load (1 when done)",
                                         ("resource", "source"))

    # Life cycle -------------------------------------------------------------------------------------

    async def start(self) -> None:
        await self._load()
        if self.cluster is None:  # no workers to share with: this process reads the sources
            await self.take_up()

    async def _load(self) -> None:
        """The sources as stored: new ones opened, unbound ones closed, the state of the others read again."""
        async with self.engine.connect() as conn:
            rows = await store.all_sources(conn)
        stored = {row.id: row for row in rows}
        for source_id in [i for i in self.sources if i not in stored]:
            src = self.sources.pop(source_id)
            await self.tasks.cancel(source_id)
            if src.db is not None:
                await src.db.close()
        for row in rows:
            held = self.sources.get(row.id)
            if held is None:
                self.sources[row.id] = self._open(row)
            elif self.tasks.running(row.id) is None:
                held.state = json.loads(row.state)

    async def take_up(self) -> None:
        """Reading the sources is background work: one worker of the node does it (node.cluster), from the
        state the last one stored."""
        await self._load()
        self._jobs = self.tasks.every((self.tick, TICK_S, "exchange"))
        self._tick_while_bound()

    async def give_up(self) -> None:
        self._jobs = None
        await self.tasks.close()  # the runs under way stop; their state was stored as they went

    def _runs_here(self) -> bool:
        return self.cluster is None or self.cluster.leader

    def told(self, payload: str = "") -> None:
        """Another worker bound or unbound a source ("<id>"), or asks for a sync now ("sync <id>")
        (node.cluster): read the sources again."""
        self.tasks.spawn(self._load_and_tick(payload.removeprefix("sync ") if payload.startswith("sync ") else None))

    async def _load_and_tick(self, sync: str | None) -> None:
        await self._load()
        if self._runs_here():
            self._tick_while_bound()
            if sync is not None and sync in self.sources:
                self._sync(self.sources[sync])

    def _tick_while_bound(self) -> None:
        """The tick looks for due sources, so it runs only while one is bound: at four wake-ups a second it
        was most of an idle node's CPU time (~3 ms a second), and most nodes bind no table source."""
        if self._jobs is None:
            return
        if self.sources:
            self._jobs.resume("exchange")
        else:
            self._jobs.pause("exchange")

    def next_tick(self) -> datetime | None:
        """When the tick next looks for due sources; None while no source is bound."""
        return self._jobs.next_run("exchange") if self._jobs is not None else None

    async def close(self) -> None:
        self._closing = True
        await self.tasks.close()
        for s in self.sources.values():
            if s.db is not None:
                await s.db.close()

    def _open(self, row: Any) -> Source:
        try:
            db = SourceDB(parse_url(self.sealer.open(row.url_sealed)))
        except SealError as exc:
            return Source(row, None, SourceProblem("credentials", f"{exc}; bind the source again"))
        except ApiError as exc:
            return Source(row, None, SourceProblem("source", exc.message))
        return Source(row, db)

    async def tick(self) -> None:
        """Start every source that is due and not already running."""
        now = now_ms()
        for src in list(self.sources.values()):
            if not self._running(src) and src.due(now) and not self._closing:
                self._start(src)

    def _start(self, src: Source) -> None:
        if self._runs_here():
            self.tasks.spawn(self._run(src), key=src.id)

    def _running(self, src: Source) -> bool:
        return self.tasks.running(src.id) is not None

    # The department API -----------------------------------------------------------------------------

    async def _own_entry(self, acct: Account, code: str, mode: str) -> dict[str, Any]:
        """The entry of a resource held here, if the caller may `bind` (its providing department), `manage`
        (that department or an operator) or `view` (also an auditor) its sources."""
        entry = await self.catalog.get(code)
        if entry["node"] != self.node_id:
            raise Forbidden(f"{code} is held at node {entry['node']}; its sources are bound there")
        provider = acct.node == self.node_id and acct.role == "dept" and acct.dept == entry["provider"]["dept"]
        if provider:
            return entry
        if mode == "bind":
            raise Forbidden(f"only the providing department {entry['provider']['dept']} binds sources of {code}")
        if acct.role == "operator" or (mode == "view" and acct.role == "auditor"):
            return entry
        raise Forbidden(f"the sources of {code} are managed by its providing department and this node's operators")

    async def bind(self, acct: Account, code: str, body: SourceCreate) -> dict[str, Any]:
        entry = await self._own_entry(acct, code, "bind")
        schema = self.data.schema(entry)
        columns = dict(body.columns)
        bad = [{"field": f"columns.{f}", "error": "not an item of this resource"} for f in columns
               if f not in schema.by_field]
        key_field = schema.key.field
        if columns.get(key_field, body.key_column) != body.key_column:
            bad.append({"field": f"columns.{key_field}", "error": f"the key item is read from key_column "
                                                                  f"{body.key_column}"})
        if bad:
            raise InvalidInput(f"{len(bad)} problem(s) in the column map", bad)
        columns[key_field] = body.key_column
        url = parse_url(body.url)
        spec = {"table": body.table, "key_column": body.key_column, "updated_column": body.updated_column,
                "columns": columns, "interval_s": body.interval_s, "delete_column": body.delete_column,
                "delete_value": body.delete_value, "reconcile_interval_s": body.reconcile_interval_s,
                "batch_size": body.batch_size}
        self._not_bound(code)
        db = SourceDB(url)
        layout = Layout.of(spec)
        try:
            await db.run(layout.check, timeout_s=CHECK_TIMEOUT_S)
        except SourceProblem as exc:
            if exc.kind == "schema":
                await db.close()
                raise InvalidInput(exc.message, exc.details or [{"field": "table", "error": exc.message}]) from None
            reachable = exc  # bound anyway: a 前置机 may be down for a while; the state says so
        else:
            reachable = None
        try:
            self._not_bound(code)  # again: another binding may have been made while the source was asked
        except Conflict:
            await db.close()
            raise
        now = now_ms()
        row = {"id": new_id(), "resource": code, "dept": entry["provider"]["dept"],
               "url_sealed": self.sealer.seal(body.url), "url_shown": db.shown, "spec": spec,
               "state": new_state(now), "created_at": now, "updated_at": now}
        async with write_tx(self.engine) as conn:
            await store.insert(conn, row)
            stored = await store.get(conn, row["id"])
            await announce(conn, "exchange", row["id"])
        src = Source(stored, db)
        if reachable is not None:
            self._failed(src, reachable, now)
            async with write_tx(self.engine) as conn:
                await store.save_state(conn, src.id, src.state, now)
        self.sources[src.id] = src
        self._tick_while_bound()
        log.info("resource %s bound to %s table %s (source %s)", code, db.shown, body.table, src.id)
        if reachable is None:
            self._start(src)
        return self.view(src, schema)

    def _not_bound(self, code: str) -> None:
        held = next((s.id for s in self.sources.values() if s.resource == code), None)
        if held is not None:
            raise Conflict(f"{code} is already bound to source {held} (一数一源: one source a resource); unbind it "
                           "first", {"source": held})

    async def list_sources(self, acct: Account, code: str) -> list[dict[str, Any]]:
        entry = await self._own_entry(acct, code, "view")
        schema = self.data.schema(entry)
        return [self.view(s, schema) for s in self.sources.values() if s.resource == code]

    async def list_all(self, acct: Account) -> list[dict[str, Any]]:
        """Every source of this node (operators and auditors): read from the database, where the worker that
        reads the sources keeps their progress, so any worker shows it as stored."""
        if acct.node != self.node_id or acct.role not in ("operator", "auditor"):
            raise Forbidden("the sources of every resource are shown to this node's operators and auditors")
        async with self.engine.connect() as conn:
            rows = await store.all_sources(conn)
        return [self.view(Source(row, None)) for row in rows]

    def _source_of(self, code: str, source_id: str) -> Source:
        src = self.sources.get(source_id)
        if src is None or src.resource != code:
            raise NotFound(f"no source {source_id} bound to {code}")
        return src

    async def unbind(self, acct: Account, code: str, source_id: str) -> dict[str, Any]:
        await self._own_entry(acct, code, "manage")
        src = self._source_of(code, source_id)
        await self.tasks.cancel(src.id)
        async with write_tx(self.engine) as conn:
            await store.delete(conn, source_id)
            await announce(conn, "exchange", source_id)
        self.sources.pop(source_id, None)
        self._tick_while_bound()
        if src.db is not None:
            await src.db.close()
        log.info("source %s of %s unbound", source_id, code)
        return {"id": source_id, "resource": code, "removed": True}

    async def sync_now(self, acct: Account, code: str, source_id: str) -> dict[str, Any]:
        entry = await self._own_entry(acct, code, "manage")
        src = self._source_of(code, source_id)
        if self._runs_here():
            self._sync(src)
        else:
            await self.cluster.tell("exchange", f"sync {source_id}")
        return self.view(src, self.data.schema(entry))

    def _sync(self, src: Source) -> None:
        src.state["next_attempt_at"] = now_ms()
        if not self._running(src):
            self._start(src)

    # Running ----------------------------------------------------------------------------------------

    async def _run(self, src: Source) -> None:
        async with src.lock:
            started = now_ms()
            try:
                if src.problem is not None:
                    raise src.problem
                assert src.db is not None
                entry = await self.catalog.get(src.resource)
                schema = self.data.schema(entry)
                await src.db.run(src.layout.check, timeout_s=CHECK_TIMEOUT_S)
                if src.state["phase"] == "initial":
                    await self._initial(src, schema)
                await self._incremental(src, schema)
                every = src.spec.get("reconcile_interval_s")
                if every and started - int(src.state.get("last_reconcile_at") or 0) >= every * 1000:
                    await self._reconcile(src, schema)
            except asyncio.CancelledError:
                raise
            except NotFound:
                self._failed(src, SourceProblem("source", f"{src.resource} is no longer in the catalog"), now_ms())
            except SourceProblem as exc:
                self._failed(src, exc, now_ms())
            except Exception as exc:  # noqa: BLE001 - reported in the state; never a crash of the scheduler
                log.exception("source %s (%s) failed unexpectedly", src.id, src.url_shown)
                self._failed(src, SourceProblem("internal", f"internal error: {type(exc).__name__}"), now_ms())
            else:
                now = now_ms()
                st = src.state
                st.update(last_run_at=now, last_success_at=now, last_error=None, failures=0,
                          next_attempt_at=started + int(src.spec["interval_s"]) * 1000)
                self._m_up.labels(src.resource, src.id).set(1)
                self._m_success.labels(src.resource, src.id).set(now / 1000)
            try:
                async with write_tx(self.engine) as conn:
                    await store.save_state(conn, src.id, src.state, now_ms())
            except Exception:  # noqa: BLE001 - the in-memory state still drives the schedule
                log.exception("could not save the state of source %s", src.id)

    def _failed(self, src: Source, exc: SourceProblem, now: int) -> None:
        st = src.state
        st["failures"] = int(st.get("failures") or 0) + 1
        st["last_run_at"] = now
        st["last_error"] = {"at": now, "kind": exc.kind, "message": exc.message}
        delay = backoff_s(int(src.spec["interval_s"]), st["failures"])
        st["next_attempt_at"] = now + int(delay * 1000)
        self._m_up.labels(src.resource, src.id).set(0)
        self._m_errors.labels(src.resource, src.id, exc.kind).inc()
        log.warning("source %s of %s (%s): %s (%s); attempt %d failed, next in %.0f s", src.id, src.resource,
                    src.url_shown, exc.message, exc.kind, st["failures"], delay)

    def _rows(self, src: Source, schema: RecordSchema, rows: list[tuple], existing: dict[str, Any] | None,
              fresh: bool) -> list[tuple[str, dict[str, Any] | None]]:
        """Source rows → (key, record or None) to write; rejects counted, unchanged rows left out."""
        layout = src.layout
        convert, key_of = src.converter(schema)
        delete = layout.delete
        delete_value = src.spec.get("delete_value")
        out: dict[str, dict[str, Any] | None] = {}
        st = src.state
        rejected = 0
        for row in rows:
            if delete is not None and row[delete] is not None and _flagged(row[delete], delete_value):
                try:
                    key = key_of(row[layout.key])
                except RowError as exc:
                    self._reject(src, schema, None, schema.key.field, str(exc))
                    continue
                if fresh or existing is None or existing.get(key) is None:
                    out.pop(key, None)
                    continue  # nothing held under that key: nothing to delete
                out[key] = None
                continue
            try:
                key, data = convert(row)
            except BadRow as exc:
                rejected += 1
                self._reject(src, schema, row[layout.key], exc.field, exc.reason)
                continue
            if existing is not None and key in existing and existing[key] == data:
                out.pop(key, None)
                continue
            out[key] = data
        if rejected:
            st["rejected"] += rejected
            self._m_rows.labels(src.resource, src.id, "rejected").inc(rejected)
        rejects = st["rejects"]
        if len(rejects) > MAX_REJECTS_SHOWN:
            del rejects[:-MAX_REJECTS_SHOWN]
        return list(out.items())

    def _reject(self, src: Source, schema: RecordSchema, key: Any, field: str | None, reason: str) -> None:
        shown = None
        if key is not None:
            shown = str(key)
            if schema.key.sensitive:
                shown = masker(schema.key.type, schema.key.check)(shown)
        src.state["rejects"].append({"at": _iso(now_ms()), "key": shown, "field": field, "error": reason})

    async def _write(self, src: Source, writes: list[tuple[str, dict[str, Any] | None]],
                     progress: dict[str, Any]) -> None:
        """One batch of records and the state that records it, in one transaction."""
        st = src.state
        upserts = sum(1 for _, d in writes if d is not None)
        deletes = len(writes) - upserts
        new_state = {**st, **progress, "upserted": st["upserted"] + upserts, "deleted": st["deleted"] + deletes}
        now = now_ms()
        async with write_tx(self.engine) as conn:
            if writes:
                last = await next_counter(conn, data_store.CHANGE_COUNTER, len(writes))
                await store.write_records(conn, src.resource, writes, last - len(writes) + 1, now)
            await store.save_state(conn, src.id, new_state, now)
        # Only what this write changed: the next batch's rejects may have been counted meanwhile.
        st.update(progress)
        st["upserted"] += upserts
        st["deleted"] += deletes
        if upserts:
            self._m_rows.labels(src.resource, src.id, "upserted").inc(upserts)
        if deletes:
            self._m_rows.labels(src.resource, src.id, "deleted").inc(deletes)
        if writes:
            self.data.changed(src.resource)

    async def _initial(self, src: Source, schema: RecordSchema) -> None:
        st = src.state
        layout = src.layout
        db = src.db
        assert db is not None
        n = int(src.spec["batch_size"])
        if st.get("load") is None:
            total, high = await db.run(layout.count_and_high_water)
            async with self.engine.connect() as conn:
                fresh = not await store.has_records(conn, src.resource)
            load = {"after": None, "loaded": 0, "total": total, "started_at": now_ms(), "finished_at": None,
                    "fresh": fresh, "seconds": None}
            await self._write(src, [], {"load": load, "cursor": None if high is None else [encode_value(high), None]})
            self._m_progress.labels(src.resource, src.id).set(0)
        load = dict(st["load"])
        fresh = bool(load["fresh"])

        def fetch(after: Any) -> asyncio.Future:
            return asyncio.ensure_future(db.run(lambda c: layout.after_key(c, after, n)))

        # A pipeline: the next batch is read from the source and the previous one written to the node while this
        # one is checked (the reads and writes run in the drivers' threads). Writes stay in order, one at a time.
        pending: asyncio.Future | None = fetch(decode_value(load["after"]))
        writing: asyncio.Future | None = None
        try:
            while pending is not None:
                rows = await pending
                pending = fetch(rows[-1][layout.key]) if len(rows) == n else None
                if not rows:
                    break
                existing = None
                if not fresh:
                    keys = self._keys_of(src, schema, rows)
                    async with self.engine.connect() as conn:
                        existing = await store.current(conn, src.resource, keys)
                writes = self._rows(src, schema, rows, existing, fresh)
                load["after"] = encode_value(rows[-1][layout.key])
                load["loaded"] += len(rows)
                if writing is not None:
                    await writing
                writing = asyncio.ensure_future(self._write(src, writes, {"load": dict(load)}))
                if load["total"]:
                    self._m_progress.labels(src.resource, src.id).set(min(1.0, load["loaded"] / load["total"]))
            if writing is not None:
                await writing
        finally:
            for fut in (pending, writing):
                if fut is not None and not fut.done():
                    fut.cancel()
        load["finished_at"] = now_ms()
        load["seconds"] = round((load["finished_at"] - load["started_at"]) / 1000, 3)
        await self._write(src, [], {"load": load, "phase": "incremental"})
        self._m_progress.labels(src.resource, src.id).set(1)
        log.info("source %s: initial load of %s done, %d rows", src.id, src.resource, load["loaded"])

    def _keys_of(self, src: Source, schema: RecordSchema, rows: list[tuple]) -> list[str]:
        key_of = src.converter(schema)[1]
        out = []
        for r in rows:
            try:
                out.append(key_of(r[src.layout.key]))
            except RowError:
                continue
        return out

    async def _incremental(self, src: Source, schema: RecordSchema) -> None:
        layout = src.layout
        db = src.db
        assert db is not None
        n = int(src.spec["batch_size"])
        while True:
            raw = src.state.get("cursor")
            cursor = None if raw is None else (decode_value(raw[0]), decode_value(raw[1]))
            rows = await db.run(lambda c, cur=cursor: layout.after_update(c, cur, n))
            if not rows:
                return
            async with self.engine.connect() as conn:
                existing = await store.current(conn, src.resource, self._keys_of(src, schema, rows))
            writes = self._rows(src, schema, rows, existing, False)
            last = rows[-1]
            await self._write(src, writes, {"cursor": [encode_value(last[layout.updated]), encode_value(last[layout.key])]})
            if len(rows) < n:
                return

    async def _reconcile(self, src: Source, schema: RecordSchema) -> None:
        layout = src.layout
        db = src.db
        assert db is not None
        pairs = await db.run(layout.all_keys)
        key_of = src.converter(schema)[1]
        delete_value = src.spec.get("delete_value")
        keys: set[str] = set()
        for k, flag in pairs:
            if layout.delete is not None and _flagged(flag, delete_value):
                continue
            try:
                keys.add(key_of(k))
            except RowError:
                continue
        after: str | None = None
        missing: list[str] = []
        held = 0
        while True:
            async with self.engine.connect() as conn:
                batch = await store.live_keys(conn, src.resource, after, 5000)
            if not batch:
                break
            held += len(batch)
            missing += [k for k in batch if k not in keys]
            after = batch[-1]
        if not keys and held:
            raise SourceProblem("source", f"reconciliation: the source table returned no keys while {held} records "
                                          "are held; nothing was deleted")
        for i in range(0, len(missing), 5000):
            await self._write(src, [(k, None) for k in missing[i:i + 5000]], {})
        src.state["last_reconcile_at"] = now_ms()
        if missing:
            log.info("source %s: reconciliation deleted %d records of %s", src.id, len(missing), src.resource)

    # Views ------------------------------------------------------------------------------------------

    def view(self, src: Source, schema: RecordSchema | None = None) -> dict[str, Any]:
        st = src.state
        load = st.get("load") or {}
        total = load.get("total")
        loaded = int(load.get("loaded") or 0)
        phase = st["phase"]
        if st.get("last_error"):
            state = "error"
        elif phase == "initial":
            state = "loading"
        else:
            state = "ready"
        err = st.get("last_error")
        seconds = load.get("seconds")
        spec = src.spec
        return {
            "id": src.id, "resource": src.resource, "dept": src.dept, "url": src.url_shown, "table": spec["table"],
            "key_column": spec["key_column"], "updated_column": spec["updated_column"], "columns": spec["columns"],
            "interval_s": spec["interval_s"], "delete_column": spec.get("delete_column"),
            "delete_value": spec.get("delete_value"), "reconcile_interval_s": spec.get("reconcile_interval_s"),
            "batch_size": spec["batch_size"], "state": state,
            "progress": {
                "phase": phase, "loaded": loaded, "total": total,
                "percent": (100.0 if phase == "incremental" else round(min(100.0, 100.0 * loaded / total), 1))
                if total else (100.0 if phase == "incremental" else None),
                "started_at": _iso(load.get("started_at")), "finished_at": _iso(load.get("finished_at")),
                "rows_per_s": round(loaded / seconds, 1) if seconds else None,
            },
            "rows": {"upserted": st["upserted"], "deleted": st["deleted"], "rejected": st["rejected"]},
            "rejects": list(st.get("rejects") or [])[-MAX_REJECTS_SHOWN:],
            "last_sync": _iso(st.get("last_run_at")), "last_success": _iso(st.get("last_success_at")),
            "last_reconcile": _iso(st.get("last_reconcile_at")),
            "last_error": None if not err else {"at": _iso(err["at"]), "kind": err["kind"], "message": err["message"]},
            "failures": int(st.get("failures") or 0),
            "next_attempt": _iso(st.get("next_attempt_at")),
        }


def _flagged(value: Any, delete_value: Any) -> bool:
    if value is None:
        return False
    if delete_value is not None:
        return str(value) == str(delete_value)
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return value != 0
    return str(value).strip().lower() not in _FALSE_FLAGS
