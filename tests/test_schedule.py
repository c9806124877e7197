"""Periodic jobs (`node/schedule.py`): stopping a node while a job runs is a clean stop, not an error."""

from __future__ import annotations

import asyncio
import logging

from node.schedule import PeriodicJobs


async def test_a_job_running_when_the_jobs_stop_is_cancelled_quietly(caplog):
    caplog.set_level(logging.INFO)
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def slow_job():
        started.set()
        try:
            await asyncio.sleep(30)  # e.g. waiting for the database
        except asyncio.CancelledError:
            cancelled.set()
            raise

    jobs = PeriodicJobs()
    jobs.start((slow_job, 0.05, "slow"))
    await asyncio.wait_for(started.wait(), 5)
    jobs.stop()
    await asyncio.wait_for(cancelled.wait(), 5)
    await asyncio.sleep(0.05)  # the executor's done-callbacks have run
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]


async def test_a_job_that_fails_while_running_is_still_reported(caplog):
    ran = asyncio.Event()

    async def failing_job():
        ran.set()
        raise RuntimeError("the deadline check failed")

    jobs = PeriodicJobs()
    jobs.start((failing_job, 0.05, "failing"))
    try:
        await asyncio.wait_for(ran.wait(), 5)
        await asyncio.sleep(0.05)
    finally:
        jobs.stop()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors and errors[0].exc_info[0] is RuntimeError
    assert "failing_job" in errors[0].getMessage()  # the log names the job, not the wrapper
