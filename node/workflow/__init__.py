"""Workflows: documents one node asks of another and the other answers in steps with working-day deadlines
(applications, feedback, data requests), on one mechanism (node.workflow.flow).

`stats(app, since, until)` answers, for every kind the node runs, the same figures per providing department
(counts by status, per step: done, on time, on-time rate, median hours, open past due)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

# name ("applications", "feedback", "data_requests") -> its node.workflow.flow.Workflow; each capability's
# setup makes sure the dict exists and its service adds itself.
WORKFLOWS = web.AppKey("workflows", dict)


def setup(app: web.Application) -> None:
    if WORKFLOWS not in app:
        app[WORKFLOWS] = {}


async def stats(app: web.Application, since: int, until: int) -> dict[str, Any]:
    """Per kind, per providing department: node.workflow.flow.Workflow.summary."""
    return {name: await flow.summary(since, until) for name, flow in sorted(app.get(WORKFLOWS, {}).items())}
