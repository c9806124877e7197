"""The figures capability's service, in the node's cleanup context; its pages are in node.portal.figures."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from node.cluster import CLUSTER
from node.context import CONFIG, DB
from node.federation.http import FEDERATION
from node.figures.service import FiguresService
from node.ops.metrics import METRICS

FIGURES = web.AppKey("figures", FiguresService)


async def _service(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    svc = FiguresService(app[DB], config.node.id, app[FEDERATION], config.figures)
    svc.alert_gauge = app[METRICS].gauge("govnode_alert", "What an operator must act on, by kind: how many (0: none)",
                                         ("kind",))
    svc.connect()
    app[CLUSTER].on_lead(svc.take_up, svc.give_up)
    app[FIGURES] = svc
    try:
        yield
    finally:
        await svc.close()


def setup(app: web.Application) -> None:
    app.cleanup_ctx.append(_service)
