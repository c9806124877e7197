"""Federation commands: invite, join, keys rotate, revoke (SPEC §14)."""

from __future__ import annotations

import argparse
import json

import aiohttp

from federation.auth import make_authorization
from federation.canonical import encode_canonical_json
from federation.certs import level_of, make_certificate
from federation.errors import TrustError
from federation.signing import read_signing_key_file, sign_json, verify_key_b64
from node.cli import command
from node import tls
from node.config import Config, ConfigError, load_config
from node.db import write_tx
from node.homelock import refuse_if_serving
from node.errors import ApiError
from node.fields import printable, unsafe_characters
from node.federation import store
from node.federation.service import FederationService, build_trust, expected_parent_warning
from node.ids import now_ms


async def _engine(config: Config, home_held: bool = False):  # noqa: ANN202
    from node.commands import open_database

    return await open_database(config, home_held)


async def invite(args: argparse.Namespace) -> int:
    config = load_config(args.dir)
    engine = await _engine(config)
    try:
        token = await FederationService.create_invite(engine, args.code, int(args.ttl_hours * 3600 * 1000))
    finally:
        await engine.dispose()
    print(f"one-time join token for {args.code}, valid {args.ttl_hours:g} h; give it to that node's operator:")
    print(token)
    return 0


async def _get_json(session: aiohttp.ClientSession, url: str) -> dict:
    async with session.get(url) as resp:
        if resp.status != 200:
            raise ApiError(f"{url} answered {resp.status}", code="PEER_UNREACHABLE")
        return await resp.json()


async def join_parent(config: Config, parent_url: str, token: str, expected_anchor: str | None = None) -> str:
    """Obtain this node's certificate from its parent (SPEC §3) and store the trust state; returns a summary.

    The node must not be running: it keeps its trust state in memory from its start, and would go on
    without what join stores. The home stays locked from before the token is spent until the state is
    stored, so that no node starts meanwhile either."""
    with refuse_if_serving(config.home, "join"):
        return await _join_parent(config, parent_url, token, expected_anchor)


async def _join_parent(config: Config, parent_url: str, token: str, expected_anchor: str | None) -> str:
    key = read_signing_key_file(config.key_path)
    parent_url = parent_url.rstrip("/")
    timeout = aiohttp.ClientTimeout(total=30)
    try:
        refusal = tls.plain_http_refusal(parent_url, config.insecure_http)
        if refusal is not None:
            raise ApiError(refusal, code="PEER_UNREACHABLE")
        async with tls.client_session(config, timeout=timeout) as session:
            parent_doc = await _get_json(session, f"{parent_url}/federation/v1/node")
            parent = parent_doc.get("node")
            if not isinstance(parent, str):
                raise ApiError(f"{parent_url} is not a govnode node", code="PEER_UNREACHABLE")
            now = now_ms()
            draft = make_certificate(
                config.node.id, config.node.name, level_of(config.node.id), parent, config.endpoint or "",
                {key.key_id: verify_key_b64(key)}, {}, now, now + 1, config.node.id,
            )
            draft = sign_json(draft, config.node.id, key)
            async with session.post(f"{parent_url}/federation/v1/join",
                                    data=encode_canonical_json({"token": token, "certificate": draft}),
                                    headers={"Content-Type": "application/json"}) as resp:
                answer = await resp.json(content_type=None)
                if resp.status != 200:
                    raise ApiError.from_body(answer, fallback_code="PEER_UNREACHABLE")
    except aiohttp.ClientError as exc:
        raise ApiError(f"cannot reach {parent_url}: {exc}", code="PEER_UNREACHABLE") from None
    anchor = answer["anchor"]
    if expected_anchor and expected_anchor.split()[-1] != anchor["key"]:
        raise ApiError(f"the parent's anchor key {anchor['key']} is not the one you expected", code="FORBIDDEN")
    docs = list(reversed(answer["chain"])) + [answer["certificate"]]
    try:
        trust = build_trust(anchor, [])
        for doc in docs:
            trust.add_certificate(doc)
        trust.verify_chain(config.node.id, now_ms())
    except TrustError as exc:
        raise ApiError(f"the certificate from {parent_url} does not verify: {exc.message}",
                       code="SIGNATURE_INVALID") from None
    await _store_joined(config, anchor, parent, answer, docs)
    lines = [f"node {config.node.id} joined under {parent} ({parent_url}); "
             f"trust anchor {anchor['node']} {anchor['key']}"]
    warning = expected_parent_warning(config.node.id, parent)
    if warning:
        lines.insert(0, f"warning: {warning}")
    return "\n".join(lines)


async def _store_joined(config: Config, anchor: dict, parent: str, answer: dict, docs: list[dict]) -> None:
    engine = await _engine(config, home_held=True)
    try:
        async with write_tx(engine) as conn:
            await store.set_state(conn, "anchor", {"node": anchor["node"], "key": anchor["key"]})
            await store.set_state(conn, "parent", parent)
            if isinstance(answer.get("holder_key"), str):  # the federation's holder-digest key (licences)
                await store.set_state(conn, "holder_key", answer["holder_key"])
            for doc in docs:
                await store.put_registry(conn, doc)
    finally:
        await engine.dispose()


async def join(args: argparse.Namespace) -> int:
    if unsafe_characters(args.token) or not args.token.strip():
        raise ConfigError("the join token must be the one line `govnode invite` printed, without control characters")
    # The summary names what the parent answered: escaped, so a parent cannot forge lines of this output.
    print("\n".join(printable(line) for line in
                    (await join_parent(load_config(args.dir), args.parent_url, args.token, args.anchor)).splitlines()))
    return 0


async def _admin(config: Config, action: str, body: dict | None) -> dict:
    """Ask the running node to act, signing the request with its own key (proof of being its operator)."""
    key = read_signing_key_file(config.key_path)
    path = f"/federation/v1/admin/{action}"
    auth = make_authorization("POST", path, config.node.id, config.node.id, key, content=body)
    data = encode_canonical_json(body) if body is not None else None
    try:
        async with tls.client_session(config, timeout=aiohttp.ClientTimeout(total=60)) as session:
            async with session.post(f"{config.endpoint}{path}", data=data,
                                    headers={"Authorization": auth, "Content-Type": "application/json"}) as resp:
                answer = await resp.json(content_type=None)
                if resp.status != 200:
                    raise ApiError.from_body(answer, fallback_code="PEER_UNREACHABLE")
                return answer
    except aiohttp.ClientError:
        raise ApiError(f"the node is not running at {config.endpoint}; start it with `govnode run`",
                       code="PEER_UNREACHABLE") from None


async def keys_rotate(args: argparse.Namespace) -> int:
    answer = await _admin(load_config(args.dir), "rotate", None)
    cert = answer["certificate"]
    print(printable(f"new key {', '.join(cert['verify_keys'])}; old keys kept for verification: "
                    f"{', '.join(cert['old_verify_keys']) or 'none'}"))
    return 0


async def revoke(args: argparse.Namespace) -> int:
    answer = await _admin(load_config(args.dir), "revoke", {"node": args.code})
    print(json.dumps({"revoked": answer["revoked"], "keys": [r["key_id"] for r in answer["revocations"]]}))
    return 0


def register(sub: argparse._SubParsersAction, home: argparse.ArgumentParser) -> None:
    p = command(sub, "invite", invite, parents=[home], help="one-time join token for a child node")
    p.add_argument("code", help="the child's node code")
    p.add_argument("--ttl-hours", type=float, default=24.0)
    p = command(sub, "join", join, parents=[home], help="obtain this node's certificate from its parent")
    p.add_argument("parent_url")
    p.add_argument("token")
    p.add_argument("--anchor", help="the expected trust anchor ('NODE KEY' or just KEY) to pin")
    keys = sub.add_parser("keys", help="signing keys").add_subparsers(dest="keys_command", required=True)
    command(keys, "rotate", keys_rotate, parents=[home], help="rotate this node's signing key (node must be running)")
    p = command(sub, "revoke", revoke, parents=[home], help="revoke a node of this node's subtree (node must be running)")
    p.add_argument("code")
