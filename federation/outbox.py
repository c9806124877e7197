"""Durable per-neighbour delivery: one sender loop per destination, retry with back-off, catch-up after
an outage. The rows live in the node's database (through `OutboxStore`), so a restart of either side
delays delivery and never loses it."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

log = logging.getLogger("govnode.federation.outbox")

MIN_BACKOFF_S = 0.5
MAX_BACKOFF_S = 60.0
IDLE_RECHECK_S = 30.0


class OutboxRow(Protocol):
    id: int
    peer: str
    kind: str
    payload: str
    attempts: int


class OutboxStore(Protocol):
    async def due(self, peer: str, now_ms: int, limit: int) -> list[Any]: ...
    async def next_due_at(self, peer: str) -> int | None: ...
    async def delivered(self, row: Any) -> None: ...
    async def defer(self, row: Any, attempts: int, at_ms: int, error: str) -> None: ...


def backoff_s(attempts: int) -> float:
    return min(MAX_BACKOFF_S, MIN_BACKOFF_S * (2 ** max(0, attempts - 1)))


class OutboxSender:
    """Runs one loop per peer; `wake(peer)` after enqueueing to send at once."""

    def __init__(self, store: OutboxStore, deliver: Callable[[Any], Awaitable[None]], batch: int = 50) -> None:
        self.store = store
        self.deliver = deliver
        self.batch = batch
        self._wakes: dict[str, asyncio.Event] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        # Peers that may have rows waiting for a later attempt (unknown at start, or after a failure).
        self._later: set[str] = set()
        self._closing = False

    def ensure(self, peer: str) -> None:
        if peer not in self._tasks and not self._closing:
            self._later.add(peer)
            self._wakes[peer] = asyncio.Event()
            self._tasks[peer] = asyncio.create_task(self._run(peer), name=f"outbox-{peer}")

    def wake(self, peer: str) -> None:
        self.ensure(peer)
        if peer in self._wakes:
            self._wakes[peer].set()

    async def close(self) -> None:
        self._closing = True
        for task in self._tasks.values():
            task.cancel()
        for task in self._tasks.values():
            try:
                await task
            except asyncio.CancelledError:
                pass
        self._tasks.clear()

    async def _run(self, peer: str) -> None:
        wake = self._wakes[peer]
        while not self._closing:
            wake.clear()
            try:
                sent_all = await self._send_due(peer)
                if sent_all and peer not in self._later:
                    nxt = None  # all that was due went out and nothing waits for a retry: sleep until woken
                else:
                    nxt = await self.store.next_due_at(peer)
                    if nxt is None:
                        self._later.discard(peer)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the loop must survive a database hiccup
                log.exception("outbox loop for %s failed; retrying", peer)
                sent_all, nxt = False, None
                await asyncio.sleep(1)
            if sent_all and nxt is not None and nxt <= _now_ms():
                continue
            wait = IDLE_RECHECK_S if nxt is None else max(0.0, (nxt - _now_ms()) / 1000)
            try:
                await asyncio.wait_for(wake.wait(), timeout=min(wait, IDLE_RECHECK_S))
            except TimeoutError:
                pass

    async def _send_due(self, peer: str) -> bool:
        """Send what is due, oldest first; stop at the first failure (order is kept). True if all sent."""
        rows = await self.store.due(peer, _now_ms(), self.batch)
        for row in rows:
            try:
                await self.deliver(row)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure means: try again later
                attempts = row.attempts + 1
                at = _now_ms() + int(backoff_s(attempts) * 1000)
                self._later.add(peer)
                await self.store.defer(row, attempts, at, f"{type(exc).__name__}: {exc}")
                log.info("delivery to %s failed (attempt %d), next at %d: %s", peer, attempts, at, exc)
                return False
            await self.store.delivered(row)
        return len(rows) < self.batch


def _now_ms() -> int:
    return int(time.time() * 1000)
