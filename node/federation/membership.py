"""Trust and keys: this node's place in the federation. The trust store built from the anchor and the
registry (certificates and revocations), the neighbours it implies, joining children, revoking them,
this node's own signing key (rotation, the rotated keys kept for opening old bodies), and the
federation's holder key."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncEngine

from federation.certs import TrustStore, level_of, make_certificate, make_revocation
from federation.client import PeerError
from federation.errors import SignatureError, TrustError
from federation.signing import (
    SigningKey, decode_b64, encode_b64, generate_signing_key, read_signing_key_file, sign_json, verify_key_b64,
    verify_signed_json, write_signing_key_file,
)
from node import __version__
from node.cluster import announce
from node.db import write_tx
from node.errors import ApiError
from node.fields import check_name
from node.federation import store
from node.ids import new_id, now_ms

if TYPE_CHECKING:
    from node.federation.service import FederationService

log = logging.getLogger("govnode.federation")

CERT_VALIDITY_MS = 5 * 365 * 24 * 3600 * 1000
INVITE_TTL_MS = 24 * 3600 * 1000
MAX_INVITE_TTL_MS = 7 * 24 * 3600 * 1000
ANCHOR_KEY_FILE = "anchor.key"  # the root's original key, which signs every root certificate
HOLDER_KEY_STATE = "holder_key"  # the federation-wide key of holder digests (licences), made by the root
# A rotated key's secret half still opens bodies sealed for it this long (SPEC §15): a message can wait in an
# outbox across the rotation.
OLD_KEY_DECRYPT_MS = 30 * 24 * 3600 * 1000


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def level_rank(node: str) -> int:
    return ("national", "province", "city", "county").index(level_of(node))


def expected_parent_warning(node: str, parent: str) -> str | None:
    """SPEC §1: a configured parent that does not share the expected code prefix is allowed, with a warning."""
    from federation.certs import expected_parent_prefix_ok

    if expected_parent_prefix_ok(node, parent):
        return None
    return f"{parent} is not the usual parent of {node} by its code prefix; continuing as configured"


def build_trust(anchor: dict[str, Any], docs: list[dict[str, Any]]) -> TrustStore:
    """A trust store from an anchor and stored registry documents (certificates parents first)."""
    trust = TrustStore(anchor["node"], anchor["key"])
    certs = sorted((d for d in docs if d.get("type") == "node_cert"), key=lambda d: level_rank(d["node"]))
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


class Membership:
    def __init__(self, fed: "FederationService", key: SigningKey) -> None:
        self.fed = fed
        self.config = fed.config
        self.engine: AsyncEngine = fed.engine
        self.node_id = fed.node_id
        self.key = key
        self.store: TrustStore | None = None
        self.parent: str | None = None
        self.holder_key: bytes | None = None
        self._subtrees: dict[str, set[str]] = {}
        self._children: set[str] | None = None  # cached like _subtrees: every request asks for the neighbours
        self._key_mtime = 0.0
        # Rotated keys read from their backup files, by key id (see `secret_key`).
        self._kept_keys: dict[str, SigningKey] = {}
        self._reloading: asyncio.Task[None] | None = None
        self._reload_again = False

    # The trust state ------------------------------------------------------------------------------

    @property
    def joined(self) -> bool:
        return self.store is not None and self.store.certificate(self.node_id) is not None

    def require_joined(self) -> TrustStore:
        if self.store is None or self.store.certificate(self.node_id) is None:
            raise ApiError("this node has not joined a federation yet (govnode join)", code="UNAVAILABLE")
        return self.store

    async def load(self) -> None:
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
        self.store = build_trust(anchor, docs)
        self.changed()

    async def become_root(self) -> None:
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
            await announce(conn, "trust")
        self.store = trust
        await self.make_holder_key()
        log.info("this node is the federation root; anchor %s %s", anchor["node"], anchor["key"])

    def neighbours(self) -> list[str]:
        out = sorted(self.children())
        if self.parent:
            out.insert(0, self.parent)
        return out

    def children(self) -> set[str]:
        if self.store is None:
            return set()
        if self._children is None:
            trust = self.store
            self._children = {n for n in trust.known_nodes()
                              if n != self.node_id and (trust.certificate(n) or {}).get("parent") == self.node_id}
        return set(self._children)

    def subtree(self, node: str) -> set[str]:
        cached = self._subtrees.get(node)
        if cached is None and self.store is not None:
            cached = self._subtrees[node] = self.store.subtree_of(node)
        return cached or {node}

    def endpoint_of(self, node: str) -> str:
        cert = self.store.certificate(node) if self.store else None
        if cert is None:
            raise ApiError(f"node {node} is not known here", {"hop": node}, code="NODE_UNKNOWN")
        return cert["endpoint"]

    def changed(self) -> None:
        """The trust store changed: the neighbours and subtrees drawn from it are drawn again."""
        self._subtrees.clear()
        self._children = None

    def reload_soon(self, _payload: str = "") -> None:
        """Another worker changed the trust state or the key (node.cluster): load both again, once for a
        burst of changes."""
        if self._reloading is not None and not self._reloading.done():
            self._reload_again = True
            return
        self._reloading = self.fed.tasks.spawn(self._reload())

    async def _reload(self) -> None:
        while True:
            self._reload_again = False
            await self.reload_key_if_changed()
            await self.load()
            for child in self.children():  # a child that joined through another worker gets a sender loop
                self.fed.sender.ensure(child)
            if not self._reload_again:
                return

    async def store_doc(self, doc: dict[str, Any]) -> None:
        """Keep a certificate or revocation already added to the trust store, and tell the neighbours."""
        async with write_tx(self.engine) as conn:
            await store.put_registry(conn, doc)
            await announce(conn, "trust")
        self.changed()
        await self.fed.replication.notify_neighbours("registry")

    def node_document(self) -> dict[str, Any]:
        chain = self.store.chain_for(self.node_id) if self.store else []
        return {"node": self.node_id, "name": self.config.node.name, "software": "govnode",
                "version": __version__, "chain": chain}

    # The holder key -------------------------------------------------------------------------------

    async def make_holder_key(self) -> None:
        """At the root: the federation-wide secret that keys holder digests (licences); children get it in the
        answer to their join (or later from their parent, GET /federation/v1/holder_key)."""
        key = secrets.token_bytes(32)
        async with write_tx(self.engine) as conn:
            held = await store.get_state(conn, HOLDER_KEY_STATE)
            if held is None:
                await store.set_state(conn, HOLDER_KEY_STATE, encode_b64(key))
                await announce(conn, "trust")
        self.holder_key = decode_b64(held) if held else key

    async def fetch_holder_key(self) -> None:
        """A node that joined before its parent handed out a holder key asks its parent for it."""
        if self.holder_key is not None or self.parent is None:
            return
        answer = await self.fed.client.request(self.parent, self.endpoint_of(self.parent), "GET",
                                               "/federation/v1/holder_key")
        key = decode_b64(answer["holder_key"]) if isinstance(answer, dict) else b""
        if len(key) < 16:
            raise PeerError("INVALID_INPUT", f"{self.parent} sent a malformed holder key")
        async with write_tx(self.engine) as conn:
            await store.set_state(conn, HOLDER_KEY_STATE, encode_b64(key))
            await announce(conn, "trust")
        self.holder_key = key
        log.info("received the federation's holder key from %s", self.parent)

    def holder_key_for(self, origin: str) -> dict[str, Any]:
        if origin not in self.children():
            raise ApiError("only a child asks its parent for the holder key", code="FORBIDDEN")
        if self.holder_key is None:
            raise ApiError("this node has no holder key yet", code="UNAVAILABLE")
        return {"holder_key": encode_b64(self.holder_key)}

    # Joining --------------------------------------------------------------------------------------

    @staticmethod
    async def create_invite(engine: AsyncEngine, node: str, ttl_ms: int = INVITE_TTL_MS) -> str:
        """A one-time join token for the child `node` (a GB/T 2260 code), valid `ttl_ms` (at most a week:
        a token is a secret handed over by hand, and an unused one should not outlive the hand-over)."""
        if not (isinstance(node, str) and len(node) == 6 and node.isascii() and node.isdigit()):
            raise ApiError(f"{node!r} is not a 6-digit node code", [{"field": "code", "error": "not a 6-digit code"}],
                           code="INVALID_INPUT")
        if not 0 < ttl_ms <= MAX_INVITE_TTL_MS:
            raise ApiError("an invite is valid for more than 0 and at most 168 hours",
                           [{"field": "ttl_hours", "error": "out of range"}], code="INVALID_INPUT")
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
        if cert["level"] != level_of(node) or level_rank(node) <= level_rank(self.node_id):
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
            await announce(conn, "trust")
        self.changed()
        self.fed.tasks.spawn(self.fed.replication.notify_neighbours("registry"))
        self.fed.sender.ensure(node)
        await self.fed.audit.record(request_id=new_id(), actor=f"{node}", role="node", action="federation.join",
                                    method="POST", path="/federation/v1/join", outcome="ok", status=200,
                                    details={"child": node, "endpoint": cert["endpoint"]})
        answer = {"certificate": signed, "chain": trust.chain_for(self.node_id),
                  "anchor": {"node": trust.anchor_node, "key": trust.anchor_key}}
        if self.holder_key is not None:  # the federation's holder-digest key (licences): a secret of the members
            answer["holder_key"] = encode_b64(self.holder_key)
        return answer

    # Certificates of children, revocation ---------------------------------------------------------

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
        await self.store_doc(signed)
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
            await announce(conn, "trust")
        self.changed()
        await self.fed.replication.notify_neighbours("registry")
        return {"revoked": node, "revocations": docs}

    # This node's signing keys ---------------------------------------------------------------------

    def _set_key(self, key: SigningKey) -> None:
        self.key = self.fed.catalog.key = key

    def key_file_mtime(self) -> float:
        try:
            return Path(self.config.key_path).stat().st_mtime
        except OSError:
            return 0.0

    def note_key_file(self) -> None:
        """The key file as it is now is the key in use."""
        self._key_mtime = self.key_file_mtime()

    async def reload_key_if_changed(self) -> None:
        mtime = self.key_file_mtime()
        if mtime and mtime != self._key_mtime:
            self._key_mtime = mtime
            self._set_key(read_signing_key_file(self.config.key_path))
            await self.load()
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
            answer = await self.fed.client.request(self.parent, self.endpoint_of(self.parent), "POST",
                                                   "/federation/v1/certificate", {"certificate": proof})
            cert = answer["certificate"]
            anchor = None
        write_signing_key_file(self._backup_path(old_key.key_id), old_key)
        write_signing_key_file(Path(self.config.key_path), new_key)
        self._set_key(new_key)
        self.note_key_file()
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
            await announce(conn, "trust")  # with the new key file: the other workers sign with it too
        await self.load()
        await self.fed.replication.notify_neighbours("registry")
        return cert

    def secret_key(self, key_id: str) -> SigningKey | None:
        """This node's key `key_id`: the current one, or a rotated one kept for decryption (SPEC §15) for 30
        days after it expired.

        A rotated key is read from its backup file once and kept: every message still sealed for it (a
        sender's outbox across the rotation) used to read and parse the file again. Kept only while the
        certificate lists that very key under its id, so a worker of the node sees what another one rotated
        (a new backup file, read on first use) and never opens with a key the certificate does not name."""
        if key_id == self.key.key_id:
            return self.key
        cert = self.store.certificate(self.node_id) if self.store else None
        listed = ((cert or {}).get("old_verify_keys") or {}).get(key_id)
        if not isinstance(listed, dict) or listed.get("expired_at", 0) < now_ms() - OLD_KEY_DECRYPT_MS:
            return None
        kept = self._kept_keys.get(key_id)
        if kept is not None and verify_key_b64(kept) == listed.get("key"):
            return kept
        try:
            kept = read_signing_key_file(self._backup_path(key_id))
        except (OSError, ValueError):
            return None
        if verify_key_b64(kept) != listed.get("key"):
            return None
        self._kept_keys[key_id] = kept
        return kept

    def _backup_path(self, key_id: str) -> Path:
        """Where a rotation keeps the retired key `key_id` (`signing.key.ed25519-1.old`), and where
        `secret_key` looks for it."""
        path = Path(self.config.key_path)
        return path.with_name(f"{path.name}.{key_id.replace(':', '-')}.old")
