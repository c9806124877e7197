"""Periodic jobs (APScheduler 3): the one way a service runs work on an interval."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from node.db import database_unavailable

log = logging.getLogger("govnode.schedule")

# A job never overlaps itself, and beats missed while the node was busy collapse into one run. A beat more
# than APScheduler's grace time (1 s) late is skipped with a warning: on an overloaded node that sheds
# maintenance work, and the warnings say the node is overloaded.
JOB_DEFAULTS = {"max_instances": 1, "coalesce": True}

# A job is a coroutine function, or a plain function for work that never waits (forgetting old replay claims
# held in memory): awaiting a plain function's None logged a TypeError trace every minute on every node.
Job = Callable[[], Awaitable[Any] | None]


class PeriodicJobs:
    """A service's interval jobs: `start` them (job, seconds, id) inside the event loop, `stop` at close."""

    def __init__(self) -> None:
        self._scheduler: AsyncIOScheduler | None = None
        self._stopping = False

    def start(self, *jobs: tuple[Job, float, str]) -> None:
        self._stopping = False
        scheduler = AsyncIOScheduler(timezone="UTC", job_defaults=dict(JOB_DEFAULTS))
        for job, seconds, job_id in jobs:
            scheduler.add_job(self._run, "interval", args=(job,), seconds=seconds, id=job_id,
                              name=getattr(job, "__qualname__", job_id))  # what its log lines call it
        scheduler.start()
        self._scheduler = scheduler

    def pause(self, job_id: str) -> None:
        """Stop running `job_id` until `resume`: a job with nothing to do costs no wake-ups meanwhile."""
        if self._scheduler is not None and self.next_run(job_id) is not None:
            self._scheduler.pause_job(job_id)

    def resume(self, job_id: str) -> None:
        """Run a paused job again, on its interval from now (a job that is not paused is left as it is)."""
        if self._scheduler is not None and self.next_run(job_id) is None:
            self._scheduler.resume_job(job_id)

    def next_run(self, job_id: str) -> datetime | None:
        """When `job_id` runs next; None while it is paused (or when the jobs are stopped)."""
        job = self._scheduler.get_job(job_id) if self._scheduler is not None else None
        return job.next_run_time if job is not None else None

    async def _run(self, job: Job) -> None:
        try:
            result = job()
            if inspect.isawaitable(result):
                await result
        except asyncio.CancelledError:
            # Stopping cancels a run under way (waiting for the database, say). The work is picked up at the
            # next start; without this, APScheduler logs every such run as a job that "raised an exception".
            if not self._stopping:
                raise
        except Exception as exc:
            if not database_unavailable(exc):
                raise
            # The database is down or stalled (every wait for it is bounded, so the run ended): the next beat
            # tries again. One line, not APScheduler's trace for every beat of every job.
            log.warning("%s: the database is unavailable (%s); trying again on schedule",
                        getattr(job, "__qualname__", "a periodic job"), type(exc).__name__)

    def stop(self) -> None:
        if self._scheduler is not None:
            self._stopping = True
            self._scheduler.shutdown(wait=False)
            self._scheduler = None
