"""Periodic jobs (`node/schedule.py`): stopping a node while a job runs is a clean stop, not an error; a paused
job does not run until resumed."""

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


async def test_a_paused_job_does_not_run_until_resumed():
    runs = 0

    async def tick():
        nonlocal runs
        runs += 1

    jobs = PeriodicJobs()
    jobs.start((tick, 0.02, "tick"))
    try:
        jobs.pause("tick")
        jobs.pause("tick")  # pausing twice is harmless
        assert jobs.next_run("tick") is None
        await asyncio.sleep(0.02)  # a run already handed to the event loop ends
        paused_at = runs
        await asyncio.sleep(0.2)
        assert runs == paused_at
        jobs.resume("tick")
        assert jobs.next_run("tick") is not None
        deadline = asyncio.get_running_loop().time() + 5
        while runs < paused_at + 3 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        assert runs >= paused_at + 3
    finally:
        jobs.stop()
    assert jobs.next_run("tick") is None


async def test_a_plain_function_job_runs_without_an_error(caplog):
    """The node's own minute job that forgets old replay claims is a plain function; it logged a TypeError
    trace every minute on every node (seen in the fault drill's logs)."""
    runs = 0

    def forget():
        nonlocal runs
        runs += 1

    jobs = PeriodicJobs()
    jobs.start((forget, 0.02, "forget"))
    try:
        for _ in range(250):
            if runs >= 2:
                break
            await asyncio.sleep(0.02)
    finally:
        jobs.stop()
    assert runs >= 2
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]
