"""Periodic jobs (APScheduler 3): the one way a service makes its scheduler."""

from __future__ import annotations

from apscheduler.schedulers.asyncio import AsyncIOScheduler

# A job never overlaps itself; beats missed while the node was busy collapse into one run, made however
# late (maintenance that runs late is fine; a warning for every missed beat of a 2 s job is not).
JOB_DEFAULTS = {"max_instances": 1, "coalesce": True, "misfire_grace_time": None}


def periodic_scheduler() -> AsyncIOScheduler:
    return AsyncIOScheduler(timezone="UTC", job_defaults=dict(JOB_DEFAULTS))
