"""Data rules: who may push a resource's records, validating a batch all or nothing, writing it in one
transaction with change ids from the `record_change` counter, and the change feed.

A batch is read in two phases so that a large upload never holds the database's write lock while it
arrives over the network, and a refused batch never touches the database:
1. read and validate: rows stream in from the body, each is checked against the entry's items
   (node.data.rows), and good rows are spooled (memory, then a temporary file) in chunks deduplicated by
   key; bad rows are collected as {row, field, error};
2. commit: only if no row was bad, one write transaction reserves the batch's change ids and writes the
   chunks with executemany (INSERT … ON CONFLICT DO UPDATE).
"""

from __future__ import annotations

import asyncio
import json
import logging
import pickle
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from typing import IO, Any

from sqlalchemy.ext.asyncio import AsyncEngine

from node.accounts.service import Account
from node.config import LimitsConfig
from node.data import store
from node.data.formats import Malformed, Rows
from node.data.xlsx import release_memory, xlsx_rows
from node.data.rows import DELETED, RecordSchema
from node.db import next_counter, write_tx
from node.errors import Forbidden, InvalidInput
from node.ids import now_ms

log = logging.getLogger("govnode.data")

CHUNK_ROWS = 5000               # rows a chunk: one executemany each
SPOOL_MEMORY = 32 * 1024 * 1024  # spooled rows stay in memory up to this size, then go to a temporary file

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


class Batch:
    """One pushed or uploaded batch on its way in: validated rows spooled, bad rows listed."""

    def __init__(self, schema: RecordSchema, max_errors: int) -> None:
        self.schema = schema
        self.max_errors = max_errors
        self.spool: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY)
        self.chunk: dict[str, str | None] = {}
        self.received = 0
        self.upserted = 0
        self.deleted = 0
        self.to_write = 0
        self.bad_rows = 0
        self.error_count = 0
        self.errors: list[dict[str, Any]] = []

    # Phase 1 -------------------------------------------------------------------------------------

    def error(self, row: int | None, field: str | None, reason: str) -> None:
        self.error_count += 1
        if len(self.errors) < self.max_errors:
            self.errors.append({"row": row, "field": field, "error": reason})

    def add_rows(self, rows: Rows, lenient: bool) -> None:
        validate = self.schema.validate
        chunk = self.chunk
        for row, obj in rows:
            self.received += 1
            if isinstance(obj, Malformed):
                self.bad_rows += 1
                self.error(row, None, obj.reason)
                continue
            errs: list[tuple[str | None, str]] = []
            res = validate(obj, lenient, errs)
            if res is None:
                self.bad_rows += 1
                for field, reason in errs:
                    self.error(row, field, reason)
                continue
            if self.error_count:
                continue  # the batch is refused already; keep checking, stop keeping
            key, data = res
            if data is None:
                self.deleted += 1
                chunk[key] = None
            else:
                self.upserted += 1
                chunk[key] = _dumps(data)
            if len(chunk) >= CHUNK_ROWS:
                self._flush()
                chunk = self.chunk

    def _flush(self) -> None:
        if self.chunk:
            pickle.dump(list(self.chunk.items()), self.spool, protocol=pickle.HIGHEST_PROTOCOL)
            self.to_write += len(self.chunk)
            self.chunk = {}

    def refusal(self) -> InvalidInput | None:
        if not self.error_count:
            return None
        details = list(self.errors)
        more = self.error_count - len(details)
        msg = f"{self.bad_rows} of {self.received} rows are invalid; nothing was stored"
        if more > 0:
            details.append({"row": None, "field": None, "error": f"{more} more errors not listed"})
            msg += f" ({self.error_count} errors, the first {len(self.errors)} listed)"
        return InvalidInput(msg, details)

    # Phase 2 -------------------------------------------------------------------------------------

    def chunks(self) -> Iterator[list[tuple[str, str | None]]]:
        self._flush()
        self.spool.seek(0)
        while True:
            try:
                yield pickle.load(self.spool)  # noqa: S301 - our own spool, written just above
            except EOFError:
                return

    def close(self) -> None:
        self.spool.close()


class Table:
    """Maps spreadsheet rows (a header, then cells) to records: columns by item `name` or `field`."""

    def __init__(self, schema: RecordSchema, batch: Batch) -> None:
        self.schema = schema
        self.batch = batch
        self.columns: list[str | None] | None = None

    def header(self, row: int, cells: list[Any]) -> None:
        columns: list[str | None] = []
        seen: dict[str, str] = {}
        problems = []
        for cell in cells:
            label = "" if cell is None else str(cell).strip().lstrip("\ufeff")
            if not label:
                columns.append(None)
                continue
            if label == DELETED:
                field = DELETED
            else:
                rule = self.schema.by_label.get(label)
                if rule is None:
                    problems.append({"row": row, "field": label,
                                     "error": "unknown column: not the name or field of an item of this resource"})
                    columns.append(None)
                    continue
                field = rule.field
            if field in seen:
                problems.append({"row": row, "field": label, "error": f"the same item as column {seen[field]!r}"})
            seen[field] = label
            columns.append(field)
        if not problems and self.schema.key.field not in seen:
            problems.append({"row": row, "field": self.schema.key.field,
                             "error": f"no column for the key item ({self.schema.key.name} / {self.schema.key.field})"})
        if problems:
            raise InvalidInput("the header row does not match the resource's items; nothing was stored", problems)
        self.columns = columns

    def add(self, rows: Rows) -> None:
        out: Rows = []
        for row, cells in rows:
            if isinstance(cells, Malformed):
                out.append((row, cells))
                continue
            if self.columns is None:
                self.header(row, cells)
                continue
            columns = self.columns
            obj: dict[str, Any] = {}
            stray = False
            for i, cell in enumerate(cells):
                if cell is None or cell == "":
                    continue
                field = columns[i] if i < len(columns) else None
                if field is None:
                    stray = True
                    continue
                obj[field] = cell
            if stray:
                out.append((row, Malformed("a value in a column without a header")))
                continue
            out.append((row, obj))
        self.batch.add_rows(out, lenient=True)

    def finish(self) -> None:
        if self.columns is None:
            raise InvalidInput("the file is empty: a header row naming the items is required")


class DataService:
    def __init__(self, engine: AsyncEngine, node_id: str, limits: LimitsConfig) -> None:
        self.engine = engine
        self.node_id = node_id
        self.limits = limits
        self._schemas: dict[tuple[str, str, int], RecordSchema] = {}
        self._counts: dict[str, tuple[int, int]] = {}  # code -> (last change id, live records then)
        self._reader = store.SqliteReader.for_engine(engine) or store.PgReader.for_engine(engine)
        # Called with a resource code after its records changed (subscriptions wake their waiting feeds).
        self.listeners: list[Callable[[str], None]] = []
        # The change feed for departments that are neither the provider nor an operator (set by subscriptions:
        # a grant that includes `subscribe`): (account, entry, since, limit) → the page.
        self.subscriber_feed: Callable[..., Awaitable[dict[str, Any]]] | None = None

    def changed(self, code: str) -> None:
        """Tell the listeners that records of `code` were committed."""
        for listener in self.listeners:
            try:
                listener(code)
            except Exception:  # noqa: BLE001 - a listener never fails a write that is already committed
                log.exception("record listener failed")

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()

    def schema(self, entry: dict[str, Any]) -> RecordSchema:
        """The compiled rules of an entry (cached per entry version)."""
        k = (entry["code"], entry["node"], entry["seq"])
        s = self._schemas.get(k)
        if s is None:
            if len(self._schemas) > 10_000:
                self._schemas.clear()
            s = self._schemas[k] = RecordSchema(entry)
        return s

    # Who may do what -------------------------------------------------------------------------------

    def check_provider(self, acct: Account, entry: dict[str, Any]) -> None:
        """Only the providing department, at the entry's own node, pushes records."""
        if entry["node"] != self.node_id:
            raise Forbidden(f"{entry['code']} is held at node {entry['node']}; its records are pushed there")
        if acct.node != self.node_id or acct.dept != entry["provider"]["dept"]:
            raise Forbidden(f"only the providing department {entry['provider']['dept']} pushes records of "
                            f"{entry['code']}")

    def may_read_changes(self, acct: Account, entry: dict[str, Any]) -> bool:
        """Who reads a resource's change feed unfiltered: its provider (at its node) and this node's operators.
        Departments whose grant includes `subscribe` read it through `subscriber_feed` (node.subscriptions)."""
        if acct.role == "operator":
            return True
        return entry["node"] == self.node_id and acct.node == self.node_id and acct.dept == entry["provider"]["dept"]

    # Pushing ---------------------------------------------------------------------------------------

    def new_batch(self, entry: dict[str, Any]) -> Batch:
        return Batch(self.schema(entry), self.limits.max_batch_errors)

    async def read_objects(self, batch: Batch, rows: AsyncIterator[Rows]) -> None:
        """Phase 1 for JSON and NDJSON bodies (strict JSON types)."""
        async for chunk in rows:
            batch.add_rows(chunk, lenient=False)

    async def read_table(self, batch: Batch, rows: AsyncIterator[Rows]) -> None:
        """Phase 1 for CSV (cells are strings, coerced)."""
        table = Table(batch.schema, batch)
        async for chunk in rows:
            table.add(chunk)
        table.finish()

    async def read_xlsx(self, batch: Batch, file: IO[bytes]) -> None:
        """Phase 1 for XLSX: openpyxl reads the spooled file in a worker thread (it is synchronous), within
        `limits.xlsx` (node.data.xlsx)."""

        def work() -> None:
            rows = xlsx_rows(file, self.limits.xlsx)
            try:
                table = Table(batch.schema, batch)
                for chunk in rows:
                    table.add(chunk)
                table.finish()
            finally:
                rows.close()
                release_memory()

        await asyncio.to_thread(work)

    async def commit(self, batch: Batch) -> dict[str, Any]:
        """Phase 2: refuse the batch if any row was bad, else write it all in one transaction."""
        refusal = batch.refusal()
        if refusal is not None:
            raise refusal
        code = batch.schema.code
        last: int | None = None
        chunks = batch.chunks()
        first_chunk = next(chunks, None)
        if first_chunk is not None:
            n = batch.to_write
            at = now_ms()
            async with write_tx(self.engine) as conn:
                last = await next_counter(conn, store.CHANGE_COUNTER, n)
                change = last - n + 1
                for rows in _chain(first_chunk, chunks):
                    await store.upsert_many(conn, code, rows, change, at)
                    change += len(rows)
            self.changed(code)
        return {"resource": code, "received": batch.received, "upserted": batch.upserted,
                "deleted": batch.deleted, "change": last}

    # Reading ---------------------------------------------------------------------------------------

    async def changes(self, code: str, since: int, limit: int) -> dict[str, Any]:
        async with self.engine.connect() as conn:
            rows = await store.changes(conn, code, since, limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        return {
            "changes": [{"key": r.key, "data": r.data, "deleted": r.deleted, "change": r.change_id} for r in rows],
            "next": rows[-1].change_id if rows else since,
            "more": more,
        }

    async def record(self, code: str, key: str) -> dict[str, Any] | None:
        """A live record's data by key, or None."""
        if self._reader is not None:
            return await self._reader.get(code, key)
        async with self.engine.connect() as conn:
            return await store.get(conn, code, key)

    async def summaries(self, codes: list[str]) -> dict[str, dict[str, Any]]:
        """Each resource's live records and when its records last changed (epoch ms; None before the first).

        Counting reads every record of a resource (about 55 ms per 250,000 on SQLite), so a count is kept
        with the change id it was made at and made again only once the resource has a newer write; the last
        write is read first, so a write landing during the count only makes the next view count again."""
        out: dict[str, dict[str, Any]] = {}
        async with self.engine.connect() as conn:
            for code in codes:
                last = await store.last_write(conn, code)
                if last is None:
                    out[code] = {"records": 0, "updated_at": None}
                    continue
                kept = self._counts.get(code)
                if kept is None or kept[0] != last[0]:
                    if len(self._counts) > 10_000:
                        self._counts.clear()
                    kept = self._counts[code] = (last[0], await store.count(conn, code))
                out[code] = {"records": kept[1], "updated_at": last[1]}
        return out

    async def find(self, code: str, where: dict[str, Any], limit: int) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            return await store.find(conn, code, where, limit)

    async def compare(self, code: str, fields: list[str], submitted: list[list[Any]]) -> list[tuple[Any, ...]]:
        if self._reader is not None:
            return await self._reader.compare(code, fields, submitted)
        async with self.engine.connect() as conn:
            return await store.compare(conn, code, fields, submitted)


def _chain(first: Any, rest: Iterable[Any]) -> Iterator[Any]:
    yield first
    yield from rest
