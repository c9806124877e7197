"""Messages (SPEC §6, §15): envelopes routed through the tree, delivered here to a handler of their kind,
relayed to the next hop, or sent from here; their bodies sealed for the destination alone."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from nacl.signing import VerifyKey

from federation import sealed
from federation.client import PeerError
from federation.envelope import hop_count, make_envelope, next_hop, sign_envelope, verify_envelope_origin
from federation.errors import EnvelopeError, FederationError, SignatureError, TrustError
from federation.signing import decode_b64, signed_bytes, verify_signed_json
from node.audit.service import Call
from node.db import CALL_WRITES, write_tx
from node.errors import STATUS_OF, ApiError
from node.federation import store as fed_store
from node.federation.replay import Claim
from node.ids import now_ms

if TYPE_CHECKING:
    from node.federation.service import FederationService

log = logging.getLogger("govnode.federation")

MAX_HOPS = 8
# Each node on a path gives up this much earlier than the one before it, so that the node next to a slow or
# dead hop answers first and names it (PEER_TIMEOUT / PEER_UNREACHABLE, details.hop), within the expiry.
HOP_MARGIN_MS = 250
SYNC_TTL_MS = 30_000
# At shutdown, how long the calls a relay is passing on may still wait for the next hop (`stop_relaying`).
RELAY_GRACE_S = 1.0
ASYNC_TTL_MS = 7 * 24 * 3600 * 1000
# Kinds whose handling changes nothing here, so it may overlap the durable claim of the envelope id.
READ_ONLY_KINDS = frozenset({"service.call", "licence.verify"})
# Kinds delivered store-and-forward through the outbox (relays queue them); the others are answered inline.
ASYNC_KINDS = frozenset({"application.submit", "application.update", "feedback.submit", "feedback.update",
                         "data_request.submit", "data_request.update", "list.hit"})

# What a message handler gets and returns: the verified envelope -> the reply body.
MessageHandler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class MadeError(dict):
    """An error envelope this node made, with its code kept beside it: the body is sealed for the origin,
    and the audit record of the call that answered it still names the code."""

    def __init__(self, envelope: dict[str, Any], outcome: str) -> None:
        super().__init__(envelope)
        self.outcome = outcome


def hop_deadline_s(env: dict[str, Any]) -> float:
    """Seconds this node may wait for the next hop or its handler: the envelope's expiry less a margin for each
    node that signed it so far (the origin waits for the whole expiry)."""
    return (env["expires_at"] - HOP_MARGIN_MS * hop_count(env) - now_ms()) / 1000


def api_error(exc: FederationError, hop: str | None = None) -> ApiError:
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


def _all_of(*futures: "asyncio.Future[Any] | None") -> "asyncio.Future[list[Any]]":
    """One future for all of `futures` (claims and records are futures already): a gather, without a task
    and a coroutine of its own around it, which cost a relayed call 6.5 µs each time (timed alone)."""
    return asyncio.gather(*(f for f in futures if f is not None))


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


def _settled() -> asyncio.Future[None]:
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    done.set_result(None)
    return done


class Messages:
    def __init__(self, fed: "FederationService") -> None:
        self.fed = fed
        self.node_id = fed.node_id
        self.handlers: dict[str, MessageHandler] = {}
        # Called with (request envelope, reply envelope) when an async message sent from here is answered.
        self.reply_handlers: dict[str, Callable[[dict, dict], Awaitable[None]]] = {}
        self._boxes = sealed.Boxes()
        # Asynchronous messages being acted on in this process, by id: a retry that arrives meanwhile waits
        # for the first to finish before it asks whether the message was applied.
        self._in_flight: dict[str, asyncio.Future[None]] = {}
        # Calls this node is passing on, waiting for the next hop's answer, and those it ended at shutdown
        # (`stop_relaying`): a county's long poll relayed to the province held a city's stop for 6 s.
        self._relaying: set[asyncio.Task[Any]] = set()
        self._cut: set[asyncio.Task[Any]] = set()
        self._relay_closed = False

    # Routing --------------------------------------------------------------------------------------

    def route(self, destination: str) -> str | None:
        members = self.fed.membership
        trust = members.require_joined()
        children = {c: members.subtree(c) for c in members.children()}
        return next_hop(self.node_id, destination, children, members.parent, trust.known_nodes())

    # Receiving ------------------------------------------------------------------------------------

    async def handle_message(self, hop_origin: str | None, env: Any, request_id: str,
                             hop_claim: Claim | None = None, *, checked: bool = False) -> dict[str, Any]:
        """Deliver or relay one envelope; returns the signed answer envelope (reply or error).

        `checked`: the envelope was parsed from a body already found inside the canonical JSON domain.
        Its signed bytes are encoded once, and serve the origin's signature, the previous relay's and
        this node's own.

        `hop_claim` is the hop's nonce, claimed but not yet durable: with the envelope id's claim it is
        made durable before the destination acts (after, for a read, in one commit with its audit
        record), and overlapped with forwarding at a relay; no answer leaves before both are durable."""
        fed = self.fed
        trust = fed.membership.require_joined()
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
            if hop_origin is not None and exc.code == "SIGNATURE_INVALID":
                fed.replication.learn_keys_from(hop_origin)  # the hop that relayed it may know a new key
            raise api_error(exc) from None
        if env["kind"] in ("reply", "error"):
            raise ApiError("answers travel back on the HTTP response, not as messages", code="KIND_UNSUPPORTED")
        if hop_count(env) > MAX_HOPS:
            raise ApiError(f"the envelope has passed {hop_count(env)} nodes (limit {MAX_HOPS})", code="INVALID_INPUT")
        if self.node_id in (env.get("signatures") or {}):
            raise ApiError("the envelope has already passed this node (a loop)", code="INVALID_INPUT")
        is_async = env["kind"] in ASYNC_KINDS
        message_claim = fed.replay.claim_message(env["id"], env["expires_at"])
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
        durable = None if read_here else _all_of(*(c.durable() for c in claims))
        record: asyncio.Future[None] | None = None
        call: Call | None = None
        in_flight: asyncio.Future[None] | None = None
        try:
            if fresh and is_async:
                assert durable is not None and message_claim is not None
                try:
                    await durable  # acted on (delivered or queued) only once its claims are durable
                except ApiError as err:
                    if err.code != "REPLAY" or message_claim.won or (hop_claim is not None and not hop_claim.won):
                        outcome = err.code
                        raise
                    # Another worker of this node took the envelope first (a sender retrying after its
                    # own worker died, say): acknowledged as a duplicate, like one this worker saw.
                    fresh, durable = False, _settled()
            if not fresh and is_async and (running := self._in_flight.get(env["id"])) is not None:
                await running
            if not fresh and is_async and not await self._applied(env["id"]):
                # Claimed before, but what it carries was never stored or queued: the node that claimed it was
                # killed in between, or its handler failed. Acting on the retry is what keeps the message;
                # the mark committed with the effect stops a second application (fed_store.mark_applied).
                fresh = True
            if fresh and is_async and env["id"] not in self._in_flight:
                in_flight = self._in_flight[env["id"]] = asyncio.get_running_loop().create_future()
            if not fresh:
                answer = self.duplicate(env)
            elif hop == self.node_id:
                if durable is not None:
                    try:
                        await durable  # act only on a durable claim
                    except ApiError as err:  # another worker of this node claimed it first
                        outcome = err.code
                        raise
                try:
                    opened = self.opened(env)
                except EnvelopeError as exc:
                    answer = self.error_answer(env, api_error(exc))
                else:
                    body = opened["body"]
                    if isinstance(body.get("op"), str):  # a service.call's op: statistics tell calls from pulls by it
                        details["op"] = body["op"][:32]
                    _note_requester(body, details, person)
                    call = Call(audit_fields("ok"))  # what it stores carries its audit intent
                    if is_async:  # and the mark that it is applied, in the same commit
                        call.first_write = lambda conn: fed_store.mark_applied(conn, env["id"])
                    token = CALL_WRITES.set(call)
                    try:
                        answer = await self.dispatch(opened, opened=True)
                    except fed_store.AlreadyApplied:  # another delivery of it stored it first
                        answer = self.duplicate(env)
                    finally:
                        call.open = False
                        CALL_WRITES.reset(token)
                    if is_async and not call.wrote:
                        # The handler answered without storing anything (or refused the message), and that
                        # answer is final for its sender: a retry of it is a duplicate.
                        await self._mark_applied(env["id"])
            elif hop is None or hop == hop_origin:
                answer = self.error_answer(env, ApiError(f"no route to node {destination}",
                                                         {"hop": self.node_id}, code="NODE_UNKNOWN"))
            elif is_async:
                await durable
                try:
                    await fed.sender.enqueue_message(hop, sign_envelope(env, self.node_id, fed.key, message=message),
                                                     relaying=env["id"])
                except fed_store.AlreadyApplied:  # another delivery of it was queued first
                    answer = self.duplicate(env)
                else:
                    answer = self.answer(env, "reply", {"accepted": True, "queued_at": self.node_id})
            else:
                # The relay's record commits with this hop's claims while the next hop works.
                record = fed.audit.enqueue(**audit_fields("ok"))
                answer = await self._forward(hop, env, message)
            if answer["kind"] == "error":  # sealed: the code is known where the error was made
                outcome = getattr(answer, "outcome", "error")
        finally:
            if in_flight is not None:
                del self._in_flight[env["id"]]
                in_flight.set_result(None)
            if durable is None:  # a read done here: its claims and its record, one commit
                durable = _all_of(*(c.durable() for c in claims))
            elif record is not None and outcome != "ok":  # a forward that failed: record how
                record = _all_of(record, fed.audit.enqueue(**audit_fields(outcome)))
            if record is None:
                # A read's record commits with its claims, in one batch after them: should another worker
                # have claimed the envelope or the nonce first, the record says REPLAY, as the answer will.
                record = fed.audit.enqueue(**audit_fields(outcome),
                                           call_key=call.key if call is not None and call.wrote else None,
                                           claims=claims if read_here else None)
            await _all_of(durable, record)  # no answer leaves before this hop's claims are durable
        return answer

    def duplicate(self, env: dict[str, Any]) -> dict[str, Any]:
        return self.answer(env, "reply", {"accepted": True, "duplicate": True})

    async def _mark_applied(self, message_id: str) -> None:
        try:
            async with write_tx(self.fed.engine) as conn:
                await conn.run_sync(fed_store.mark_applied, message_id)
        except fed_store.AlreadyApplied:
            pass

    async def _applied(self, message_id: str) -> bool:
        async with self.fed.engine.connect() as conn:
            return await fed_store.message_applied(conn, message_id)

    async def dispatch(self, env: dict[str, Any], *, opened: bool = False) -> dict[str, Any]:
        """Serve an envelope addressed to this node; the handler gets it with its body opened."""
        if not opened:
            try:
                env = self.opened(env)
            except EnvelopeError as exc:
                return self.error_answer(env, api_error(exc))
        handler = self.handlers.get(env["kind"])
        if handler is None:
            return self.error_answer(env, ApiError(f"kind {env['kind']} is not served here", code="KIND_UNSUPPORTED"))
        try:
            # A handler gets what is left of the envelope's time, less the margins of the hops before.
            async with asyncio.timeout(hop_deadline_s(env)):
                body = await handler(env)
        except ApiError as err:
            return self.error_answer(env, err)
        except TimeoutError:
            return self.error_answer(env, ApiError(f"{self.node_id} did not answer {env['kind']} in time",
                                                   {"hop": self.node_id}, code="PEER_TIMEOUT"))
        body = {**body, "via": self._via(env)}
        return self.answer(env, "reply", body)

    def _via(self, env: dict[str, Any]) -> list[str]:
        """The nodes an envelope passed after its origin, in path order, ending with this node.

        The signatures cannot tell the order (canonical JSON sorts them), the tree can: up from the origin to
        the nearest common ancestor, then down to this node. The relays' signatures must match that path."""
        trust = self.fed.membership.store
        signers = set(env.get("signatures") or {})
        up = [c["node"] for c in trust.chain_for(env["origin"])] if trust else []
        down = [c["node"] for c in trust.chain_for(self.node_id)] if trust else []
        common = next((n for n in up if n in down), None)
        if common is not None:
            path = up[:up.index(common) + 1] + list(reversed(down[:down.index(common)]))
            if set(path[:-1]) == signers:
                return path[1:] or [self.node_id]
        return sorted(signers - {env["origin"], self.node_id}) + [self.node_id]

    async def _forward(self, hop: str, env: dict[str, Any], message: bytes) -> dict[str, Any]:
        fed = self.fed
        remaining = hop_deadline_s(env)
        signed = sign_envelope(env, self.node_id, fed.key, message=message)
        if remaining <= 0:
            return self.error_answer(env, ApiError("the envelope expired", {"hop": self.node_id}, code="PEER_TIMEOUT"))
        if self._relay_closed:
            return self._stopping_answer(env)
        task = asyncio.current_task()
        assert task is not None  # a request's handler always runs in a task
        self._relaying.add(task)
        try:
            # `env` passed the canonical check (on receipt, or in verify_envelope_origin); a signature adds text.
            reply = await fed.client.request(hop, fed.membership.endpoint_of(hop), "POST", "/federation/v1/messages",
                                             signed, timeout_s=remaining, checked=True)
        except asyncio.CancelledError:
            if task not in self._cut:
                raise
            task.uncancel()  # ended by stop_relaying, not by whoever else may cancel the request's task
            return self._stopping_answer(env)
        except PeerError as exc:
            fed.peers.mark(hop, ok=False, error=exc.message)
            details = exc.details if isinstance(exc.details, dict) else {}
            details = {**details, "hop": details.get("hop", hop)}
            code = exc.code if exc.code in STATUS_OF else "PEER_UNREACHABLE"
            return self.error_answer(env, ApiError(exc.message, details, code=code))
        finally:
            self._relaying.discard(task)
            self._cut.discard(task)
        fed.peers.mark(hop, ok=True)
        if not isinstance(reply, dict) or reply.get("in_reply_to") != env["id"]:
            return self.error_answer(env, ApiError(f"{hop} answered with something that is not the reply",
                                                   {"hop": hop}, code="PEER_UNREACHABLE"))
        return sign_envelope(reply, self.node_id, fed.key)

    def _stopping_answer(self, env: dict[str, Any]) -> dict[str, Any]:
        return self.error_answer(env, ApiError(f"{self.node_id} is stopping: send the call again",
                                               {"hop": self.node_id}, code="UNAVAILABLE"))

    async def stop_relaying(self, grace_s: float = RELAY_GRACE_S) -> None:
        """The node is stopping (before the server waits for its open requests): the calls it is passing on get
        `grace_s` for the next hop's answer, then this node answers them 503 UNAVAILABLE, and any call it is
        asked to pass on from then. A long poll relayed for a subscriber otherwise held the stop for as long as
        the poll waits (10 s)."""
        if self._relaying:
            await asyncio.wait(set(self._relaying), timeout=grace_s)
        self._relay_closed = True
        self._cut = set(self._relaying)
        for task in self._cut:
            task.cancel()

    # Envelopes made here ----------------------------------------------------------------------------

    def answer(self, env: dict[str, Any], kind: str, body: dict[str, Any]) -> dict[str, Any]:
        ttl = max(1000, env["expires_at"] - now_ms())
        return self.envelope(kind, env["origin"], body, ttl_ms=ttl, in_reply_to=env["id"])

    def envelope(self, kind: str, destination: str, body: dict[str, Any], *, ttl_ms: int,
                 in_reply_to: str | None = None) -> dict[str, Any]:
        """A signed envelope from this node whose body only `destination` (and this node) can read."""
        sealed_body = self._seal_for(destination, body)
        return self._signed(make_envelope(kind, self.node_id, destination, sealed_body, ttl_ms=ttl_ms,
                                          in_reply_to=in_reply_to))

    def _signed(self, env: dict[str, Any]) -> dict[str, Any]:
        """Sign an envelope this node just made (`make_envelope` checked it is canonical JSON)."""
        return sign_envelope(env, self.node_id, self.fed.key, message=signed_bytes(env, checked=True))

    def error_answer(self, env: dict[str, Any], err: ApiError) -> dict[str, Any]:
        return MadeError(self.answer(env, "error", err.body(None)), err.code)

    # Sealed bodies (SPEC §15) -----------------------------------------------------------------------

    def _seal_for(self, destination: str, body: dict[str, Any]) -> dict[str, Any]:
        trust = self.fed.membership.require_joined()
        cert = trust.certificate(destination)
        if cert is None or not cert.get("verify_keys"):
            raise ApiError(f"node {destination} is in no known subtree", {"node": destination}, code="NODE_UNKNOWN")
        key_id, b64 = max(cert["verify_keys"].items())  # a certificate lists the node's one current key
        peer_key = VerifyKey(decode_b64(b64))
        key = self.fed.key
        box = self._boxes.box(key, destination, key_id, peer_key)
        return sealed.seal(body, box, to=destination, to_key=key_id, from_key=key.key_id)

    def opened(self, env: dict[str, Any]) -> dict[str, Any]:
        """`env` with its body opened: one sealed for this node, or one this node sealed and sent.
        EnvelopeError(UNDECRYPTABLE) for a body sealed for another node, altered, or not sealed."""
        body = env.get("body")
        if not isinstance(body, dict):
            raise EnvelopeError("UNDECRYPTABLE", "the body is not sealed")
        to, to_key, from_key = sealed.sealed_fields(body)
        if to != env.get("destination"):
            raise EnvelopeError("UNDECRYPTABLE", "the body is sealed for another node than the envelope's destination")
        members = self.fed.membership
        trust = members.require_joined()
        at = env.get("sent_at") if isinstance(env.get("sent_at"), int) else None
        if to == self.node_id:
            mine, peer, peer_key_id = members.secret_key(to_key), env["origin"], from_key
        elif env.get("origin") == self.node_id:
            mine, peer, peer_key_id = members.secret_key(from_key), to, to_key
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

    # Sending from this node -----------------------------------------------------------------------

    async def call(self, kind: str, destination: str, body: dict[str, Any], ttl_ms: int = SYNC_TTL_MS, *,
                   user: str | None = None) -> dict[str, Any]:
        """Send a message and wait for the destination's answer; returns the reply body (with `via`).

        An error answer is raised as ApiError (its code and details, e.g. the hop that failed).
        `user`: the person the call is made for, beside the sealed body (in `unsigned`, which every hop's
        request authentication covers) so that each relay's audit record names them (SPEC §15); the
        destination takes the person from the body its origin signed.
        """
        self.fed.membership.require_joined()
        hop = self.route(destination)
        env = self.envelope(kind, destination, body, ttl_ms=ttl_ms)
        if user:
            env = {**env, "unsigned": {"user": user}}
        if hop is None:
            raise ApiError(f"node {destination} is in no known subtree", {"node": destination}, code="NODE_UNKNOWN")
        if hop == self.node_id:
            answer = await self.dispatch(env)
        else:
            answer = await self._forward_from_origin(hop, env)
        return self._open_answer(env, answer)

    async def _forward_from_origin(self, hop: str, env: dict[str, Any]) -> dict[str, Any]:
        fed = self.fed
        remaining = (env["expires_at"] - now_ms()) / 1000
        try:
            return await fed.client.request(hop, fed.membership.endpoint_of(hop), "POST", "/federation/v1/messages",
                                            env, timeout_s=remaining, checked=True)  # built by make_envelope
        except PeerError as exc:
            fed.peers.mark(hop, ok=False, error=exc.message)
            details = exc.details if isinstance(exc.details, dict) else {}
            code = exc.code if exc.code in STATUS_OF else "PEER_UNREACHABLE"
            raise ApiError(exc.message, {**details, "hop": details.get("hop", hop)}, code=code) from None

    def _open_answer(self, env: dict[str, Any], answer: Any) -> dict[str, Any]:
        trust = self.fed.membership.require_joined()
        if not isinstance(answer, dict) or answer.get("in_reply_to") != env["id"]:
            raise ApiError("the answer does not match the request", code="PEER_UNREACHABLE")
        signer = answer.get("origin")
        try:
            verify_signed_json(answer, signer, trust.verify_keys_for(signer, now_ms=now_ms()))
        except (SignatureError, TrustError) as exc:
            raise ApiError(f"the answer's signature does not verify: {exc.message}", code="SIGNATURE_INVALID") from None
        try:
            body = self.opened(answer)["body"]
        except EnvelopeError as exc:
            raise api_error(exc) from None
        if answer.get("kind") == "error":
            raise ApiError.from_body(body)
        return body

    async def send_async(self, kind: str, destination: str, body: dict[str, Any]) -> str:
        """Queue a message for `destination` in the durable outbox; returns its id."""
        self.fed.membership.require_joined()
        hop = self.route(destination)
        env = self.envelope(kind, destination, body, ttl_ms=ASYNC_TTL_MS)
        if hop is None:
            raise ApiError(f"node {destination} is in no known subtree", code="NODE_UNKNOWN")
        if hop == self.node_id:
            self.fed.tasks.spawn(self.dispatch(env))
        else:
            await self.fed.sender.enqueue_message(hop, env)
        return env["id"]
