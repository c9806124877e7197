"""The sender: the durable outbox of messages and notifies for each neighbour, delivered in order with
back-off (`federation.outbox`), and the answers to this node's own asynchronous messages."""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncEngine

from federation.client import PeerError
from federation.errors import EnvelopeError
from federation.outbox import OutboxSender
from node.cluster import announce
from node.db import write_tx
from node.errors import STATUS_OF, ApiError
from node.federation import store
from node.federation.peers import Throttle
from node.groupcommit import GroupCommitter
from node.ids import now_ms

if TYPE_CHECKING:
    from node.federation.service import FederationService

log = logging.getLogger("govnode.federation")


class Sender:
    def __init__(self, fed: "FederationService") -> None:
        self.fed = fed
        self.engine = fed.engine
        self.node_id = fed.node_id
        # The sender loops run in the worker that does the node's background work (node.cluster), and only
        # while it does: None in the others, which tell that worker what they queued.
        self.outbox: OutboxSender | None = None
        self._caught_up = Throttle(1.0)  # when a peer's outbox back-off was last cut short

    async def take_up(self) -> None:
        self.outbox = OutboxSender(_OutboxAdapter(self.engine, self.fed.audit.journal), self.deliver)
        # A new sender is a fresh start for every neighbour: what waited out a back-off is sent at once.
        async with write_tx(self.engine) as conn:
            await store.retry_now(conn, now_ms())
            pending = await store.outbox_depths(conn)
        for peer in pending:
            self.outbox.ensure(peer)

    async def give_up(self) -> None:
        outbox, self.outbox = self.outbox, None
        if outbox is not None:
            await outbox.close()

    def ensure(self, peer: str) -> None:
        """Keep a sender loop for `peer` (a neighbour that just joined, or came back)."""
        if self.outbox is not None:
            self.outbox.ensure(peer)

    def wake(self, *peers: str) -> None:
        """Something was queued for `peers`: send it now (from here, or from the worker that sends)."""
        if self.outbox is not None:
            for peer in peers:
                self.outbox.wake(peer)
        elif peers:
            self.fed.tasks.spawn(self.fed.cluster.tell("outbox", ",".join(peers)))

    def told(self, payload: str) -> None:
        """Another worker queued something for these peers (node.cluster)."""
        if self.outbox is not None:
            for peer in filter(None, payload.split(",")):
                self.outbox.wake(peer)

    async def enqueue_message(self, peer: str, env: dict[str, Any], *, relaying: str | None = None) -> None:
        """Queue an envelope for a neighbour. `relaying`: the id of the message being passed on, marked
        applied in the same commit (store.AlreadyApplied if another delivery of it was queued already)."""
        async with write_tx(self.engine) as conn:
            if relaying is not None:
                await conn.run_sync(store.mark_applied, relaying)
            await store.enqueue(conn, peer, "message", env, now_ms())
            if self.outbox is None:  # the sending worker learns of it as the row commits
                await announce(conn, "outbox", peer)
        if self.outbox is not None:
            self.outbox.wake(peer)

    def catch_up(self, peer: str) -> None:
        """A neighbour this node could not reach is talking to it again: send what waits for it now rather
        than at the end of its back-off (at most once a second)."""
        if not self._caught_up.ready(peer):
            return

        async def go() -> None:
            async with write_tx(self.engine) as conn:
                await store.retry_now(conn, now_ms(), peer)
                if self.outbox is None:
                    await announce(conn, "outbox", peer)
            if self.outbox is not None:
                self.outbox.wake(peer)

        self.fed.tasks.spawn(go())

    async def deliver(self, row: Any) -> None:
        fed, messages = self.fed, self.fed.messages
        payload = json.loads(row.payload)
        if row.kind == "message" and payload.get("expires_at", 0) <= now_ms():
            # Every hop would refuse it from now on: drop it, and tell the origin if it is this node.
            log.warning("message %s to %s expired before it could be delivered: dropped", payload.get("id"), row.peer)
            if payload.get("origin") == self.node_id:
                await self.async_reply(payload, messages.error_answer(payload, ApiError(
                    f"the message expired before {row.peer} could take it", {"hop": row.peer}, code="PEER_TIMEOUT")))
            return
        endpoint = fed.membership.endpoint_of(row.peer)
        try:
            if row.kind == "notify":
                await fed.client.request(row.peer, endpoint, "POST", "/federation/v1/notify", payload)
            else:
                remaining = max(1.0, (payload["expires_at"] - now_ms()) / 1000)
                reply = await fed.client.request(row.peer, endpoint, "POST", "/federation/v1/messages", payload,
                                                 timeout_s=min(30.0, remaining), label="outbox")
                await self.async_reply(payload, reply)
        except PeerError as exc:
            fed.peers.mark(row.peer, ok=False, error=exc.message)
            if exc.status in (400, 403, 404, 422):
                log.warning("message %s to %s refused for good (%s): dropped", payload.get("id"), row.peer, exc.code)
                if row.kind == "message" and payload.get("origin") == self.node_id:
                    code = exc.code if exc.code in STATUS_OF else "INVALID_INPUT"
                    details = {**(exc.details if isinstance(exc.details, dict) else {}), "hop": row.peer}
                    await self.async_reply(payload, messages.error_answer(payload, ApiError(exc.message, details,
                                                                                            code=code)))
                return
            raise
        fed.peers.mark(row.peer, ok=True)

    async def async_reply(self, request: dict[str, Any], reply: Any) -> None:
        if not isinstance(reply, dict) or request.get("origin") != self.fed.node_id:
            return  # a relay's hop answered: the origin gets the destination's answer as a message of its own
        messages = self.fed.messages
        try:
            request, reply = messages.opened(request), messages.opened(reply)
        except EnvelopeError as exc:
            log.warning("the answer to message %s cannot be opened: %s", request.get("id"), exc.message)
            return
        body = reply.get("body") or {}
        if reply.get("kind") == "reply" and body.get("accepted") and body.get("queued_at"):
            return  # a relay took it; the destination's answer comes as its own message
        handler = messages.reply_handlers.get(request.get("kind", ""))
        if handler is not None:
            await handler(request, reply)


class _OutboxAdapter:
    """The outbox sender's view of the node's outbox table."""

    def __init__(self, engine: AsyncEngine, journal: GroupCommitter) -> None:
        self.engine = engine
        self.journal = journal

    async def due(self, peer: str, now: int, limit: int) -> list[Any]:
        async with self.engine.connect() as conn:
            return await store.due(conn, peer, now, limit)

    async def next_due_at(self, peer: str) -> int | None:
        async with self.engine.connect() as conn:
            return await store.next_due_at(conn, peer)

    async def delivered(self, row: Any) -> None:
        # In the journal's next commit, with the deliveries to other neighbours of the moment: telling every
        # neighbour of a change costs a commit or two, not one write transaction per neighbour.
        await self.journal.enqueue(store.delete_delivered, (row.id, row.payload))

    async def defer(self, row: Any, attempts: int, at: int, error: str) -> None:
        async with write_tx(self.engine) as conn:
            await store.defer(conn, row.id, attempts, at, error)
