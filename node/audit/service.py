"""Audit: every API call recorded durably before its answer, in an append-only hash chain.

Records are group-committed: callers wait on a future that resolves once the batch holding their
record is committed, so durability costs one commit per batch, not per call.

A call that writes (`Call`) also leaves an audit intent in each of its write transactions, committed
with the write itself; its chained record replaces the intents in one journal commit. So a write and
its trail commit together or not at all (全过程留痕), while the chain's one writer, the journal, stays
out of the data's transactions: on PostgreSQL the chain's counter row is locked by every append, and a
long record push holding it would stall every other call's record.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from node.audit import store
from node.figures import store as figures_store
from node.cluster import worker_of
from node.db import database_unavailable, next_counter_sync, probe_timeout, read_counter
from node.errors import ApiError, Conflict, InvalidInput, NotFound
from node.groupcommit import GroupCommitter
from node.ids import new_id, now_ms
from node.schedule import PeriodicJobs

log = logging.getLogger("govnode.audit")


GENESIS = "0" * 64
COUNTER = "audit"
# The counter of a segment's records (PostgreSQL): `audit:<segment>`.
SEGMENT_COUNTER = "audit:"


def record_hash(prev_hash: str, row: dict[str, Any]) -> str:
    values = [row.get(f) for f in store.HASHED_FIELDS]
    values += [row[f] for f in store.HASHED_IF_SET if row.get(f) is not None]
    body = json.dumps(values, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256((prev_hash + body).encode("utf-8")).hexdigest()


def link_break(before: str, row: dict[str, Any]) -> str | None:
    """Why `row` does not follow the record whose hash is `before`, or None if it does: the one check of a
    link, made by the full walk (`AuditLog.verify`, for `govnode audit verify` and the portal) and by the
    alerts' walk of the records added since their last check (node.figures)."""
    if row["prev_hash"] != before:
        return "its link to the previous record does not match"
    if record_hash(before, row) != row["hash"]:
        return "its contents do not match its hash (altered)"
    return None


def keys_digest(keys: list[Any] | None) -> str | None:
    """A digest of the record keys a call touched: proves what was asked without storing it."""
    if not keys:
        return None
    h = hashlib.sha256()
    for k in sorted(str(k) for k in keys):
        h.update(k.encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


@dataclass
class ChainBreak:
    seq: int
    reason: str


# An intent older than this with no record belongs to a call that will never write one (its process
# stopped, or its journal commit failed). A call's record follows its last write within milliseconds; a
# minute leaves room for a journal stalled by a slow database without recording a live call twice.
INTENT_GRACE_MS = 60_000
SWEEP_INTERVAL_S = 60.0
# How long a call whose COMMIT got no answer asks whether it was stored (Call.settle). With record_later's
# half of the grace after it, its record is made before the sweep could take the intent for a stopped call.
SETTLE_S = INTENT_GRACE_MS / 4000
# How long an Idempotency-Key is remembered: a client retries within minutes, a day covers a night's outage.
IDEMPOTENCY_TTL_MS = 24 * 3600 * 1000
MAX_IDEMPOTENCY_KEY = 255
# An answer larger than this is not kept for replay (a creating call answers with one object).
MAX_KEPT_ANSWER = 1 << 20


@dataclass(frozen=True)
class IdempotencyClaim:
    """A caller's Idempotency-Key for one request: the caller, the key, and what the key must name."""

    actor: str
    key: str
    fingerprint: str

    @classmethod
    def of(cls, actor: str, key: str, method: str, path: str, query: str) -> "IdempotencyClaim":
        if not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY or not key.isascii() or not key.isprintable():
            raise InvalidInput(f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters",
                               [{"field": "Idempotency-Key", "error": "malformed"}])
        # The key names one request: the same method on the same path. The body is not compared, since a
        # file upload is streamed to its rows and never held whole; a client sends one key per body.
        digest = hashlib.sha256(f"{method}\n{path}\n{query}".encode("utf-8", "surrogatepass")).hexdigest()
        return cls(actor, key, digest)


@dataclass(frozen=True)
class StoredAnswer:
    status: int
    content_type: str
    body: bytes


@dataclass(eq=False)
class Call:
    """One API call or delivered message while it runs (node.db.CallWrites): the fields its audit record
    will carry, and whether any of its writes committed. `open` ends when the call's answer is made, so
    a task the call left behind writes without an intent of the call."""

    fields: dict[str, Any]
    idempotency: IdempotencyClaim | None = None
    key: str = field(default_factory=new_id)
    open: bool = True
    wrote: bool = False
    claimed: bool = False
    _claiming: bool = False
    # Run first in the call's first write transaction (a delivered message marks itself applied there, so
    # that its effect and the mark commit or roll back together); may raise to refuse the transaction.
    first_write: Callable[[sa.Connection], None] | None = None
    _first_written: bool = False
    _first_writing: bool = False
    # The intent of the call's latest write transaction: found stored, it says that transaction committed.
    _intent: str | None = None
    # Set by whoever can answer the caller before a commit in doubt is settled (a keyed API call, whose
    # kept answer a retry then gets): completed when the caller should be answered 503 meanwhile.
    answer_early: asyncio.Future[None] | None = None
    _claim_turn: asyncio.Lock | None = None

    @contextlib.asynccontextmanager
    async def claim_turn(self) -> AsyncIterator[None]:
        """Held around each write transaction of the call until its key is claimed: two transactions of one
        call open at once (PostgreSQL) would both insert the key, and the second would take the first's
        uncommitted row for another request with the key and refuse its own call. Once the claim has
        committed, the call's transactions run side by side again."""
        if self.idempotency is None or self.claimed or not self.open:
            yield
            return
        if self._claim_turn is None:
            self._claim_turn = asyncio.Lock()
        async with self._claim_turn:
            yield

    def begin(self, conn: sa.Connection) -> None:
        if self.open and self.first_write is not None and not self._first_written:
            self.first_write(conn)
            self._first_writing = True
        if not self.open or self.idempotency is None or self.claimed:
            return
        claim = self.idempotency
        # A key past its 24 h is free again, whether or not the sweep has removed it yet.
        store.forget_expired_key(conn, claim.actor, claim.key, now_ms() - IDEMPOTENCY_TTL_MS)
        try:  # first in the transaction: a second request with the key waits here, then is refused
            store.claim_key(conn, {"actor": claim.actor, "key": claim.key, "fingerprint": claim.fingerprint,
                                   "created_at": now_ms(), "status": None, "content_type": None, "body": None})
        except sa.exc.IntegrityError:
            raise Conflict("a request with this Idempotency-Key is being carried out; ask again in a moment",
                           [{"field": "Idempotency-Key", "error": "in use"}]) from None
        self._claiming = True

    def end(self, conn: sa.Connection) -> None:
        if not self.open:
            return
        self._intent = new_id()
        store.insert_intent(conn, {"id": self._intent, "call_key": self.key, "at": now_ms(), "worker": worker_of(conn.engine),
                                   "fields": json.dumps(self.fields, ensure_ascii=False, sort_keys=True)})

    def committed(self) -> None:
        if not self.open:
            return
        self.wrote = True
        if self._claiming:
            self.claimed, self._claiming = True, False
        if self._first_writing:
            self._first_written, self._first_writing = True, False

    async def settle(self, engine: AsyncEngine) -> bool:
        """Whether the call's latest write transaction, whose COMMIT failed because the database went away,
        is stored all the same: its intent tells, once the database answers again. Asked again every half
        second; after `probe_timeout` (one connect and one statement) the caller is answered early when
        someone waits for that (`answer_early`), and the asking goes on until SETTLE_S. False when not
        stored or still not known, so the write is answered as failed."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        while True:
            try:
                async with engine.connect() as conn:
                    stored = await conn.run_sync(store.intent_stored, self._intent)
                log.warning("a commit whose answer was lost %s stored", "was" if stored else "was not")
                return stored
            except Exception as exc:  # noqa: BLE001 - only the database being away is waited out
                if not database_unavailable(exc):
                    raise
            waited = loop.time() - started
            if waited >= probe_timeout(engine):
                if self.answer_early is None:
                    return False
                if not self.answer_early.done():
                    self.answer_early.set_result(None)
            if waited >= SETTLE_S:
                log.warning("a commit whose answer was lost is still unknown after %.0f s", waited)
                return False
            await asyncio.sleep(0.5)

    def note(self, **fields: Any) -> None:
        self.fields.update({k: v for k, v in fields.items() if v is not None})


class AuditLog:
    def __init__(self, engine: AsyncEngine, batch_ms: int = 2) -> None:
        self.engine = engine
        # The node's journal: audit records and other durable-before-answer claims share its commits.
        self.journal = GroupCommitter(engine, "journal", batch_ms)
        # On PostgreSQL this process appends to a segment of the chain of its own. With one chain, every
        # append held the chain's counter row from its UPDATE to its COMMIT (WAL flush included), so two
        # workers' batches took turns: one worker committed 24 records a batch in 35 ms, two workers 14 in
        # 57 ms, and two served 0.86 × the requests of one. A segment's counter is this process's alone;
        # `verify` walks every segment. SQLite (one process) keeps the one chain.
        self.segment = secrets.token_hex(8) if engine.dialect.name == "postgresql" else None
        self._recover = functools.partial(_recover_intents, segment=self.segment)
        self._jobs = PeriodicJobs()
        self._later: set[asyncio.Task[None]] = set()
        # The node's live workers (node.cluster): their calls' intents are theirs to record. Without it
        # (a command, a test's bare log) only the grace time tells a stopped call from a live one.
        self.live_workers: Callable[[], Awaitable[set[str]]] | None = None

    async def start(self) -> None:
        self.journal.start()

    async def take_up(self) -> None:
        """The recovery of intents is background work: one worker of the node does it (node.cluster), at
        once when it takes the work up and then every minute. Each intent names the worker whose call
        wrote it, so the intents of a worker that is gone (a stopped process, a killed one, this process's
        previous run) are recorded at once, and a live worker's only after INTENT_GRACE_MS: its call's own
        record normally follows within milliseconds."""
        await self._sweep(keys=False)
        self._jobs.start((self._sweep, SWEEP_INTERVAL_S, "audit-sweep"))

    async def give_up(self) -> None:
        self._jobs.stop()

    async def close(self) -> None:
        self._jobs.stop()
        for task in list(self._later):
            task.cancel()
        await asyncio.gather(*self._later, return_exceptions=True)
        await self.journal.close()

    def record_later(self, **fields: Any) -> None:
        """Store the record of a call whose write committed but whose record could not be (the database went
        away between the two): tried again every few seconds while the process lives, so that the answer
        kept for its Idempotency-Key is stored too and a retry gets it. Should the process stop first, the
        call's audit intent still becomes its record; only the kept answer is lost then."""
        async def retry() -> None:
            # Once a second: a client retrying its key waits on this, and each try is bounded by the
            # database's own timeouts; it gives up well before the sweep takes the call's intent.
            deadline = asyncio.get_running_loop().time() + INTENT_GRACE_MS / 2000
            while True:
                await asyncio.sleep(1.0)
                try:
                    await self.record(**fields)
                    return
                except ApiError:
                    if asyncio.get_running_loop().time() + 1.0 > deadline:
                        log.warning("the record of call %s is left to its audit intent", fields.get("request_id"))
                        return

        self.finish_later(retry())

    def finish_later(self, work: Awaitable[None]) -> None:
        """Run `work` (the end of a call that outlives its answer) until it ends or the log closes."""
        task = asyncio.ensure_future(work)
        self._later.add(task)
        task.add_done_callback(self._later.discard)

    async def _sweep(self, keys: bool = True) -> None:
        try:
            live = await self.live_workers() if self.live_workers is not None else None
            await self.recover(grace_ms=INTENT_GRACE_MS, live=live)
            if keys:
                await self.journal.submit(_forget_keys, now_ms() - IDEMPOTENCY_TTL_MS)
        except ApiError as err:  # the database is away: the next sweep tries again
            log.warning("audit sweep postponed: %s", err)

    async def recover(self, grace_ms: int, live: set[str] | None = None) -> int:
        """Turn the intents of calls that left no record into chained records: those older than `grace_ms`,
        and with `live` given, those of any age whose worker is not in it."""
        found: list[int] = []
        await self.journal.submit(self._recover, (now_ms() - grace_ms, live, found))
        if found and found[0]:
            log.warning("recorded %d write(s) whose calls ended before their own audit record", found[0])
        return found[0] if found else 0

    async def pending_intents(self) -> int:
        async with self.engine.connect() as conn:
            return await conn.run_sync(store.count_intents)

    async def stored_answer(self, claim: IdempotencyClaim) -> StoredAnswer | None:
        """The answer kept for a retried request, None for a key not used yet (or forgotten)."""
        async with self.engine.connect() as conn:
            row = await conn.run_sync(store.stored_key, claim.actor, claim.key)
        if row is None or row.created_at < now_ms() - IDEMPOTENCY_TTL_MS:
            return None
        if row.fingerprint != claim.fingerprint:
            raise Conflict("this Idempotency-Key was used for another request (method or path); use a new key",
                           [{"field": "Idempotency-Key", "error": "used for another request"}])
        if row.status is None:
            raise Conflict("a request with this Idempotency-Key was carried out, but its answer was not kept "
                           "(the node stopped, or is still recording it); look the result up instead of retrying",
                           [{"field": "Idempotency-Key", "error": "answer not kept"}])
        return StoredAnswer(row.status, row.content_type or "application/json", (row.body or "").encode())

    async def record(self, **fields: Any) -> None:
        """Append one record; returns once it is committed. Raises ApiError(UNAVAILABLE) if it cannot be."""
        await self.enqueue(**fields)

    def enqueue(self, **fields: Any) -> "asyncio.Future[None]":
        """Append one record without waiting; the future completes once it is committed."""
        fields.setdefault("at", now_ms())
        fields["segment"] = self.segment  # one journal a log: every record of a batch names the same one
        return self.journal.enqueue(type(self)._write, fields)

    @staticmethod
    def _write(conn: sa.Connection, records: list[dict[str, Any]]) -> None:
        _write_records(conn, records, records[0].get("segment"))

    async def verify(self, batch: int = 5000) -> ChainBreak | None:
        """Walk the chain; the first record that was altered, removed or inserted, or None if intact.

        Records without a segment form one chain numbered 1, 2, … by `seq` (SQLite; PostgreSQL before
        revision 0015). Each segment is a chain of its own, numbered by `segment_seq`, whose length its
        counter holds; its records' `seq` places it among the others. A segment record that is missing
        is named by its `seq` when the places left unused around it tell which one it was."""
        async with self.engine.connect() as conn:
            head = await read_counter(conn, COUNTER)
            segmented = conn.dialect.name == "postgresql"
            heads = await store.segment_heads(conn, SEGMENT_COUNTER) if segmented else {}
            top = await store.last_seq(conn) if segmented else head
            walk = _Walk(heads)
            expected_seq, prev, main_broken = 1, GENESIS, False
            from_seq = 1
            while True:
                rows = await store.scan(conn, from_seq, batch)
                for r in rows:
                    row = dict(r._mapping)
                    walk.saw(row["seq"])
                    if row["segment"] is not None:
                        walk.segment_row(row)
                    elif not main_broken:
                        if row["seq"] != expected_seq:
                            walk.broke(ChainBreak(expected_seq, f"record {expected_seq} is missing"))
                            main_broken = True
                        elif (why := link_break(prev, row)) is not None:
                            walk.broke(ChainBreak(row["seq"], why))
                            main_broken = True
                        prev = row["hash"]
                        expected_seq += 1
                if len(rows) < batch:
                    break
                from_seq = rows[-1].seq + 1
        if not main_broken and expected_seq - 1 < head:
            walk.broke(ChainBreak(expected_seq, f"record {expected_seq} is missing (the log ends at {expected_seq - 1}, its head is {head})"))
        walk.ends(max(top, walk.last))
        return walk.first()

    async def query(self, **filters: Any) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            rows = await store.query(conn, **filters)
        return [_decoded(r) for r in rows]

    async def get(self, seq: int) -> dict[str, Any]:
        """One record as stored (whether or not its hash still matches: the chain check says that)."""
        async with self.engine.connect() as conn:
            row = await store.get(conn, seq)
        if row is None:
            raise NotFound(f"no audit record {seq}")
        return _decoded(row)

    async def pages(self, *, batch: int = 1000, **filters: Any) -> AsyncIterator[list[dict[str, Any]]]:
        """Every record the filters select, newest first, a batch at a time (keyset on the sequence number,
        one short read each), for an export that streams without holding the log."""
        after = filters.pop("after_seq", None)
        while True:
            rows = await self.query(**filters, after_seq=after, limit=batch)
            if rows:
                yield rows
            if len(rows) < batch:
                return
            after = rows[-1]["seq"]


def _decoded(r: sa.Row) -> dict[str, Any]:
    row = dict(r._mapping)
    try:
        row["details"] = json.loads(row["details"]) if row["details"] else None
    except ValueError:  # an altered record may hold anything: shown as stored, the chain check names it
        row["details"] = {"stored": row["details"]}
    return row


# The chain's counter row is the most contended lock of a batch (with one chain): taken last, held for the
# least time. Every batch takes its locks in one order (node.groupcommit), so two batches never deadlock.
AuditLog._write.commit_order = 10  # type: ignore[attr-defined]


class _Walk:
    """What `AuditLog.verify` learns of the segments as it reads the records in `seq` order."""

    def __init__(self, heads: dict[str, int]) -> None:
        self.heads = heads
        self.state: dict[str, list[Any]] = {}  # segment -> [next place, previous hash, previous seq]
        self.broken: set[str] = set()
        self.breaks: list[ChainBreak] = []
        self.unused: list[tuple[int, int]] = []  # runs of places that no record holds, in order
        self.last = 0

    def saw(self, seq: int) -> None:
        if seq > self.last + 1:
            self.unused.append((self.last + 1, seq - 1))
        self.last = max(self.last, seq)

    def broke(self, b: ChainBreak) -> None:
        self.breaks.append(b)

    def first(self) -> ChainBreak | None:
        return min(self.breaks, key=lambda b: b.seq) if self.breaks else None

    def _unused_between(self, lo: int, hi: int) -> list[int]:
        """The places in (lo, hi) that no record holds (few: failed batches and removed records)."""
        out: list[int] = []
        for a, b in self.unused:
            out.extend(range(max(a, lo + 1), min(b, hi - 1) + 1))
        return out

    def _missing(self, segment: str, after_seq: int, before_seq: int, places: range) -> ChainBreak:
        where = f"record{'s' if len(places) > 1 else ''} {places.start}" + (f"-{places.stop - 1}" if len(places) > 1 else "")
        candidates = self._unused_between(after_seq, before_seq)
        if len(candidates) == len(places):  # the places left unused say exactly which records they were
            return ChainBreak(candidates[0], f"record {candidates[0]} is missing ({where} of segment {segment})")
        return ChainBreak(after_seq + 1, f"{where} of segment {segment}, after record {after_seq}, {'are' if len(places) > 1 else 'is'} missing")

    def segment_row(self, row: dict[str, Any]) -> None:
        segment, seq, pos = row["segment"], row["seq"], row["segment_seq"]
        if segment in self.broken:
            return
        st = self.state.setdefault(segment, [1, GENESIS, 0])
        if segment not in self.heads:
            self.breaks.append(ChainBreak(seq, f"its segment {segment} has no counter (removed, or the record was inserted)"))
        elif pos is None or pos < st[0] or pos > self.heads[segment]:
            self.breaks.append(ChainBreak(seq, f"its place in segment {segment} ({pos}) is out of order (reordered or inserted)"))
        elif pos > st[0]:
            self.breaks.append(self._missing(segment, st[2], seq, range(st[0], pos)))
        elif (why := link_break(st[1], row)) is not None:
            self.breaks.append(ChainBreak(seq, why))
        else:
            st[0], st[1], st[2] = pos + 1, row["hash"], seq
            return
        self.broken.add(segment)

    def ends(self, top: int) -> None:
        """After the last record: each segment must hold as many records as its counter says."""
        if top > self.last:
            self.unused.append((self.last + 1, top))
        for segment, count in self.heads.items():
            if segment in self.broken:
                continue
            st = self.state.get(segment, [1, GENESIS, 0])
            if st[0] - 1 < count:
                self.breaks.append(self._missing(segment, st[2], top + 1, range(st[0], count + 1)))


def _write_records(conn: sa.Connection, records: list[dict[str, Any]], segment: str | None) -> None:
    for r in records:
        # A record made with the replay claims of its call (a read delivered before they committed):
        # they were decided earlier in this very commit, and one that lost makes the call a replay.
        claims = r.pop("claims", None)
        if claims and not all(c.won for c in claims):
            r.update(outcome="REPLAY", status=409)
    _append(conn, records, segment)
    # A call's record replaces its audit intents, and keeps its answer for a retry, in the same commit.
    calls = [r["call_key"] for r in records if r.get("call_key")]
    if calls:
        store.delete_intents(conn, calls)
    answers = [r["answer"] for r in records if r.get("answer")]
    if answers:
        store.answer_keys(conn, answers)


def _append(conn: sa.Connection, records: list[dict[str, Any]], segment: str | None = None) -> None:
    """Chain `records` onto the log inside the journal's transaction: onto the one chain (SQLite), or onto
    this process's segment, taking their places in the node's order from the sequence (PostgreSQL)."""
    if segment is not None:
        _append_to_segment(conn, records, segment)
    else:
        _append_to_chain(conn, records)
    # The figures' running totals move in the same commit as the records they count (node.figures.store).
    figures_store.tally(conn, records)


def _append_to_chain(conn: sa.Connection, records: list[dict[str, Any]]) -> None:
    last = next_counter_sync(conn, COUNTER, len(records))
    seq = last - len(records) + 1
    prev = store.hash_at(conn, seq - 1) if seq > 1 else GENESIS
    if prev is None:
        raise RuntimeError(f"audit record {seq - 1} is missing; run `govnode audit verify`")
    rows = []
    for rec in records:
        row = _normalise(rec, seq)
        row["prev_hash"] = prev
        row["hash"] = prev = record_hash(prev, row)
        rows.append(row)
        seq += 1
    store.insert_many(conn, rows)


def _append_to_segment(conn: sa.Connection, records: list[dict[str, Any]], segment: str) -> None:
    n = len(records)
    last, prev, seqs = store.segment_places(conn, SEGMENT_COUNTER + segment, segment, n)
    pos = last - n + 1
    if pos == 1:
        prev = GENESIS
    if prev is None:
        raise RuntimeError(f"audit record {pos - 1} of segment {segment} is missing; run `govnode audit verify`")
    rows = []
    for rec, seq in zip(records, seqs):
        row = _normalise(rec, seq)
        row["segment"], row["segment_seq"] = segment, pos
        row["prev_hash"] = prev
        row["hash"] = prev = record_hash(prev, row)
        rows.append(row)
        pos += 1
    store.insert_many(conn, rows)


def _recover_intents(conn: sa.Connection, asks: list[tuple[int, set[str] | None, list[int]]],
                     segment: str | None = None) -> None:
    """Chain one record for each call whose intents are all older than the cutoff (or whose worker is not
    among the live ones) and still unrecorded, with what its last intent knew (later writes of a call may
    have named more)."""
    cutoff = max(c for c, _, _ in asks)
    lives = [lv for _, lv, _ in asks]
    live = None if any(lv is None for lv in lives) else set().union(*lives)
    keys = store.calls_before(conn, cutoff, 1000, live)
    calls: dict[str, dict[str, Any]] = {}
    for r in store.intents_of(conn, keys) if keys else []:
        calls[r.call_key] = {**json.loads(r.fields), "at": r.at}  # ordered by time: the last one stays
    records = []
    for fields in calls.values():
        details = fields.get("details") or {}
        details["recovered"] = "the write was stored; the call ended before its own record (node stopped or database lost)"
        records.append({**fields, "outcome": "ok", "status": 0, "latency_ms": 0, "details": details})
    if records:
        _append(conn, records, segment)
        store.delete_intents(conn, list(calls))
    for _, _, found in asks:
        found.append(len(records))


def _forget_keys(conn: sa.Connection, cutoffs: list[int]) -> None:
    store.forget_keys_before(conn, min(cutoffs))


def _normalise(rec: dict[str, Any], seq: int) -> dict[str, Any]:
    details = rec.get("details")
    return {
        "seq": seq,
        "at": int(rec["at"]),
        "request_id": str(rec.get("request_id") or ""),
        "message_id": rec.get("message_id"),
        "actor": str(rec.get("actor") or "anonymous")[:80],
        "user": str(rec["user"])[:32] if rec.get("user") else None,
        "role": str(rec.get("role") or "none")[:16],
        "action": str(rec.get("action") or "")[:64],
        "method": str(rec.get("method") or "")[:8],
        "path": str(rec.get("path") or "")[:400],
        "resource": rec.get("resource"),
        "keys_digest": rec.get("keys_digest"),
        "outcome": str(rec.get("outcome") or "ok")[:32],
        "status": int(rec.get("status") or 0),
        "latency_ms": int(rec.get("latency_ms") or 0),
        "details": json.dumps(details, ensure_ascii=False, sort_keys=True) if details is not None else None,
    }
