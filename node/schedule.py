"""Periodic jobs (APScheduler 3): the one way a service makes its scheduler."""

from __future__ import annotations

from apscheduler.schedulers.asyncio import AsyncIOScheduler

# A job never overlaps itself, and beats missed while the node was busy collapse into one run. A beat more
# than APScheduler's grace time (1 s) late is skipped with a warning: on an overloaded node that sheds
# maintenance work, and the warnings say the node is overloaded.
JOB_DEFAULTS = {"max_instances": 1, "coalesce": True}


def periodic_scheduler() -> AsyncIOScheduler:
    return AsyncIOScheduler(timezone="UTC", job_defaults=dict(JOB_DEFAULTS))
