"""Background work of a service: tasks it starts and jobs it runs on an interval, each logged with its
cause when it fails, and all cancelled when the service closes.

Every service that works in the background (the federation's pulls and catch-ups, subscriptions,
table sources, quality checks) keeps its tasks here rather than in a set of its own: a failure that
nobody awaits is logged by the node, not left to asyncio's "exception was never retrieved", and
`close` leaves nothing running behind the service.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Awaitable, Hashable
from typing import Any

from node.db import CALL_WRITES
from node.schedule import Job, PeriodicJobs


class Supervisor:
    def __init__(self, owner: str, log: logging.Logger) -> None:
        """`owner` names the node (or service) in the log lines, on the service's own logger."""
        self.owner = owner
        self.log = log
        self.tasks: set[asyncio.Task[Any]] = set()
        self._keyed: dict[Hashable, asyncio.Task[Any]] = {}
        self._jobs: list[PeriodicJobs] = []

    def spawn(self, coro: Awaitable[Any], key: Hashable | None = None) -> asyncio.Task[Any]:
        """Run `coro` in the background. With a `key`, the task can be found (`running`) and cancelled
        (`cancel`) by it, until it ends."""
        # In a context of its own: work left behind by an API call is not part of that call, so its writes
        # must not take part in the call's audit intent or Idempotency-Key (node.db.CALL_WRITES).
        if asyncio.iscoroutine(coro):
            context = contextvars.copy_context()
            context.run(CALL_WRITES.set, None)
            task = asyncio.get_running_loop().create_task(coro, context=context)
        else:
            task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        if key is not None:
            self._keyed[key] = task
        task.add_done_callback(lambda t: self._done(t, key))
        return task

    def running(self, key: Hashable) -> asyncio.Task[Any] | None:
        task = self._keyed.get(key)
        return task if task is not None and not task.done() else None

    async def cancel(self, key: Hashable) -> None:
        """Cancel the task started under `key` (if it runs) and wait for it to end."""
        task = self._keyed.get(key)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def _done(self, task: asyncio.Task[Any], key: Hashable | None) -> None:
        """A background step (a pull, a catch-up, a notify) that failed is logged with its cause here; its
        work is retried by the schedule or the outbox, but the operator should see why it failed."""
        self.tasks.discard(task)
        if key is not None and self._keyed.get(key) is task:
            del self._keyed[key]
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            coro = task.get_coro()
            self.log.error("%s: background step %s failed: %s", self.owner, getattr(coro, "__qualname__", "?"), exc,
                           exc_info=(type(exc), exc, exc.__traceback__))

    def every(self, *jobs: tuple[Job, float, str]) -> PeriodicJobs:
        """Run each (job, seconds, id) on its interval (APScheduler: a job never overlaps itself) until
        `stop`; returns the jobs, to pause or resume one by its id."""
        scheduled = PeriodicJobs()
        scheduled.start(*jobs)
        self._jobs.append(scheduled)
        return scheduled

    def stop(self) -> None:
        """No more interval runs (the tasks under way go on until `close`)."""
        for scheduled in self._jobs:
            scheduled.stop()
        self._jobs.clear()

    async def close(self) -> None:
        """Stop the jobs, cancel every task and wait until they have all ended."""
        self.stop()
        tasks = list(self.tasks)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
