"""What every capability finds on the application: the config, the database engine, the signing key,
and `add_routes` to register its endpoints (with their OpenAPI descriptions)."""

from __future__ import annotations

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine

from federation.signing import SigningKey
from node.config import Config
from node.ops.http import OPENAPI_DOCS
from node.web import ApiRoutes

CONFIG = web.AppKey("config", Config)
DB = web.AppKey("db", AsyncEngine)
SIGNING_KEY = web.AppKey("signing_key", SigningKey)


def add_routes(app: web.Application, routes: ApiRoutes) -> None:
    routes.add_to(app)
    app[OPENAPI_DOCS].extend(routes.docs)


def json_limit(request: web.Request) -> int:
    """The largest JSON body this node accepts."""
    return request.app[CONFIG].limits.max_json_bytes
