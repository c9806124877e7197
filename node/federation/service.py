"""The federation as this node takes part in it, behind one façade. The work is done in rooms, one
concern each:

| room | what |
|---|---|
| `membership` | trust and keys: the trust store, neighbours, join, revocation, key rotation, the holder key |
| `hops` | hop authentication (SPEC §4) |
| `peers` | the neighbours' health as this node saw it; the federation's part of /healthz |
| `replication` | the registry and signed feeds: served, pulled, notified (SPEC §5, §7) |
| `messages` | envelopes: routing, delivery to handlers, relaying, calls from here, sealed bodies (SPEC §6, §15) |
| `sender` | the durable outbox to each neighbour, and the answers to this node's asynchronous messages |

The protocol mechanics live in the `federation` package; the rooms supply the node's storage, its
catalog and its audit log to them. Other capabilities use the façade only.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from nacl.signing import VerifyKey
from sqlalchemy.ext.asyncio import AsyncEngine

from federation.auth import AuthParams
from federation.certs import TrustStore
from federation.client import PeerClient
from federation.signing import SigningKey
from node import tls
from node.audit.service import AuditLog
from node.catalog.service import CatalogService
from node.cluster import Cluster, node_lock
from node.config import Config
from node.federation.hops import HopAuth
from node.federation.membership import INVITE_TTL_MS, Membership
from node.federation.membership import build_trust, expected_parent_warning, token_digest  # noqa: F401 (commands, tests)
from node.federation.messages import ASYNC_TTL_MS, SYNC_TTL_MS, MessageHandler, Messages
from node.federation.peers import Peers
from node.federation.replay import Claim, ReplayGuard
from node.federation.replication import Replication, SignedFeed
from node.federation.sender import Sender
from node.supervisor import Supervisor

log = logging.getLogger("govnode.federation")

SEEN_WINDOW_MS = 600_000


class FederationService:
    def __init__(self, config: Config, engine: AsyncEngine, key: SigningKey, catalog: CatalogService,
                 audit: AuditLog, pull_interval_s: float = 30.0, cluster: Cluster | None = None) -> None:
        self.config = config
        self.engine = engine
        self.node_id = config.node.id
        self.catalog = catalog
        self.audit = audit
        self.pull_interval_s = pull_interval_s
        # This worker among the node's (node.cluster); without one, this process does the background work.
        self.cluster = cluster or Cluster(engine, self.node_id, config.database.schema_)
        self._standalone = cluster is None
        self.tasks = Supervisor(self.node_id, log)  # what any worker starts: notifies, catch-ups, reloads
        self.background: Supervisor | None = None  # the background work, while this worker does it
        self.client = PeerClient(self.node_id, lambda: self.key, timeout_s=config.federation.peer_timeout_s,
                                 ssl_context=tls.client_context(config),
                                 refuse=lambda url: tls.plain_http_refusal(url, config.insecure_http))
        self.replay = ReplayGuard(engine, audit.journal, SEEN_WINDOW_MS, ASYNC_TTL_MS + SEEN_WINDOW_MS)
        self.membership = Membership(self, key)
        self.peers = Peers(self)
        self.hops = HopAuth(self)
        self.messages = Messages(self)
        self.sender = Sender(self)
        self.replication = Replication(self)

    # Life cycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        members = self.membership
        # Workers starting together: the first makes the root's certificate and the holder key, the others
        # find them made.
        async with node_lock(self.engine, "federation"):
            await members.load()
            if members.store is None and not self.config.node.parent_url:
                await members.become_root()
            if members.store is not None and members.holder_key is None and members.parent is None:
                await members.make_holder_key()
        members.note_key_file()
        await self.replay.start()
        await self.client.start()
        self.catalog.listeners.append(self.replication.catalog_changed)
        self.tasks.every((self.replay.forget_old, 60, "forget"), (members.reload_key_if_changed, 2, "key"))
        cluster = self.cluster
        cluster.on("trust", members.reload_soon)
        cluster.on("outbox", self.sender.told)
        cluster.on("pull", self.replication.told)
        if self._standalone:
            await self.take_up()
        else:
            cluster.on_lead(self.take_up, self.give_up)

    async def take_up(self) -> None:
        """This worker does the node's background work: the sender loops, pulls, the pruning of claims."""
        self.background = background = Supervisor(self.node_id, log)
        self.replication.take_up()
        await self.sender.take_up()
        background.every((self.replication.scheduled_pull, self.pull_interval_s, "pull"),
                         (self.replay.prune, 60, "prune"))
        if self.membership.store is not None:
            background.spawn(self.replication.pull_all())

    async def give_up(self) -> None:
        background, self.background = self.background, None
        if background is not None:
            background.stop()
        await self.replication.give_up()
        await self.sender.give_up()
        if background is not None:
            await background.close()

    async def close(self) -> None:
        self.tasks.stop()
        if self._standalone:
            await self.give_up()
        await self.tasks.close()
        await self.client.close()

    # State other capabilities read ------------------------------------------------------------------

    @property
    def key(self) -> SigningKey:
        return self.membership.key

    @property
    def trust(self) -> TrustStore | None:
        return self.membership.store

    @property
    def parent(self) -> str | None:
        return self.membership.parent

    @property
    def holder_key(self) -> bytes | None:
        return self.membership.holder_key

    @property
    def joined(self) -> bool:
        return self.membership.joined

    @property
    def handlers(self) -> dict[str, MessageHandler]:
        return self.messages.handlers

    @property
    def reply_handlers(self) -> dict[str, Callable[[dict, dict], Awaitable[None]]]:
        return self.messages.reply_handlers

    @property
    def peer_status(self) -> dict[str, dict[str, Any]]:
        return self.peers.status

    @property
    def outbox(self) -> Any:
        """The sender loops (None in a worker that does not do the background work)."""
        return self.sender.outbox

    @property
    def feeds(self) -> dict[str, SignedFeed]:
        return self.replication.feeds

    def require_joined(self) -> TrustStore:
        return self.membership.require_joined()

    def neighbours(self) -> list[str]:
        return self.membership.neighbours()

    def children(self) -> set[str]:
        return self.membership.children()

    def subtree(self, node: str) -> set[str]:
        return self.membership.subtree(node)

    def endpoint_of(self, node: str) -> str:
        return self.membership.endpoint_of(node)

    def route(self, destination: str) -> str | None:
        return self.messages.route(destination)

    def node_document(self) -> dict[str, Any]:
        return self.membership.node_document()

    async def health(self) -> dict[str, Any]:
        return await self.peers.health()

    # Trust and keys -------------------------------------------------------------------------------

    @staticmethod
    async def create_invite(engine: AsyncEngine, node: str, ttl_ms: int = INVITE_TTL_MS) -> str:
        return await Membership.create_invite(engine, node, ttl_ms)

    async def handle_join(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self.membership.handle_join(body)

    def holder_key_for(self, origin: str) -> dict[str, Any]:
        return self.membership.holder_key_for(origin)

    async def rotate_key(self) -> dict[str, Any]:
        return await self.membership.rotate_key()

    async def renew_child_certificate(self, origin: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self.membership.renew_child_certificate(origin, body)

    async def revoke_child(self, node: str) -> dict[str, Any]:
        return await self.membership.revoke_child(node)

    # Hop authentication -------------------------------------------------------------------------------

    async def authenticate(self, method: str, uri: str, header: str | None, content: Any,
                           allow_self: bool = False) -> str:
        return await self.hops.authenticate(method, uri, header, content, allow_self)

    def precheck_hop(self, header: str | None) -> tuple[AuthParams, VerifyKey, int]:
        return self.hops.precheck_hop(header)

    def check_hop(self, method: str, uri: str, header: str | None, content: Any,
                  allow_self: bool = False, *, content_json: bytes | None = None,
                  prechecked: tuple[AuthParams, VerifyKey, int] | None = None) -> tuple[str, Claim]:
        return self.hops.check_hop(method, uri, header, content, allow_self, content_json=content_json,
                                   prechecked=prechecked)

    # Replication --------------------------------------------------------------------------------------

    async def registry_feed(self, since: int, limit: int) -> dict[str, Any]:
        return await self.replication.registry_feed(since, limit)

    async def catalog_feed(self, requester: str, since: int, limit: int) -> dict[str, Any]:
        return await self.replication.feed_page("catalog", requester, since, limit)

    async def feed_page(self, name: str, requester: str, since: int, limit: int) -> dict[str, Any]:
        return await self.replication.feed_page(name, requester, since, limit)

    def register_feed(self, feed: SignedFeed) -> None:
        self.replication.register_feed(feed)

    def feed_names(self) -> tuple[str, ...]:
        return self.replication.feed_names()

    async def pull_all(self) -> None:
        await self.replication.pull_all()

    async def notify_neighbours(self, feed: str, exclude: str | None = None) -> None:
        await self.replication.notify_neighbours(feed, exclude)

    def handle_notify(self, origin: str, feed: str, next_cursor: Any = None) -> None:
        self.replication.handle_notify(origin, feed, next_cursor)

    # Messages -----------------------------------------------------------------------------------------

    async def handle_message(self, hop_origin: str | None, env: Any, request_id: str,
                             hop_claim: Claim | None = None, *, checked: bool = False) -> dict[str, Any]:
        return await self.messages.handle_message(hop_origin, env, request_id, hop_claim, checked=checked)

    async def call(self, kind: str, destination: str, body: dict[str, Any], ttl_ms: int = SYNC_TTL_MS, *,
                   user: str | None = None) -> dict[str, Any]:
        return await self.messages.call(kind, destination, body, ttl_ms, user=user)

    async def send_async(self, kind: str, destination: str, body: dict[str, Any]) -> str:
        return await self.messages.send_async(kind, destination, body)

    def _envelope(self, kind: str, destination: str, body: dict[str, Any], *, ttl_ms: int,
                  in_reply_to: str | None = None) -> dict[str, Any]:
        """An envelope made and sealed here, as a node sends it (tests forge and replay with it)."""
        return self.messages.envelope(kind, destination, body, ttl_ms=ttl_ms, in_reply_to=in_reply_to)
