"""Data-quality endpoints of the department API (SPEC §10): feedback on wrong values (filed at the reporter's
node, answered at the provider's) and multi-source checks (多元校核, operators)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from node.accounts.http import account
from node.audit.http import AUDIT, note
from node.cluster import CLUSTER
from node.catalog.http import CATALOG
from node.context import CONFIG, DB, add_routes, json_limit
from node.data.http import DATA
from node.federation.http import FEDERATION
from node.ops.http import STATS_SECTIONS
from node.quality.checks import CheckService
from node.quality.models import (Check, CheckCreate, CheckList, Feedback, FeedbackAction, FeedbackCreate,
                                 FeedbackPage, FeedbackQuery, FeedbackRejection)
from node.quality.service import FeedbackService
from node.sharing.http import SHARING
from node.subscriptions.http import SUBSCRIPTIONS
from node.web import ApiRoutes, json_response, parse_model, query_model, read_body, read_model
from node.workflow import WORKFLOWS
from node.workflow import setup as workflows

FEEDBACK = web.AppKey("feedback", FeedbackService)
CHECKS = web.AppKey("checks", CheckService)
routes = ApiRoutes()
TAGS = ("quality",)
ID = r"{id:[0-9A-HJKMNP-TV-Z]{26}}"


@routes.post("/api/v1/feedback", name="feedback.submit",
             summary="Report a suspected data error; it is routed to the node holding the resource and answered by "
                     "its providing department within 10 working days",
             body=FeedbackCreate, response=Feedback, roles=("dept",), status=201, errors=(404,), tags=TAGS)
async def submit(request: web.Request) -> web.Response:
    acct = account(request, "dept")
    body = await read_model(request, FeedbackCreate, json_limit(request))
    note(request, resource=body.resource, keys=None if body.key is None else [body.key])
    doc = await request.app[FEEDBACK].submit(acct, body)
    note(request, feedback=doc["id"])
    return json_response(doc, status=201)


@routes.get("/api/v1/feedback", name="feedback.list",
            summary="Feedback filed by the caller's department or on its resources (operators, auditors: all held here)",
            query=FeedbackQuery, response=FeedbackPage, tags=TAGS)
async def list_feedback(request: web.Request) -> web.Response:
    acct = account(request)
    q = query_model(request, FeedbackQuery)
    total, docs = await request.app[FEEDBACK].list_feedback(acct, role=q.role, status=q.status, overdue=q.overdue,
                                                           resource=q.resource, page=q.page, page_size=q.page_size)
    return json_response({"feedback": docs, "page": q.page, "page_size": q.page_size, "total": total})


@routes.get(f"/api/v1/feedback/{ID}", name="feedback.get", summary="One feedback and its history",
            response=Feedback, tags=TAGS)
async def get_feedback(request: web.Request) -> web.Response:
    acct = account(request)
    doc = await request.app[FEEDBACK].get(acct, request.match_info["id"])
    note(request, resource=doc["resource"], feedback=doc["id"])
    return json_response(doc)


async def _act(request: web.Request, action: str) -> web.Response:
    acct = account(request)
    if action == "reject":  # a rejection needs its reason: the body is required
        reason = (await read_model(request, FeedbackRejection, json_limit(request))).reason
    else:
        raw = await read_body(request, json_limit(request))
        reason = parse_model(FeedbackAction, raw).reason if raw.strip() else ""
    doc = await request.app[FEEDBACK].act(acct, request.match_info["id"], action, reason)
    note(request, resource=doc["resource"], feedback=doc["id"], action=action)
    return json_response(doc)


@routes.post(f"/api/v1/feedback/{ID}/confirm", name="feedback.confirm",
             summary="The providing department confirms the error (a correction follows); body optional: {reason}",
             body=FeedbackAction, response=Feedback, roles=("dept",), body_optional=True, errors=(409,), tags=TAGS)
async def confirm(request: web.Request) -> web.Response:
    return await _act(request, "confirm")


@routes.post(f"/api/v1/feedback/{ID}/correct", name="feedback.correct",
             summary="The providing department has corrected the record; body optional: {reason}",
             body=FeedbackAction, response=Feedback, roles=("dept",), body_optional=True, errors=(409,), tags=TAGS)
async def correct(request: web.Request) -> web.Response:
    return await _act(request, "correct")


@routes.post(f"/api/v1/feedback/{ID}/reject", name="feedback.reject",
             summary="The providing department rejects the feedback (the value is right), with its reason",
             body=FeedbackRejection, response=Feedback, roles=("dept",), errors=(409,), tags=TAGS)
async def reject(request: web.Request) -> web.Response:
    return await _act(request, "reject")


@routes.post("/api/v1/checks", name="checks.create",
             summary="Declare a multi-source check (多元校核) of two resources by their key and run it",
             body=CheckCreate, response=Check, roles=("operator",), status=201, errors=(404,), tags=TAGS)
async def create_check(request: web.Request) -> web.Response:
    acct = account(request, "operator")
    body = await read_model(request, CheckCreate, json_limit(request))
    doc = await request.app[CHECKS].create(acct, body)
    note(request, resource=body.left, check=doc["id"], right=body.right)
    return json_response(doc, status=201)


@routes.get("/api/v1/checks", name="checks.list", summary="Multi-source checks and their last reports",
            response=CheckList, roles=("operator", "auditor"), tags=TAGS)
async def list_checks(request: web.Request) -> web.Response:
    acct = account(request)
    return json_response({"checks": await request.app[CHECKS].list_checks(acct)})


@routes.get(f"/api/v1/checks/{ID}", name="checks.get", summary="One check and its report (progress while running)",
            response=Check, roles=("operator", "auditor"), tags=TAGS)
async def get_check(request: web.Request) -> web.Response:
    acct = account(request)
    return json_response(await request.app[CHECKS].get(acct, request.match_info["id"]))


@routes.post(f"/api/v1/checks/{ID}/run", name="checks.run", summary="Run a check again", response=Check,
             roles=("operator",), status=202, errors=(409,), tags=TAGS)
async def run_check(request: web.Request) -> web.Response:
    acct = account(request, "operator")
    return json_response(await request.app[CHECKS].run(acct, request.match_info["id"]), status=202)


async def _service(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    feedback = FeedbackService(app[DB], config.node.id, app[CATALOG], app[DATA], app[FEDERATION], app[AUDIT])
    feedback.connect()
    checks = CheckService(app[DB], config.node.id, app[CATALOG], app[DATA], app[SHARING], app[SUBSCRIPTIONS])
    cluster = checks.cluster = app[CLUSTER]
    cluster.on_lead(feedback.take_up, feedback.give_up)
    cluster.on_lead(checks.take_up, checks.give_up)
    cluster.on("checks", checks.told)
    app[FEEDBACK] = feedback
    app[WORKFLOWS]["feedback"] = feedback.flow
    app[CHECKS] = checks
    app[STATS_SECTIONS]["feedback"] = feedback.stats
    try:
        yield
    finally:
        await checks.close()
        await feedback.close()


def setup(app: web.Application) -> None:
    workflows(app)
    if STATS_SECTIONS not in app:
        app[STATS_SECTIONS] = {}
    app.cleanup_ctx.append(_service)
    add_routes(app, routes)
