"""Sharing endpoints of the department API (SPEC §10): query, verify, compare. Thin: each parses its body
and hands it to `SharingService.call`, the same entry point the federation's `service.call` uses."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web
from pydantic import BaseModel

from node.accounts.http import account
from node.accounts.service import Account
from node.audit.http import note
from node.catalog.http import CATALOG
from node.context import CONFIG, json_limit
from node.data.http import DATA
from node.sharing.models import (CompareParams, CompareResult, QueryParams, QueryResult, Requester, VerifyParams,
                                 VerifyResult)
from node.federation.http import FEDERATION
from node.ops.openapi import ROUTED
from node.sharing import remote
from node.sharing.service import SharingService
from node.web import CODE, ApiRoutes, json_response, json_response_sliced, read_model

SHARING = web.AppKey("sharing", SharingService)
routes = ApiRoutes()
TAGS = ("sharing",)


async def _call(request: web.Request, op: str, model: type[BaseModel], limit: int) -> web.Response:
    acct = account(request)
    code = request.match_info["code"]
    params = await read_model(request, model, limit)
    sharing = request.app[SHARING]
    note(request, resource=code, keys=await sharing.requested_keys(op, code, params))
    answer = await sharing.call(op, code, params, requester_of(acct))
    return await json_response_sliced(answer, "results") if op == "compare" else json_response(answer)


def requester_of(acct: Account, purpose: str | None = None) -> Requester:
    """Who asks, as the sharing service and the provider see it: the department, and the person when one
    acts (the portal), with what the call is for."""
    return Requester(node=acct.node, dept=acct.dept, user=acct.user, purpose=(purpose or "").strip() or None)


@routes.post(f"/api/v1/resources/{CODE}/query", name="sharing.query",
             summary="Records by key or by field values; sensitive items masked unless granted",
             body=QueryParams, response=QueryResult, errors=ROUTED, tags=TAGS)
async def query(request: web.Request) -> web.Response:
    return await _call(request, "query", QueryParams, json_limit(request))


@routes.post(f"/api/v1/resources/{CODE}/verify", name="sharing.verify",
             summary="Does the record with this key hold these values? (match flags only)",
             body=VerifyParams, response=VerifyResult, errors=ROUTED, tags=TAGS)
async def verify(request: web.Request) -> web.Response:
    return await _call(request, "verify", VerifyParams, json_limit(request))


@routes.post(f"/api/v1/resources/{CODE}/compare", name="sharing.compare",
             summary="Batch comparison: per submitted key, found and per-field match (set-based)",
             body=CompareParams, response=CompareResult, errors=ROUTED, tags=TAGS)
async def compare(request: web.Request) -> web.Response:
    limits = request.app[CONFIG].limits
    # A comparison carries many rows: allow ~256 bytes a row up to limits.compare_max_keys.
    limit = max(limits.max_json_bytes, limits.compare_max_keys * 256)
    return await _call(request, "compare", CompareParams, limit)


async def _service(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    app[SHARING] = SharingService(app[CATALOG], app[DATA], config.node.id, config.limits)
    remote.connect(app[SHARING], app[FEDERATION])
    yield


def setup(app: web.Application) -> None:
    """The service; `init_app` adds `routes` ahead of every other capability's (they are the hot path)."""
    app.cleanup_ctx.append(_service)
