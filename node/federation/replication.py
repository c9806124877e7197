"""Replication (SPEC §5, §7): the registry and the signed feeds (the catalog, and those capabilities
register) served to neighbours as change feeds, pulled from them on notify and on a schedule, and the
notifies that tell them of this node's changes."""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any

from federation.client import PeerError
from federation.errors import FederationError, SignatureError, TrustError
from federation.feeds import FeedPuller
from federation.signing import verify_signed_json
from node.catalog import store as catalog_store
from node.catalog.models import CatalogEntry
from node.catalog.service import CHANGE_COUNTER, CatalogService
from node.cluster import announce
from node.db import read_counter, write_tx
from node.errors import ApiError
from node.federation import store
from node.federation.peers import Throttle
from node.ids import level_of, now_ms, resource_node

if TYPE_CHECKING:
    import asyncio

    from node.federation.service import FederationService

log = logging.getLogger("govnode.federation")

FEEDS = ("registry", "catalog")  # every node's feeds; capabilities add signed feeds (register_feed)
REGISTRY_FEED = "registry"


class SignedFeed:
    """A feed of signed objects that replicates like the catalog (SPEC §5, §7): each object has one origin node,
    which alone writes and signs it, and a `seq` that grows with each of the origin's changes. A node serves its
    parent the objects of its subtree and each child those from outside the child's subtree; it applies what it
    receives only when the origin's signature verifies (with the origin's keys of the signing time) and the
    object is newer than the one held, and logs what it refuses. The catalog is one; capabilities register
    theirs with `FederationService.register_feed`. The feed is served at `/federation/v1/<name>/changes`."""

    name = ""
    counter = ""  # the local change counter: cursor of the feed, head of its notifies

    def origin(self, obj: dict[str, Any]) -> Any:
        return obj.get("node")

    def key(self, obj: dict[str, Any]) -> Any:
        """The object's identity, for logs and refusals."""
        raise NotImplementedError

    def signed_at(self, obj: dict[str, Any]) -> int:
        return obj["updated_at"]

    default_scope = "province"  # SPEC §18: what an object without a `scope` is

    def scope(self, obj: dict[str, Any]) -> str:
        """SPEC §18: `national` objects travel above a province; `province` ones stay in it."""
        return obj.get("scope") or self.default_scope

    def problem(self, obj: dict[str, Any]) -> str | None:
        """Why the object is malformed or inconsistent (checked before its signature), or None."""
        raise NotImplementedError

    def document(self, row: Any) -> dict[str, Any]:
        """The object of a row returned by `changes`."""
        raise NotImplementedError

    async def changes(self, conn: Any, since: int, limit: int, nodes_in: set[str] | None,
                      nodes_out: set[str] | None) -> list[Any]:
        """Rows (with `change_id`) changed after `since`, in commit order, of origins in / not in a set."""
        raise NotImplementedError

    async def apply_many(self, objs: list[dict[str, Any]], conn: Any) -> int:
        """Store the verified objects that are newer than those held, in the caller's write transaction;
        returns how many were applied."""
        raise NotImplementedError

    async def log_refusal(self, conn: Any, refusal: dict[str, Any]) -> None:
        """Record a refused object: {at, key, node, received_from, reason}."""
        raise NotImplementedError


class CatalogFeed(SignedFeed):
    """The catalog as a signed feed (SPEC §7)."""

    name = "catalog"
    counter = CHANGE_COUNTER

    def __init__(self, catalog: CatalogService) -> None:
        self.catalog = catalog

    def key(self, obj: dict[str, Any]) -> Any:
        return obj.get("code")

    def problem(self, obj: dict[str, Any]) -> str | None:
        try:
            CatalogEntry.model_validate(obj)
        except Exception:  # noqa: BLE001 - any shape problem is a refusal
            return "malformed catalog entry"
        if resource_node(obj["code"]) != obj["node"]:
            return f"code {obj['code']} does not start with its origin {obj['node']}"
        return None

    def document(self, row: Any) -> dict[str, Any]:
        return json.loads(row.entry)

    async def changes(self, conn: Any, since: int, limit: int, nodes_in: set[str] | None,
                      nodes_out: set[str] | None) -> list[Any]:
        return await catalog_store.changes(conn, since, limit, nodes_in=nodes_in, nodes_out=nodes_out)

    async def apply_many(self, objs: list[dict[str, Any]], conn: Any) -> int:
        return len(await self.catalog.apply_received_many(objs, conn))

    async def log_refusal(self, conn: Any, refusal: dict[str, Any]) -> None:
        code = refusal["key"][:64] if refusal["key"] else None
        await catalog_store.log_refusal(conn, at=refusal["at"], code=code, node=refusal["node"],
                                        received_from=refusal["received_from"], reason=refusal["reason"])


def _page(entries: list[Any], rows: list[Any], limit: int, head: int, since: int) -> dict[str, Any]:
    more = len(rows) == limit
    nxt = rows[-1].change_id if more else max(head, rows[-1].change_id if rows else since)
    return {"entries": entries, "next": str(nxt), "more": more}


class Replication:
    def __init__(self, fed: "FederationService") -> None:
        self.fed = fed
        self.engine = fed.engine
        self.node_id = fed.node_id
        # Pulls run in the worker that does the node's background work (node.cluster), and only while it does.
        self.puller: FeedPuller | None = None
        self.feeds: dict[str, SignedFeed] = {"catalog": CatalogFeed(fed.catalog)}
        # Feed cursors as stored ((peer, feed) -> cursor, None when no row yet); this node is their only writer.
        self._cursors: dict[tuple[str, str], str | None] = {}
        self._stall_retry = Throttle(5.0)  # "peer:feed": when a stalled feed last had the peer's registry pulled
        # (peer, feed) -> when that signed feed stalled on an origin the registry did not verify yet
        self._stalled_since: dict[tuple[str, str], float] = {}
        self._registry_pulled: dict[str, float] = {}  # peer -> when its registry feed was last read to its end
        self._pull_round: "asyncio.Task[Any] | None" = None  # the scheduled round of pulls under way
        self._keys_asked = Throttle(1.0)  # when a neighbour's registry was last pulled for a key not held

    def take_up(self) -> None:
        self.puller = FeedPuller(self._pull_once)
        # Another worker may have pulled since this one last did: cursors are read from the database again.
        self._cursors.clear()
        self._stalled_since.clear()
        self._registry_pulled.clear()
        self._pull_round = None

    async def give_up(self) -> None:
        puller, self.puller = self.puller, None
        if puller is not None:
            await puller.close()

    def told(self, payload: str) -> None:
        """Another worker received a notify (node.cluster): "peer feed [next]"."""
        parts = payload.split(" ")
        if self.puller is not None and len(parts) >= 2 and parts[1] in self.feed_names():
            self.handle_notify(parts[0], parts[1], parts[2] if len(parts) > 2 else None)

    # Serving feeds --------------------------------------------------------------------------------

    async def registry_feed(self, since: int, limit: int) -> dict[str, Any]:
        async with self.engine.connect() as conn:
            head = await read_counter(conn, store.REGISTRY_COUNTER)
            rows = await store.registry_changes(conn, since, limit)
        return _page([json.loads(r.doc) for r in rows], rows, limit, head, since)

    def register_feed(self, feed: SignedFeed) -> None:
        """Add a signed feed (served, pulled, notified like the catalog); pulled at once from every neighbour."""
        self.feeds[feed.name] = feed
        if self.puller is not None and self.fed.membership.joined:
            for peer in self.fed.membership.neighbours():
                self.puller.trigger(peer, feed.name)

    def feed_names(self) -> tuple[str, ...]:
        return (REGISTRY_FEED, *self.feeds)

    async def feed_page(self, name: str, requester: str, since: int, limit: int) -> dict[str, Any]:
        """A page of a signed feed for a neighbour: the parent gets the objects of this node's subtree, a child
        those whose origin is outside the child's subtree."""
        feed = self.feeds.get(name)
        if feed is None:
            raise ApiError(f"there is no feed {name!r}", code="NOT_FOUND")
        members = self.fed.membership
        nodes_in = nodes_out = None
        if requester == members.parent:
            nodes_in = members.subtree(self.node_id)
        else:
            nodes_out = members.subtree(requester)
        async with self.engine.connect() as conn:
            head = await read_counter(conn, feed.counter)
            rows = await feed.changes(conn, since, limit, nodes_in, nodes_out)
        docs = [feed.document(r) for r in rows]
        if requester == members.parent and level_of(self.node_id) == "province":
            # SPEC §18: a province sends the national root only the national objects of its subtree, so that
            # a county holds its own province's catalog, not every county's of the country. The cursor still
            # moves past what is held back (`_page` takes it from the rows).
            docs = [d for d in docs if feed.scope(d) == "national"]
        elif requester != members.parent and level_of(self.node_id) == "national":
            # The root passes down only national objects (and its own), should a province have sent it more.
            docs = [d for d in docs if feed.scope(d) == "national" or feed.origin(d) == self.node_id]
        return _page(docs, rows, limit, head, since)

    # Pulling --------------------------------------------------------------------------------------

    async def scheduled_pull(self) -> None:
        """The scheduled round of pulls, started in the background unless the last one is still going (on a
        saturated node a round can outlast the interval; it then simply runs on, without a warning a beat)."""
        if self._pull_round is not None and not self._pull_round.done():
            log.debug("the previous round of scheduled pulls is still running")
            return
        background = self.fed.background
        if background is not None:
            self._pull_round = background.spawn(self.pull_all())

    async def pull_all(self) -> None:
        members = self.fed.membership
        puller = self.puller
        if not members.joined or puller is None:
            return
        if members.holder_key is None and members.parent is not None:
            try:
                await members.fetch_holder_key()
            except Exception as exc:  # noqa: BLE001 - the next round retries
                log.info("could not get the holder key from %s: %s", members.parent, exc)
        for peer in members.neighbours():
            for feed in self.feed_names():
                try:
                    await puller.pull_now(peer, feed)
                except Exception as exc:  # noqa: BLE001 - the next round retries
                    log.info("scheduled pull of %s from %s failed: %s", feed, peer, exc)

    async def _pull_once(self, peer: str, feed: str) -> bool:
        fed = self.fed
        if (peer, feed) not in self._cursors:
            async with self.engine.connect() as conn:
                self._cursors[(peer, feed)] = await store.get_cursor(conn, peer, feed)
        cursor = self._cursors[(peer, feed)] or "0"
        if feed != REGISTRY_FEED and feed not in self.feeds:
            raise PeerError("INVALID_INPUT", f"no feed {feed!r} at this node")
        path = f"/federation/v1/{'registry' if feed == REGISTRY_FEED else feed + '/changes'}?since={cursor}&limit=500"
        started = time.monotonic()
        try:
            page = await fed.client.request(peer, fed.membership.endpoint_of(peer), "GET", path)
        except PeerError as exc:
            fed.peers.mark(peer, ok=False, error=exc.message)
            raise
        fed.peers.mark(peer, ok=True)
        if not isinstance(page, dict) or not isinstance(page.get("entries"), list):
            raise PeerError("INVALID_INPUT", f"{peer} sent a malformed {feed} page")
        if feed == "registry":
            more = await self._apply_registry(peer, page)
            if not more:
                self._registry_pulled[peer] = started
            return more
        return await self._apply_signed(peer, self.feeds[feed], page)

    async def _apply_registry(self, peer: str, page: dict[str, Any]) -> bool:
        members = self.fed.membership
        trust = members.require_joined()
        pending = [d for d in page["entries"] if isinstance(d, dict)]
        changed: list[dict[str, Any]] = []
        progress = True
        while pending and progress:  # a batch may hold a child's certificate before its issuer's
            progress = False
            for doc in list(pending):
                try:
                    added = (trust.add_certificate(doc) if doc.get("type") == "node_cert"
                             else trust.add_revocation(doc))
                except TrustError as exc:
                    if exc.code in ("BROKEN_CHAIN", "UNKNOWN"):
                        continue
                    log.warning("refused registry entry from %s: %s", peer, exc.message)
                    pending.remove(doc)
                    continue
                pending.remove(doc)
                progress = True
                if added:
                    changed.append(doc)
        for doc in pending:
            log.warning("registry entry from %s has no known issuer: %s %s", peer, doc.get("type"), doc.get("node"))
        new_cursor = str(page.get("next", 0))
        if changed or new_cursor != self._cursors.get((peer, "registry")):  # an idle pull writes nothing
            async with write_tx(self.engine) as conn:
                for doc in changed:
                    await store.put_registry(conn, doc)
                await store.set_cursor(conn, peer, "registry", new_cursor)
                if changed:
                    await announce(conn, "trust")  # the other workers load the trust store again
            self._cursors[(peer, "registry")] = new_cursor
        if changed:
            members.changed()
            for child in members.children():
                self.fed.sender.ensure(child)
            await self.notify_neighbours("registry", exclude=peer)
        return bool(page.get("more"))

    async def _apply_signed(self, peer: str, feed: SignedFeed, page: dict[str, Any]) -> bool:
        members = self.fed.membership
        trust = members.require_joined()
        name = feed.name
        from_child = peer != members.parent
        allowed = members.subtree(peer) if from_child else None
        mine = members.subtree(self.node_id)
        now = now_ms()
        accepted: list[dict[str, Any]] = []
        refused: list[dict[str, Any]] = []
        cursor = page.get("next", 0)
        stalled = False
        for entry in page["entries"]:
            key = feed.key(entry) if isinstance(entry, dict) else None
            origin = feed.origin(entry) if isinstance(entry, dict) else None
            reason = feed.problem(entry) if isinstance(entry, dict) else f"malformed {name} entry"
            if reason is None and origin == self.node_id:
                reason = "an entry claiming this node as origin"
            elif reason is None and from_child and origin not in (allowed or set()):
                reason = f"{peer} sent an entry of {origin}, outside its subtree"
            elif reason is None and not from_child and origin in mine:
                reason = f"the parent sent an entry of {origin}, inside this node's subtree"
            if reason is None:
                try:
                    keys = trust.verify_keys_for(origin, at_ms=feed.signed_at(entry), now_ms=now)
                    verify_signed_json(entry, origin, keys)
                except TrustError as exc:
                    if exc.code != "REVOKED" and not self._registry_fresh(peer, name):
                        # The registry may not have caught up with this origin (or with a re-issued
                        # certificate) yet: stop here (the cursor stays put), pull the peer's registry, then
                        # this page again. If the origin still does not verify then, the entry is refused.
                        stalled = True
                        break
                    reason = f"origin {origin} is not trusted: {exc.message}"
                except (SignatureError, FederationError) as exc:
                    reason = f"signature of {origin} does not verify: {exc.message}"
            if reason is not None:
                refused.append({"at": now, "key": str(key)[:120] if key else None,
                                "node": str(origin)[:16] if origin else None, "received_from": peer,
                                "reason": reason[:400]})
                log.warning("refused %s entry %s from %s: %s", name, key, peer, reason)
            else:
                accepted.append(entry)
        if stalled:
            self._stalled_since.setdefault((peer, name), time.monotonic())
            if self._stall_retry.ready(f"{peer}:{name}") and self.fed.background is not None:
                self.fed.background.spawn(self._registry_then(peer, name))
        else:
            self._stalled_since.pop((peer, name), None)
        applied = 0
        new_cursor = None if stalled else str(cursor)
        moved = new_cursor is not None and new_cursor != self._cursors.get((peer, name))
        if accepted or refused or moved:  # an idle pull writes nothing
            async with write_tx(self.engine) as conn:
                if accepted:  # the whole page in a few statements: the write lock is held briefly
                    applied = await feed.apply_many(accepted, conn)
                for r in refused:
                    await feed.log_refusal(conn, r)
                if new_cursor is not None:
                    await store.set_cursor(conn, peer, name, new_cursor)
            if new_cursor is not None:
                self._cursors[(peer, name)] = new_cursor
        if applied:
            await self.notify_neighbours(name, exclude=peer)
        return bool(page.get("more")) and not stalled

    def _registry_fresh(self, peer: str, feed: str = "catalog") -> bool:
        """Whether this node pulled `peer`'s registry to its end since replication of `feed` from it stalled."""
        since = self._stalled_since.get((peer, feed))
        return since is not None and self._registry_pulled.get(peer, 0.0) > since

    async def _registry_then(self, peer: str, feed: str) -> None:
        puller = self.puller
        if puller is not None:
            await puller.pull_now(peer, REGISTRY_FEED)
            puller.trigger(peer, feed)

    # Notifications --------------------------------------------------------------------------------

    async def catalog_changed(self, code: str) -> None:
        await self.notify_neighbours("catalog")

    async def notify_neighbours(self, feed: str, exclude: str | None = None) -> None:
        members = self.fed.membership
        if not members.joined:
            return
        peers = [p for p in members.neighbours() if p != exclude]
        if not peers:
            return
        counter = self.feeds[feed].counter if feed in self.feeds else store.REGISTRY_COUNTER
        # Through the journal: one thread hop, in a commit shared with the node's other small writes, rather
        # than a write transaction of its own (a step of every hop of replication).
        await self.fed.audit.journal.enqueue(store.enqueue_notifies, (peers, feed, counter, now_ms()))
        self.fed.sender.wake(*peers)

    def learn_keys_from(self, peer: str) -> None:
        """A neighbour sent something signed with a key this node does not hold (or by a node it does not know):
        most likely the signer has just rotated its key, and the neighbour holds the new certificate. Pull its
        registry now rather than at the next scheduled pull (30 s by default), during which every call, notify
        and pull the new key signs would be refused. At most once a second a neighbour, so that requests with
        a made-up key id cost little."""
        if peer in self.fed.membership.neighbours() and self._keys_asked.ready(peer):
            self.handle_notify(peer, REGISTRY_FEED)

    def handle_notify(self, origin: str, feed: str, next_cursor: Any = None) -> None:
        if feed not in self.feed_names():
            raise ApiError(f"unknown feed {feed!r}", code="INVALID_INPUT")
        if self.puller is None:  # the worker that pulls decides
            nxt = f" {next_cursor}" if isinstance(next_cursor, str) and " " not in next_cursor else ""
            self.fed.tasks.spawn(self.fed.cluster.tell("pull", f"{origin} {feed}{nxt}"))
            return
        if isinstance(next_cursor, str) and next_cursor == self._cursors.get((origin, feed)):
            return  # this node's last pull already ended at that head: nothing new to fetch
        self.puller.trigger(origin, feed)
