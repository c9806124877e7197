"""Prometheus metrics, one registry per node (several nodes can share a process in tests and simulations)."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.calls = Counter(
            "govnode_api_calls_total", "API calls by resource, operation and outcome",
            ("resource", "op", "outcome"), registry=self.registry,
        )
        self.errors = Counter(
            "govnode_api_errors_total", "API calls answered with an error, by resource, operation and code",
            ("resource", "op", "code"), registry=self.registry,
        )
        self.latency = Histogram(
            "govnode_api_latency_seconds", "API call latency by resource and operation",
            ("resource", "op"), buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.gauges: dict[str, Gauge] = {}
        self._children: dict[tuple[str, str, bool], tuple] = {}

    def children(self, resource: str, op: str, ok: bool) -> tuple:
        """The call counter and latency histogram of one (resource, op, ok), looked up once."""
        key = (resource, op, ok)
        hit = self._children.get(key)
        if hit is None:
            hit = self._children[key] = (self.calls.labels(resource, op, "ok" if ok else "error"),
                                         self.latency.labels(resource, op))
        return hit

    def gauge(self, name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
        if name not in self.gauges:
            self.gauges[name] = Gauge(name, doc, labels, registry=self.registry)
        return self.gauges[name]

    def counter(self, name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
        key = "counter:" + name
        if key not in self.gauges:
            self.gauges[key] = Counter(name, doc, labels, registry=self.registry)  # type: ignore[assignment]
        return self.gauges[key]  # type: ignore[return-value]

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


METRICS = web.AppKey("metrics", Metrics)
CONTENT_TYPE = CONTENT_TYPE_LATEST


async def metrics_observer(request: web.Request, status: int, outcome: str, elapsed: float) -> None:
    if not request.path.startswith("/api/"):
        return
    m = request.app[METRICS]
    route = request.match_info.route.name if request.match_info.route else None
    op = route or "unmatched"
    resource = request.match_info.get("code", "")
    calls, latency = m.children(resource, op, outcome == "ok")
    calls.inc()
    if outcome != "ok":
        m.errors.labels(resource, op, outcome).inc()
    latency.observe(elapsed)
