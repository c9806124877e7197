"""Prometheus metrics, one registry per node (several nodes can share a process in tests and simulations).

Served by several workers (`govnode run --workers N`), the node's metrics are prometheus-client's
multiprocess mode: every worker writes its values to files of one directory, and /metrics on any worker
adds up all of them (gauges: the most recent value written). The journal's running totals, which the
committer keeps in plain numbers, are copied into that directory by each worker every second.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client import values
from prometheus_client.metrics_core import CounterMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

from node.groupcommit import GroupCommitter

# No `<name>_created` series beside each counter and histogram: they would double the series a node exports
# (one per resource and op) to say when each was first seen, which the process start time already bounds.
disable_created_metrics()

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"


class Metrics:
    def __init__(self) -> None:
        self.multiprocess = bool(os.environ.get(MULTIPROCESS_DIR))
        self._journals: list[_JournalValues] = []
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
        # Where a routed call's time goes, node by node: each node's own part of a federation message, and
        # its round trips to each neighbour (a relay's message time holds its round trip to the next hop).
        self.messages = Histogram(
            "govnode_federation_message_seconds",
            "Federation messages answered here, from arrival to the answer, by role: deliver (addressed to "
            "this node), relay (a call passed on: the next hop's round trip included) or queue (an "
            "asynchronous message queued for the next hop)",
            ("role",), buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.peer_calls = Histogram(
            "govnode_peer_call_seconds",
            "Calls this node made to a neighbour, from sending to the answer read (or the failure), by peer "
            "and endpoint (messages, notify, a feed's name …; outbox for the outbox's sends of messages)",
            ("peer", "endpoint"), buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.gauges: dict[str, Gauge] = {}
        self._labelled: dict[tuple[object, ...], Any] = {}  # each metric's children, looked up once

    def children(self, resource: str, op: str, ok: bool) -> tuple:
        """The call counter and latency histogram of one (resource, op, ok)."""
        return (self._child(self.calls, resource, op, "ok" if ok else "error"),
                self._child(self.latency, resource, op))

    def message(self, role: str, seconds: float) -> None:
        self._child(self.messages, role).observe(seconds)

    def peer_call(self, peer: str, endpoint: str, seconds: float) -> None:
        self._child(self.peer_calls, peer, endpoint).observe(seconds)

    def _child(self, metric: Any, *labels: str) -> Any:
        """`metric.labels(*labels)`, looked up once: prometheus-client builds its key anew at every call."""
        key = (id(metric), *labels)
        hit = self._labelled.get(key)
        if hit is None:
            hit = self._labelled[key] = metric.labels(*labels)
        return hit

    def gauge(self, name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
        if name not in self.gauges:
            # Across workers, a gauge shows the value last set by any of them (the background work moves).
            self.gauges[name] = Gauge(name, doc, labels, registry=self.registry, multiprocess_mode="mostrecent")
        return self.gauges[name]

    def counter(self, name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
        key = "counter:" + name
        if key not in self.gauges:
            self.gauges[key] = Counter(name, doc, labels, registry=self.registry)  # type: ignore[assignment]
        return self.gauges[key]  # type: ignore[return-value]

    def watch_journal(self, journal: GroupCommitter) -> None:
        """Export a group committer's running totals (read at each scrape; the committer knows nothing of
        Prometheus)."""
        if self.multiprocess:
            self._journals.append(_JournalValues(journal))
        else:
            self.registry.register(_JournalCollector(journal))

    def publish(self) -> None:
        """Copy this worker's journal totals to its files (multiprocess mode; every second and at a scrape)."""
        for journal in self._journals:
            journal.publish()

    def exposition(self) -> bytes:
        if not self.multiprocess:
            return generate_latest(self.registry)
        self.publish()
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        return generate_latest(registry)


class _JournalCollector:
    """`govnode_journal_*`: commits (and how long each took), items (and how long each waited), failures."""

    def __init__(self, journal: GroupCommitter) -> None:
        self.journal = journal

    def describe(self) -> list[Metric]:
        return []  # families are known only at collection; an empty describe keeps registration lazy

    def collect(self) -> Iterator[Metric]:
        stats, name = self.journal.stats, self.journal.name
        failures = CounterMetricFamily("govnode_journal_commit_failures",
                                       "Batches that could not be committed (their callers got UNAVAILABLE)",
                                       labels=("journal",))
        failures.add_metric((name,), stats.failures)
        yield failures
        commit = SummaryMetricFamily("govnode_journal_commit_seconds",
                                     "Per batch: from asking for the writer's turn to the commit returning",
                                     labels=("journal",))
        commit.add_metric((name,), stats.commits, stats.commit_seconds)
        yield commit
        wait = SummaryMetricFamily("govnode_journal_wait_seconds",
                                   "Per item (audit record, replay claim, notify …): from being queued to being "
                                   "durable, what durable-before-acknowledged adds to a call", labels=("journal",))
        wait.add_metric((name,), stats.items, stats.wait_seconds)
        yield wait


class _JournalValues:
    """The `_JournalCollector` families in multiprocess mode: values in this worker's files, summed over
    the workers by /metrics."""

    def __init__(self, journal: GroupCommitter) -> None:
        self.journal = journal

        def value(typ: str, metric: str, sample: str, doc: str) -> object:
            return values.ValueClass(typ, metric, sample, ("journal",), (journal.name,), doc)

        commit = "Per batch: from asking for the writer's turn to the commit returning"
        wait = "Per item: from being queued to being durable"
        self._values = {
            "failures": value("counter", "govnode_journal_commit_failures", "govnode_journal_commit_failures_total",
                              "Batches that could not be committed (their callers got UNAVAILABLE)"),
            "commits": value("summary", "govnode_journal_commit_seconds", "govnode_journal_commit_seconds_count", commit),
            "commit_seconds": value("summary", "govnode_journal_commit_seconds", "govnode_journal_commit_seconds_sum",
                                    commit),
            "items": value("summary", "govnode_journal_wait_seconds", "govnode_journal_wait_seconds_count", wait),
            "wait_seconds": value("summary", "govnode_journal_wait_seconds", "govnode_journal_wait_seconds_sum", wait),
        }

    def publish(self) -> None:
        stats = self.journal.stats
        for name, v in self._values.items():
            v.set(getattr(stats, name))  # type: ignore[attr-defined]


METRICS = web.AppKey("metrics", Metrics)
CONTENT_TYPE = CONTENT_TYPE_LATEST


async def metrics_observer(request: web.Request, resp: web.StreamResponse, outcome: str, elapsed: float) -> None:
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
