"""Applications and grants (SPEC §8, §11): 统一受理、平台授权 with working-day deadlines.

Where things live:
- an application lives at the provider's node (the authority: it reviews, decides, flags deadlines);
  the applicant's node keeps a copy with the same id, replaced by every `application.update` whose
  `version` is newer than the one it holds. Submission and withdrawal travel the other way
  (`application.submit`, `application.update` with a `withdraw` body). Every message goes through the
  federation's durable outbox, so an outage delays and never loses them;
- a grant is issued and signed by the provider's node on approval, stored there and sent to the
  applicant's node inside the application.update; the applicant's node attaches it to its department's
  calls on that resource (`find_grant`), the provider checks it on every call (`check_grant`) and is the
  only one that revokes it.

Deadlines (China Standard Time, official working days through node.workdays): the platform review is
due on the 3rd working day after the submission day, the department's decision on the 10th working day
after the review. A scheduled job flags a step past its due date once (`overdue: true`, a history entry,
an audit record for the node's operators, an update to the applicant's node).

The document, its mirror, its messages, its steps under lock, the deadlines and the statistics are
node.workflow's mechanism; this module says what an application is and what its steps do (a grant).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import date, timedelta
from typing import Any

from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from federation.canonical import encode_canonical_json
from federation.errors import FederationError, SignatureError, TrustError
from federation.signing import sign_json, verify_signed_json
from node.accounts.service import Account
from node.applications import store
from node.applications.models import (OPEN_STATUSES, Application, ApplicationCreate, Decision, GrantDoc, Review,
                                      SubmittedApplication, Withdrawal)
from node.audit.service import AuditLog
from node.catalog.service import CatalogService
from node.cluster import announce
from node.db import write_tx
from node.errors import ApiError, Conflict, Forbidden, GrantRequired, InvalidInput, NotFound, ShareForbidden
from node.federation.service import FederationService
from node.ids import new_id, now_ms
from node.mirror import history_event
from node.web import validation_details
from node.workdays import cst_date, cst_iso, end_of_day_ms, iso_ms
from node.workflow import store as documents
from node.workflow.flow import Kind, Step, Workflow

log = logging.getLogger("govnode.applications")

REVIEW_DAYS = 3
DECISION_DAYS = 10
DEFAULT_GRANT_DAYS = 365
_CACHE_LIMIT = 10_000

APPLICATION = Kind(
    name="application", noun="application", table=store.applications, requester="applicant", audit="applications",
    statuses=("submitted", "accepted", "approved", "rejected", "withdrawn"),
    steps=(Step("review", ("submitted",), due="review_due", started="submitted_at", done="reviewed_at",
                late=lambda due: f"the platform review was due on {due}"),
           Step("decision", ("accepted",), due="decision_due", started="reviewed_at", done="decided_at",
                late=lambda due: f"the providing department's decision was due on {due}")),
    columns=lambda doc: {"resource": doc["resource"], "received_at": iso_ms(doc.get("received_at"))},
)


def grant_row(grant: dict[str, Any], application_id: str, provider_dept: str, revoked_at: int | None = None,
              reason: str | None = None) -> dict[str, Any]:
    return {
        "id": grant["id"], "application_id": application_id, "resource": grant["resource"],
        "consumer_node": grant["consumer"]["node"], "consumer_dept": grant["consumer"]["dept"],
        "issuer": grant["issuer"], "provider_dept": provider_dept, "valid_from": grant["valid_from"],
        "valid_until": grant["valid_until"], "revoked_at": revoked_at, "revoke_reason": reason,
        "doc": json.dumps(grant, ensure_ascii=False),
    }


def grant_status(valid_from: int, valid_until: int, revoked_at: int | None, now: int) -> str:
    if revoked_at is not None:
        return "revoked"
    if now > valid_until:
        return "expired"
    if now < valid_from:
        return "not_yet_valid"
    return "active"



class ApplicationService:
    def __init__(self, engine: AsyncEngine, node_id: str, catalog: CatalogService, federation: FederationService,
                 audit: AuditLog) -> None:
        self.engine = engine
        self.node_id = node_id
        self.catalog = catalog
        self.federation = federation
        self.flow = Workflow(APPLICATION, engine, node_id, federation, audit, log)
        self.mirror = self.flow.mirror
        # Grants issued here: id -> revoked_at (None while live). The provider is the authority on
        # revocation, and every revocation goes through this service, so the cache is never stale.
        self._revoked: dict[str, int | None] = {}
        self._verified: set[bytes] = set()  # grants whose signature verified (exact bytes)
        self._verified_with = ""
        # Grants held by (resource, consumer node, consumer dept), for attaching to calls.
        self._held: dict[tuple[str, str, str], list[dict[str, Any]]] = {}

    @property
    def clock(self) -> Callable[[], int]:
        """Now, in epoch milliseconds: submissions, reviews, decisions, deadlines and grant validity all read
        this clock (tests set it to a chosen day); trust checks of certificates use the real time."""
        return self.flow.clock

    @clock.setter
    def clock(self, value: Callable[[], int]) -> None:
        self.flow.clock = value

    # Life cycle -------------------------------------------------------------------------------------

    def forget(self, grant_id: str = "") -> None:
        """Another worker issued, received or revoked a grant (node.cluster): drop what is cached of it."""
        if grant_id:
            self._revoked.pop(grant_id, None)
        else:
            self._revoked.clear()
        self._held.clear()

    def connect(self, sharing: Any) -> None:
        """Register the federation's message handlers and the sharing service's grant hooks."""
        self.flow.connect(self.on_submit, self.on_update)
        sharing.grant_checker = self.check_grant
        sharing.grant_finder = self.find_grant

    async def take_up(self) -> None:
        await self.flow.take_up()

    async def give_up(self) -> None:
        await self.flow.give_up()

    async def close(self) -> None:
        await self.flow.close()

    # Documents ----------------------------------------------------------------------------------------

    def _new_doc(self, *, app_id: str, body: ApplicationCreate, name: str | None, applicant: dict[str, str],
                 provider: dict[str, str], submitted: int, received: int | None) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "id": app_id, "resource": body.resource, "resource_name": name, "applicant": applicant,
            "provider": provider, "ops": list(body.ops), "fields": list(body.fields), "purpose": body.purpose,
            "basis": body.basis, "wanted_until": body.wanted_until, "status": "submitted",
            "submitted_at": cst_iso(submitted), "received_at": None,
            "review_due": None, "reviewed_at": None, "decision_due": None, "decided_at": None,
            "overdue": False, "grant": None, "revoked_at": None,
            "history": [history_event(submitted, f"{applicant['node']}/{applicant['dept']}", "submitted", "submitted")],
            "version": 0,
        }
        if received is not None:
            self.flow.received(doc, received)
        self.flow.due(submitted, REVIEW_DAYS, doc, "review_due", at=received if received is not None else submitted)
        return doc

    @staticmethod
    def _problem(entry: dict[str, Any], ops: list[str], fields: list[str]) -> ApiError | None:
        """Why an application for this entry cannot be made, or None."""
        share = entry["share"]
        if share["type"] == "none":
            return ShareForbidden(f"{entry['code']} is not shared (basis: {share.get('basis', '')})")
        known = {i["field"] for i in entry["items"]}
        unknown = [f for f in fields if f not in known]
        if unknown:
            return InvalidInput(f"{', '.join(unknown)}: not items of {entry['code']}",
                                [{"field": f"fields.{f}", "error": "not an item of this resource"} for f in unknown])
        return None


    # The department API ---------------------------------------------------------------------------------

    # The department API ---------------------------------------------------------------------------------

    async def submit(self, acct: Account, body: ApplicationCreate) -> dict[str, Any]:
        entry = await self.catalog.get(body.resource)
        problem = self._problem(entry, list(body.ops), list(body.fields))
        if problem is not None:
            raise problem
        if entry["node"] == acct.node and entry["provider"]["dept"] == acct.dept:
            raise InvalidInput(f"{body.resource} is the caller's own resource; no grant is needed",
                               [{"field": "resource", "error": "own resource"}])
        now = self.clock()
        if body.wanted_until is not None and date.fromisoformat(body.wanted_until) < cst_date(now):
            raise InvalidInput("wanted_until is in the past", [{"field": "wanted_until", "error": "before today"}])
        provider = {"node": entry["node"], "dept": entry["provider"]["dept"]}
        applicant = {"node": acct.node, "dept": acct.dept}
        remote = provider["node"] != self.node_id
        doc = self._new_doc(app_id=new_id(), body=body, name=entry["name"], applicant=applicant, provider=provider,
                            submitted=now, received=None if remote else now)
        async with self.engine.connect() as conn:
            existing = await store.open_application(conn, body.resource, acct.node, acct.dept)
        if existing is not None:
            raise Conflict(f"application {existing} for {body.resource} still awaits its decision",
                           {"application": existing})
        return await self.flow.create(doc, {
            "id": doc["id"], "resource": body.resource, "applicant": applicant, "provider": provider,
            "ops": doc["ops"], "fields": doc["fields"], "purpose": body.purpose, "basis": body.basis,
            "submitted_at": now,
            # Only when given, so that a provider node that predates the field still takes the rest.
            **({"wanted_until": body.wanted_until} if body.wanted_until else {}),
        })

    async def get(self, acct: Account, app_id: str) -> dict[str, Any]:
        return await self.flow.get(acct, app_id)

    async def list_applications(self, acct: Account, *, role: str | None, status: str | None, overdue: bool | None,
                   resource: str | None, page: int, page_size: int) -> tuple[int, list[dict[str, Any]]]:
        return await self.flow.list(acct, role=role, status=status, overdue=overdue, page=page, page_size=page_size,
                                    resource=resource)

    async def withdraw(self, acct: Account, app_id: str, reason: str) -> dict[str, Any]:
        doc = await self.flow.load(app_id)
        if not self.flow.is_requester(acct, doc):
            raise Forbidden("only the applicant department withdraws its application")
        if doc["status"] not in OPEN_STATUSES:
            raise Conflict(f"application {app_id} is {doc['status']}; only one awaiting a decision can be withdrawn")
        if self.flow.held_here(doc):
            return await self._apply_withdrawal(app_id, acct.dept, reason, acct.node)
        # The provider's node decides (a decision may cross the request); this copy shows the withdrawal
        # at once and is replaced by the provider's answer (withdrawn, or withdraw_refused).
        await self.federation.send_async("application.update", doc["provider"]["node"],
                                         {"withdraw": {"id": app_id, "dept": acct.dept, "reason": reason}})
        async with write_tx(self.engine) as conn:
            row = await documents.get(conn, store.applications, app_id, for_update=True)
            assert row is not None
            doc = json.loads(row.doc)
            if doc["status"] in OPEN_STATUSES:
                doc["status"] = "withdrawn"
                doc["history"].append(history_event(self.clock(), acct.principal, "withdrawn", "withdrawn", reason))
                await documents.update(conn, store.applications, app_id, self.flow.row_of(doc, pending=False))
        return doc

    async def review(self, acct: Account, app_id: str, body: Review) -> dict[str, Any]:
        if acct.role != "operator":
            raise Forbidden("the platform review is made by the provider node's operator")

        async def change(doc: dict[str, Any], conn: AsyncConnection) -> None:
            if not self.flow.held_here(doc):
                raise Forbidden(f"application {app_id} is reviewed by the operator of node {doc['provider']['node']}")
            if doc["status"] != "submitted":
                raise Conflict(f"application {app_id} is {doc['status']}; only a submitted one is reviewed")
            now = self.clock()
            doc["reviewed_at"] = cst_iso(now)
            doc["overdue"] = False
            if body.decision == "accept":
                doc["status"] = "accepted"
                doc["history"].append(history_event(now, acct.principal, "accepted", "accepted", body.reason))
                self.flow.due(now, DECISION_DAYS, doc, "decision_due")
            else:
                doc["status"] = "rejected"
                doc["history"].append(history_event(now, acct.principal, "rejected", "rejected", body.reason))

        return await self.flow.transition(app_id, change)

    async def decide(self, acct: Account, app_id: str, body: Decision) -> dict[str, Any]:
        doc = await self.flow.load(app_id)
        p = doc["provider"]
        if not self.flow.held_here(doc):
            raise Forbidden(f"application {app_id} is decided at node {p['node']} by its providing department")
        if not self.flow.is_provider(acct, doc):
            raise Forbidden(f"the decision is made by the providing department {p['node']}/{p['dept']}")
        self._decidable(doc)
        now = self.clock()
        # Signed before the transition (it reads the catalog); used only if the transition is made.
        grant = await self._issue(doc, body, now) if body.decision == "approve" else None

        async def change(doc: dict[str, Any], conn: AsyncConnection) -> None:
            self._decidable(doc)
            doc["decided_at"] = cst_iso(now)
            doc["overdue"] = False
            if grant is not None:
                doc["status"] = "approved"
                doc["grant"] = grant
                await store.put_grant(conn, grant_row(grant, app_id, p["dept"]))
                await announce(conn, "grants", grant["id"])
            else:
                doc["status"] = "rejected"
            doc["history"].append(history_event(now, acct.principal, doc["status"], doc["status"], body.reason))

        doc = await self.flow.transition(app_id, change)
        if grant is not None:
            self._revoked[grant["id"]] = None
            self._held.clear()
        return doc

    @staticmethod
    def _decidable(doc: dict[str, Any]) -> None:
        if doc["status"] != "accepted":
            hint = "; the platform review comes first" if doc["status"] == "submitted" else ""
            raise Conflict(f"application {doc['id']} is {doc['status']}{hint}")

    async def _issue(self, doc: dict[str, Any], body: Decision, now: int) -> dict[str, Any]:
        """The signed grant of an approval (checked against what was asked: narrower, never wider)."""
        fields = body.fields if body.fields is not None else doc["fields"]
        ops = body.ops if body.ops is not None else doc["ops"]
        wider = [{"field": f"fields.{f}", "error": "not asked for"} for f in fields if f not in doc["fields"]]
        wider += [{"field": f"ops.{o}", "error": "not asked for"} for o in ops if o not in doc["ops"]]
        if wider:
            raise InvalidInput("an approval may narrow the fields and operations asked for, never widen them", wider)
        today = cst_date(now)
        # Unless the decision says otherwise: the period applied for, or a year when none was (or it has passed).
        wanted = date.fromisoformat(doc["wanted_until"]) if doc.get("wanted_until") else None
        default = wanted if wanted is not None and wanted >= today else today + timedelta(days=DEFAULT_GRANT_DAYS)
        until = date.fromisoformat(body.valid_until) if body.valid_until else default
        if until < today:
            raise InvalidInput("valid_until is in the past", [{"field": "valid_until", "error": "before today"}])
        try:
            entry = await self.catalog.get(doc["resource"])
        except NotFound:
            raise Conflict(f"{doc['resource']} was withdrawn from the catalog; nothing can be granted") from None
        known = {i["field"] for i in entry["items"]}
        order = {f: i for i, f in enumerate(i["field"] for i in entry["items"])}
        grant = {
            "type": "grant", "id": new_id(), "resource": doc["resource"],
            "consumer": dict(doc["applicant"]),
            "ops": [o for o in ("query", "verify", "compare", "subscribe") if o in ops],
            "fields": sorted((f for f in fields if f in known), key=order.__getitem__),
            "purpose": doc["purpose"], "valid_from": now, "valid_until": end_of_day_ms(until), "issuer": self.node_id,
        }
        return sign_json(grant, self.node_id, self.federation.key)

    async def list_grants(self, acct: Account, *, role: str | None, resource: str | None, status: str | None,
                     page: int, page_size: int) -> tuple[int, list[dict[str, Any]]]:
        dept = None if acct.role in ("operator", "auditor") else acct.dept
        now = self.clock()
        async with self.engine.connect() as conn:
            total, rows = await store.list_grants(conn, node=self.node_id, dept=dept, role=role, resource=resource,
                                                  status=status, now=now, offset=(page - 1) * page_size,
                                                  limit=page_size)
        return total, [self._grant_view(r, now) for r in rows]

    def _grant_view(self, row: Any, now: int) -> dict[str, Any]:
        grant = json.loads(row.doc)
        return {
            "id": row.id, "application": row.application_id, "resource": row.resource,
            "consumer": grant["consumer"], "provider": {"node": row.issuer, "dept": row.provider_dept},
            "ops": grant["ops"], "fields": grant["fields"],
            "valid_from": cst_iso(row.valid_from), "valid_until": cst_iso(row.valid_until),
            "status": grant_status(row.valid_from, row.valid_until, row.revoked_at, now),
            "revoked_at": cst_iso(row.revoked_at) if row.revoked_at is not None else None,
            "revoke_reason": row.revoke_reason, "grant": grant,
        }

    async def revoke(self, acct: Account, grant_id: str, reason: str) -> dict[str, Any]:
        async with self.engine.connect() as conn:
            row = await store.get_grant(conn, grant_id)
        if row is None:
            raise NotFound(f"no grant {grant_id} at node {self.node_id}")
        if row.issuer != self.node_id:
            raise Forbidden(f"grant {grant_id} is revoked by its issuer, node {row.issuer}")
        if not (acct.role == "operator" or (acct.role == "dept" and acct.dept == row.provider_dept)):
            raise Forbidden("a grant is revoked by the providing department or the provider node's operator")
        now = self.clock()
        async with write_tx(self.engine) as conn:
            row = await store.get_grant(conn, grant_id)
            assert row is not None
            if row.revoked_at is not None:
                raise Conflict(f"grant {grant_id} was already revoked")
            await store.revoke_grant(conn, grant_id, now, reason)
            # The other workers of this node refuse the grant from the moment this commits.
            await announce(conn, "grants", grant_id)
            app = await documents.get(conn, store.applications, row.application_id, for_update=True)
            doc = None
            if app is not None:
                doc = json.loads(app.doc)
                doc["revoked_at"] = cst_iso(now)
                doc["history"].append(history_event(now, acct.principal, doc["status"], "revoked", reason))
                doc["version"] += 1
                await documents.update(conn, store.applications, app.id,
                                       self.flow.row_of(doc, pending=self.mirror.remote(doc)))
            row = await store.get_grant(conn, grant_id)
        self._revoked[grant_id] = now
        self._held.clear()
        if doc is not None:
            await self.mirror.notify(doc)
        return self._grant_view(row, now)

    # Messages from other nodes -----------------------------------------------------------------------------

    async def on_submit(self, env: dict[str, Any]) -> dict[str, Any]:
        """application.submit at the provider's node: store it (refused on receipt if it cannot be served)."""
        return await self.flow.receive(env, SubmittedApplication, self._received)

    async def _received(self, sub: SubmittedApplication, now: int) -> dict[str, Any]:
        submitted = self.flow.submitted_at(sub.submitted_at, now)
        entry, problem = await self.flow.named_entry(self.catalog, sub.resource)
        if entry is not None and problem is None:
            problem = self._problem(entry, list(sub.ops), list(sub.fields))
        provider = {"node": self.node_id,
                    "dept": entry["provider"]["dept"] if entry is not None else sub.provider.dept}
        doc = self._new_doc(app_id=sub.id, body=sub, name=entry["name"] if entry else None,
                            applicant=sub.applicant.model_dump(), provider=provider, submitted=submitted, received=now)
        if problem is not None:
            self.flow.refuse(doc, problem, now)
        return doc

    async def on_update(self, env: dict[str, Any]) -> dict[str, Any]:
        body = env.get("body") or {}
        if "withdraw" in body:
            try:
                w = Withdrawal.model_validate(body["withdraw"])
            except ValidationError as exc:
                raise InvalidInput("the withdrawal is malformed", validation_details(exc)) from None
            doc = await self._apply_withdrawal(w.id, w.dept, w.reason, env["origin"])
            return {"accepted": True, "status": doc["status"]}
        def check_grant(doc: dict[str, Any]) -> None:
            if doc.get("grant") is not None:
                self._verify_received_grant(doc["grant"], doc, env["origin"])

        async def keep_grant(doc: dict[str, Any], conn: AsyncConnection) -> None:
            grant = doc.get("grant")
            if grant is not None:
                revoked = iso_ms(doc.get("revoked_at"))
                reason = next((h["reason"] for h in reversed(doc["history"]) if h["event"] == "revoked"), None)
                await store.put_grant(conn, grant_row(grant, doc["id"], doc["provider"]["dept"], revoked, reason))
                await announce(conn, "grants", grant["id"])

        answer = await self.flow.on_update(env, Application, keep_grant, check_grant)
        if not answer.get("stale"):
            self._held.clear()
        return answer

    async def _apply_withdrawal(self, app_id: str, dept: str, reason: str, origin: str) -> dict[str, Any]:
        """At the provider's node: withdraw if no decision was made yet, else record the refusal."""

        async def change(doc: dict[str, Any], conn: AsyncConnection) -> None:
            if not self.flow.held_here(doc):
                raise Forbidden(f"application {app_id} is held at node {doc['provider']['node']}")
            if (doc["applicant"]["node"], doc["applicant"]["dept"]) != (origin, dept):
                raise Forbidden("only the applicant department withdraws its application")
            now = self.clock()
            by = f"{origin}/{dept}"
            if doc["status"] in OPEN_STATUSES:
                doc["status"] = "withdrawn"
                doc["overdue"] = False
                doc["history"].append(history_event(now, by, "withdrawn", "withdrawn", reason))
            else:
                doc["history"].append(history_event(now, by, doc["status"], "withdraw_refused",
                                                    f"the application was already {doc['status']}"))

        return await self.flow.transition(app_id, change)

    # Deadlines ----------------------------------------------------------------------------------------------

    async def check_deadlines(self) -> list[str]:
        """Flag every open step past its due date (once a step); returns the ids flagged."""
        return await self.flow.check_deadlines()


    # Grants in calls (the sharing service's hooks) ------------------------------------------------------------

    def _own_keys(self, at_ms: int) -> dict[str, Any]:
        key = self.federation.key
        keys: dict[str, Any] = {key.key_id: key.verify_key}
        trust = self.federation.trust
        if trust is not None and trust.certificate(self.node_id) is not None:
            try:
                keys.update(trust.verify_keys_for(self.node_id, at_ms=at_ms, now_ms=now_ms()))
            except TrustError as exc:
                log.warning("own certificate does not verify: %s", exc.message)
        return keys

    async def check_grant(self, entry: dict[str, Any], op: str, requester: Any, grant: dict[str, Any]) -> frozenset[str]:
        """At the provider: does this grant allow this call? Returns the fields it grants."""
        try:
            g = GrantDoc.model_validate(grant)
        except ValidationError as exc:  # what was presented is no grant at all
            raise GrantRequired("the grant presented is malformed", validation_details(exc)) from None
        if g.issuer != self.node_id:
            raise ApiError(f"the grant is issued by {g.issuer}; grants on {entry['code']} are issued by {self.node_id}",
                           code="SIGNATURE_INVALID")
        try:
            seen = encode_canonical_json(grant)  # the whole grant, signatures included
        except ValueError:
            raise InvalidInput("the grant is not canonical JSON") from None
        if self._verified_with != self.federation.key.key_id:  # a rotation: verify again with the new set
            self._verified.clear()
            self._verified_with = self.federation.key.key_id
        if seen not in self._verified:
            try:
                verify_signed_json(grant, self.node_id, self._own_keys(g.valid_from))
            except (SignatureError, FederationError, ValueError) as exc:
                raise ApiError(f"the grant's signature does not verify: {getattr(exc, 'message', exc)}",
                               code="SIGNATURE_INVALID") from None
            if len(self._verified) > _CACHE_LIMIT:
                self._verified.clear()
            self._verified.add(seen)
        if g.id not in self._revoked:
            async with self.engine.connect() as conn:
                row = await store.get_grant(conn, g.id)
            if row is None:
                raise GrantRequired(f"node {self.node_id} has no record of grant {g.id}")
            if len(self._revoked) > _CACHE_LIMIT:
                self._revoked.clear()
            self._revoked[g.id] = row.revoked_at
        if self._revoked[g.id] is not None:
            raise ApiError(f"grant {g.id} was revoked", {"grant": g.id}, code="REVOKED")
        if g.resource != entry["code"]:
            raise GrantRequired(f"grant {g.id} is for {g.resource}, not {entry['code']}", {"grant": g.id})
        if (g.consumer.node, g.consumer.dept) != (requester.node, requester.dept):
            raise Forbidden(f"grant {g.id} was issued to {g.consumer.node}/{g.consumer.dept}, not to "
                            f"{requester.node}/{requester.dept}", {"grant": g.id})
        if op not in g.ops:
            raise GrantRequired(f"grant {g.id} allows {', '.join(g.ops)}, not {op}", {"grant": g.id})
        now = self.clock()
        if now > g.valid_until:
            raise GrantRequired(f"grant {g.id} expired at {cst_iso(g.valid_until)}", {"grant": g.id})
        if now < g.valid_from:
            raise GrantRequired(f"grant {g.id} is valid from {cst_iso(g.valid_from)}", {"grant": g.id})
        return frozenset(g.fields)

    async def find_grant(self, entry: dict[str, Any], op: str, requester: Any) -> dict[str, Any] | None:
        """At the consumer: the grant to attach to a department's call (valid now, allowing the op), if any."""
        key = (entry["code"], requester.node, requester.dept)
        held = self._held.get(key)
        if held is None:
            async with self.engine.connect() as conn:
                rows = await store.held_grants(conn, *key)
            held = [json.loads(r.doc) for r in rows]
            if len(self._held) > _CACHE_LIMIT:
                self._held.clear()
            self._held[key] = held
        now = self.clock()
        usable = [g for g in held if op in g["ops"] and g["valid_from"] <= now <= g["valid_until"]]
        if not usable:
            return None
        return max(usable, key=lambda g: (len(g["fields"]), g["valid_until"]))

    def _verify_received_grant(self, grant: dict[str, Any], doc: dict[str, Any], issuer: str) -> None:
        try:
            g = GrantDoc.model_validate(grant)
        except ValidationError as exc:
            raise InvalidInput("the grant is malformed", validation_details(exc)) from None
        consumer = (g.consumer.node, g.consumer.dept)
        if g.issuer != issuer or g.resource != doc["resource"] or consumer != (doc["applicant"]["node"],
                                                                                 doc["applicant"]["dept"]):
            raise InvalidInput(f"grant {g.id} does not belong to application {doc['id']}")
        trust = self.federation.require_joined()
        try:
            verify_signed_json(grant, issuer, trust.verify_keys_for(issuer, at_ms=g.valid_from, now_ms=now_ms()))
        except (SignatureError, TrustError, FederationError, ValueError) as exc:
            raise ApiError(f"grant {g.id} does not verify: {getattr(exc, 'message', exc)}",
                           code="SIGNATURE_INVALID") from None

    # Statistics (SPEC §10) -------------------------------------------------------------------------------

    async def stats(self, since: int, until: int) -> dict[str, Any]:
        async with self.engine.connect() as conn:
            total = (await store.call_stats(conn, since, until, None))[0]
            by_resource = await store.call_stats(conn, since, until, "resource")
            by_actor = await store.call_stats(conn, since, until, "actor")

        def calls(r: Any) -> dict[str, Any]:
            return {"key": r.key, "calls": int(r.calls), "errors": int(r.errors or 0),
                    "latency": {"mean_ms": round(float(r.mean), 1) if r.mean is not None else None,
                                "max_ms": int(r.max) if r.max is not None else None}}

        approvals = []
        for d in await self.flow.summary(since, until):
            steps = d["steps"]
            approvals.append({"dept": d["dept"], "applications": d["total"], **d["by_status"],
                              "review": steps["review"], "decision": steps["decision"]})
        return {
            "node": self.node_id, "since": cst_iso(since), "until": cst_iso(until),
            "calls": {"total": int(total.calls), "errors": int(total.errors or 0),
                      "latency": calls(total)["latency"],
                      "by_resource": [calls(r) for r in by_resource], "by_department": [calls(r) for r in by_actor]},
            "approvals": approvals,
        }

