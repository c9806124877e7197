"""The federation as this node takes part in it: trust (certificates, join, rotation, revocation),
request authentication, feeds and their replication, the durable outbox, and message routing.

The protocol mechanics live in the `federation` package; this module supplies the node's storage, its
catalog and its audit log to them.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from nacl.signing import VerifyKey
from sqlalchemy.ext.asyncio import AsyncEngine

from federation import sealed
from federation.auth import MAX_SKEW_MS, AuthParams, parse_authorization, verify_authorization
from federation.certs import TrustStore, level_of, make_certificate, make_revocation
from federation.client import PeerClient, PeerError
from federation.envelope import hop_count, make_envelope, next_hop, sign_envelope, verify_envelope_origin
from federation.errors import AuthError, EnvelopeError, FederationError, SignatureError, TrustError
from federation.feeds import FeedPuller
from federation.outbox import OutboxSender
from federation.signing import (
    SigningKey, decode_b64, encode_b64, generate_signing_key, read_signing_key_file, sign_json, signed_bytes,
    verify_key_b64, verify_signed_json, write_signing_key_file,
)
from node import __version__
from node.audit.service import AuditLog, Call
from node.catalog import store as catalog_store
from node.catalog.models import CatalogEntry
from node.catalog.service import CHANGE_COUNTER, CatalogService
from node.config import Config
from node.db import CALL_WRITES, database_unavailable, read_counter, write_tx
from node.errors import STATUS_OF, ApiError
from node.fields import check_name
from node.federation import store
from node.federation.replay import Claim, ReplayGuard
from node.groupcommit import GroupCommitter
from node import tls
from node.ids import new_id, now_ms, resource_node
from node.schedule import PeriodicJobs

log = logging.getLogger("govnode.federation")

CERT_VALIDITY_MS = 5 * 365 * 24 * 3600 * 1000
INVITE_TTL_MS = 24 * 3600 * 1000
MAX_HOPS = 8
# Each node on a path gives up this much earlier than the one before it, so that the node next to a slow or
# dead hop answers first and names it (PEER_TIMEOUT / PEER_UNREACHABLE, details.hop), within the expiry.
HOP_MARGIN_MS = 250
ANCHOR_KEY_FILE = "anchor.key"  # the root's original key, which signs every root certificate
SYNC_TTL_MS = 30_000
ASYNC_TTL_MS = 7 * 24 * 3600 * 1000
# Kinds delivered store-and-forward through the outbox (relays queue them); the others are answered inline.
# Kinds whose handling changes nothing here, so it may overlap the durable claim of the envelope id.
READ_ONLY_KINDS = frozenset({"service.call", "licence.verify"})
ASYNC_KINDS = frozenset({"application.submit", "application.update", "feedback.submit", "feedback.update"})
FEEDS = ("registry", "catalog")  # every node's feeds; capabilities add signed feeds (register_feed)
REGISTRY_FEED = "registry"
HOLDER_KEY_STATE = "holder_key"  # the federation-wide key of holder digests (licences), made by the root
SEEN_WINDOW_MS = 600_000
# A rotated key's secret half still opens bodies sealed for it this long (SPEC §15): a message can wait in an
# outbox across the rotation.
OLD_KEY_DECRYPT_MS = 30 * 24 * 3600 * 1000

# What a message handler gets and returns: the verified envelope -> the reply body.
MessageHandler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


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


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _level_rank(node: str) -> int:
    return ("national", "province", "city", "county").index(level_of(node))


class _MadeError(dict):
    """An error envelope this node made, with its code kept beside it: the body is sealed for the origin,
    and the audit record of the call that answered it still names the code."""

    def __init__(self, envelope: dict[str, Any], outcome: str) -> None:
        super().__init__(envelope)
        self.outcome = outcome


def _hop_deadline_s(env: dict[str, Any]) -> float:
    """Seconds this node may wait for the next hop or its handler: the envelope's expiry less a margin for each
    node that signed it so far (the origin waits for the whole expiry)."""
    return (env["expires_at"] - HOP_MARGIN_MS * hop_count(env) - now_ms()) / 1000


def _given_user(env: dict[str, Any]) -> str | None:
    """The person a relayed envelope says it is for (`unsigned.user`), if it names one plausibly."""
    user = (env.get("unsigned") or {}).get("user") if isinstance(env.get("unsigned"), dict) else None
    return user[:32] if isinstance(user, str) and user.isprintable() and user.strip() else None


def _note_requester(body: dict[str, Any], details: dict[str, Any], person: dict[str, Any]) -> None:
    """At the destination: who asked, from the requester the origin signed (its department, the person and
    their purpose), into the call's audit record."""
    requester = body.get("requester")
    person["user"] = None
    if not isinstance(requester, dict):
        return
    node, dept, user, purpose = (requester.get(k) for k in ("node", "dept", "user", "purpose"))
    if isinstance(node, str) and isinstance(dept, str):
        details["requester"] = f"{node}/{dept}"[:80]
    if isinstance(user, str) and user:
        person["user"] = user[:32]
    if isinstance(purpose, str) and purpose.strip():
        details["purpose"] = purpose[:2000]


def _api_error(exc: FederationError, hop: str | None = None) -> ApiError:
    """Map a protocol error onto SPEC §9."""
    code = exc.code
    mapping = {
        "EXPIRED": "PEER_TIMEOUT", "UNKNOWN": "UNAUTHENTICATED", "BROKEN_CHAIN": "UNAUTHENTICATED",
    }
    code = mapping.get(code, code)
    if code not in STATUS_OF:
        code = "INVALID_INPUT"
    details = exc.details
    if hop is not None:
        details = {**(details if isinstance(details, dict) else {}), "hop": hop}
    return ApiError(exc.message, details, code=code)


class FederationService:
    def __init__(self, config: Config, engine: AsyncEngine, key: SigningKey, catalog: CatalogService,
                 audit: AuditLog, pull_interval_s: float = 30.0) -> None:
        self.config = config
        self.engine = engine
        self.node_id = config.node.id
        self.key = key
        self.catalog = catalog
        self.audit = audit
        self.pull_interval_s = pull_interval_s
        self.trust: TrustStore | None = None
        self.parent: str | None = None
        self.client = PeerClient(self.node_id, lambda: self.key, timeout_s=config.federation.peer_timeout_s,
                                 ssl_context=tls.client_context(config),
                                 refuse=lambda url: tls.plain_http_refusal(url, config.insecure_http))
        self.outbox = OutboxSender(_OutboxAdapter(engine, audit.journal), self._deliver)
        self.puller = FeedPuller(self._pull_once)
        self.replay = ReplayGuard(engine, audit.journal, SEEN_WINDOW_MS, ASYNC_TTL_MS + SEEN_WINDOW_MS)
        self.handlers: dict[str, MessageHandler] = {}
        # Called with (request envelope, reply envelope) when an async message sent from here is answered.
        self.reply_handlers: dict[str, Callable[[dict, dict], Awaitable[None]]] = {}
        self.peer_status: dict[str, dict[str, Any]] = {}
        self._subtrees: dict[str, set[str]] = {}
        self._children: set[str] | None = None  # cached like _subtrees: every request asks for the neighbours
        self._key_mtime = 0.0
        self._stall_retry: dict[str, float] = {}
        # Feed cursors as stored ((peer, feed) -> cursor, None when no row yet); this node is their only writer.
        self._cursors: dict[tuple[str, str], str | None] = {}
        self._caught_up: dict[str, float] = {}  # peer -> when its outbox back-off was last cut short
        # (peer, feed) -> when that signed feed stalled on an origin the registry did not verify yet
        self._stalled_since: dict[tuple[str, str], float] = {}
        self.feeds: dict[str, SignedFeed] = {"catalog": CatalogFeed(catalog)}
        self.holder_key: bytes | None = None
        self._registry_pulled: dict[str, float] = {}  # peer -> when its registry feed was last read to its end
        self._tasks: set[asyncio.Task[Any]] = set()
        self._jobs = PeriodicJobs()
        self._boxes = sealed.Boxes()
        self._pull_round: asyncio.Task[Any] | None = None  # the scheduled round of pulls under way

    # Life cycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        await self._load_trust()
        if self.trust is None and not self.config.node.parent_url:
            await self._become_root()
        self._key_mtime = self._key_file_mtime()
        await self.replay.start()
        await self.client.start()
        self.catalog.listeners.append(self._catalog_changed)
        # A restart is a fresh start for every neighbour: what waited out a back-off is sent at once.
        async with write_tx(self.engine) as conn:
            await store.retry_now(conn, now_ms())
            pending = await store.outbox_depths(conn)
        for peer in pending:
            self.outbox.ensure(peer)
        self._jobs.start((self._scheduled_pull, self.pull_interval_s, "pull"), (self.replay.prune, 60, "prune"),
                         (self._reload_key_if_changed, 2, "key"))
        if self.trust is not None:
            if self.holder_key is None and self.parent is None:
                await self._make_holder_key()
            self._spawn(self.pull_all())

    async def close(self) -> None:
        self._jobs.stop()
        await self.puller.close()
        await self.outbox.close()
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            try:
                await t
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        await self.client.close()

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._background_done)
        return task

    def _background_done(self, task: asyncio.Task[Any]) -> None:
        """A background step (a pull, a catch-up, a notify) that failed is logged with its cause here; its
        work is retried by the schedule or the outbox, but the operator should see why it failed."""
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            coro = task.get_coro() if isinstance(task, asyncio.Task) else None
            log.error("%s: background step %s failed: %s", self.node_id, getattr(coro, "__qualname__", "?"), exc,
                      exc_info=(type(exc), exc, exc.__traceback__))

    @property
    def joined(self) -> bool:
        return self.trust is not None and self.trust.certificate(self.node_id) is not None

    def require_joined(self) -> TrustStore:
        if self.trust is None or self.trust.certificate(self.node_id) is None:
            raise ApiError("this node has not joined a federation yet (govnode join)", code="UNAVAILABLE")
        return self.trust

    # Trust --------------------------------------------------------------------------------------

    async def _load_trust(self) -> None:
        async with self.engine.connect() as conn:
            anchor = await store.get_state(conn, "anchor")
            self.parent = await store.get_state(conn, "parent")
            docs = await store.all_registry(conn)
            holder_key = await store.get_state(conn, HOLDER_KEY_STATE)
        try:
            self.holder_key = decode_b64(holder_key) if holder_key else None
        except ValueError:
            log.warning("the stored holder key is malformed; asking the parent again")
            self.holder_key = None
        if anchor is None:
            return
        self.trust = build_trust(anchor, docs)
        self._trust_changed()

    async def _become_root(self) -> None:
        now = now_ms()
        cert = make_certificate(
            self.node_id, self.config.node.name, level_of(self.node_id), None, self.config.endpoint or "",
            {self.key.key_id: verify_key_b64(self.key)}, {}, now - 60_000, now + CERT_VALIDITY_MS, self.node_id,
        )
        cert = sign_json(cert, self.node_id, self.key)
        anchor = {"node": self.node_id, "key_id": self.key.key_id, "key": verify_key_b64(self.key)}
        anchor_path = Path(self.config.home) / ANCHOR_KEY_FILE
        if not anchor_path.exists():
            write_signing_key_file(anchor_path, self.key)
        trust = TrustStore(anchor["node"], anchor["key"])
        trust.add_certificate(cert)
        async with write_tx(self.engine) as conn:
            await store.set_state(conn, "anchor", anchor)
            await store.put_registry(conn, cert)
        self.trust = trust
        await self._make_holder_key()
        log.info("this node is the federation root; anchor %s %s", anchor["node"], anchor["key"])

    async def _make_holder_key(self) -> None:
        """At the root: the federation-wide secret that keys holder digests (licences); children get it in the
        answer to their join (or later from their parent, GET /federation/v1/holder_key)."""
        key = secrets.token_bytes(32)
        async with write_tx(self.engine) as conn:
            held = await store.get_state(conn, HOLDER_KEY_STATE)
            if held is None:
                await store.set_state(conn, HOLDER_KEY_STATE, encode_b64(key))
        self.holder_key = decode_b64(held) if held else key

    async def _fetch_holder_key(self) -> None:
        """A node that joined before its parent handed out a holder key asks its parent for it."""
        if self.holder_key is not None or self.parent is None:
            return
        answer = await self.client.request(self.parent, self.endpoint_of(self.parent), "GET", "/federation/v1/holder_key")
        key = decode_b64(answer["holder_key"]) if isinstance(answer, dict) else b""
        if len(key) < 16:
            raise PeerError("INVALID_INPUT", f"{self.parent} sent a malformed holder key")
        async with write_tx(self.engine) as conn:
            await store.set_state(conn, HOLDER_KEY_STATE, encode_b64(key))
        self.holder_key = key
        log.info("received the federation's holder key from %s", self.parent)

    def holder_key_for(self, origin: str) -> dict[str, Any]:
        if origin not in self.children():
            raise ApiError("only a child asks its parent for the holder key", code="FORBIDDEN")
        if self.holder_key is None:
            raise ApiError("this node has no holder key yet", code="UNAVAILABLE")
        return {"holder_key": encode_b64(self.holder_key)}

    def neighbours(self) -> list[str]:
        out = sorted(self.children())
        if self.parent:
            out.insert(0, self.parent)
        return out

    def children(self) -> set[str]:
        if self.trust is None:
            return set()
        if self._children is None:
            self._children = {n for n in self.trust.known_nodes()
                              if n != self.node_id and (self.trust.certificate(n) or {}).get("parent") == self.node_id}
        return set(self._children)

    def subtree(self, node: str) -> set[str]:
        cached = self._subtrees.get(node)
        if cached is None and self.trust is not None:
            cached = self._subtrees[node] = self.trust.subtree_of(node)
        return cached or {node}

    def endpoint_of(self, node: str) -> str:
        cert = self.trust.certificate(node) if self.trust else None
        if cert is None:
            raise ApiError(f"node {node} is not known here", {"hop": node}, code="NODE_UNKNOWN")
        return cert["endpoint"]

    def _trust_changed(self) -> None:
        self._subtrees.clear()
        self._children = None

    async def _store_registry_doc(self, doc: dict[str, Any]) -> None:
        async with write_tx(self.engine) as conn:
            await store.put_registry(conn, doc)
        self._trust_changed()
        await self.notify_neighbours("registry")

    # Joining ------------------------------------------------------------------------------------

    @staticmethod
    async def create_invite(engine: AsyncEngine, node: str, ttl_ms: int = INVITE_TTL_MS) -> str:
        token = "gni_" + secrets.token_urlsafe(24)
        now = now_ms()
        async with write_tx(engine) as conn:
            await store.add_invite(conn, token_digest(token), node, now, now + ttl_ms)
        return token

    async def handle_join(self, body: dict[str, Any]) -> dict[str, Any]:
        """A child presents a one-time token and a self-signed draft; it gets its certificate."""
        trust = self.require_joined()
        token, draft = body.get("token"), body.get("certificate")
        if not isinstance(token, str) or not isinstance(draft, dict):
            raise ApiError("send {token, certificate}", code="INVALID_INPUT")
        node = draft.get("node")
        try:
            cert = make_certificate(
                draft.get("node"), draft.get("name"), draft.get("level"), draft.get("parent"),
                draft.get("endpoint"), draft.get("verify_keys") or {}, {}, 0, 1, draft.get("node"),
            )
            verify_signed_json(draft, node, draft.get("verify_keys") or {})
        except TrustError as exc:
            raise ApiError(f"the draft certificate is malformed: {exc.message}", exc.details, code="INVALID_INPUT") from None
        except SignatureError as exc:
            raise ApiError(f"the draft is not signed by the key it lists: {exc.message}",
                           code="SIGNATURE_INVALID") from None
        try:  # the name is shown in listings and logs: nothing in it may forge output
            check_name(cert["name"], "the node's name")
        except ValueError as exc:
            raise ApiError(str(exc), [{"field": "certificate.name", "error": str(exc)}], code="INVALID_INPUT") from None
        if cert["parent"] != self.node_id:
            raise ApiError(f"the draft names {cert['parent']} as parent, not this node {self.node_id}",
                           code="INVALID_INPUT")
        if cert["level"] != level_of(node) or _level_rank(node) <= _level_rank(self.node_id):
            raise ApiError(f"a {level_of(self.node_id)} node cannot take {node} as child", code="INVALID_INPUT")
        now = now_ms()
        cert.update(valid_from=now - 60_000, valid_until=now + CERT_VALIDITY_MS, issuer=self.node_id)
        signed = sign_json(cert, self.node_id, self.key)
        async with write_tx(self.engine) as conn:
            invite = await store.use_invite(conn, token_digest(token), now)
            if invite is None:
                raise ApiError("the join token is unknown, used or expired", code="UNAUTHENTICATED")
            if invite.node != node:
                raise ApiError(f"the token was made for {invite.node}, not {node}", code="FORBIDDEN")
            trust.add_certificate(signed)
            await store.put_registry(conn, signed)
        self._trust_changed()
        self._spawn(self.notify_neighbours("registry"))
        self.outbox.ensure(node)
        await self.audit.record(request_id=new_id(), actor=f"{node}", role="node", action="federation.join",
                                method="POST", path="/federation/v1/join", outcome="ok", status=200,
                                details={"child": node, "endpoint": cert["endpoint"]})
        answer = {"certificate": signed, "chain": trust.chain_for(self.node_id),
                  "anchor": {"node": trust.anchor_node, "key": trust.anchor_key}}
        if self.holder_key is not None:  # the federation's holder-digest key (licences): a secret of the members
            answer["holder_key"] = encode_b64(self.holder_key)
        return answer

    # Request authentication (SPEC §4) -------------------------------------------------------------

    async def authenticate(self, method: str, uri: str, header: str | None, content: Any,
                           allow_self: bool = False) -> str:
        """Check a hop's Authorization; return the origin once its nonce is durable. Raises ApiError."""
        origin, claim = self.check_hop(method, uri, header, content, allow_self)
        await claim.durable()
        return origin

    def precheck_hop(self, header: str | None) -> tuple[AuthParams, VerifyKey, int]:
        """What a hop's Authorization shows before its body is read (SPEC §4): its form, this node as the
        destination, an origin trusted here with the key it names, a time within the skew. An endpoint
        anyone can reach calls this first, so that a request without a plausible header costs nothing
        however large its body; returns (the parsed header, the origin's key, the time it was checked)."""
        try:
            params = parse_authorization(header)
        except AuthError as exc:
            raise ApiError(exc.message, code="UNAUTHENTICATED") from None
        trust = self.require_joined()
        now = now_ms()
        if params.destination != self.node_id:
            raise ApiError(f"this is {self.node_id}, not {params.destination}", code="UNAUTHENTICATED")
        try:
            keys = trust.verify_keys_for(params.origin, now_ms=now)
        except TrustError as exc:
            if exc.code == "REVOKED":
                raise ApiError(f"{params.origin} is revoked", code="REVOKED") from None
            raise ApiError(f"origin {params.origin} is not trusted here: {exc.message}", code="UNAUTHENTICATED") from None
        key = keys.get(params.key_id)
        if key is None:
            raise ApiError(f"{params.origin} has no current key {params.key_id}", code="SIGNATURE_INVALID")
        if abs(now - params.ts) > MAX_SKEW_MS:
            raise ApiError(f"request time is {now - params.ts} ms from this node's clock (limit {MAX_SKEW_MS})",
                           {"skew_ms": now - params.ts}, code="CLOCK_SKEW")
        return params, key, now

    def check_hop(self, method: str, uri: str, header: str | None, content: Any,
                  allow_self: bool = False, *, content_json: bytes | None = None) -> tuple[str, Claim]:
        """Check a hop's Authorization (SPEC §4); returns the origin and the claim of its nonce, which the
        caller makes durable before answering. Raises ApiError in the SPEC's terms. `content_json` is the
        body's canonical JSON when the caller has it (it checked the body with it)."""
        params, key, now = self.precheck_hop(header)
        try:
            verify_authorization(params, method, uri, content, key, self.node_id, now, content_json=content_json)
        except AuthError as exc:
            raise ApiError(exc.message, exc.details, code=exc.code) from None
        if not (params.origin in self.neighbours() or (allow_self and params.origin == self.node_id)):
            raise ApiError(f"{params.origin} is neither this node's parent nor one of its children",
                           code="NOT_NEIGHBOUR")
        claim = self.replay.claim_nonce(params.origin, params.nonce, params.ts)
        if claim is None:
            raise ApiError("this request was already received (nonce seen)", code="REPLAY")
        if self.peer_status.get(params.origin, {}).get("reachable") is False:
            self._catch_up(params.origin)
        self._mark_peer(params.origin, ok=True, inbound=True)
        return params.origin, claim

    def _catch_up(self, peer: str) -> None:
        """A neighbour this node could not reach is talking to it again: send what waits for it now rather
        than at the end of its back-off (at most once a second)."""
        now = time.monotonic()
        if now - self._caught_up.get(peer, 0.0) < 1.0:
            return
        self._caught_up[peer] = now

        async def go() -> None:
            async with write_tx(self.engine) as conn:
                await store.retry_now(conn, now_ms(), peer)
            self.outbox.wake(peer)

        self._spawn(go())


    # Feeds (SPEC §5) ----------------------------------------------------------------------------

    async def registry_feed(self, since: int, limit: int) -> dict[str, Any]:
        async with self.engine.connect() as conn:
            head = await read_counter(conn, store.REGISTRY_COUNTER)
            rows = await store.registry_changes(conn, since, limit)
        return _page([json.loads(r.doc) for r in rows], rows, limit, head, since)

    async def catalog_feed(self, requester: str, since: int, limit: int) -> dict[str, Any]:
        return await self.feed_page("catalog", requester, since, limit)

    def register_feed(self, feed: SignedFeed) -> None:
        """Add a signed feed (served, pulled, notified like the catalog); pulled at once from every neighbour."""
        self.feeds[feed.name] = feed
        if self.joined:
            for peer in self.neighbours():
                self.puller.trigger(peer, feed.name)

    def feed_names(self) -> tuple[str, ...]:
        return (REGISTRY_FEED, *self.feeds)

    async def feed_page(self, name: str, requester: str, since: int, limit: int) -> dict[str, Any]:
        """A page of a signed feed for a neighbour: the parent gets the objects of this node's subtree, a child
        those whose origin is outside the child's subtree."""
        feed = self.feeds.get(name)
        if feed is None:
            raise ApiError(f"there is no feed {name!r}", code="NOT_FOUND")
        nodes_in = nodes_out = None
        if requester == self.parent:
            nodes_in = self.subtree(self.node_id)
        else:
            nodes_out = self.subtree(requester)
        async with self.engine.connect() as conn:
            head = await read_counter(conn, feed.counter)
            rows = await feed.changes(conn, since, limit, nodes_in, nodes_out)
        return _page([feed.document(r) for r in rows], rows, limit, head, since)

    async def _scheduled_pull(self) -> None:
        """The scheduled round of pulls, started in the background unless the last one is still going (on a
        saturated node a round can outlast the interval; it then simply runs on, without a warning a beat)."""
        if self._pull_round is not None and not self._pull_round.done():
            log.debug("the previous round of scheduled pulls is still running")
            return
        self._pull_round = self._spawn(self.pull_all())

    async def pull_all(self) -> None:
        if not self.joined:
            return
        if self.holder_key is None and self.parent is not None:
            try:
                await self._fetch_holder_key()
            except Exception as exc:  # noqa: BLE001 - the next round retries
                log.info("could not get the holder key from %s: %s", self.parent, exc)
        for peer in self.neighbours():
            for feed in self.feed_names():
                try:
                    await self.puller.pull_now(peer, feed)
                except Exception as exc:  # noqa: BLE001 - the next round retries
                    log.info("scheduled pull of %s from %s failed: %s", feed, peer, exc)

    async def _pull_once(self, peer: str, feed: str) -> bool:
        if (peer, feed) not in self._cursors:
            async with self.engine.connect() as conn:
                self._cursors[(peer, feed)] = await store.get_cursor(conn, peer, feed)
        cursor = self._cursors[(peer, feed)] or "0"
        if feed != REGISTRY_FEED and feed not in self.feeds:
            raise PeerError("INVALID_INPUT", f"no feed {feed!r} at this node")
        path = f"/federation/v1/{'registry' if feed == REGISTRY_FEED else feed + '/changes'}?since={cursor}&limit=500"
        started = time.monotonic()
        try:
            page = await self.client.request(peer, self.endpoint_of(peer), "GET", path)
        except PeerError as exc:
            self._mark_peer(peer, ok=False, error=exc.message)
            raise
        self._mark_peer(peer, ok=True)
        if not isinstance(page, dict) or not isinstance(page.get("entries"), list):
            raise PeerError("INVALID_INPUT", f"{peer} sent a malformed {feed} page")
        if feed == "registry":
            more = await self._apply_registry(peer, page)
            if not more:
                self._registry_pulled[peer] = started
            return more
        return await self._apply_signed(peer, self.feeds[feed], page)

    async def _apply_registry(self, peer: str, page: dict[str, Any]) -> bool:
        trust = self.require_joined()
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
            self._cursors[(peer, "registry")] = new_cursor
        if changed:
            self._trust_changed()
            for child in self.children():
                self.outbox.ensure(child)
            await self.notify_neighbours("registry", exclude=peer)
        return bool(page.get("more"))

    async def _apply_signed(self, peer: str, feed: SignedFeed, page: dict[str, Any]) -> bool:
        trust = self.require_joined()
        name = feed.name
        from_child = peer != self.parent
        allowed = self.subtree(peer) if from_child else None
        mine = self.subtree(self.node_id)
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
            if time.monotonic() - self._stall_retry.get(f"{peer}:{name}", 0.0) > 5.0:
                self._stall_retry[f"{peer}:{name}"] = time.monotonic()
                self._spawn(self._registry_then(peer, name))
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
        await self.puller.pull_now(peer, REGISTRY_FEED)
        self.puller.trigger(peer, feed)

    # Notifications ------------------------------------------------------------------------------

    async def _catalog_changed(self, code: str) -> None:
        await self.notify_neighbours("catalog")

    async def notify_neighbours(self, feed: str, exclude: str | None = None) -> None:
        if not self.joined:
            return
        peers = [p for p in self.neighbours() if p != exclude]
        if not peers:
            return
        counter = self.feeds[feed].counter if feed in self.feeds else store.REGISTRY_COUNTER
        # Through the journal: one thread hop, in a commit shared with the node's other small writes, rather
        # than a write transaction of its own (a step of every hop of replication).
        await self.audit.journal.enqueue(store.enqueue_notifies, (peers, feed, counter, now_ms()))
        for peer in peers:
            self.outbox.wake(peer)

    def handle_notify(self, origin: str, feed: str, next_cursor: Any = None) -> None:
        if feed not in self.feed_names():
            raise ApiError(f"unknown feed {feed!r}", code="INVALID_INPUT")
        if isinstance(next_cursor, str) and next_cursor == self._cursors.get((origin, feed)):
            return  # this node's last pull already ended at that head: nothing new to fetch
        self.puller.trigger(origin, feed)

    # The outbox -----------------------------------------------------------------------------------

    async def _deliver(self, row: Any) -> None:
        payload = json.loads(row.payload)
        if row.kind == "message" and payload.get("expires_at", 0) <= now_ms():
            # Every hop would refuse it from now on: drop it, and tell the origin if it is this node.
            log.warning("message %s to %s expired before it could be delivered: dropped", payload.get("id"), row.peer)
            if payload.get("origin") == self.node_id:
                await self._async_reply(payload, self._error_answer(payload, ApiError(
                    f"the message expired before {row.peer} could take it", {"hop": row.peer}, code="PEER_TIMEOUT")))
            return
        endpoint = self.endpoint_of(row.peer)
        try:
            if row.kind == "notify":
                await self.client.request(row.peer, endpoint, "POST", "/federation/v1/notify", payload)
            else:
                remaining = max(1.0, (payload["expires_at"] - now_ms()) / 1000)
                reply = await self.client.request(row.peer, endpoint, "POST", "/federation/v1/messages", payload,
                                                  timeout_s=min(30.0, remaining))
                await self._async_reply(payload, reply)
        except PeerError as exc:
            self._mark_peer(row.peer, ok=False, error=exc.message)
            if exc.status in (400, 403, 404, 422):
                log.warning("message %s to %s refused for good (%s): dropped", payload.get("id"), row.peer, exc.code)
                if row.kind == "message" and payload.get("origin") == self.node_id:
                    code = exc.code if exc.code in STATUS_OF else "INVALID_INPUT"
                    details = {**(exc.details if isinstance(exc.details, dict) else {}), "hop": row.peer}
                    await self._async_reply(payload, self._error_answer(payload, ApiError(exc.message, details,
                                                                                          code=code)))
                return
            raise
        self._mark_peer(row.peer, ok=True)

    async def _async_reply(self, request: dict[str, Any], reply: Any) -> None:
        if not isinstance(reply, dict):
            return
        try:
            request, reply = self._opened(request), self._opened(reply)
        except EnvelopeError as exc:
            log.warning("the answer to message %s cannot be opened: %s", request.get("id"), exc.message)
            return
        body = reply.get("body") or {}
        if reply.get("kind") == "reply" and body.get("accepted") and body.get("queued_at"):
            return  # a relay took it; the destination's answer comes as its own message
        handler = self.reply_handlers.get(request.get("kind", ""))
        if handler is not None:
            await handler(request, reply)

    # Messages and routing (SPEC §6) -------------------------------------------------------------

    def route(self, destination: str) -> str | None:
        trust = self.require_joined()
        children = {c: self.subtree(c) for c in self.children()}
        return next_hop(self.node_id, destination, children, self.parent, trust.known_nodes())

    async def handle_message(self, hop_origin: str | None, env: Any, request_id: str,
                             hop_claim: Claim | None = None, *, checked: bool = False) -> dict[str, Any]:
        """Deliver or relay one envelope; returns the signed answer envelope (reply or error).

        `checked`: the envelope was parsed from a body already found inside the canonical JSON domain.
        Its signed bytes are encoded once, and serve the origin's signature, the previous relay's and
        this node's own.

        `hop_claim` is the hop's nonce, claimed but not yet durable: with the envelope id's claim it is
        made durable before the destination acts (after, for a read, in one commit with its audit
        record), and overlapped with forwarding at a relay; no answer leaves before both are durable."""
        trust = self.require_joined()
        started = time.perf_counter()
        if not isinstance(env, dict):
            raise ApiError("the body must be an envelope object", code="INVALID_INPUT")
        try:
            message = verify_envelope_origin(env, trust, now_ms(), checked=checked)
            if hop_origin is not None and hop_origin != env["origin"]:
                # A relay signed on its way through, at or after sent_at: its keys of that time verify it.
                verify_signed_json(env, hop_origin,
                                   trust.verify_keys_for(hop_origin, at_ms=env["sent_at"], now_ms=now_ms()),
                                   message=message)
        except (EnvelopeError, SignatureError, TrustError) as exc:
            raise _api_error(exc) from None
        if env["kind"] in ("reply", "error"):
            raise ApiError("answers travel back on the HTTP response, not as messages", code="KIND_UNSUPPORTED")
        if hop_count(env) > MAX_HOPS:
            raise ApiError(f"the envelope has passed {hop_count(env)} nodes (limit {MAX_HOPS})", code="INVALID_INPUT")
        if self.node_id in (env.get("signatures") or {}):
            raise ApiError("the envelope has already passed this node (a loop)", code="INVALID_INPUT")
        is_async = env["kind"] in ASYNC_KINDS
        message_claim = self.replay.claim_message(env["id"])
        fresh = message_claim is not None
        claims = [c for c in (hop_claim, message_claim) if c is not None]
        if not fresh and not is_async:
            await _all_of(*(c.durable() for c in claims))
            raise ApiError(f"message {env['id']} was already received", code="REPLAY")
        destination = env["destination"]
        hop = self.node_id if destination == self.node_id else self.route(destination)
        outcome = "ok"

        # A relay sees only the sealed body (SPEC §15): its record holds id, kind, ends, size and outcome. The
        # destination fills in the resource and op once it has opened the body.
        body: dict[str, Any] = {}
        sealed_body = env.get("body") if isinstance(env.get("body"), dict) else {}
        details = {"kind": env["kind"], "from": hop_origin, "to": hop, "origin": env["origin"], "destination": destination,
                   "size": len(sealed_body.get("ct") or "") if isinstance(sealed_body.get("ct"), str) else None}

        # The person a call is made for (SPEC §15): at a relay as the hop before gave it, at the destination as the
        # origin signed it in the body's requester (with the purpose, which only the destination can read).
        person = {"user": _given_user(env)}

        def audit_fields(result: str) -> dict[str, Any]:
            return dict(
                request_id=request_id, message_id=env["id"], actor=env["origin"], user=person["user"], role="node",
                action="federation.deliver" if hop == self.node_id else "federation.relay",
                method="POST", path="/federation/v1/messages", outcome=result, status=200,
                latency_ms=round((time.perf_counter() - started) * 1000),
                resource=body.get("resource"), details=details,
            )

        # A read delivered here changes nothing, so it goes first and its claims commit afterwards, in one
        # batch with its audit record; anything else has its claims committed before it acts (relays
        # overlap the commit with forwarding). Either way no answer leaves before they are durable.
        read_here = fresh and hop == self.node_id and env["kind"] in READ_ONLY_KINDS
        durable = None if read_here else asyncio.ensure_future(_all_of(*(c.durable() for c in claims)))
        record: asyncio.Future[None] | None = None
        call: Call | None = None
        try:
            if not fresh:
                answer = self._answer(env, "reply", {"accepted": True, "duplicate": True})
            elif hop == self.node_id:
                if durable is not None:
                    await durable  # act only on a durable claim
                try:
                    opened = self._opened(env)
                except EnvelopeError as exc:
                    answer = self._error_answer(env, _api_error(exc))
                else:
                    body = opened["body"]
                    if isinstance(body.get("op"), str):  # a service.call's op: statistics tell calls from pulls by it
                        details["op"] = body["op"][:32]
                    _note_requester(body, details, person)
                    call = Call(audit_fields("ok"))  # what it stores carries its audit intent
                    token = CALL_WRITES.set(call)
                    try:
                        answer = await self._dispatch(opened, opened=True)
                    finally:
                        call.open = False
                        CALL_WRITES.reset(token)
            elif hop is None or hop == hop_origin:
                answer = self._error_answer(env, ApiError(f"no route to node {destination}",
                                                          {"hop": self.node_id}, code="NODE_UNKNOWN"))
            elif is_async:
                await durable
                await self._enqueue_message(hop, sign_envelope(env, self.node_id, self.key, message=message))
                answer = self._answer(env, "reply", {"accepted": True, "queued_at": self.node_id})
            else:
                # The relay's record commits with this hop's claims while the next hop works.
                record = self.audit.enqueue(**audit_fields("ok"))
                answer = await self._forward(hop, env, message)
            if answer["kind"] == "error":  # sealed: the code is known where the error was made
                outcome = getattr(answer, "outcome", "error")
        finally:
            if durable is None:  # a read done here: its claims and its record, one commit
                durable = asyncio.ensure_future(_all_of(*(c.durable() for c in claims)))
            elif record is not None and outcome != "ok":  # a forward that failed: record how
                record = asyncio.ensure_future(_all_of(record, self.audit.enqueue(**audit_fields(outcome))))
            if record is None:
                record = self.audit.enqueue(**audit_fields(outcome),
                                            call_key=call.key if call is not None and call.wrote else None)
            await _all_of(durable, record)  # no answer leaves before this hop's claims are durable
        return answer

    async def _dispatch(self, env: dict[str, Any], *, opened: bool = False) -> dict[str, Any]:
        """Serve an envelope addressed to this node; the handler gets it with its body opened."""
        if not opened:
            try:
                env = self._opened(env)
            except EnvelopeError as exc:
                return self._error_answer(env, _api_error(exc))
        handler = self.handlers.get(env["kind"])
        if handler is None:
            return self._error_answer(env, ApiError(f"kind {env['kind']} is not served here", code="KIND_UNSUPPORTED"))
        try:
            # A handler gets what is left of the envelope's time, less the margins of the hops before.
            async with asyncio.timeout(_hop_deadline_s(env)):
                body = await handler(env)
        except ApiError as err:
            return self._error_answer(env, err)
        except TimeoutError:
            return self._error_answer(env, ApiError(f"{self.node_id} did not answer {env['kind']} in time",
                                                    {"hop": self.node_id}, code="PEER_TIMEOUT"))
        body = {**body, "via": self._via(env)}
        return self._answer(env, "reply", body)

    def _via(self, env: dict[str, Any]) -> list[str]:
        """The nodes an envelope passed after its origin, in path order, ending with this node.

        The signatures cannot tell the order (canonical JSON sorts them), the tree can: up from the origin to
        the nearest common ancestor, then down to this node. The relays' signatures must match that path."""
        signers = set(env.get("signatures") or {})
        up = [c["node"] for c in self.trust.chain_for(env["origin"])] if self.trust else []
        down = [c["node"] for c in self.trust.chain_for(self.node_id)] if self.trust else []
        common = next((n for n in up if n in down), None)
        if common is not None:
            path = up[:up.index(common) + 1] + list(reversed(down[:down.index(common)]))
            if set(path[:-1]) == signers:
                return path[1:] or [self.node_id]
        return sorted(signers - {env["origin"], self.node_id}) + [self.node_id]

    async def _forward(self, hop: str, env: dict[str, Any], message: bytes) -> dict[str, Any]:
        remaining = _hop_deadline_s(env)
        signed = sign_envelope(env, self.node_id, self.key, message=message)
        if remaining <= 0:
            return self._error_answer(env, ApiError("the envelope expired", {"hop": self.node_id}, code="PEER_TIMEOUT"))
        try:
            # `env` passed the canonical check (on receipt, or in verify_envelope_origin); a signature adds text.
            reply = await self.client.request(hop, self.endpoint_of(hop), "POST", "/federation/v1/messages", signed,
                                              timeout_s=remaining, checked=True)
        except PeerError as exc:
            self._mark_peer(hop, ok=False, error=exc.message)
            details = exc.details if isinstance(exc.details, dict) else {}
            details = {**details, "hop": details.get("hop", hop)}
            code = exc.code if exc.code in STATUS_OF else "PEER_UNREACHABLE"
            return self._error_answer(env, ApiError(exc.message, details, code=code))
        self._mark_peer(hop, ok=True)
        if not isinstance(reply, dict) or reply.get("in_reply_to") != env["id"]:
            return self._error_answer(env, ApiError(f"{hop} answered with something that is not the reply",
                                                    {"hop": hop}, code="PEER_UNREACHABLE"))
        return sign_envelope(reply, self.node_id, self.key)

    def _answer(self, env: dict[str, Any], kind: str, body: dict[str, Any]) -> dict[str, Any]:
        ttl = max(1000, env["expires_at"] - now_ms())
        return self._envelope(kind, env["origin"], body, ttl_ms=ttl, in_reply_to=env["id"])

    def _envelope(self, kind: str, destination: str, body: dict[str, Any], *, ttl_ms: int,
                  in_reply_to: str | None = None) -> dict[str, Any]:
        """A signed envelope from this node whose body only `destination` (and this node) can read."""
        sealed_body = self._seal_for(destination, body)
        return self._signed(make_envelope(kind, self.node_id, destination, sealed_body, ttl_ms=ttl_ms,
                                          in_reply_to=in_reply_to))

    # Sealed bodies (SPEC §15) -----------------------------------------------------------------------

    def _seal_for(self, destination: str, body: dict[str, Any]) -> dict[str, Any]:
        trust = self.require_joined()
        cert = trust.certificate(destination)
        if cert is None or not cert.get("verify_keys"):
            raise ApiError(f"node {destination} is in no known subtree", {"node": destination}, code="NODE_UNKNOWN")
        key_id, b64 = max(cert["verify_keys"].items())  # a certificate lists the node's one current key
        peer_key = VerifyKey(decode_b64(b64))
        box = self._boxes.box(self.key, destination, key_id, peer_key)
        return sealed.seal(body, box, to=destination, to_key=key_id, from_key=self.key.key_id)

    def _opened(self, env: dict[str, Any]) -> dict[str, Any]:
        """`env` with its body opened: one sealed for this node, or one this node sealed and sent.
        EnvelopeError(UNDECRYPTABLE) for a body sealed for another node, altered, or not sealed."""
        body = env.get("body")
        if not isinstance(body, dict):
            raise EnvelopeError("UNDECRYPTABLE", "the body is not sealed")
        to, to_key, from_key = sealed.sealed_fields(body)
        if to != env.get("destination"):
            raise EnvelopeError("UNDECRYPTABLE", "the body is sealed for another node than the envelope's destination")
        trust = self.require_joined()
        at = env.get("sent_at") if isinstance(env.get("sent_at"), int) else None
        if to == self.node_id:
            mine, peer, peer_key_id = self._secret_key(to_key), env["origin"], from_key
        elif env.get("origin") == self.node_id:
            mine, peer, peer_key_id = self._secret_key(from_key), to, to_key
        else:
            raise EnvelopeError("UNDECRYPTABLE", f"the body is sealed for node {to}, not for {self.node_id}")
        try:
            peer_key = trust.verify_keys_for(peer, at_ms=at, now_ms=now_ms()).get(peer_key_id)
        except TrustError:
            peer_key = None
        if mine is None or peer_key is None:
            raise EnvelopeError("UNDECRYPTABLE", "the body is sealed with a key this node does not hold")
        plain = sealed.unseal(body, self._boxes.box(mine, peer, peer_key_id, peer_key))
        # The signatures cover the sealed body, which stays beside the plain one (`unsigned` is outside
        # what is signed, SPEC §2), so whoever holds the opened envelope can still check them.
        return {**env, "body": plain, "unsigned": {**(env.get("unsigned") or {}), "sealed_body": body}}

    def _secret_key(self, key_id: str) -> SigningKey | None:
        """This node's key `key_id`: the current one, or a rotated one kept for decryption (SPEC §15)."""
        if key_id == self.key.key_id:
            return self.key
        return self._old_keys().get(key_id)

    def _old_keys(self) -> dict[str, SigningKey]:
        """Rotated keys whose secret half the home still holds, for 30 days after they expired."""
        cert = self.trust.certificate(self.node_id) if self.trust else None
        expired = {k: v.get("expired_at", 0) for k, v in ((cert or {}).get("old_verify_keys") or {}).items()}
        cutoff = now_ms() - OLD_KEY_DECRYPT_MS
        path = Path(self.config.key_path)
        keys: dict[str, SigningKey] = {}
        for key_id, expired_at in expired.items():
            if expired_at < cutoff:
                continue
            backup = path.with_name(f"{path.name}.{key_id.replace(':', '-')}.old")
            try:
                keys[key_id] = read_signing_key_file(backup)
            except (OSError, ValueError):
                continue
        return keys

    def _signed(self, env: dict[str, Any]) -> dict[str, Any]:
        """Sign an envelope this node just made (`make_envelope` checked it is canonical JSON)."""
        return sign_envelope(env, self.node_id, self.key, message=signed_bytes(env, checked=True))

    def _error_answer(self, env: dict[str, Any], err: ApiError) -> dict[str, Any]:
        return _MadeError(self._answer(env, "error", err.body(None)), err.code)

    async def _enqueue_message(self, peer: str, env: dict[str, Any]) -> None:
        async with write_tx(self.engine) as conn:
            await store.enqueue(conn, peer, "message", env, now_ms())
        self.outbox.wake(peer)

    # Sending from this node -----------------------------------------------------------------------

    async def call(self, kind: str, destination: str, body: dict[str, Any], ttl_ms: int = SYNC_TTL_MS, *,
                   user: str | None = None) -> dict[str, Any]:
        """Send a message and wait for the destination's answer; returns the reply body (with `via`).

        `user`: the person the call is made for, beside the sealed body (in `unsigned`, which every hop's
        request authentication covers) so that each relay's audit record names them (SPEC §15); the
        destination takes the person from the body its origin signed.

        An error answer is raised as ApiError (its code and details, e.g. the hop that failed).
        """
        self.require_joined()
        hop = self.route(destination)
        env = self._envelope(kind, destination, body, ttl_ms=ttl_ms)
        if user:
            env = {**env, "unsigned": {"user": user}}
        if hop is None:
            raise ApiError(f"node {destination} is in no known subtree", {"node": destination}, code="NODE_UNKNOWN")
        if hop == self.node_id:
            answer = await self._dispatch(env)
        else:
            answer = await self._forward_from_origin(hop, env)
        return self._open_answer(env, answer)

    async def _forward_from_origin(self, hop: str, env: dict[str, Any]) -> dict[str, Any]:
        remaining = (env["expires_at"] - now_ms()) / 1000
        try:
            return await self.client.request(hop, self.endpoint_of(hop), "POST", "/federation/v1/messages", env,
                                             timeout_s=remaining, checked=True)  # built by make_envelope
        except PeerError as exc:
            self._mark_peer(hop, ok=False, error=exc.message)
            details = exc.details if isinstance(exc.details, dict) else {}
            code = exc.code if exc.code in STATUS_OF else "PEER_UNREACHABLE"
            raise ApiError(exc.message, {**details, "hop": details.get("hop", hop)}, code=code) from None

    def _open_answer(self, env: dict[str, Any], answer: Any) -> dict[str, Any]:
        trust = self.require_joined()
        if not isinstance(answer, dict) or answer.get("in_reply_to") != env["id"]:
            raise ApiError("the answer does not match the request", code="PEER_UNREACHABLE")
        signer = answer.get("origin")
        try:
            verify_signed_json(answer, signer, trust.verify_keys_for(signer, now_ms=now_ms()))
        except (SignatureError, TrustError) as exc:
            raise ApiError(f"the answer's signature does not verify: {exc.message}", code="SIGNATURE_INVALID") from None
        try:
            body = self._opened(answer)["body"]
        except EnvelopeError as exc:
            raise _api_error(exc) from None
        if answer.get("kind") == "error":
            raise ApiError.from_body(body)
        return body

    async def send_async(self, kind: str, destination: str, body: dict[str, Any]) -> str:
        """Queue a message for `destination` in the durable outbox; returns its id."""
        self.require_joined()
        hop = self.route(destination)
        env = self._envelope(kind, destination, body, ttl_ms=ASYNC_TTL_MS)
        if hop is None:
            raise ApiError(f"node {destination} is in no known subtree", code="NODE_UNKNOWN")
        if hop == self.node_id:
            self._spawn(self._dispatch(env))
        else:
            await self._enqueue_message(hop, env)
        return env["id"]

    # Key rotation and revocation ------------------------------------------------------------------

    def _key_file_mtime(self) -> float:
        try:
            return Path(self.config.key_path).stat().st_mtime
        except OSError:
            return 0.0

    async def _reload_key_if_changed(self) -> None:
        mtime = self._key_file_mtime()
        if mtime and mtime != self._key_mtime:
            self._key_mtime = mtime
            self.key = self.catalog.key = read_signing_key_file(self.config.key_path)
            await self._load_trust()
            log.info("reloaded signing key %s", self.key.key_id)

    async def rotate_key(self) -> dict[str, Any]:
        """New key; the old one moves to old_verify_keys; the parent (or, at the root, this node) signs the
        new certificate, and this node re-issues its children's certificates with the new key."""
        trust = self.require_joined()
        now = now_ms()
        old_key = self.key
        version = str(int(old_key.key_id.split(":")[1]) + 1) if old_key.key_id.split(":")[1].isdigit() else "2"
        new_key = generate_signing_key(version)
        current = trust.certificate(self.node_id)
        assert current is not None
        old = dict(current.get("old_verify_keys") or {})
        for key_id, b64 in current["verify_keys"].items():
            old[key_id] = {"key": b64, "expired_at": now}
        draft = make_certificate(
            self.node_id, current["name"], current["level"], current["parent"], current["endpoint"],
            {new_key.key_id: verify_key_b64(new_key)}, old, now - 1, now + CERT_VALIDITY_MS,
            current["parent"] or self.node_id,
        )
        if self.parent is None:
            # Every node checks the root certificate against the anchor key it was configured with, so the
            # root keeps signing its own certificate with the anchor key too (kept in the home as
            # anchor.key); the anchor itself never changes without reconfiguring the federation.
            anchor_key = read_signing_key_file(Path(self.config.home) / ANCHOR_KEY_FILE)
            cert = sign_json(sign_json(draft, self.node_id, new_key), self.node_id, anchor_key)
            anchor = None
        else:
            proof = sign_json({**draft, "issuer": self.node_id}, self.node_id, new_key)
            answer = await self.client.request(self.parent, self.endpoint_of(self.parent), "POST",
                                               "/federation/v1/certificate", {"certificate": proof})
            cert = answer["certificate"]
            anchor = None
        path = Path(self.config.key_path)
        backup = path.with_name(f"{path.name}.{old_key.key_id.replace(':', '-')}.old")
        write_signing_key_file(backup, old_key)
        write_signing_key_file(path, new_key)
        self.key = self.catalog.key = new_key
        self._key_mtime = self._key_file_mtime()
        async with write_tx(self.engine) as conn:
            if anchor is not None:
                await store.set_state(conn, "anchor", anchor)
            await store.put_registry(conn, cert)
            for child in self.children():
                child_cert = trust.certificate(child)
                if child_cert is None:
                    continue
                renewed = {k: v for k, v in child_cert.items() if k != "signatures"}
                renewed["valid_from"] = max(now, child_cert["valid_from"] + 1)
                await store.put_registry(conn, sign_json(renewed, self.node_id, new_key))
        await self._load_trust()
        await self.notify_neighbours("registry")
        return cert

    async def renew_child_certificate(self, origin: str, body: dict[str, Any]) -> dict[str, Any]:
        """A child rotated its key: check its proof (signed with the new key) and sign the new certificate."""
        trust = self.require_joined()
        draft = body.get("certificate") if isinstance(body, dict) else None
        if not isinstance(draft, dict) or draft.get("node") != origin or draft.get("parent") != self.node_id:
            raise ApiError("send {certificate} for the calling child", code="INVALID_INPUT")
        try:
            verify_signed_json(draft, origin, draft.get("verify_keys") or {})
        except SignatureError as exc:
            raise ApiError(f"the new certificate is not signed by its new key: {exc.message}",
                           code="SIGNATURE_INVALID") from None
        now = now_ms()
        current = trust.certificate(origin) or {}
        cert = {k: v for k, v in draft.items() if k != "signatures"}
        cert.update(issuer=self.node_id, valid_from=max(now, current.get("valid_from", 0) + 1),
                    valid_until=now + CERT_VALIDITY_MS, name=current.get("name", cert.get("name")),
                    level=level_of(origin))
        signed = sign_json(cert, self.node_id, self.key)
        try:
            trust.add_certificate(signed)
        except TrustError as exc:
            raise ApiError(exc.message, code="INVALID_INPUT") from None
        await self._store_registry_doc(signed)
        return {"certificate": signed}

    async def revoke_child(self, node: str) -> dict[str, Any]:
        trust = self.require_joined()
        if node not in self.subtree(self.node_id) or node == self.node_id:
            raise ApiError(f"{node} is not in this node's subtree", code="NOT_FOUND")
        cert = trust.certificate(node)
        assert cert is not None
        now = now_ms()
        docs = []
        for key_id in cert["verify_keys"]:
            rev = sign_json(make_revocation(node, key_id, now, self.node_id), self.node_id, self.key)
            trust.add_revocation(rev)
            docs.append(rev)
        async with write_tx(self.engine) as conn:
            for rev in docs:
                await store.put_registry(conn, rev)
        self._trust_changed()
        await self.notify_neighbours("registry")
        return {"revoked": node, "revocations": docs}

    # Status ---------------------------------------------------------------------------------------

    def _mark_peer(self, peer: str, ok: bool, error: str | None = None, inbound: bool = False) -> None:
        st = self.peer_status.setdefault(peer, {})
        now = now_ms()
        if ok:
            st["last_ok"] = now
            if not inbound:
                st["reachable"] = True
                st.pop("last_error", None)
        else:
            st["reachable"] = False
            st["last_error"] = error
            st["last_failure"] = now

    async def health(self) -> dict[str, Any]:
        if not self.joined:
            return {"joined": False}
        try:
            async with self.engine.connect() as conn:
                depths: dict[str, int] | None = await store.outbox_depths(conn)
        except Exception as exc:
            if not database_unavailable(exc):
                raise
            depths = None  # /healthz says the database is unreachable; the peers' state is still worth showing
        peers = {}
        for p in self.neighbours():
            st = self.peer_status.get(p, {})
            peers[p] = {"role": "parent" if p == self.parent else "child", "reachable": st.get("reachable"),
                        "last_ok": st.get("last_ok"), "last_error": st.get("last_error"),
                        "outbox": depths.get(p, 0) if depths is not None else None}
        return {"joined": True, "parent": self.parent, "peers": peers}

    def node_document(self) -> dict[str, Any]:
        chain = self.trust.chain_for(self.node_id) if self.trust else []
        return {"node": self.node_id, "name": self.config.node.name, "software": "govnode",
                "version": __version__, "chain": chain}


async def _all_of(*futures: Awaitable[None] | None) -> None:
    await asyncio.gather(*(f for f in futures if f is not None))


def expected_parent_warning(node: str, parent: str) -> str | None:
    """SPEC §1: a configured parent that does not share the expected code prefix is allowed, with a warning."""
    from federation.certs import expected_parent_prefix_ok

    if expected_parent_prefix_ok(node, parent):
        return None
    return f"{parent} is not the usual parent of {node} by its code prefix; continuing as configured"


def build_trust(anchor: dict[str, Any], docs: list[dict[str, Any]]) -> TrustStore:
    """A trust store from an anchor and stored registry documents (certificates parents first)."""
    trust = TrustStore(anchor["node"], anchor["key"])
    certs = sorted((d for d in docs if d.get("type") == "node_cert"), key=lambda d: _level_rank(d["node"]))
    for cert in certs:
        try:
            trust.add_certificate(cert)
        except TrustError as exc:
            log.warning("stored certificate of %s no longer verifies: %s", cert.get("node"), exc.message)
    for rev in (d for d in docs if d.get("type") == "revocation"):
        try:
            trust.add_revocation(rev)
        except TrustError as exc:
            log.warning("stored revocation of %s no longer verifies: %s", rev.get("node"), exc.message)
    return trust


def _page(entries: list[Any], rows: list[Any], limit: int, head: int, since: int) -> dict[str, Any]:
    more = len(rows) == limit
    nxt = rows[-1].change_id if more else max(head, rows[-1].change_id if rows else since)
    return {"entries": entries, "next": str(nxt), "more": more}


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
