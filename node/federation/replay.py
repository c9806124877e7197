"""Replay protection: the nonces of hop requests (within the clock-skew window) and the ids of envelopes
seen. Checked in memory; persisted by group commit before the request goes on, so a restarted node
still refuses a replay."""

from __future__ import annotations

import asyncio
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from node.db import write_tx
from node.federation import store
from node.groupcommit import GroupCommitter
from node.ids import now_ms


class Claim:
    """A nonce or envelope id claimed in memory (a second claim is refused at once); `durable()` queues
    its record in the journal, once, and returns the future that completes when it is committed."""

    __slots__ = ("_journal", "_write", "_item", "_future")

    def __init__(self, journal: GroupCommitter, write: Any, item: tuple[str, dict[str, Any]]) -> None:
        self._journal = journal
        self._write = write
        self._item = item
        self._future: asyncio.Future[None] | None = None

    def durable(self) -> asyncio.Future[None]:
        if self._future is None:
            self._future = self._journal.enqueue(self._write, self._item)
        return self._future


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
        """Claim (origin, nonce): None for a replay, else the claim (make it durable before answering)."""
        key = (origin, nonce)
        if key in self._nonces:
            return None
        self._nonces[key] = ts
        return Claim(self.journal, self._write, ("nonce", {"origin": origin, "nonce": nonce, "ts": ts}))

    def claim_message(self, message_id: str) -> Claim | None:
        """Claim an envelope id: None if it was seen, else the claim (make it durable before answering)."""
        if message_id in self._messages:
            return None
        at = now_ms()
        self._messages[message_id] = at
        return Claim(self.journal, self._write, ("message", {"id": message_id, "at": at}))

    async def prune(self) -> None:
        now = now_ms()
        n_cut, m_cut = now - self.nonce_window_ms, now - self.message_window_ms
        self._nonces = {k: ts for k, ts in self._nonces.items() if ts >= n_cut}
        self._messages = {k: at for k, at in self._messages.items() if at >= m_cut}
        async with write_tx(self.engine) as conn:
            await store.prune_seen(conn, n_cut, m_cut)

    @staticmethod
    def _write(conn: sa.Connection, items: list[tuple[str, dict[str, Any]]]) -> None:
        store.store_seen(conn, [row for kind, row in items if kind == "nonce"],
                               [row for kind, row in items if kind == "message"])
