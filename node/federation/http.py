"""Federation endpoints (SPEC §5): every one but `GET node` and `POST join` authenticated hop to hop."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from federation.canonical import encode_canonical_json
from federation.errors import CanonicalJSONError
from node.audit.http import AUDIT
from node.catalog.http import CATALOG
from node.cluster import CLUSTER
from node.context import CONFIG, DB, SIGNING_KEY
from node.errors import ApiError, InvalidInput
from node.federation.messages import ASYNC_KINDS
from node.federation.replay import Claim
from node.federation.service import FederationService
from node.ops.http import HEALTH_SECTIONS, NODE_INFO
from node.ops.metrics import METRICS
from node.web import REQUEST_ID, json_response, parse_json, read_body

FEDERATION = web.AppKey("federation", FederationService)
MAX_FEDERATION_BODY = 16 * 1024 * 1024
# A join request is a token and a draft certificate: about 1 kB. Anyone can send one, so the body is
# capped well below anything that costs to read or parse.
MAX_JOIN_BODY = 64 * 1024
routes = web.RouteTableDef()


async def _check(request: web.Request, allow_self: bool = False) -> tuple[str, Any, Claim]:
    """Read the body (if any) and check the hop's Authorization; returns (origin, parsed body, the claim
    of its nonce, not yet durable). Anyone can reach these endpoints: the header is checked as far as it
    can be without the body before the body is read, and the body's size and nesting before it is parsed."""
    fed = request.app[FEDERATION]
    header = request.headers.get("Authorization")
    prechecked = fed.precheck_hop(header)
    raw = await read_body(request, MAX_FEDERATION_BODY)
    content = canonical = None
    if raw.strip():
        content = parse_json(raw)
        try:
            canonical = encode_canonical_json(content)  # checks the value; the signature covers these bytes
        except CanonicalJSONError as exc:
            raise InvalidInput(exc.message, exc.details) from None
    origin, claim = fed.check_hop(request.method, request.raw_path, header, content, allow_self=allow_self,
                                  content_json=canonical, prechecked=prechecked)
    return origin, content, claim


async def _authenticated(request: web.Request, allow_self: bool = False) -> tuple[str, Any]:
    """Read the body and check the hop's Authorization; returns (origin, parsed body) once the nonce is durable."""
    origin, content, claim = await _check(request, allow_self)
    await claim.durable()
    return origin, content


def _int_param(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if not raw:  # absent or empty: the default (for a cursor, the start of the feed)
        return default
    if not raw.isdigit() or not lo <= int(raw) <= hi:
        raise InvalidInput(f"{name} must be an integer from {lo} to {hi}", [{"field": name}])
    return int(raw)


@routes.get("/federation/v1/node")
async def node_document(request: web.Request) -> web.Response:
    return json_response(request.app[FEDERATION].node_document())


@routes.post("/federation/v1/join")
async def join(request: web.Request) -> web.Response:
    body = parse_json(await read_body(request, MAX_JOIN_BODY))
    if not isinstance(body, dict):
        raise InvalidInput("send {token, certificate}")
    return json_response(await request.app[FEDERATION].handle_join(body))


@routes.get("/federation/v1/registry")
async def registry(request: web.Request) -> web.Response:
    await _authenticated(request)
    since = _int_param(request, "since", 0, 0, 2**62)
    limit = _int_param(request, "limit", 500, 1, 5000)
    return json_response(await request.app[FEDERATION].registry_feed(since, limit))


@routes.get("/federation/v1/{feed:[a-z_]+}/changes")
async def feed_changes(request: web.Request) -> web.Response:
    """A signed feed (the catalog, the licence index …) as a change feed for a neighbour."""
    origin, _ = await _authenticated(request)
    since = _int_param(request, "since", 0, 0, 2**62)
    limit = _int_param(request, "limit", 500, 1, 5000)
    return json_response(await request.app[FEDERATION].feed_page(request.match_info["feed"], origin, since, limit))


@routes.get("/federation/v1/holder_key")
async def holder_key(request: web.Request) -> web.Response:
    """The federation-wide key of holder digests, for a child that joined before this node had one."""
    origin, _ = await _authenticated(request)
    return json_response(request.app[FEDERATION].holder_key_for(origin))


@routes.post("/federation/v1/notify")
async def notify(request: web.Request) -> web.Response:
    origin, body = await _authenticated(request)
    if not isinstance(body, dict) or not isinstance(body.get("feed"), str):
        raise InvalidInput('send {"feed": "catalog" | "registry", "next": C}')
    request.app[FEDERATION].handle_notify(origin, body["feed"], body.get("next"))
    return json_response({"ok": True})


@routes.post("/federation/v1/messages")
async def messages(request: web.Request) -> web.Response:
    started = time.perf_counter()
    origin, body, claim = await _check(request)
    fed = request.app[FEDERATION]
    try:
        answer = await fed.handle_message(origin, body, request[REQUEST_ID], claim, checked=True)
    except BaseException:
        claim.durable()  # a refused envelope's hop nonce is remembered all the same
        raise
    response = web.Response(body=encode_canonical_json(answer), content_type="application/json")
    # Answered envelopes only (a refused one gets an HTTP error and is no message): handle_message checked
    # that `body` is an envelope. A relay waits for the next hop's answer to a call; an asynchronous
    # message it only queues for its outbox.
    role = ("deliver" if body["destination"] == fed.node_id
            else "queue" if body["kind"] in ASYNC_KINDS else "relay")
    request.app[METRICS].message(role, time.perf_counter() - started)
    return response


@routes.post("/federation/v1/certificate")
async def renew_certificate(request: web.Request) -> web.Response:
    origin, body = await _authenticated(request)
    fed = request.app[FEDERATION]
    if origin not in fed.children():
        raise ApiError("only a child asks its parent to sign its certificate", code="FORBIDDEN")
    return json_response(await fed.renew_child_certificate(origin, body or {}))


@routes.post("/federation/v1/admin/{action:rotate|revoke}")
async def admin(request: web.Request) -> web.Response:
    """Operator actions, signed with this node's own key by the `govnode` command on the same host."""
    origin, body = await _authenticated(request, allow_self=True)
    fed = request.app[FEDERATION]
    if origin != fed.node_id:
        raise ApiError("admin actions come only from this node's own key", code="FORBIDDEN")
    if request.match_info["action"] == "rotate":
        return json_response({"certificate": await fed.rotate_key()})
    node = (body or {}).get("node")
    if not isinstance(node, str):
        raise InvalidInput('send {"node": "<code>"}')
    return json_response(await fed.revoke_child(node))


async def _service(app: web.Application) -> AsyncIterator[None]:
    fed = FederationService(app[CONFIG], app[DB], app[SIGNING_KEY], app[CATALOG], app[AUDIT],
                            pull_interval_s=app[CONFIG].federation.pull_interval_s, cluster=app[CLUSTER])
    fed.client.observe = app[METRICS].peer_call
    await fed.start()
    app[FEDERATION] = fed
    app[HEALTH_SECTIONS]["federation"] = fed.health
    app[NODE_INFO]["level"] = fed.node_document()["chain"][0]["level"] if fed.joined else None
    try:
        yield
    finally:
        await fed.close()


async def _stop_relaying(app: web.Application) -> None:
    if FEDERATION in app:
        await app[FEDERATION].messages.stop_relaying()


def setup(app: web.Application) -> None:
    app.cleanup_ctx.append(_service)
    app.on_shutdown.append(_stop_relaying)
    app.router.add_routes(routes)
