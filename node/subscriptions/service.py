"""Record change feeds for subscribers, replicas (数据回流) and webhooks (SPEC §10 `changes`, §12).

At the provider's node
- the change feed of a resource is served to a department whose grant includes `subscribe` (and to the provider
  and the node's operators, as node.data does): locally through `GET /api/v1/resources/{code}/changes`, and to
  other nodes as a `service.call` with `op: "changes"` (SPEC §6's v1 kinds are fixed; the change feed travels like
  any other operation on a resource, grant and requester included, relayed and audited hop by hop);
- what a subscriber gets is what it may see: the key (which must be visible to it: a replica is keyed by it), the
  items of the grant, and for an unconditional resource also the items that are not sensitive; sensitive items
  outside the grant come masked (as a query would show them) and are listed in `masked`;
- `wait_ms` makes the call a long poll: with nothing after `since`, the answer waits (up to 15 s, within the
  envelope's expiry) for the next commit of that resource's records, so a change reaches a subscriber at once and
  an idle subscription costs one message per wait.

At the subscriber's node, one task a subscription:
- pulls the feed from its cursor (through the federation, or locally), with the department's `subscribe` grant;
- `replica`: writes each page into its copy (node.data's records under `replica/<id>`) and moves the cursor in the
  same transaction; a new grant, or a provider view that changed (other items in clear or masked), starts the copy
  afresh from cursor 0 — one snapshot, since the feed holds each key's latest state once;
- `webhook`: POSTs each page to the department's URL, signed `X-GovNode-Signature: t=<ms>,v1=<hex>` =
  HMAC-SHA256(secret, "<t>." + body), and moves the cursor only after a 2xx answer;
- on any failure (a hop down, the provider restarting, the receiver refusing) it retries with back-off from
  the same cursor; a refusal by the grant rules (revoked, expired, no grant) suspends it and retries slowly.

Replica answers: the sharing service's router for remote resources is wrapped, so that a department's query,
verify or compare on a resource it keeps a replica of is answered from the copy when the copy can answer exactly as
the provider would — the same share type, grant and field rules, the same masking; a call that needs an item the
copy holds only masked (e.g. verifying a masked item) still goes to the provider. Replica answers carry
`"replica": true`, `lag_ms` and `in_step_at`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
from typing import Any

import aiohttp
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncEngine

from node import tls
from node.accounts.service import Account
from node.catalog.service import CatalogService
from node.data import store as data_store
from node.data.service import DataService
from node.cluster import announce
from node.db import next_counter, write_tx
from node.errors import ApiError, Conflict, FieldNotGranted, Forbidden, GrantRequired, InvalidInput, NotFound, ShareForbidden
from node.exchange.sealing import Sealer
from node.federation.service import FederationService
from node.supervisor import Supervisor
from node.ids import new_id, now_ms
from node.ops.metrics import Metrics
from node.sharing.masking import masker
from node.sharing.models import Requester
from node.sharing.service import OPS, SharingService, conditional, within_grant
from node.subscriptions import store
from node.subscriptions.models import MAX_WAIT_MS, FeedParams, SubscriptionCreate
from node.web import parse_model, validation_details
from node.workdays import cst_iso

log = logging.getLogger("govnode.subscriptions")

POLL_WAIT_MS = 10_000       # a subscriber's long poll
PAGE = 1000
WEBHOOK_TIMEOUT_S = 10.0
WEBHOOK_ANSWER_BYTES = 64 * 1024
MAX_BACKOFF_S = 30.0
SUSPENDED_RETRY_S = 60.0
# Refusals by the grant rules: the subscription is suspended (retried slowly, a new grant may come).
GRANT_CODES = frozenset({"GRANT_REQUIRED", "FIELD_NOT_GRANTED", "REVOKED", "FORBIDDEN", "SHARE_FORBIDDEN",
                         "NOT_FOUND"})
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def signature(secret: str, ts: int, body: bytes) -> str:
    """The webhook signature: HMAC-SHA256 over "<ts>." + body, hex."""
    return hmac.new(secret.encode(), str(ts).encode() + b"." + body, hashlib.sha256).hexdigest()


class Subscription:
    """One subscription at run time."""

    def __init__(self, row: Any) -> None:
        self.id: str = row.id
        self.resource: str = row.resource
        self.provider_node: str = row.provider_node
        self.dept: str = row.dept
        self.mode: str = row.mode
        self.url: str | None = row.url
        self.status: str = row.status
        self.cursor: int = int(row.cursor)
        self.state: dict[str, Any] = json.loads(row.state)
        self.created_at: int = row.created_at
        self.caught_up = False
        self.poll_started: int | None = None

    @property
    def code(self) -> str:
        return store.replica_code(self.id)


class SubscriptionService:
    def __init__(self, engine: AsyncEngine, node_id: str, catalog: CatalogService, data: DataService,
                 sharing: SharingService, federation: FederationService, sealer: Sealer, metrics: Metrics) -> None:
        self.engine = engine
        self.node_id = node_id
        self.catalog = catalog
        self.data = data
        self.sharing = sharing
        self.federation = federation
        self.sealer = sealer
        self.subs: dict[str, Subscription] = {}
        self._events: dict[str, asyncio.Event] = {}
        self._session: aiohttp.ClientSession | None = None
        self._closing = False
        self.tasks = Supervisor(node_id, log)  # one loop a subscription, by its id
        self.cluster: Any = None  # node.cluster: the loops run in the worker doing the background work
        self._remote_router: Any = None
        self.poll_wait_ms = POLL_WAIT_MS
        self._m_lag = metrics.gauge("govnode_subscription_lag_seconds",
                                    "seconds since the subscription was last in step with its provider (0 while in step)",
                                    ("subscription", "resource", "mode"))
        self._m_errors = metrics.counter("govnode_subscription_errors_total",
                                         "failed pulls or deliveries of subscriptions", ("subscription", "resource", "mode"))
        self._m_changes = metrics.counter("govnode_subscription_changes_total",
                                          "changes applied to replicas or delivered to webhooks",
                                          ("subscription", "resource", "mode"))

    # Life cycle -------------------------------------------------------------------------------------

    def connect(self) -> None:
        """Serve `changes` as a service.call, feed granted departments through node.data's change feed, wake
        long polls on every commit, and answer calls from replicas."""
        served = self.federation.handlers.get("service.call")

        async def service_call(env: dict[str, Any]) -> dict[str, Any]:
            body = env.get("body")
            if isinstance(body, dict) and body.get("op") == "changes":
                return await self.on_changes_call(env)
            if served is None:
                raise ApiError("service.call is not served here", code="KIND_UNSUPPORTED")
            return await served(env)

        self.federation.handlers["service.call"] = service_call
        self.data.listeners.append(self._wake)
        self.data.subscriber_feed = self.feed_for
        self._remote_router = self.sharing.router
        self.sharing.router = self._route

    async def start(self) -> None:
        self._session = tls.client_session(self.federation.config, timeout=aiohttp.ClientTimeout(total=WEBHOOK_TIMEOUT_S))
        await self._load()
        if self.cluster is None:  # no workers to share with: this process runs the subscriptions
            await self.take_up()

    async def _load(self) -> None:
        """The active subscriptions as stored (a running loop keeps its own, newer state)."""
        async with self.engine.connect() as conn:
            rows = await store.active(conn)
        active = {row.id for row in rows}
        for sub_id in [i for i in self.subs if i not in active]:
            await self.tasks.cancel(sub_id)
            self.subs.pop(sub_id, None)
        for row in rows:
            if self.tasks.running(row.id) is None:
                self.subs[row.id] = Subscription(row)

    def _runs_here(self) -> bool:
        return self.cluster is None or self.cluster.leader

    async def take_up(self) -> None:
        """The subscriptions' loops are background work: one worker of the node runs them (node.cluster),
        from the cursor and state the last one stored."""
        await self._load()
        for sub in list(self.subs.values()):
            self._start(sub)

    async def give_up(self) -> None:
        await self.tasks.close()

    def told(self, _payload: str = "") -> None:
        """Another worker created or cancelled a subscription (node.cluster): read them again."""
        self.tasks.spawn(self._load_and_start())

    async def _load_and_start(self) -> None:
        await self._load()
        if self._runs_here():
            for sub in list(self.subs.values()):
                if self.tasks.running(sub.id) is None:
                    self._start(sub)

    async def close(self) -> None:
        self._closing = True
        await self.tasks.close()
        if self._session is not None:
            await self._session.close()

    def stop_waiting(self) -> None:
        """The node is shutting down: long polls answer now, so that the server does not wait for them."""
        self._closing = True
        for code in list(self._events):
            self._wake(code)

    def _start(self, sub: Subscription) -> None:
        if self._runs_here():
            self.tasks.spawn(self._loop(sub), key=sub.id)

    # The provider's side: the change feed for subscribers -------------------------------------------------

    def _wake(self, code: str) -> None:
        ev = self._events.pop(code, None)
        if ev is not None:
            ev.set()

    def _event(self, code: str) -> asyncio.Event:
        ev = self._events.get(code)
        if ev is None:
            ev = self._events[code] = asyncio.Event()
        return ev

    async def _visible(self, entry: dict[str, Any], requester: Requester,
                       grant: dict[str, Any] | None) -> tuple[list[str], list[str]]:
        """(items in clear, items masked) of the feed for this requester; raises as the grant rules say."""
        share = entry["share"]
        if share["type"] == "none":
            raise ShareForbidden(f"{entry['code']} is not shared (basis: {share.get('basis', '')})")
        schema = self.data.schema(entry)
        if requester.node == self.node_id and requester.dept == entry["provider"]["dept"]:
            return list(schema.fields), []
        if grant is None:
            raise GrantRequired(f"the change feed of {entry['code']} is served to departments whose grant includes "
                                "subscribe; apply for one")
        if self.sharing.grant_checker is None:
            raise GrantRequired("this node cannot check grants yet")
        granted = await self.sharing.grant_checker(entry, "subscribe", requester, grant)
        if conditional(entry, "subscribe"):
            clear = [f for f in schema.fields if f in granted]
            masked: list[str] = []
        else:
            clear = [f for f in schema.fields if f not in schema.sensitive or f in granted]
            masked = [f for f in schema.fields if f in schema.sensitive and f not in granted]
        key = schema.key.field
        if key not in clear:
            raise FieldNotGranted(f"records are followed by their key: a subscription to {entry['code']} needs the "
                                  f"key item {key} in its grant", [{"field": key, "error": "not granted"}])
        return clear, masked

    async def serve_changes(self, entry: dict[str, Any], requester: Requester, grant: dict[str, Any] | None,
                            p: FeedParams, max_wait_ms: int = MAX_WAIT_MS) -> dict[str, Any]:
        if entry["node"] != self.node_id:
            raise NotFound(f"{entry['code']} is not held at {self.node_id}")
        clear, masked = await self._visible(entry, requester, grant)
        code = entry["code"]
        schema = self.data.schema(entry)
        maskers = {f: masker(schema.by_field[f].type, schema.by_field[f].check) for f in masked}
        wait_s = min(p.wait_ms, max(0, max_wait_ms)) / 1000
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while True:
            ev = self._event(code)
            async with self.engine.connect() as conn:
                rows = await store.feed(conn, code, p.since, p.limit + 1)
            remaining = deadline - loop.time()
            if rows or remaining <= 0 or self._closing:
                break
            try:  # woken by the next commit; looked at again every second whatever happens
                await asyncio.wait_for(ev.wait(), min(remaining, 1.0))
            except TimeoutError:
                pass
        more = len(rows) > p.limit
        rows = rows[:p.limit]
        changes = []
        for r in rows:
            data = None
            if not r.deleted and r.data is not None:
                data = {f: r.data[f] for f in clear if f in r.data}
                for f, m in maskers.items():
                    if f in r.data:
                        data[f] = m(r.data[f])
            changes.append({"key": r.key, "data": data, "deleted": bool(r.deleted), "change": r.change_id,
                            "at": r.updated_at})
        return {"resource": code, "changes": changes, "next": rows[-1].change_id if rows else p.since, "more": more,
                "as_of": now_ms(), "fields": clear, "masked": masked}

    async def on_changes_call(self, env: dict[str, Any]) -> dict[str, Any]:
        """A `service.call` with `op: "changes"` from another node."""
        body = env["body"]
        code = body.get("resource")
        if not isinstance(code, str):
            raise InvalidInput("a service.call names its resource")
        try:
            requester = Requester.model_validate(body.get("requester") or {})
            params = FeedParams.model_validate(body.get("params") or {})
        except ValidationError as exc:
            raise InvalidInput("the requester or the params are malformed", validation_details(exc)) from None
        if requester.node != env["origin"]:
            raise Forbidden(f"{env['origin']} cannot vouch for a requester of node {requester.node}")
        grant = body.get("grant")
        if grant is not None and not isinstance(grant, dict):
            raise InvalidInput("grant must be a signed grant object or null")
        entry = await self.catalog.get(code)
        # Answer well within the envelope's expiry (relays on the way back need their share of it).
        max_wait = int(env["expires_at"]) - now_ms() - 5_000
        return await self.serve_changes(entry, requester, grant, params, max_wait)

    async def _grant(self, entry: dict[str, Any], requester: Requester) -> dict[str, Any] | None:
        if self.sharing.grant_finder is None:
            return None
        return await self.sharing.grant_finder(entry, "subscribe", requester)

    async def pull(self, entry: dict[str, Any], requester: Requester, since: int, limit: int, wait_ms: int = 0,
                   grant: dict[str, Any] | None = None, *, find_grant: bool = True) -> dict[str, Any]:
        """A page of the feed for a department of this node, wherever the resource is held."""
        if grant is None and find_grant:
            grant = await self._grant(entry, requester)
        p = FeedParams(since=since, limit=limit, wait_ms=wait_ms)
        if entry["node"] == self.node_id:
            return await self.serve_changes(entry, requester, grant, p)
        body = {"resource": entry["code"], "op": "changes", "params": p.model_dump(),
                "requester": requester.model_dump(exclude_none=True), "grant": grant}
        return await self.federation.call("service.call", entry["node"], body)

    async def feed_for(self, acct: Account, entry: dict[str, Any], since: int, limit: int) -> dict[str, Any]:
        """`GET /api/v1/resources/{code}/changes` for a department that is not the provider (node.data's hook)."""
        page = await self.pull(entry, Requester(node=acct.node, dept=acct.dept), since, min(limit, 1000))
        return {k: v for k, v in page.items()}

    # The subscriber's side --------------------------------------------------------------------------------

    async def create(self, acct: Account, body: SubscriptionCreate) -> dict[str, Any]:
        if acct.role != "dept":
            raise Forbidden("a department subscribes (its grant is what allows it)")
        refusal = tls.plain_http_refusal(body.url, self.federation.config.insecure_http) if body.url else None
        if refusal is not None:
            raise InvalidInput(refusal, [{"field": "url", "error": "plain HTTP off loopback"}])
        entry = await self.catalog.get(body.resource)
        requester = Requester(node=acct.node, dept=acct.dept)
        own = entry["node"] == self.node_id and entry["provider"]["dept"] == acct.dept
        if body.mode == "replica" and entry["node"] == self.node_id:
            raise InvalidInput(f"{body.resource} is held at this node: query it directly, a replica would copy it "
                               "onto itself", [{"field": "mode", "error": "resource held here"}])
        for s in self.subs.values():
            if (s.status == "active" and s.dept == acct.dept and s.resource == body.resource and s.mode == body.mode
                    and s.url == body.url):
                raise Conflict(f"subscription {s.id} already does that", {"subscription": s.id})
        grant = None if own else await self._grant(entry, requester)
        if grant is None and not own:
            raise GrantRequired(f"a subscription to {body.resource} needs a grant that includes subscribe; apply for "
                                "one (POST /api/v1/applications with ops [\"subscribe\", …])")
        # Ask the provider once now, so that a refusal (fields, revocation …) is answered to the caller; a
        # provider that cannot be reached right now is retried by the subscription itself.
        try:
            await self.pull(entry, requester, 0, 1, 0, grant, find_grant=False)
        except ApiError as err:
            if err.code not in ("PEER_UNREACHABLE", "PEER_TIMEOUT", "UNAVAILABLE"):
                raise
        now = now_ms()
        row = {"id": new_id(), "resource": body.resource, "provider_node": entry["node"], "dept": acct.dept,
               "mode": body.mode, "url": body.url, "status": "active", "cursor": 0,
               "state": {"grant": (grant or {}).get("id"), "view": None, "in_step_at": None, "last_change_at": None,
                         "last_error": None, "failures": 0, "batches": 0, "changes": 0, "delivery_failures": 0,
                         "suspended": False},
               "created_at": now, "updated_at": now}
        async with write_tx(self.engine) as conn:
            await store.insert(conn, row)
            held = await store.get(conn, row["id"])
            await announce(conn, "subscriptions", row["id"])
        sub = Subscription(held)
        self.subs[sub.id] = sub
        self._start(sub)
        log.info("%s/%s subscribed to %s (%s, subscription %s)", acct.node, acct.dept, body.resource, body.mode, sub.id)
        view = await self.view(sub)
        if sub.mode == "webhook":
            view["secret"] = self.sealer.derive("webhook", sub.id)
        return view

    async def _mine(self, acct: Account, sub_id: str) -> Subscription:
        sub = self.subs.get(sub_id)
        if sub is None:  # made through another worker of this node a moment ago
            async with self.engine.connect() as conn:
                row = await store.get(conn, sub_id)
            sub = Subscription(row) if row is not None and row.status == "active" else None
        if sub is None or (acct.role == "dept" and sub.dept != acct.dept) or acct.role not in ("dept", "operator",
                                                                                                "auditor"):
            raise NotFound(f"no subscription {sub_id} of the caller at node {self.node_id}")
        return sub

    async def get(self, acct: Account, sub_id: str) -> dict[str, Any]:
        sub = self.subs.get(sub_id)
        if sub is None:
            async with self.engine.connect() as conn:
                row = await store.get(conn, sub_id)
            if row is None:
                raise NotFound(f"no subscription {sub_id} at node {self.node_id}")
            sub = Subscription(row)
        if acct.role == "dept" and sub.dept != acct.dept:
            raise NotFound(f"no subscription {sub_id} of the caller at node {self.node_id}")
        return await self.view(sub)

    async def list_subscriptions(self, acct: Account) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            rows = await store.listing(conn, acct.dept if acct.role == "dept" else None)
        return [await self.view(self.subs.get(r.id) or Subscription(r)) for r in rows]

    async def cancel(self, acct: Account, sub_id: str) -> dict[str, Any]:
        sub = await self._mine(acct, sub_id)
        if acct.role == "auditor":
            raise Forbidden("an auditor does not cancel subscriptions")
        sub.status = "cancelled"
        await self.tasks.cancel(sub.id)
        async with write_tx(self.engine) as conn:
            if sub.mode == "replica":
                await store.drop_records(conn, sub.code)
            await store.save(conn, sub.id, cursor=sub.cursor, state=sub.state, at=now_ms(), status="cancelled")
            await announce(conn, "subscriptions", sub.id)
        self.subs.pop(sub.id, None)
        log.info("subscription %s to %s cancelled", sub.id, sub.resource)
        return await self.view(sub)

    # The loop of one subscription ---------------------------------------------------------------------------

    async def _loop(self, sub: Subscription) -> None:
        requester = Requester(node=self.node_id, dept=sub.dept)
        while sub.status == "active" and not self._closing:
            try:
                entry = await self.catalog.get(sub.resource)
                own = entry["node"] == self.node_id and entry["provider"]["dept"] == sub.dept
                grant = None if own else await self._grant(entry, requester)
                if grant is None and not own:
                    raise GrantRequired(f"{sub.dept} holds no valid grant with subscribe for {sub.resource}")
                if (grant or {}).get("id") != sub.state.get("grant"):
                    await self._reset(sub, f"grant {(grant or {}).get('id')}")
                    sub.state["grant"] = (grant or {}).get("id")
                wait = self.poll_wait_ms if sub.caught_up else 0
                sub.poll_started = now_ms()
                page = await self.pull(entry, requester, sub.cursor, PAGE, wait, grant, find_grant=False)
                view = {"fields": page.get("fields"), "masked": page.get("masked")}
                if sub.state.get("view") is not None and sub.state["view"] != view:
                    await self._reset(sub, "the items served changed")
                    sub.state["view"] = view
                    continue
                sub.state["view"] = view
                if sub.mode == "replica":
                    await self._apply(sub, page)
                else:
                    await self._deliver(sub, page)
                was_failing = bool(sub.state.get("failures")) or sub.state.get("suspended")
                sub.caught_up = not page.get("more")
                if sub.caught_up:
                    sub.state["in_step_at"] = now_ms()
                    self._m_lag.labels(sub.id, sub.resource, sub.mode).set(0)
                if was_failing:
                    sub.state.update(failures=0, last_error=None, suspended=False)
                    await self._save(sub)
            except asyncio.CancelledError:
                raise
            except ApiError as err:
                await self._failed(sub, err.code, err.message, suspend=err.code in GRANT_CODES)
            except Exception as exc:  # noqa: BLE001 - reported in the state, retried
                log.exception("subscription %s failed unexpectedly", sub.id)
                await self._failed(sub, "INTERNAL", f"internal error: {type(exc).__name__}", suspend=False)

    async def _failed(self, sub: Subscription, code: str, message: str, *, suspend: bool) -> None:
        st = sub.state
        st["failures"] = int(st.get("failures") or 0) + 1
        st["last_error"] = {"at": cst_iso(now_ms()), "code": code, "message": message[:500]}
        st["suspended"] = suspend
        sub.caught_up = False
        sub.poll_started = None
        self._m_errors.labels(sub.id, sub.resource, sub.mode).inc()
        if st.get("in_step_at"):
            self._m_lag.labels(sub.id, sub.resource, sub.mode).set((now_ms() - st["in_step_at"]) / 1000)
        delay = SUSPENDED_RETRY_S if suspend else min(MAX_BACKOFF_S, 0.5 * 2 ** min(st["failures"], 10))
        log.info("subscription %s to %s: %s (%s); retrying in %.1f s", sub.id, sub.resource, message, code, delay)
        try:
            await self._save(sub)
        except Exception:  # noqa: BLE001
            log.exception("could not save the state of subscription %s", sub.id)
        await asyncio.sleep(delay)

    async def _save(self, sub: Subscription) -> None:
        async with write_tx(self.engine) as conn:
            await store.save(conn, sub.id, cursor=sub.cursor, state=sub.state, at=now_ms())

    async def _reset(self, sub: Subscription, why: str) -> None:
        """Start the copy (or the deliveries) afresh from the first change."""
        if sub.cursor == 0 and sub.state.get("view") is None:
            return
        log.info("subscription %s to %s starts afresh: %s", sub.id, sub.resource, why)
        sub.cursor = 0
        sub.caught_up = False
        sub.state["view"] = None
        async with write_tx(self.engine) as conn:
            if sub.mode == "replica":
                await store.drop_records(conn, sub.code)
            await store.save(conn, sub.id, cursor=0, state=sub.state, at=now_ms())

    async def _apply(self, sub: Subscription, page: dict[str, Any]) -> None:
        changes = page.get("changes") or []
        nxt = int(page.get("next") or sub.cursor)
        if not changes and nxt == sub.cursor:
            return
        rows = [(c["key"], None if c.get("deleted") or c.get("data") is None else _dumps(c["data"]))
                for c in changes]
        rows = list(dict(rows).items())  # one change a key (the feed holds each key once; never trust that)
        now = now_ms()
        if changes:
            sub.state["last_change_at"] = max(int(c.get("at") or 0) for c in changes)
            sub.state["batches"] = int(sub.state.get("batches") or 0) + 1
            sub.state["changes"] = int(sub.state.get("changes") or 0) + len(changes)
        async with write_tx(self.engine) as conn:
            if rows:
                last = await next_counter(conn, data_store.CHANGE_COUNTER, len(rows))
                await data_store.upsert_many(conn, sub.code, rows, last - len(rows) + 1, now)
            await store.save(conn, sub.id, cursor=nxt, state=sub.state, at=now)
        sub.cursor = nxt
        if changes:
            self._m_changes.labels(sub.id, sub.resource, sub.mode).inc(len(changes))

    async def _deliver(self, sub: Subscription, page: dict[str, Any]) -> None:
        changes = page.get("changes") or []
        nxt = int(page.get("next") or sub.cursor)
        if changes:
            assert self._session is not None and sub.url
            refusal = tls.plain_http_refusal(sub.url, self.federation.config.insecure_http)
            if refusal is not None:  # checked at each delivery: the setting may have changed since it was made
                raise ApiError(refusal, code="PEER_UNREACHABLE")
            ts = now_ms()
            body = _dumps({"subscription": sub.id, "resource": sub.resource, "changes": changes, "since": sub.cursor,
                           "next": nxt, "fields": page.get("fields"), "masked": page.get("masked"),
                           "sent_at": ts}).encode()
            secret = self.sealer.derive("webhook", sub.id)
            headers = {"Content-Type": "application/json", "X-GovNode-Subscription": sub.id,
                       "X-GovNode-Delivery": f"{sub.id}-{sub.cursor}-{nxt}",
                       "X-GovNode-Signature": f"t={ts},v1={signature(secret, ts, body)}"}
            try:
                async with self._session.post(sub.url, data=body, headers=headers, allow_redirects=False) as resp:
                    # Only the status matters: the subscriber's answer is read no further than this, since aiohttp
                    # inflates a gzip answer as it is read and it could unpack to anything.
                    await resp.content.read(WEBHOOK_ANSWER_BYTES)
                    ok = 200 <= resp.status < 300
                    status = resp.status
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                ok, status = False, f"{type(exc).__name__}"
            if not ok:
                sub.state["delivery_failures"] = int(sub.state.get("delivery_failures") or 0) + 1
                raise ApiError(f"the webhook answered {status}; the batch is sent again", code="PEER_UNREACHABLE")
            sub.state["last_change_at"] = max(int(c.get("at") or 0) for c in changes)
            sub.state["batches"] = int(sub.state.get("batches") or 0) + 1
            sub.state["changes"] = int(sub.state.get("changes") or 0) + len(changes)
            self._m_changes.labels(sub.id, sub.resource, sub.mode).inc(len(changes))
        if nxt != sub.cursor or changes:
            sub.cursor = nxt
            await self._save(sub)

    # Views ------------------------------------------------------------------------------------------------

    def lag_ms(self, sub: Subscription) -> int | None:
        st = sub.state
        in_step = st.get("in_step_at")
        if in_step is None:
            return None
        now = now_ms()
        polling = sub.poll_started is not None and now - sub.poll_started <= self.poll_wait_ms + 5_000
        if sub.caught_up and polling and not st.get("failures"):
            return 0
        return max(0, now - int(in_step))

    async def view(self, sub: Subscription) -> dict[str, Any]:
        st = sub.state
        if sub.status != "active":
            state = "cancelled"
        elif st.get("suspended"):
            state = "suspended"
        elif st.get("failures"):
            state = "error"
        elif sub.caught_up:
            state = "live"
        else:
            state = "syncing"
        records = None
        if sub.mode == "replica" and sub.status == "active":
            async with self.engine.connect() as conn:
                records = await store.count_live(conn, sub.code)
        view = st.get("view") or {}
        return {
            "id": sub.id, "resource": sub.resource, "provider_node": sub.provider_node, "dept": sub.dept,
            "mode": sub.mode, "url": sub.url, "status": sub.status, "state": state, "cursor": sub.cursor,
            "records": records, "lag_ms": self.lag_ms(sub) if sub.status == "active" else None,
            "in_step_at": cst_iso(st["in_step_at"]) if st.get("in_step_at") else None,
            "last_change_at": cst_iso(st["last_change_at"]) if st.get("last_change_at") else None,
            "fields": view.get("fields"), "masked": view.get("masked"),
            "deliveries": {"batches": int(st.get("batches") or 0), "changes": int(st.get("changes") or 0),
                           "failures": int(st.get("delivery_failures") or 0)} if sub.mode == "webhook" else None,
            "last_error": st.get("last_error"), "failures": int(st.get("failures") or 0),
            "created_at": cst_iso(sub.created_at),
        }

    # Answering from a replica ---------------------------------------------------------------------------

    def _replica_for(self, code: str, requester: Requester) -> Subscription | None:
        if requester.node != self.node_id:
            return None
        for sub in self.subs.values():
            if (sub.mode == "replica" and sub.status == "active" and sub.resource == code and sub.dept == requester.dept
                    and sub.state.get("in_step_at") and sub.state.get("view") and not sub.state.get("suspended")):
                return sub
        return None

    async def _route(self, entry: dict[str, Any], op: str, params: dict[str, Any], requester: Requester,
                     grant: dict[str, Any] | None) -> dict[str, Any]:
        # A person's call goes to the provider even when a copy could answer it: SPEC §15 records the person and
        # their purpose in the provider's audit log too.
        sub = self._replica_for(entry["code"], requester) if requester.user is None else None
        if sub is not None:
            answer = await self._answer_from_replica(sub, entry, op, params, grant)
            if answer is not None:
                return answer
        if self._remote_router is None:
            raise ApiError("routing to other nodes is not available", code="PEER_UNREACHABLE")
        return await self._remote_router(entry, op, params, requester, grant)

    async def _answer_from_replica(self, sub: Subscription, entry: dict[str, Any], op: str, params: dict[str, Any],
                                   grant: dict[str, Any] | None) -> dict[str, Any] | None:
        """The provider's answer, computed from the copy; None when the copy cannot give exactly that answer
        (the call then goes to the provider, which also gives every refusal its authoritative wording)."""
        model = OPS.get(op)
        if model is None or entry["share"]["type"] == "none":
            return None
        p = parse_model(model, params)
        now = now_ms()
        granted: frozenset[str] = frozenset()
        if grant is not None:
            consumer = grant.get("consumer") or {}
            if (grant.get("resource") != entry["code"] or (consumer.get("node"), consumer.get("dept")) != (
                    self.node_id, sub.dept) or op not in grant.get("ops", ()) or not (
                    grant.get("valid_from", 0) <= now <= grant.get("valid_until", 0))):
                return None
            granted = frozenset(grant.get("fields") or ())
        elif conditional(entry, op):
            return None
        view = self.sharing._view(entry)  # noqa: SLF001 - the sharing service's own rules, on the copy's records
        schema = view.schema
        if conditional(entry, op):
            p = within_grant(schema, p, granted)
        clear = set(sub.state["view"].get("fields") or ())
        stored_masked = set(sub.state["view"].get("masked") or ())
        key = schema.key.field
        sensitive = schema.sensitive
        fields_out: list[str] = []
        if op == "query":
            fields_out = [f for f in (p.fields or schema.fields) if f in schema.by_field]
            matched = set(p.where or ()) | {key}
        elif op == "verify":
            matched = set(p.fields) | {key}
        else:
            matched = set(p.fields or ()) | {f for r in p.records or [] for f in r} | {key}
        matched &= set(schema.by_field)
        must_mask = {f for f in fields_out if f in sensitive and f not in granted}
        shown_clear = {f for f in fields_out if f not in must_mask}
        if not (matched | shown_clear) <= clear or not must_mask <= (clear | stored_masked):
            return None
        code = sub.code
        if op == "query":
            # Items the copy holds masked are shown as held (masking them again would change them).
            answer = await self.sharing._query(code, view, p, granted | stored_masked)  # noqa: SLF001
            answer["masked"] = [f for f in fields_out if f in must_mask]
        elif op == "verify":
            answer = await self.sharing._verify(code, view, p)  # noqa: SLF001
        else:
            answer = await self.sharing._compare(code, view, p)  # noqa: SLF001
        if "resource" in answer:
            answer["resource"] = entry["code"]
        answer["replica"] = True
        answer["lag_ms"] = self.lag_ms(sub)
        answer["in_step_at"] = cst_iso(sub.state["in_step_at"])
        return answer

