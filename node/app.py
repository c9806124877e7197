"""The node application: `init_app(config)` builds it; every resource lives in a cleanup context, so it
is closed if and only if it was opened."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from federation.signing import read_signing_key_file
from node.accounts.http import ACCOUNTS, PEOPLE, auth_middleware
from node.accounts.people import PeopleService
from node.accounts.service import AccountService
from node.audit import http as audit_http
from node.audit.http import AUDIT, audit_observer, call_middleware
from node.audit.service import AuditLog
from node.cluster import CLUSTER, Cluster
from node.supervisor import Supervisor
from node.config import Config
from node.context import CONFIG, DB, SIGNING_KEY, add_routes
from node import memory
from node.db import make_engine, upgrade
from node.ops import http as ops_http
from node.sharing import http as sharing_http
from node.ops.http import ENGINE, HEALTH_SECTIONS, NODE_INFO, OPENAPI_CACHE, OPENAPI_DOCS
from node.ops.metrics import METRICS, Metrics, metrics_observer
from node.portal.pages import error_page
from node.web import ServerLog, make_error_middleware

def init_app(config: Config) -> web.Application:
    app = web.Application(
        middlewares=[make_error_middleware([audit_observer, metrics_observer], {"/portal/": error_page}), auth_middleware,
                     call_middleware],
        client_max_size=config.limits.max_json_bytes,
        handler_args={"logger": ServerLog()},
    )
    app[CONFIG] = config
    app[SIGNING_KEY] = read_signing_key_file(config.key_path)
    app[METRICS] = Metrics()
    app[HEALTH_SECTIONS] = {}
    app[OPENAPI_DOCS] = []
    app[OPENAPI_CACHE] = {}
    app[NODE_INFO] = {"node": config.node.id, "name": config.node.name}
    app.cleanup_ctx.append(_database)
    app.cleanup_ctx.append(_audit)
    app.cleanup_ctx.append(_memory)
    # aiohttp tries the routes under one path prefix in the order they were added: the department API's
    # most frequent calls (query, verify, compare) go first, ahead of records, files and sources.
    add_routes(app, sharing_http.routes)
    add_routes(app, ops_http.routes)
    add_routes(app, audit_http.routes)
    for setup in _capabilities():
        setup(app)
    # Last: the background work is taken up once every service has said what it is, and given up first.
    app.cleanup_ctx.append(_cluster)
    return app


def _capabilities() -> list:
    """Each capability's `setup(app)`: its services (in cleanup contexts) and routes."""
    from node.catalog.http import setup as catalog
    from node.data.http import setup as data
    from node.federation.http import setup as federation
    from node.sharing.http import setup as sharing
    from node.applications.http import setup as applications
    from node.licences.http import setup as licences
    from node.exchange.http import setup as exchange
    from node.subscriptions.http import setup as subscriptions
    from node.quality.http import setup as quality
    from node.items.http import setup as items
    from node.requests.http import setup as requests
    from node.lists.http import setup as lists
    from node.portal.http import setup as portal
    from node.figures.http import setup as figures

    return [catalog, data, federation, sharing, applications, licences, exchange, subscriptions, quality, requests,
            lists, figures, items, portal]


async def _database(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    engine = make_engine(config.database, config.sqlite_synchronous)
    try:
        await upgrade(engine, config.database.schema_)
        app[DB] = engine
        app[ENGINE] = engine
        app[CLUSTER] = cluster = Cluster(engine, config.node.id, config.database.schema_)
        app[ACCOUNTS] = accounts = AccountService(engine, config.node.id)
        cluster.on("accounts", accounts.forget)
        app[PEOPLE] = people = PeopleService(engine, config.node.id, config.home)
        cluster.on("sessions", people.forget)  # a session ended in another worker
        cluster.on("accounts", lambda _: people.forget(""))  # a department disabled: its people's sessions too
        yield
    finally:
        await engine.dispose()


async def _audit(app: web.Application) -> AsyncIterator[None]:
    audit = AuditLog(app[DB], app[CONFIG].audit_batch_ms)
    await audit.start()
    cluster = app[CLUSTER]
    audit.live_workers = cluster.live_workers
    cluster.on_lead(audit.take_up, audit.give_up)
    app[AUDIT] = audit
    metrics = app[METRICS]
    metrics.watch_journal(audit.journal)
    tasks = Supervisor(app[CONFIG].node.id, logging.getLogger("govnode.ops"))
    if metrics.multiprocess:  # the journal's totals, where the other workers' /metrics read them
        async def publish() -> None:
            metrics.publish()

        tasks.every((publish, 1.0, "metrics"))
    yield
    await tasks.close()
    await audit.close()


async def _memory(app: web.Application) -> AsyncIterator[None]:
    """Each process gives freed memory back to the system once a minute (see node/memory.py)."""
    tasks = Supervisor(app[CONFIG].node.id, logging.getLogger("govnode.ops"))
    if memory.can_trim():
        async def trim() -> None:
            await asyncio.to_thread(memory.trim)

        tasks.every((trim, memory.TRIM_INTERVAL_S, "malloc-trim"))
    yield
    await tasks.close()


async def _cluster(app: web.Application) -> AsyncIterator[None]:
    cluster = app[CLUSTER]
    await cluster.start()
    try:
        yield
    finally:
        await cluster.close()
