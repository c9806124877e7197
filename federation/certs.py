"""Node identifiers, node certificates, revocations and the trust store (SPEC §1, §3).

Rules the store enforces, beyond the signature checks of SPEC §3:

* the root certificate belongs to the anchor node, has no parent, and is signed by the anchor key;
* every other certificate is issued (and signed) by the parent it names, with the issuer's
  current key, and the issuer is of a strictly higher level (national > province > city >
  county) — so a county can certify nobody and a chain can never loop;
* a newer certificate for a node already known replaces the stored one only when its
  ``valid_from`` is later and its issuer is the stored certificate's issuer or an ancestor of it,
  so no node can take over another node's identity by certifying it itself;
* a revocation names one key of a node and is signed by an ancestor of that node; from
  ``revoked_at`` on, the key verifies nothing, and a node whose current key is revoked is revoked
  (with its whole subtree).
"""

from __future__ import annotations

import copy
import functools
import re
from typing import Annotated, Any, Literal

import nacl.signing
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

from federation.canonical import MAX_SAFE_INTEGER, check_canonical_value
from federation.errors import CanonicalJSONError, SignatureError, TrustError, summary, validation_details
from federation.signing import decode_verify_key, verify_signed_json

__all__ = [
    "LEVELS",
    "KeyId",
    "Millis",
    "NodeCertificate",
    "NodeId",
    "Revocation",
    "Signatures",
    "TrustError",
    "TrustStore",
    "expected_parent_prefix_ok",
    "level_of",
    "make_certificate",
    "make_revocation",
    "valid_node_id",
]

LEVELS = ("national", "province", "city", "county")
Level = Literal["national", "province", "city", "county"]
_NODE_ID = re.compile(r"[0-9]{6}")


def valid_node_id(value: object) -> bool:
    """A 6-digit GB/T 2260 code: ``000000`` or a code whose province part is not ``00``."""
    return isinstance(value, str) and bool(_NODE_ID.fullmatch(value)) and (value == "000000" or value[:2] != "00")


def level_of(node_id: str) -> Level:
    """``national`` (000000), ``province`` (XX0000), ``city`` (XXXX00) or ``county`` (any other)."""
    if not valid_node_id(node_id):
        raise ValueError(f"not a node id (6-digit division code): {node_id!r}")
    if node_id == "000000":
        return "national"
    if node_id.endswith("0000"):
        return "province"
    if node_id.endswith("00"):
        return "city"
    return "county"


def expected_parent_prefix_ok(node: str, parent: str) -> bool:
    """Whether ``parent`` is the parent the codes suggest (for a configuration warning only).

    Province under ``000000``; city under its province; county under its city or directly under
    its province (省直辖县级市 ``XX90XX``, and districts of municipalities).
    """
    level = level_of(node)
    province = node[:2] + "0000"
    if level == "national":
        return False
    if level == "province":
        return parent == "000000"
    if level == "city":
        return parent == province
    return parent in (node[:4] + "00", province)


def _check_node_id(value: str) -> str:
    if not valid_node_id(value):
        raise ValueError("must be a 6-digit division code")
    return value


def _check_verify_key(value: str) -> str:
    decode_verify_key(value)
    return value


NodeId = Annotated[str, AfterValidator(_check_node_id)]
KeyId = Annotated[str, StringConstraints(pattern=r"^ed25519:[A-Za-z0-9_]+$")]
Millis = Annotated[int, Field(ge=0, le=MAX_SAFE_INTEGER)]
VerifyKeyB64 = Annotated[str, AfterValidator(_check_verify_key)]
Signatures = dict[str, dict[str, str]]


class OldVerifyKey(BaseModel):
    """A retired key: still verifies objects signed before ``expired_at``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    key: VerifyKeyB64
    expired_at: Millis


class NodeCertificate(BaseModel):
    """Shape of a node certificate (SPEC §3)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["node_cert"]
    node: NodeId
    name: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    level: Level
    parent: NodeId | None
    endpoint: Annotated[str, StringConstraints(pattern=r"^https?://[^\s/?#]+[^\s]*$", max_length=2048)]
    verify_keys: Annotated[dict[KeyId, VerifyKeyB64], Field(min_length=1)]
    old_verify_keys: dict[KeyId, OldVerifyKey]
    valid_from: Millis
    valid_until: Millis
    issuer: NodeId
    signatures: Signatures = {}
    unsigned: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> NodeCertificate:
        if self.level != level_of(self.node):
            raise ValueError(f"level of {self.node} is {level_of(self.node)}, not {self.level}")
        if self.parent == self.node:
            raise ValueError("a node cannot be its own parent")
        if self.valid_from >= self.valid_until:
            raise ValueError("valid_from must be before valid_until")
        if set(self.verify_keys) & set(self.old_verify_keys):
            raise ValueError("a key id cannot be both current and old")
        return self


class Revocation(BaseModel):
    """Shape of a revocation (SPEC §3)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    type: Literal["revocation"]
    node: NodeId
    key_id: KeyId
    revoked_at: Millis
    issuer: NodeId
    signatures: Signatures = {}
    unsigned: dict[str, Any] | None = None


def _validate(model: type[BaseModel], obj: object, what: str) -> None:
    try:
        model.model_validate(obj, strict=True)
        check_canonical_value(obj)
    except ValidationError as exc:
        details = validation_details(exc)
        raise TrustError("INVALID_INPUT", f"malformed {what}: {summary(details)}", details) from None
    except CanonicalJSONError as exc:
        raise TrustError("INVALID_INPUT", f"malformed {what}: {exc.message}", exc.details) from None


def make_certificate(
    node: str,
    name: str,
    level: str,
    parent: str | None,
    endpoint: str,
    verify_keys: dict[str, str],
    old_verify_keys: dict[str, dict[str, Any]],
    valid_from: int,
    valid_until: int,
    issuer: str,
) -> dict[str, Any]:
    """Build an unsigned certificate; ``TrustError("INVALID_INPUT")`` when a field is wrong."""
    cert = {
        "type": "node_cert",
        "node": node,
        "name": name,
        "level": level,
        "parent": parent,
        "endpoint": endpoint,
        "verify_keys": dict(verify_keys),
        "old_verify_keys": {key_id: dict(old) for key_id, old in old_verify_keys.items()},
        "valid_from": valid_from,
        "valid_until": valid_until,
        "issuer": issuer,
    }
    _validate(NodeCertificate, cert, "certificate")
    return cert


def make_revocation(node: str, key_id: str, revoked_at: int, issuer: str) -> dict[str, Any]:
    """Build an unsigned revocation of ``node``'s key ``key_id`` from ``revoked_at`` on."""
    revocation = {"type": "revocation", "node": node, "key_id": key_id, "revoked_at": revoked_at, "issuer": issuer}
    _validate(Revocation, revocation, "revocation")
    return revocation


@functools.lru_cache(maxsize=4096)
def _verify_key(b64: str) -> nacl.signing.VerifyKey:
    return decode_verify_key(b64)


def _rank(node_id: str) -> int:
    return LEVELS.index(level_of(node_id))


class TrustStore:
    """Certificates and revocations a node knows, checked against one trust anchor.

    Stored objects are private copies; the dicts returned by the accessors must not be mutated.
    """

    def __init__(self, anchor_node: str, anchor_key: str) -> None:
        if not valid_node_id(anchor_node):
            raise ValueError(f"anchor node is not a node id: {anchor_node!r}")
        self.anchor_node = anchor_node
        self.anchor_key = anchor_key
        self._anchor_verify_key = decode_verify_key(anchor_key)
        self._certs: dict[str, dict[str, Any]] = {}
        self._revocations: dict[str, dict[str, dict[str, Any]]] = {}
        # Node ids whose stored certificate was verified against the currently stored issuer.
        self._links_ok: set[str] = set()

    def certificate(self, node_id: str) -> dict[str, Any] | None:
        """The stored certificate of ``node_id``, unchecked."""
        return self._certs.get(node_id)

    def known_nodes(self) -> set[str]:
        """Every node id with a stored certificate."""
        return set(self._certs)

    def add_certificate(self, cert: dict[str, Any]) -> bool:
        """Verify and store ``cert``; return whether it was stored (False: not newer than the stored one).

        Raises ``TrustError`` (``INVALID_INPUT``, ``BROKEN_CHAIN``, ``SIGNATURE_INVALID``) when refused.
        Add certificates parents first: the issuer's certificate must already be known.
        """
        _validate(NodeCertificate, cert, "certificate")
        node = cert["node"]
        stored = self._certs.get(node)
        if stored is not None and cert["valid_from"] <= stored["valid_from"]:
            # Not newer: nothing to store, whoever signed it. Checked before the signature, because an older
            # copy (a neighbour's registry still holds it after a rotation) is signed with a key its issuer
            # no longer lists, and refusing it as "not signed" only puts a false alarm in the log.
            return False
        self._check_link(cert)
        if stored is not None:
            if cert["issuer"] not in [c["node"] for c in self.chain_for(stored["issuer"])]:
                raise TrustError(
                    "BROKEN_CHAIN",
                    f"certificate of {node} is issued by {cert['issuer']}, "
                    f"which is neither its issuer {stored['issuer']} nor an ancestor of it",
                )
        self._certs[node] = copy.deepcopy(cert)
        self._links_ok.clear()
        return True

    def add_revocation(self, revocation: dict[str, Any]) -> bool:
        """Verify and store a revocation; return whether it changed anything.

        The issuer must be an ancestor of the revoked node and sign with a key valid at
        ``revoked_at``. Raises ``TrustError`` (``INVALID_INPUT``, ``UNKNOWN``, ``BROKEN_CHAIN``,
        ``SIGNATURE_INVALID``).
        """
        _validate(Revocation, revocation, "revocation")
        node, key_id, issuer = revocation["node"], revocation["key_id"], revocation["issuer"]
        chain = self.chain_for(node)
        if not chain:
            raise TrustError("UNKNOWN", f"revocation of unknown node {node}")
        if issuer not in [c["node"] for c in chain[1:]]:
            raise TrustError("BROKEN_CHAIN", f"revocation of {node} issued by {issuer}, which is not an ancestor")
        keys = self._keys_of(self._certs[issuer], at_ms=revocation["revoked_at"])
        try:
            verify_signed_json(revocation, issuer, keys)
        except SignatureError as exc:
            raise TrustError("SIGNATURE_INVALID", f"revocation of {node}: {exc.message}") from None
        by_key = self._revocations.setdefault(node, {})
        stored = by_key.get(key_id)
        if stored is not None and stored["revoked_at"] <= revocation["revoked_at"]:
            return False
        by_key[key_id] = copy.deepcopy(revocation)
        return True

    def is_revoked(self, node_id: str, now_ms: int | None = None) -> bool:
        """Whether a current key of ``node_id`` is revoked (at ``now_ms``; at any time when None)."""
        cert = self._certs.get(node_id)
        return cert is not None and self._cert_revoked(cert, now_ms)

    def chain_for(self, node_id: str) -> list[dict[str, Any]]:
        """The stored chain of ``node_id``, leaf first, without any check; ``[]`` when unknown."""
        chain = []
        cert = self._certs.get(node_id)
        while cert is not None:  # terminates: stored parents are of strictly higher level
            chain.append(cert)
            cert = self._certs.get(cert["parent"]) if cert["parent"] is not None else None
        return chain

    def verify_chain(self, node_id: str, now_ms: int) -> list[dict[str, Any]]:
        """Check ``node_id``'s chain up to the anchor at ``now_ms``; return it leaf first.

        Raises ``TrustError`` with code ``UNKNOWN``, ``BROKEN_CHAIN``, ``SIGNATURE_INVALID``,
        ``REVOKED`` or ``EXPIRED``, for the certificate nearest the leaf that fails.
        """
        chain: list[dict[str, Any]] = []
        current: str | None = node_id
        while current is not None:
            cert = self._certs.get(current)
            if cert is None:
                code = "BROKEN_CHAIN" if chain else "UNKNOWN"
                raise TrustError(code, f"no certificate for {current}")
            if current not in self._links_ok:
                self._check_link(cert)
                self._links_ok.add(current)
            if self._cert_revoked(cert, now_ms):
                raise TrustError("REVOKED", f"{current} is revoked", {"node": current})
            if not cert["valid_from"] <= now_ms < cert["valid_until"]:
                state = "not yet valid" if now_ms < cert["valid_from"] else "expired"
                raise TrustError("EXPIRED", f"certificate of {current} is {state}", {"node": current})
            chain.append(cert)
            current = cert["parent"]
        return chain

    def verify_keys_for(
        self, node_id: str, at_ms: int | None = None, *, now_ms: int
    ) -> dict[str, nacl.signing.VerifyKey]:
        """Keys that may verify ``node_id``'s signatures; the chain must verify at ``now_ms``.

        Without ``at_ms`` (requests, envelopes): the current keys only. With ``at_ms`` (the signing
        time of a stored object): also the old keys with ``expired_at > at_ms`` that were not
        revoked at or before ``at_ms``.
        """
        cert = self.verify_chain(node_id, now_ms)[0]
        return {key_id: _verify_key(b64) for key_id, b64 in self._keys_of(cert, at_ms).items()}

    def subtree_of(self, node_id: str) -> set[str]:
        """Known node ids whose stored chain passes through ``node_id`` (itself included)."""
        return {node for node in self._certs if any(c["node"] == node_id for c in self.chain_for(node))}

    def _keys_of(self, cert: dict[str, Any], at_ms: int | None = None) -> dict[str, str]:
        keys = dict(cert["verify_keys"])
        if at_ms is not None:
            revoked = self._revocations.get(cert["node"], {})
            for key_id, old in cert["old_verify_keys"].items():
                revocation = revoked.get(key_id)
                if at_ms < old["expired_at"] and (revocation is None or at_ms < revocation["revoked_at"]):
                    keys[key_id] = old["key"]
        return keys

    def _cert_revoked(self, cert: dict[str, Any], now_ms: int | None) -> bool:
        revoked = self._revocations.get(cert["node"], {})
        return any(
            key_id in revoked and (now_ms is None or revoked[key_id]["revoked_at"] <= now_ms)
            for key_id in cert["verify_keys"]
        )

    def _check_link(self, cert: dict[str, Any]) -> None:
        """Check who issued ``cert`` and its signature against the stored issuer (or the anchor)."""
        node, parent, issuer = cert["node"], cert["parent"], cert["issuer"]
        keys: dict[str, nacl.signing.VerifyKey | str]
        if node == self.anchor_node:
            if parent is not None or issuer != node:
                raise TrustError("BROKEN_CHAIN", f"the root certificate of {node} must be self-issued, without parent")
            keys = {key_id: self._anchor_verify_key for key_id in cert.get("signatures", {}).get(node, {})}
        else:
            if parent is None:
                raise TrustError("BROKEN_CHAIN", f"{node} has no parent but is not the trust anchor {self.anchor_node}")
            if issuer != parent:
                raise TrustError(
                    "BROKEN_CHAIN", f"certificate of {node} is issued by {issuer}, not by its parent {parent}"
                )
            if _rank(issuer) >= _rank(node):
                levels = f"a {level_of(issuer)} node cannot certify a {level_of(node)} node"
                raise TrustError("BROKEN_CHAIN", f"{levels} ({issuer} → {node})")
            issuer_cert = self._certs.get(issuer)
            if issuer_cert is None:
                raise TrustError("BROKEN_CHAIN", f"issuer {issuer} of {node} is unknown")
            keys = dict(issuer_cert["verify_keys"])
        try:
            verify_signed_json(cert, issuer, keys)
        except SignatureError as exc:
            raise TrustError("SIGNATURE_INVALID", f"certificate of {node}: {exc.message}") from None
