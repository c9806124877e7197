"""Replay protection: the nonces of hop requests (within the clock-skew window) and the ids of envelopes
seen. The database decides: a claim is an insert that only one request can win, group-committed with
the node's other small writes before the request's answer leaves. So a replay is refused whichever of
the node's workers sees it, and after a restart.

Each worker also remembers the claims it made, and refuses a replay it has seen itself at once, before
the journal's commit (the common case, and the only one on SQLite, where one process serves a node)."""

from __future__ import annotations

import asyncio
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from node.db import write_tx
from node.errors import ApiError
from node.federation import store
from node.groupcommit import GroupCommitter
from node.ids import now_ms


class Claim:
    """A nonce or envelope id claimed in memory (a second claim in this worker is refused at once);
    `durable()` queues its insert in the journal, once, and returns the future that completes when it
    is committed, or fails with REPLAY when another request's insert won (`won` is False then)."""

    __slots__ = ("_journal", "kind", "row", "won", "_future")

    def __init__(self, journal: GroupCommitter, kind: str, row: dict[str, Any]) -> None:
        self._journal = journal
        self.kind = kind
        self.row = row
        self.won = False
        self._future: asyncio.Future[None] | None = None

    def durable(self) -> asyncio.Future[None]:
        if self._future is None:
            committed = self._journal.enqueue(_store_claims, self)
            self._future = committed.get_loop().create_future()
            committed.add_done_callback(self._settle)
            # A refused request's nonce is made durable without anyone awaiting it (node.federation.http);
            # its outcome must not be reported as a never-retrieved exception.
            self._future.add_done_callback(lambda f: f.cancelled() or f.exception())
        return self._future

    def _settle(self, committed: asyncio.Future[None]) -> None:
        fut = self._future
        assert fut is not None
        if fut.done():
            return
        if committed.cancelled():
            fut.cancel()
        elif committed.exception() is not None:
            fut.set_exception(committed.exception())  # type: ignore[arg-type]
        elif not self.won:
            what = ("this request was already received (nonce seen)" if self.kind == "nonce"
                    else f"message {self.row['id']} was already received")
            fut.set_exception(ApiError(what, code="REPLAY"))
        else:
            fut.set_result(None)


def _store_claims(conn: sa.Connection, claims: list[Claim]) -> None:
    """Journal writer: insert the batch's claims, each won only if its row was not there yet. Rows are
    inserted in key order, so that two workers' batches claiming the same keys wait for each other in
    one order and never deadlock."""
    nonces = sorted((c for c in claims if c.kind == "nonce"), key=lambda c: (c.row["origin"], c.row["nonce"]))
    messages = sorted((c for c in claims if c.kind == "message"), key=lambda c: c.row["id"])
    won_nonces, won_messages = store.claim_seen(conn, [c.row for c in nonces], [c.row for c in messages])
    for c in nonces:
        c.won = (c.row["origin"], c.row["nonce"]) in won_nonces
    for c in messages:
        c.won = c.row["id"] in won_messages


# First in a batch: the audit record of a read delivered before its claims committed reads `won`.
_store_claims.commit_order = -10  # type: ignore[attr-defined]


class ReplayGuard:
    def __init__(self, engine: AsyncEngine, journal: GroupCommitter, nonce_window_ms: int,
                 message_window_ms: int) -> None:
        self.engine = engine
        self.journal = journal
        self.nonce_window_ms = nonce_window_ms
        self.message_window_ms = message_window_ms
        self._nonces: dict[tuple[str, str], int] = {}
        self._messages: dict[str, int] = {}

    async def start(self) -> None:
        now = now_ms()
        async with self.engine.connect() as conn:
            nonces, messages = await store.load_seen(conn, now - self.nonce_window_ms, now - self.message_window_ms)
        self._nonces = {(r.origin, r.nonce): r.ts for r in nonces}
        self._messages = {r.id: r.at for r in messages}

    def claim_nonce(self, origin: str, nonce: str, ts: int) -> Claim | None:
        """Claim (origin, nonce): None for a replay seen here, else the claim (make it durable before
        answering: the database may still find it a replay)."""
        key = (origin, nonce)
        if key in self._nonces:
            return None
        self._nonces[key] = ts
        return Claim(self.journal, "nonce", {"origin": origin, "nonce": nonce, "ts": ts})

    def claim_message(self, message_id: str, expires_at: int | None = None) -> Claim | None:
        """Claim an envelope id: None if this worker saw it, else the claim (make it durable before
        answering: the database may still find it a replay).

        A claim is kept for the message window from its `at`, here and in the database. An envelope that
        expires sooner needs it only until then (an expired one is refused before its claim is looked at),
        plus the nonce window for a clock set back: its `at` is put that much earlier. Kept for the whole
        window, every synchronous call's id stayed a week, here and in seen_messages: in the hour's soak the
        province and the city, which see each of its 29 routed calls a second, took on ~35,000 ids (about
        7 MiB of this dict) every 20 minutes while their RSS grew by 14-16 MiB."""
        if message_id in self._messages:
            return None
        at = now_ms()
        if expires_at is not None:
            at = min(at, expires_at + self.nonce_window_ms - self.message_window_ms)
        self._messages[message_id] = at
        return Claim(self.journal, "message", {"id": message_id, "at": at})

    async def forget_old(self) -> None:
        """Drop the claims remembered here that are older than their windows (every worker, every minute;
        async because the scheduler awaits what it runs: as a plain function it raised TypeError each run)."""
        now = now_ms()
        n_cut, m_cut = now - self.nonce_window_ms, now - self.message_window_ms
        self._nonces = {k: ts for k, ts in self._nonces.items() if ts >= n_cut}
        self._messages = {k: at for k, at in self._messages.items() if at >= m_cut}

    async def prune(self) -> None:
        """Delete the stored claims older than their windows (background work: one worker)."""
        now = now_ms()
        async with write_tx(self.engine) as conn:
            await store.prune_seen(conn, now - self.nonce_window_ms, now - self.message_window_ms)
