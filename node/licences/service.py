"""Electronic licences (电子证照, SPEC §13): issued at home, found and verified everywhere.

- Issuing: a department issues at its own node; the licence (GB/T 36903 fields, a GB/T 36904 identifier) is
  signed by the node and stays there. 加注/变更 make a new version (same serial, version + 1); the old
  version stays verifiable as superseded.
- Finding: each licence has a signed index entry (identifier, type, issuer, status, validity, a keyed digest
  of the holder code and the digest of the licence) that replicates through the federation as the feed
  `licences`, exactly like the catalog; so a search by holder is answered by any node from its own copy.
- Seeing the face: fetching a licence is routed to its issuer (`licence.verify` with `op: fetch`), which shows
  the signed licence to the issuing department and to departments presenting a grant on the issuing
  department's licence resource (a conditional catalog entry made at its first issue); others get the index
  entry (that the licence exists, and its status).
- Verifying: the check character, the issuer's signature with its chain and the key of the signing time, the
  validity dates, and the issuer's current status, asked of the issuer (`op: status`) or, when it cannot be
  reached, taken from the replicated index (and said so).
- Revoking: by the issuing department, with a reason; the index entry changes and replicates (notify, or the
  next scheduled pull).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
from typing import Any

from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from federation.canonical import encode_canonical_json
from federation.errors import FederationError, SignatureError, TrustError
from federation.signing import sign_json, signed_bytes, verify_signed_json
from node.accounts.service import Account
from node.catalog.models import EntryCreate
from node.catalog.service import CatalogService
from node.cluster import node_lock
from node.db import next_counter, write_tx
from node.errors import ApiError, Conflict, Forbidden, InvalidInput, NotFound
from node.federation.feed_tables import Stored, TableFeed, held_seqs, store_rows
from node.federation.service import FederationService
from node.ids import now_ms, valid_gb32100
from node.licences import store
from node.licences.identifier import IDENTIFIER, IdentifierError, make, parse
from node.licences.models import IndexEntry, LicenceDoc, LicenceIssue, LicenceVersion
from node.sharing.models import Requester
from node.web import validation_details
from node.workdays import cst_date

log = logging.getLogger("govnode.licences")

KIND = "licence.verify"          # the envelope kind of every call to an issuer (op: status | fetch)
FEED = "licences"
SEQ_COUNTER = "licence_seq"      # this node's seq over its own index entries (travels in the entry)
CHANGE_COUNTER = "licence_change"  # local commit order of every index entry held (the feed cursor)
STATUS_TTL_MS = 5_000            # how long a verifier waits for the issuer before using its replicated index
HOLDER_DIGEST_LABEL = b"govnode/licence-holder/v1\x00"
CLOCK_SKEW_MS = 300_000
FIND_LIMIT = 500
# The catalog resource of an issuing department's licences: 基础信息资源 (1) / 电子证照 (05) / 001.
RESOURCE_CLASSIFICATION = "105001"
UNREACHABLE = ("PEER_UNREACHABLE", "PEER_TIMEOUT", "UNAVAILABLE")
STATUS_ORDER = ("invalid", "revoked", "superseded", "expired", "not_yet_valid", "unknown")
CHECKS = ("shape", "identifier", "check_character", "chain", "signature", "validity", "status")


def today() -> str:
    return cst_date(now_ms()).isoformat()


def licence_digest(licence: dict[str, Any]) -> str:
    """SHA-256 of what the issuer signed: ties an index entry to exactly one licence document."""
    return hashlib.sha256(signed_bytes(licence)).hexdigest()


def dated_status(index: dict[str, Any], on: str) -> str:
    """A licence's status on a date: the issuer's status, and then its validity dates."""
    if index["status"] != "valid":
        return index["status"]
    if index.get("valid_until") and index["valid_until"] < on:
        return "expired"
    if index["valid_from"] > on:
        return "not_yet_valid"
    return "valid"


def summary(index: dict[str, Any], on: str) -> dict[str, Any]:
    return {
        "identifier": index["identifier"], "licence_type": index["licence_type"],
        "issuer": {"node": index["node"], "dept": index["dept"], "name": index["issuer_name"]},
        "status": dated_status(index, on), "index_status": index["status"],
        "valid_from": index["valid_from"], "valid_until": index.get("valid_until"),
        "superseded_by": index.get("superseded_by"), "updated_at": index["updated_at"],
    }


def index_row(entry: dict[str, Any], change_id: int) -> dict[str, Any]:
    return {
        "identifier": entry["identifier"], "node": entry["node"], "dept": entry["dept"], "seq": entry["seq"],
        "status": entry["status"], "holder_digest": entry["holder_digest"], "updated_at": entry["updated_at"],
        "entry": encode_canonical_json(entry).decode("utf-8"), "change_id": change_id,
    }


def resource_body(dept_name: str) -> dict[str, Any]:
    """The catalog entry through which an issuing department's licence faces are applied for and granted."""
    return {
        "classification": RESOURCE_CLASSIFICATION, "name": f"{dept_name}电子证照", "category": "base",
        "format": "service",
        "summary": "本部门颁发的电子证照（GB/T 36903、GB/T 36904）。证照是否存在及其状态全网可查可验；"
                   "查看证照照面须经本部门授权（依申请）。",
        "items": [
            {"name": "证照标识", "field": "identifier", "type": "C", "length": 100, "key": True},
            {"name": "证照类型", "field": "licence_type", "type": "C", "length": 100},
            {"name": "证照编号", "field": "number", "type": "C", "length": 64},
            {"name": "持证主体名称", "field": "holder_name", "type": "C", "length": 200, "sensitive": True},
            {"name": "持证主体代码", "field": "holder_code", "type": "C", "length": 18, "sensitive": True},
            {"name": "颁证日期", "field": "issued_on", "type": "D"},
            {"name": "有效期起始", "field": "valid_from", "type": "D"},
            {"name": "有效期截止", "field": "valid_until", "type": "D"},
            {"name": "照面信息", "field": "face", "type": "C", "sensitive": True},
        ],
        "share": {"type": "conditional", "methods": ["api"],
                  "condition": "查看证照照面须经发证部门授权（依申请）；证照是否存在及其状态无需授权即可核验"},
        "update_cycle": "realtime",
    }


class LicenceFeed(TableFeed):
    """The licence index as a signed feed of the federation (served at /federation/v1/licences/changes)."""

    name = FEED
    counter = CHANGE_COUNTER
    stored = (Stored(store.licence_index.c.identifier, store.licence_index.c.entry, index_row, "a licence"),)

    def key(self, obj: dict[str, Any]) -> Any:
        return obj.get("identifier")

    def problem(self, obj: dict[str, Any]) -> str | None:
        return index_problem(obj)

    async def log_refusal(self, conn: Any, refusal: dict[str, Any]) -> None:
        await store.log_refusal(conn, at=refusal["at"], identifier=refusal["key"], node=refusal["node"],
                                received_from=refusal["received_from"], reason=refusal["reason"])


def index_problem(obj: Any) -> str | None:
    """Why an index entry is malformed or inconsistent (its signature aside), or None."""
    try:
        entry = IndexEntry.model_validate(obj)
    except ValidationError as exc:
        return "malformed licence index entry: " + "; ".join(f"{d['field']}: {d['error']}"
                                                              for d in validation_details(exc)[:3])
    try:
        ident = parse(entry.identifier)
    except IdentifierError as exc:
        return f"identifier: {exc.message}"
    if not ident.check_ok:
        return f"the check character of {entry.identifier} is wrong"
    if ident.issuer_code != entry.dept or ident.type_code != entry.licence_type.code:
        return f"{entry.identifier} names another issuer or licence type than the entry"
    return None


class _Verdict:
    """What a verification found, check by check."""

    def __init__(self) -> None:
        self.checks: dict[str, str] = dict.fromkeys(CHECKS, "skipped")
        self.reasons: list[dict[str, str]] = []
        self.statuses: set[str] = set()
        self.extra: dict[str, Any] = {}

    def ok(self, check: str) -> None:
        self.checks[check] = "ok"

    def fail(self, check: str, message: str, status: str = "invalid") -> None:
        self.checks[check] = "failed"
        self.reasons.append({"check": check, "message": message})
        self.statuses.add(status)

    @property
    def broken(self) -> bool:
        return "invalid" in self.statuses

    def answer(self) -> dict[str, Any]:
        status = next((s for s in STATUS_ORDER if s in self.statuses), "valid")
        return {"valid": not self.reasons, "status": status, "reasons": self.reasons, "checks": self.checks,
                **self.extra}


class LicenceService:
    def __init__(self, engine: AsyncEngine, node_id: str, catalog: CatalogService, federation: FederationService,
                 sharing: Any) -> None:
        self.engine = engine
        self.node_id = node_id
        self.catalog = catalog
        self.federation = federation
        self.sharing = sharing  # its grant_finder / grant_checker decide who sees a licence face
        self._resource_locks: dict[str, asyncio.Lock] = {}

    def connect(self) -> None:
        self.federation.handlers[KIND] = self.on_message
        self.federation.register_feed(LicenceFeed())

    # Keys and digests ---------------------------------------------------------------------------------

    def holder_digest(self, code: str) -> str:
        """HMAC-SHA256 of a holder code with the federation's holder key: every member node computes the same
        digest, and the index never carries the code."""
        key = self.federation.holder_key
        if key is None:
            raise ApiError("this node has not received the federation's holder key yet (it comes with joining, or "
                           "from the parent)", code="UNAVAILABLE")
        # hmac.digest, the one-shot C function: a list check digests up to 10,000 codes a call, and it took
        # 1 µs a code where hmac.new(...).hexdigest() took 11 µs (same bytes).
        return hmac.digest(key, HOLDER_DIGEST_LABEL + code.strip().upper().encode("utf-8"), "sha256").hex()

    def _sign(self, obj: dict[str, Any]) -> dict[str, Any]:
        return sign_json(obj, self.node_id, self.federation.key)

    # Issuing ------------------------------------------------------------------------------------------

    async def _resource_of(self, acct: Account) -> str:
        """The catalog resource of the department's licences, registered (conditional) at its first issue."""
        lock = self._resource_locks.setdefault(acct.dept, asyncio.Lock())
        # One registration a department, also across the node's workers (an advisory lock on PostgreSQL).
        async with lock, node_lock(self.engine, f"licence resource {acct.dept}"):
            async with self.engine.connect() as conn:
                code = await store.issuer_resource(conn, acct.dept)
            if code is not None:
                try:
                    await self.catalog.get(code)
                    return code
                except NotFound:  # withdrawn by the department: register it again
                    pass
            entry = await self.catalog.create(acct, EntryCreate.model_validate(resource_body(acct.name)))
            async with write_tx(self.engine) as conn:
                await store.set_issuer_resource(conn, acct.dept, entry["code"])
            return entry["code"]

    async def issue(self, acct: Account, body: LicenceIssue) -> dict[str, Any]:
        self.federation.require_joined()
        if not valid_gb32100(acct.dept):
            raise InvalidInput(f"the issuing department's code {acct.dept} is not a 统一社会信用代码; a licence "
                               "names its issuer by it (GB/T 36904)", [{"field": "issuer", "error": "not GB 32100"}])
        issued_on = body.issued_on or today()
        valid_from = body.valid_from or issued_on
        if body.valid_until is not None and body.valid_until < valid_from:
            raise InvalidInput("valid_until is before the start of validity", [{"field": "valid_until"}])
        digest = self.holder_digest(body.holder.code)
        resource = await self._resource_of(acct)
        now = now_ms()
        year = issued_on[:4]
        try:
            async with write_tx(self.engine) as conn:
                n = await next_counter(conn, f"licence_serial:{acct.dept}:{year}")
                serial = f"{year}{n:07d}"
                identifier = make(body.licence_type.code, acct.dept, serial, 1)
                if await store.get_index(conn, identifier) is not None:
                    raise Conflict(f"{identifier} is already known (is department {acct.dept} registered at two "
                                   "nodes?)")
                licence = self._sign({
                    "type": "licence", "identifier": identifier,
                    "licence_type": body.licence_type.model_dump(),
                    "number": body.number or serial,
                    "issuer": {"node": self.node_id, "dept": acct.dept, "name": acct.name, "code": acct.dept},
                    "holder": body.holder.model_dump(),
                    "issued_on": issued_on, "valid_from": valid_from, "valid_until": body.valid_until,
                    "face": dict(body.face), "signed_at": now,
                })
                await store.insert_licence(conn, {
                    "identifier": identifier, "dept": acct.dept, "serial": serial, "version": 1,
                    "holder_digest": digest, "doc": json.dumps(licence, ensure_ascii=False), "issued_at": now,
                })
                await self._write_index(conn, licence, status="valid", resource=resource, holder_digest=digest)
        except IntegrityError:
            raise Conflict("a licence with this identifier was issued at the same moment; try again") from None
        await self._changed()
        return licence

    async def _write_index(self, conn: AsyncConnection, licence: dict[str, Any], *, status: str, resource: str | None,
                           holder_digest: str, superseded_by: str | None = None, revoked_at: int | None = None,
                           reason: str = "") -> dict[str, Any]:
        seq = await next_counter(conn, SEQ_COUNTER)
        change_id = await next_counter(conn, CHANGE_COUNTER)
        entry = self._sign({
            "type": "licence_index", "identifier": licence["identifier"], "licence_type": licence["licence_type"],
            "node": self.node_id, "dept": licence["issuer"]["dept"], "issuer_name": licence["issuer"]["name"],
            "resource": resource, "holder_digest": holder_digest, "digest": licence_digest(licence),
            "status": status, "valid_from": licence["valid_from"], "valid_until": licence["valid_until"],
            "superseded_by": superseded_by, "revoked_at": revoked_at, "reason": reason,
            "seq": seq, "updated_at": now_ms(),
        })
        row = index_row(entry, change_id)
        key = store.licence_index.c.identifier
        held = await held_seqs(conn, key, [entry["identifier"]])
        await store_rows(conn, key, [] if held else [row], [row] if held else [])
        return entry

    async def _own(self, conn: AsyncConnection, acct: Account, identifier: str) -> tuple[dict, dict]:
        """A licence of the calling department, for a change: (licence, index entry), locked."""
        row = await store.get_licence(conn, identifier)
        index_held = await store.get_index(conn, identifier, for_update=True)
        if row is None:
            if index_held is not None and index_held.node != self.node_id:
                raise Forbidden(f"{identifier} was issued at node {index_held.node}; its issuer changes it there")
            raise NotFound(f"no licence {identifier} was issued at node {self.node_id}")
        if row.dept != acct.dept:
            raise Forbidden(f"{identifier} was issued by department {row.dept}, not by the caller")
        assert index_held is not None
        index = json.loads(index_held.entry)
        if index["status"] == "revoked":
            raise Conflict(f"{identifier} is already revoked ({index['reason']})")
        if index["status"] == "superseded":
            raise Conflict(f"{identifier} is superseded by {index['superseded_by']}; change the current version")
        return json.loads(row.doc), index

    async def revoke(self, acct: Account, identifier: str, reason: str) -> dict[str, Any]:
        async with write_tx(self.engine) as conn:
            licence, index = await self._own(conn, acct, identifier)
            entry = await self._write_index(conn, licence, status="revoked", resource=index["resource"],
                                            holder_digest=index["holder_digest"], revoked_at=now_ms(), reason=reason)
        await self._changed()
        return {"identifier": identifier, "status": "revoked", "index": entry}

    async def new_version(self, acct: Account, identifier: str, body: LicenceVersion) -> dict[str, Any]:
        now = now_ms()
        try:
            async with write_tx(self.engine) as conn:
                old, index = await self._own(conn, acct, identifier)
                ident = parse(identifier)
                if ident.version_number >= 999:
                    raise Conflict(f"{identifier} has reached the last version (999)")
                new_id = make(ident.type_code, ident.issuer_code, ident.serial, ident.version_number + 1)
                licence = {k: v for k, v in old.items() if k != "signatures"}
                on = today()
                licence.update(identifier=new_id, supersedes=identifier, signed_at=now,
                               change={"kind": body.kind, "reason": body.reason, "on": on})
                if body.kind == "annotation":
                    licence["annotations"] = [*old.get("annotations", []), {"on": on, "text": body.annotation}]
                if body.holder_name is not None:
                    licence["holder"] = {**old["holder"], "name": body.holder_name}
                if body.number is not None:
                    licence["number"] = body.number
                if body.face is not None:
                    licence["face"] = dict(body.face)
                if body.valid_until is not None:
                    if body.valid_until < licence["valid_from"]:
                        raise InvalidInput("valid_until is before the start of validity", [{"field": "valid_until"}])
                    licence["valid_until"] = body.valid_until
                licence = self._sign(licence)
                await store.insert_licence(conn, {
                    "identifier": new_id, "dept": acct.dept, "serial": ident.serial,
                    "version": ident.version_number + 1, "holder_digest": index["holder_digest"],
                    "doc": json.dumps(licence, ensure_ascii=False), "issued_at": now,
                })
                await self._write_index(conn, licence, status="valid", resource=index["resource"],
                                        holder_digest=index["holder_digest"])
                await self._write_index(conn, old, status="superseded", resource=index["resource"],
                                        holder_digest=index["holder_digest"], superseded_by=new_id,
                                        reason=body.reason)
        except IntegrityError:
            raise Conflict(f"a new version of {identifier} was made at the same moment") from None
        await self._changed()
        return licence

    async def _changed(self) -> None:
        try:
            await self.federation.notify_neighbours(FEED)
        except Exception:  # noqa: BLE001 - the scheduled pull carries the change anyway
            log.exception("could not notify neighbours of a licence change")

    # Finding ------------------------------------------------------------------------------------------

    async def find(self, holder: str, include_superseded: bool) -> dict[str, Any]:
        digest = self.holder_digest(holder)
        async with self.engine.connect() as conn:
            rows = await store.by_holder(conn, digest, include_superseded, FIND_LIMIT)
        on = today()
        found = [summary(json.loads(r.entry), on) for r in rows]
        return {"licences": found, "total": len(found)}

    async def _index(self, identifier: str) -> dict[str, Any] | None:
        async with self.engine.connect() as conn:
            row = await store.get_index(conn, identifier)
        return json.loads(row.entry) if row is not None else None

    async def fetch(self, acct: Account, identifier: str) -> dict[str, Any]:
        """One licence, from its issuer: the signed licence when the caller may see its face, else its index
        entry (that it exists, and its status)."""
        if not IDENTIFIER.match(identifier):
            raise InvalidInput(f"{identifier[:120]!r} is not a licence identifier (GB/T 36904)",
                               [{"field": "identifier"}])
        index = await self._index(identifier)
        if index is None:
            raise NotFound(f"no licence {identifier} is known at node {self.node_id} (not issued, or its index "
                           "entry has not reached this node yet)")
        requester = Requester(node=acct.node, dept=acct.dept)
        grant = await self._grant_for(index, requester)
        if index["node"] == self.node_id:
            return await self.serve_fetch(identifier, requester, grant)
        answer = await self.federation.call(KIND, index["node"], {
            "op": "fetch", "identifier": identifier, "requester": requester.model_dump(exclude_none=True),
            "grant": grant,
        })
        return self._checked_fetch(identifier, index["node"], answer)

    def _checked_fetch(self, identifier: str, issuer: str, answer: dict[str, Any]) -> dict[str, Any]:
        """The issuer's answer, its signed objects checked (the envelope was signed too; this is belt and braces,
        and catches an issuer answering about another licence)."""
        index, licence = answer.get("index"), answer.get("licence")
        if not isinstance(index, dict) or index_problem(index) or index["identifier"] != identifier:
            raise ApiError(f"{issuer} answered with a malformed index entry", code="PEER_UNREACHABLE")
        self._verify_signed(index, issuer, index["updated_at"])
        if licence is not None:
            if not isinstance(licence, dict) or licence.get("identifier") != identifier:
                raise ApiError(f"{issuer} answered with another licence", code="PEER_UNREACHABLE")
            self._verify_signed(licence, issuer, licence.get("signed_at", 0))
        return {k: answer.get(k) for k in ("identifier", "status", "index", "licence", "face_visible", "face_withheld",
                                           "via")}

    def _verify_signed(self, obj: dict[str, Any], issuer: str, at_ms: Any) -> str:
        trust = self.federation.require_joined()
        try:
            return verify_signed_json(obj, issuer, trust.verify_keys_for(issuer, at_ms=int(at_ms), now_ms=now_ms()))
        except (TrustError, SignatureError, FederationError, ValueError, TypeError) as exc:
            raise ApiError(f"a signature of {issuer} does not verify: {getattr(exc, 'message', exc)}",
                           code="SIGNATURE_INVALID") from None

    async def _grant_for(self, index: dict[str, Any], requester: Requester) -> dict[str, Any] | None:
        """The grant the calling department holds on the issuer's licence resource, if any."""
        finder = getattr(self.sharing, "grant_finder", None)
        if finder is None or not index.get("resource"):
            return None
        if (requester.node, requester.dept) == (index["node"], index["dept"]):
            return None  # the issuing department sees its own licences
        try:
            entry = await self.catalog.get(index["resource"])
        except NotFound:
            return None
        return await finder(entry, "query", requester)

    async def serve_fetch(self, identifier: str, requester: Requester, grant: dict[str, Any] | None) -> dict[str, Any]:
        """At the issuer: the licence for a requester (vouched for by its node)."""
        async with self.engine.connect() as conn:
            row = await store.get_licence(conn, identifier)
            held = await store.get_index(conn, identifier)
        if row is None or held is None:
            raise NotFound(f"no licence {identifier} was issued at node {self.node_id}")
        index = json.loads(held.entry)
        visible, withheld = await self._face_visible(index, requester, grant)
        return {"identifier": identifier, "status": dated_status(index, today()), "index": index,
                "licence": json.loads(row.doc) if visible else None, "face_visible": visible,
                "face_withheld": withheld}

    async def _face_visible(self, index: dict[str, Any], requester: Requester,
                            grant: dict[str, Any] | None) -> tuple[bool, str | None]:
        if (requester.node, requester.dept) == (self.node_id, index["dept"]):
            return True, None
        resource = index.get("resource")
        if grant is None:
            return False, (f"the face is shown to the issuing department and to departments holding a grant on "
                           f"{resource or 'its licence resource'} (apply for one)")
        checker = getattr(self.sharing, "grant_checker", None)
        if checker is None:
            return False, "this node cannot check grants yet"
        try:
            entry = await self.catalog.get(resource) if resource else None
        except NotFound:
            entry = None
        if entry is None:
            return False, "the issuer's licence resource was withdrawn; no grant applies"
        try:
            await checker(entry, "query", requester, grant)
        except ApiError as err:
            return False, f"the grant presented does not allow it: {err.message}"
        return True, None

    # Messages from other nodes --------------------------------------------------------------------------

    async def on_message(self, env: dict[str, Any]) -> dict[str, Any]:
        """`licence.verify` at the issuer: `{"op": "status", "identifier"}` → the current signed index entry;
        `{"op": "fetch", "identifier", "requester", "grant"}` → as `serve_fetch`."""
        body = env["body"] if isinstance(env.get("body"), dict) else {}
        op = body.get("op", "status")
        identifier = body.get("identifier")
        if not isinstance(identifier, str) or not IDENTIFIER.match(identifier):
            raise InvalidInput("licence.verify names a licence identifier (GB/T 36904)", [{"field": "identifier"}])
        if op == "status":
            index = await self._index(identifier)
            if index is None or index["node"] != self.node_id:
                raise NotFound(f"no licence {identifier} was issued at node {self.node_id}")
            return {"index": index}
        if op == "fetch":
            try:
                requester = Requester.model_validate(body.get("requester") or {})
            except ValidationError as exc:
                raise InvalidInput("the requester is malformed", validation_details(exc)) from None
            if requester.node != env["origin"]:
                raise Forbidden(f"{env['origin']} cannot vouch for a requester of node {requester.node}")
            grant = body.get("grant")
            if grant is not None and not isinstance(grant, dict):
                raise InvalidInput("grant must be a signed grant object or null")
            return await self.serve_fetch(identifier, requester, grant)
        raise InvalidInput(f"unknown licence.verify op {op!r}; status or fetch", [{"field": "op"}])

    # Verifying ------------------------------------------------------------------------------------------

    async def verify(self, body: dict[str, Any]) -> dict[str, Any]:
        """Check a licence (or, given only `{"identifier"}`, what can be checked without the document)."""
        if set(body) == {"identifier"}:
            return await self._verify_identifier(body["identifier"])
        return await self._verify_licence(body)

    async def _verify_licence(self, obj: dict[str, Any]) -> dict[str, Any]:
        v = _Verdict()
        try:
            licence = LicenceDoc.model_validate(obj)
        except ValidationError as exc:
            details = "; ".join(f"{d['field']}: {d['error']}" for d in validation_details(exc)[:5])
            v.fail("shape", f"not a licence (SPEC §13): {details}")
            v.extra["identifier"] = obj.get("identifier") if isinstance(obj.get("identifier"), str) else None
            return v.answer()
        v.ok("shape")
        issuer = licence.issuer.node
        v.extra.update(identifier=licence.identifier, issuer=licence.issuer.model_dump())
        self._check_identifier(v, licence.identifier, licence.licence_type.code, licence.issuer.code)
        self._check_signature(v, obj, issuer, licence.signed_at)
        self._check_dates(v, licence.valid_from, licence.valid_until)
        if v.broken:
            return v.answer()  # a licence that is not genuine: asking its issuer tells nothing more
        index = await self._status(v, licence.identifier, issuer)
        if index is not None:
            if index["digest"] != licence_digest(obj):
                v.fail("status", f"the issuer's index lists another document under {licence.identifier}")
            else:
                self._check_status(v, index)
        return v.answer()

    async def _verify_identifier(self, identifier: Any) -> dict[str, Any]:
        v = _Verdict()
        if not isinstance(identifier, str):
            v.fail("shape", "identifier must be a string")
            return v.answer()
        v.ok("shape")
        v.extra["identifier"] = identifier
        self._check_identifier(v, identifier, None, None)
        if v.broken:
            return v.answer()
        held = await self._index(identifier)
        if held is None:
            v.fail("status", f"no index entry for {identifier} has reached node {self.node_id}: its issuer is not "
                             "known here", status="unknown")
            return v.answer()
        v.extra["issuer"] = {"node": held["node"], "dept": held["dept"], "name": held["issuer_name"],
                             "code": held["dept"]}
        index = await self._status(v, identifier, held["node"])
        if index is not None:
            self._check_dates(v, index["valid_from"], index.get("valid_until"))
            self._check_status(v, index)
        return v.answer()

    def _check_identifier(self, v: _Verdict, identifier: str, type_code: str | None, issuer_code: str | None) -> None:
        try:
            ident = parse(identifier)
        except IdentifierError as exc:
            v.fail("identifier", f"the identifier is malformed ({exc.part}): {exc.message}")
            return
        if type_code is not None and (ident.type_code != type_code or ident.issuer_code != issuer_code):
            v.fail("identifier", "the identifier names another licence type or issuer than the licence does")
        else:
            v.ok("identifier")
        if ident.check_ok:
            v.ok("check_character")
        else:
            v.fail("check_character", f"the check character is {ident.check}; ISO/IEC 7064 MOD 37,36 over the "
                                      "identifier's parts gives another")

    def _check_signature(self, v: _Verdict, obj: dict[str, Any], issuer: str, signed_at: int) -> None:
        trust = self.federation.require_joined()
        now = now_ms()
        try:
            keys = trust.verify_keys_for(issuer, at_ms=signed_at, now_ms=now)
        except TrustError as exc:
            what = "is revoked" if exc.code == "REVOKED" else "is not trusted"
            v.fail("chain", f"the issuing node {issuer} {what}: {exc.message}")
            return
        v.ok("chain")
        if signed_at > now + CLOCK_SKEW_MS:
            v.fail("signature", "the licence claims to be signed in the future")
            return
        try:
            v.extra["signed_with"] = verify_signed_json(obj, issuer, keys)
        except (SignatureError, FederationError, ValueError) as exc:
            v.fail("signature", f"the issuer's signature does not verify: {getattr(exc, 'message', exc)}")
            return
        v.ok("signature")

    def _check_dates(self, v: _Verdict, valid_from: str, valid_until: str | None) -> None:
        on = today()
        if valid_until is not None and valid_until < on:
            v.fail("validity", f"expired: valid until {valid_until}", status="expired")
        elif valid_from > on:
            v.fail("validity", f"not yet valid: valid from {valid_from}", status="not_yet_valid")
        else:
            v.ok("validity")

    def _check_status(self, v: _Verdict, index: dict[str, Any]) -> None:
        status = index["status"]
        if status == "revoked":
            v.extra["revoked_reason"] = index.get("reason")
            v.fail("status", f"revoked by its issuer: {index.get('reason', '')}", status="revoked")
        elif status == "superseded":
            v.extra["superseded_by"] = index.get("superseded_by")
            v.fail("status", f"superseded by version {index.get('superseded_by')}", status="superseded")
        else:
            v.ok("status")

    async def _status(self, v: _Verdict, identifier: str, issuer: str) -> dict[str, Any] | None:
        """The issuer's current index entry (asked now), else this node's replicated copy; None when neither
        (the failure is recorded in the verdict)."""
        if issuer == self.node_id:
            index = await self._index(identifier)
            v.extra.update(source="issuer", issuer_reachable=True)
            if index is None or index["node"] != self.node_id:
                v.fail("status", f"the issuer {issuer} has no licence {identifier}")
                return None
            v.extra["status_as_of"] = index["updated_at"]
            return index
        try:
            answer = await self.federation.call(KIND, issuer, {"op": "status", "identifier": identifier},
                                                ttl_ms=STATUS_TTL_MS)
        except ApiError as err:
            if err.code == "NOT_FOUND":
                v.extra.update(source="issuer", issuer_reachable=True)
                v.fail("status", f"the issuer {issuer} has no licence {identifier}")
                return None
            log.info("status of %s from %s: %s (%s); using the replicated index", identifier, issuer, err.code,
                     err.message)
            v.extra.update(source="replicated index", issuer_reachable=False)
            index = await self._index(identifier)
            if index is None:
                v.fail("status", f"the issuer {issuer} cannot be reached ({err.code}) and no index entry for "
                                 f"{identifier} has reached this node", status="unknown")
                return None
            v.extra["status_as_of"] = index["updated_at"]
            return index
        index = answer.get("index")
        if not isinstance(index, dict) or index_problem(index) or index["identifier"] != identifier \
                or index["node"] != issuer:
            v.extra.update(source="issuer", issuer_reachable=True)
            v.fail("status", f"the issuer {issuer} answered with a malformed index entry", status="unknown")
            return None
        try:
            self._verify_signed(index, issuer, index["updated_at"])
        except ApiError as err:
            v.extra.update(source="issuer", issuer_reachable=True)
            v.fail("status", err.message, status="unknown")
            return None
        v.extra.update(source="issuer", issuer_reachable=True, status_as_of=index["updated_at"])
        return index
