"""Liveness, Prometheus metrics and the OpenAPI description."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Literal

import sqlalchemy as sa
from aiohttp import web
from pydantic import BaseModel, ConfigDict

from node import __version__
from node.ops.metrics import CONTENT_TYPE, METRICS
from node.ops.openapi import build_openapi
from node.web import ApiRoutes, json_response

routes = ApiRoutes()

# Extra sections of /healthz (e.g. the federation's peer status), added by capabilities at start-up.
HEALTH_SECTIONS = web.AppKey("health_sections", dict)
# Extra sections of GET /api/v1/stats: name → async (since_ms, until_ms) → section (e.g. the feedback deadlines).
STATS_SECTIONS = web.AppKey("stats_sections", dict)
ENGINE = web.AppKey("engine", object)
NODE_INFO = web.AppKey("node_info", dict)
OPENAPI_DOCS = web.AppKey("openapi_docs", list)

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
    body: dict[str, Any] = {"status": "ok", "version": __version__, **request.app[NODE_INFO]}
    try:
        async with request.app[ENGINE].connect() as conn:  # type: ignore[attr-defined]
            await conn.execute(sa.text("SELECT 1"))
        body["database"] = "ok"
    except Exception:  # noqa: BLE001 - reported, not raised: liveness must answer
        body["database"] = "unreachable"
        body["status"] = "degraded"
    for name, section in request.app[HEALTH_SECTIONS].items():
        body[name] = await section()
    return json_response(body, status=200 if body["status"] == "ok" else 503)


@routes.get("/metrics", name="ops.metrics", summary="Prometheus metrics", answers="text/plain", tags=("ops",))
async def metrics(request: web.Request) -> web.Response:
    data = request.app[METRICS].exposition()
    return web.Response(body=data, headers={"Content-Type": CONTENT_TYPE})


@routes.get("/api/v1/openapi.json", name="ops.openapi", summary="This API's OpenAPI 3.1 description", tags=("ops",))
async def openapi(request: web.Request) -> web.Response:
    return json_response(build_openapi(request.app[OPENAPI_DOCS]))
