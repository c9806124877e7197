"""Liveness, Prometheus metrics and the OpenAPI description."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import sqlalchemy as sa
from aiohttp import web
from pydantic import BaseModel, ConfigDict

from node import __version__
from node.db import database_unavailable, probe_timeout
from node.ops.metrics import CONTENT_TYPE, METRICS
from node.ops.openapi import build_openapi
from node.web import ApiRoutes, json_response

log = logging.getLogger("govnode.ops")
routes = ApiRoutes()

# Extra sections of /healthz (e.g. the federation's peer status), added by capabilities at start-up.
HEALTH_SECTIONS = web.AppKey("health_sections", dict)
# Extra sections of GET /api/v1/stats: name → async (since_ms, until_ms) → section (e.g. the feedback deadlines).
STATS_SECTIONS = web.AppKey("stats_sections", dict)
ENGINE = web.AppKey("engine", object)
NODE_INFO = web.AppKey("node_info", dict)
OPENAPI_DOCS = web.AppKey("openapi_docs", list)
OPENAPI_CACHE = web.AppKey("openapi_cache", dict)  # the document, made at the first GET

HealthSection = Callable[[], Awaitable[Any]]


class Health(BaseModel):
    """Liveness: 200 when the database answers, 503 (same body) when it does not."""

    model_config = ConfigDict(extra="allow")  # capabilities add sections (e.g. the federation's peers)

    status: Literal["ok", "degraded"]
    version: str
    node: str
    name: str
    database: Literal["ok", "unreachable"]


@routes.get("/healthz", name="ops.health", summary="Liveness, database reachability and peer status",
            response=Health, also=(503,), tags=("ops",))
async def healthz(request: web.Request) -> web.Response:
    """503 "degraded" naming the part that failed, within the database's connect and statement bounds: the
    database check and the sections run side by side, and none waits longer than one connect and one
    statement."""
    body: dict[str, Any] = {"status": "ok", "version": __version__, **request.app[NODE_INFO]}
    engine = request.app[ENGINE]
    bound = probe_timeout(engine)  # type: ignore[arg-type]
    sections = request.app[HEALTH_SECTIONS]
    results = await asyncio.gather(
        _part("database", _database_ok(engine), bound, "unreachable"),
        *(_part(name, section(), bound, "unavailable") for name, section in sections.items()))
    for name, (ok, value) in zip(["database", *sections], results):
        body[name] = value
        if not ok:
            body["status"] = "degraded"
    return json_response(body, status=200 if body["status"] == "ok" else 503)


async def _database_ok(engine: Any) -> str:
    async with engine.connect() as conn:
        await conn.execute(sa.text("SELECT 1"))
    return "ok"


async def _part(name: str, check: Awaitable[Any], bound: float, failed: str) -> tuple[bool, Any]:
    """(True, what `check` says) or, when it fails or overruns `bound`, (False, `failed`): liveness must
    answer, so nothing is raised."""
    try:
        async with asyncio.timeout(bound):
            return True, await check
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        if not isinstance(exc, TimeoutError) and not database_unavailable(exc):
            log.exception("health check %s failed", name)
        return False, failed


@routes.get("/metrics", name="ops.metrics", summary="Prometheus metrics", answers="text/plain", tags=("ops",))
async def metrics(request: web.Request) -> web.Response:
    data = request.app[METRICS].exposition()
    return web.Response(body=data, headers={"Content-Type": CONTENT_TYPE})


@routes.get("/api/v1/openapi.json", name="ops.openapi", summary="This API's OpenAPI 3.1 description", tags=("ops",))
async def openapi(request: web.Request) -> web.Response:
    # Built once: the route table is fixed once the app runs, and building takes milliseconds.
    cache = request.app[OPENAPI_CACHE]
    if "body" not in cache:
        cache["body"] = json_response(build_openapi(request.app[OPENAPI_DOCS])).body
    return web.Response(body=cache["body"], content_type="application/json")
