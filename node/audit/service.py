"""Audit: every API call recorded durably before its answer, in an append-only hash chain.

Records are group-committed: callers wait on a future that resolves once the batch holding their
record is committed, so durability costs one commit per batch, not per call.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from node.audit import store
from node.db import next_counter_sync, read_counter
from node.groupcommit import GroupCommitter
from node.ids import now_ms


GENESIS = "0" * 64
COUNTER = "audit"


def record_hash(prev_hash: str, row: dict[str, Any]) -> str:
    body = json.dumps([row.get(f) for f in store.HASHED_FIELDS], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256((prev_hash + body).encode("utf-8")).hexdigest()


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


class AuditLog:
    def __init__(self, engine: AsyncEngine, batch_ms: int = 2) -> None:
        self.engine = engine
        # The node's journal: audit records and other durable-before-answer claims share its commits.
        self.journal = GroupCommitter(engine, "journal", batch_ms)

    async def start(self) -> None:
        self.journal.start()

    async def close(self) -> None:
        await self.journal.close()

    async def record(self, **fields: Any) -> None:
        """Append one record; returns once it is committed. Raises ApiError(UNAVAILABLE) if it cannot be."""
        await self.enqueue(**fields)

    def enqueue(self, **fields: Any) -> "asyncio.Future[None]":
        """Append one record without waiting; the future completes once it is committed."""
        fields.setdefault("at", now_ms())
        return self.journal.enqueue(self._write, fields)

    @staticmethod
    def _write(conn: sa.Connection, records: list[dict[str, Any]]) -> None:
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

    async def verify(self, batch: int = 5000) -> ChainBreak | None:
        """Walk the chain; the first record that was altered, removed or inserted, or None if intact."""
        async with self.engine.connect() as conn:
            head = await read_counter(conn, COUNTER)
            expected_seq, prev = 1, GENESIS
            while True:
                rows = await store.scan(conn, expected_seq, batch)
                for r in rows:
                    row = dict(r._mapping)
                    if row["seq"] != expected_seq:
                        return ChainBreak(expected_seq, f"record {expected_seq} is missing")
                    if row["prev_hash"] != prev:
                        return ChainBreak(row["seq"], "its link to the previous record does not match")
                    if record_hash(prev, row) != row["hash"]:
                        return ChainBreak(row["seq"], "its contents do not match its hash (altered)")
                    prev = row["hash"]
                    expected_seq += 1
                if len(rows) < batch:
                    break
        if expected_seq - 1 < head:
            return ChainBreak(expected_seq, f"record {expected_seq} is missing (the log ends at {expected_seq - 1}, its head is {head})")
        return None

    async def query(self, **filters: Any) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            rows = await store.query(conn, **filters)
        out = []
        for r in rows:
            row = dict(r._mapping)
            row["details"] = json.loads(row["details"]) if row["details"] else None
            out.append(row)
        return out


def _normalise(rec: dict[str, Any], seq: int) -> dict[str, Any]:
    details = rec.get("details")
    return {
        "seq": seq,
        "at": int(rec["at"]),
        "request_id": str(rec.get("request_id") or ""),
        "message_id": rec.get("message_id"),
        "actor": str(rec.get("actor") or "anonymous")[:80],
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
