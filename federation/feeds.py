"""Pulling change feeds from neighbours: debounced on notify, also on a schedule, one pull at a time per
(peer, feed), repeated while the peer says there is more."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("govnode.federation.feeds")

# pull_once(peer, feed) -> True when the peer has more to send right away.
PullOnce = Callable[[str, str], Awaitable[bool]]


class FeedPuller:
    def __init__(self, pull_once: PullOnce, debounce_s: float = 0.05) -> None:
        self.pull_once = pull_once
        self.debounce_s = debounce_s
        self._running: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._again: set[tuple[str, str]] = set()
        self._closing = False

    def trigger(self, peer: str, feed: str) -> None:
        """Pull soon; if a pull is under way, pull once more after it."""
        key = (peer, feed)
        if self._closing:
            return
        task = self._running.get(key)
        if task is not None and not task.done():
            self._again.add(key)
            return
        self._running[key] = asyncio.create_task(self._run(key), name=f"pull-{peer}-{feed}")

    async def pull_now(self, peer: str, feed: str) -> None:
        """Pull until caught up and wait for it (used at start-up and by scheduled pulls)."""
        key = (peer, feed)
        if self._closing:
            return
        task = self._running.get(key)
        if task is not None and not task.done():
            self._again.add(key)
        else:
            self._running[key] = task = asyncio.create_task(self._run(key, debounce=False))
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if self._closing and current is not None and not current.cancelling():
                return  # the pull was cancelled by close(), not the caller: a quiet end
            raise

    async def close(self) -> None:
        self._closing = True
        tasks = [t for t in self._running.values() if not t.done()]
        for t in tasks:
            t.cancel()
        for t in tasks:
            try:
                await t
            except asyncio.CancelledError:
                pass

    async def _run(self, key: tuple[str, str], debounce: bool = True) -> None:
        peer, feed = key
        if debounce and self.debounce_s:
            await asyncio.sleep(self.debounce_s)
        while not self._closing:
            self._again.discard(key)
            try:
                while await self.pull_once(peer, feed):
                    pass
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a failed pull is retried by the schedule
                log.info("pull of %s feed from %s failed: %s", feed, peer, exc)
                return
            if key not in self._again:
                return
