"""申请 (SPEC §8, §11): a department applies for a resource of any node, follows its application with its
history and working-day due dates; the provider node's operator reviews it and the providing department
decides it. Every action is the API's service method (node.applications.service) with the person's Account,
so the rules, the refusals and the audit are the API's, with the person named."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, timedelta
from typing import Any

from aiohttp import web
from multidict import MultiDictProxy

from node.accounts.people import Person
from node.applications.http import APPLICATIONS
from node.applications.models import OPEN_STATUSES, ApplicationCreate, Decision, Reason, Review
from node.applications.service import DEFAULT_GRANT_DAYS
from node.audit.http import note
from node.catalog.http import CATALOG
from node.context import CONFIG
from node.errors import Conflict, Forbidden, InvalidInput, NotFound
from node.federation.http import FEDERATION
from node.mirror import PLATFORM
from node.portal.home import CYCLES, SHARE_TYPES, STATUSES, due_of, names_for
from node.portal.pages import FORM, PortalRoutes, redirect, show_on_error
from node.portal.wording import EVENTS, ITEM_TYPES, OPS, parse_form
from node.workdays import cst_date

routes = PortalRoutes()
PAGE_SIZE = 20
ID = r"{id:[0-9A-HJKMNP-TV-Z]{26}}"


def form_text(form: MultiDictProxy[Any], name: str) -> str:
    """A text field of a form, without its outer spaces ('' when absent)."""
    value = form.get(name, "")
    return value.strip() if isinstance(value, str) else ""


def _all(form: MultiDictProxy[Any], name: str) -> list[str]:
    return [v for v in form.getall(name, []) if isinstance(v, str)]


def page_number(request: web.Request) -> int:
    """The `page` of a list's query: a positive number, else the first."""
    value = request.query.get("page", "1")
    return min(int(value), 100_000) if value.isdigit() and int(value) > 0 else 1


def pager(request: web.Request, page: int, total: int, size: int) -> dict[str, Any]:
    """Links to the pages before and after this one (the query otherwise as it was)."""
    pages = max(1, (total + size - 1) // size)
    return {"pages": pages,
            "prev_url": str(request.rel_url.update_query(page=page - 1)) if page > 1 else None,
            "next_url": str(request.rel_url.update_query(page=page + 1)) if page < pages else None}


async def _context(request: web.Request, docs: list[dict[str, Any]]) -> dict[str, Any]:
    """What the application templates need to name things (as the home page names them)."""
    names, dept_names = await names_for(request, docs)
    return {"names": names, "dept_names": dept_names, "statuses": STATUSES, "due": due_of, "ops_names": OPS}


# Lists ---------------------------------------------------------------------------------------------------

LIST_VIEWS = {
    "dept": (("applicant", "本部门提出的申请"), ("provider", "对本部门资源的申请")),
    "operator": (("provider", "对本节点资源的申请"), ("applicant", "本节点部门提出的申请")),
    "auditor": (("provider", "对本节点资源的申请"), ("applicant", "本节点部门提出的申请")),
}


def list_filters(request: web.Request, views: tuple[tuple[str, str], ...],
                 statuses: dict[str, str]) -> tuple[str, str | None, bool | None, int]:
    """A list page's choices from its query: the view (tab), the status, only overdue, the page; anything
    unknown falls back to the first view, any status, all, the first page."""
    view = request.query.get("view", views[0][0])
    if view not in dict(views):
        view = views[0][0]
    status = request.query.get("status") or None
    if status not in statuses:
        status = None
    overdue = True if request.query.get("overdue") == "1" else None
    return view, status, overdue, page_number(request)


async def _list(request: web.Request, person: Person, route: str) -> dict[str, Any]:
    acct = person.account
    views = LIST_VIEWS[acct.role]
    view, status, overdue, page = list_filters(request, views, STATUSES)
    total, docs = await request.app[APPLICATIONS].list_applications(
        acct, role=view, status=status, overdue=overdue, resource=None, page=page, page_size=PAGE_SIZE)
    return {**await _context(request, docs), "docs": docs, "total": total, "page": page, "page_size": PAGE_SIZE,
            "views": views, "view": view, "status": status or "", "overdue": overdue, "route": route,
            "status_options": [("", "全部状态"), *STATUSES.items()], **pager(request, page, total, PAGE_SIZE)}


@routes.get("/portal/applications", name="portal.applications", template="applications.html", roles=("dept",),
            nav="我的申请", order=40)
async def my_applications(request: web.Request, person: Person | None) -> dict[str, Any]:
    assert person is not None
    return await _list(request, person, "portal.applications")


@routes.get("/portal/reviews", name="portal.reviews", template="applications.html", roles=("operator", "auditor"),
            nav="申请审核", order=40)
async def reviews(request: web.Request, person: Person | None) -> dict[str, Any]:
    assert person is not None
    return await _list(request, person, "portal.reviews")


# Applying ------------------------------------------------------------------------------------------------

async def _resource(request: web.Request, code: str) -> dict[str, Any]:
    try:
        return await request.app[CATALOG].get(code)
    except NotFound:
        raise NotFound("目录中没有这个资源，或它已被提供部门撤销。") from None


def node_name(request: web.Request, node_id: str) -> str:
    """A node's name: this node's from its configuration, another's from its certificate (else its id)."""
    config = request.app[CONFIG]
    if node_id == config.node.id:
        return config.node.name
    trust = request.app[FEDERATION].trust
    cert = trust.certificate(node_id) if trust is not None else None
    return str(cert["name"]) if cert is not None else node_id


def _apply_context(request: web.Request, entry: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    return {"entry": entry, "values": values, "share_types": SHARE_TYPES, "cycles": CYCLES, "item_types": ITEM_TYPES,
            "provider_node": node_name(request, entry["node"]),
            "op_options": list(OPS.items()),
            "field_options": [(i["field"], f"{i['name']}（{i['field']}）", "敏感" if i.get("sensitive") else "")
                              for i in entry["items"]]}


def _apply_control(loc: tuple[Any, ...], message: str) -> str:
    return {"fields": "fields", "ops": "ops", "purpose": "purpose", "basis": "basis",
            "wanted_until": "wanted_until"}.get(str(loc[0]) if loc else "", "resource")


@routes.get("/portal/applications/new", name="portal.apply.form", template="apply.html", roles=("dept",))
async def apply_form(request: web.Request, person: Person | None) -> dict[str, Any]:
    assert person is not None
    code = request.query.get("resource", "").strip()
    if not code:
        return {"entry": None, "code": ""}
    entry = await _resource(request, code)
    acct = person.account
    own = entry["node"] == acct.node and entry["provider"]["dept"] == acct.dept
    return {**_apply_context(request, entry, {"fields": [], "ops": [], "purpose": "", "basis": "", "wanted_until": ""}),
            "own": own, "code": code}


@routes.post("/portal/applications", name="portal.apply", roles=("dept",))
async def apply(request: web.Request, person: Person | None) -> web.StreamResponse:
    assert person is not None
    form = request[FORM]
    entry = await _resource(request, form_text(form, "resource"))
    values = {"fields": _all(form, "fields"), "ops": _all(form, "ops"), "purpose": form_text(form, "purpose"),
              "basis": form_text(form, "basis"), "wanted_until": form_text(form, "wanted_until")}
    show_on_error(request, "apply.html", **_apply_context(request, entry, values), own=False, code=entry["code"])
    body = parse_form(ApplicationCreate, {**values, "resource": entry["code"],
                                          "wanted_until": values["wanted_until"] or None}, _apply_control)
    note(request, resource=entry["code"])
    try:
        doc = await request.app[APPLICATIONS].submit(person.account, body)
    except Conflict as exc:
        if isinstance(exc.details, dict) and "application" in exc.details:
            raise Conflict("本部门对该资源已有一件申请正在办理，请等待其办结，或先撤回该申请。", exc.details) from None
        raise
    except InvalidInput as exc:
        if isinstance(exc.details, list) and any(d.get("field") == "wanted_until" for d in exc.details):
            raise InvalidInput("使用期限不能早于今天。", [{"field": "wanted_until", "error": "不能早于今天"}]) from None
        if isinstance(exc.details, list) and any(d.get("error") == "own resource" for d in exc.details):
            raise InvalidInput("这是本部门自己的资源，无需申请。") from None
        raise
    note(request, application=doc["id"])
    return redirect(request.app.router["portal.application"].url_for(id=doc["id"]).with_query(done="submitted"))


# One application -----------------------------------------------------------------------------------------

def _grant_until(doc: dict[str, Any], today: date) -> str:
    """The validity the decision form proposes: what the service grants when none is given."""
    wanted = doc.get("wanted_until")
    if wanted and date.fromisoformat(wanted) >= today:
        return str(wanted)
    return (today + timedelta(days=DEFAULT_GRANT_DAYS)).isoformat()


async def _application(request: web.Request, person: Person, app_id: str) -> dict[str, Any]:
    note(request, application=app_id)  # a refusal's audit record names the application asked for
    try:
        doc = await request.app[APPLICATIONS].get(person.account, app_id)
    except NotFound:
        raise NotFound("没有找到这件申请。") from None
    except Forbidden:
        raise Forbidden("这件申请既不是本部门提出的，也不是对本部门资源的申请，您无权查看。") from None
    note(request, resource=doc["resource"])
    return doc


async def _application_context(request: web.Request, person: Person, doc: dict[str, Any]) -> dict[str, Any]:
    """The application's page: what was asked, where it stands, its history, and the step this person may
    take now (the service refuses any other anyway)."""
    acct = person.account
    try:
        entry: dict[str, Any] | None = await request.app[CATALOG].get(doc["resource"], include_deleted=True)
    except NotFound:
        entry = None
    held_here = doc["provider"]["node"] == request.app[CONFIG].node.id
    applicant = doc["applicant"]
    now = request.app[APPLICATIONS].clock()
    until = _grant_until(doc, cst_date(now))
    named = await _context(request, [doc])
    items = {i["field"]: i for i in entry["items"]} if entry else {}
    return {
        **named, "doc": doc, "entry": entry, "items": items,
        "provider_node": node_name(request, doc["provider"]["node"]),
        "issuer_node": node_name(request, str(doc["grant"]["issuer"])) if doc.get("grant") else "",
        "field_choices": [(f, items[f]["name"] if f in items else f, "敏感" if items.get(f, {}).get("sensitive") else "")
                          for f in doc["fields"]],
        "op_choices": [(op, OPS.get(op, op)) for op in doc["ops"]],
        "history": _history(request, doc, named["dept_names"]),
        "grant": doc.get("grant"), "grant_status": _grant_status(doc, doc.get("grant"), now),
        "may_review": acct.role == "operator" and held_here and doc["status"] == "submitted",
        "may_decide": (acct.role == "dept" and held_here and acct.dept == doc["provider"]["dept"]
                       and doc["status"] == "accepted"),
        "may_withdraw": (acct.role == "dept" and (acct.node, acct.dept) == (applicant["node"], applicant["dept"])
                         and doc["status"] in OPEN_STATUSES),
        "decision": {"grant_fields": doc["fields"], "grant_ops": doc["ops"], "valid_until": until, "note": "",
                     "reject_reason": ""},
        "review": {"note": "", "reason": ""},
        "withdraw": {"withdraw_reason": ""},
        "done": request.query.get("done"),
    }


_STEPS = {"submitted": "平台审核", "accepted": "提供部门决定"}


def _history_reason(entry: dict[str, Any]) -> str:
    """What a history entry says; the node's own notes (deadlines, the calendar) in Chinese."""
    reason = str(entry.get("reason") or "")
    if entry["event"] == "overdue":
        step = _STEPS.get(entry["status"], "当前环节")
        due = reason.rsplit(" ", 1)[-1] if reason else ""
        return f"{step}应于 {due} 前办结，已超过期限。" if due else f"{step}已超过期限。"
    if entry["event"] == "calendar":
        return "该年度的法定节假日安排本节点尚未获知，工作日暂按周一至周五计算，期限可能随国务院通知调整。"
    if reason.startswith("refused on receipt: "):
        return "提供资源的节点收到申请时即予退回：" + reason.removeprefix("refused on receipt: ")
    return reason


def _history(request: web.Request, doc: dict[str, Any], dept_names: dict[tuple[str, str], str]) -> list[dict[str, str]]:
    """The application's history as the page lists it: when, who (by name), what, why."""
    rows = []
    accepted = False
    for h in doc["history"]:
        node, _, who = str(h["by"]).partition("/")
        if who == PLATFORM:
            actor = f"{node_name(request, node)}平台"
        else:  # a department of another node that is neither party (its operator): its node and its code
            actor = dept_names.get((node, who)) or f"{node_name(request, node)}（{who}）"
        event = h["event"]
        if event == "rejected":
            what = "提供部门不予批准" if accepted else "审核未通过"
        else:
            what = EVENTS.get(event, event)
        accepted = accepted or event == "accepted"
        rows.append({"at": str(h["at"])[:16].replace("T", " "), "actor": actor, "what": what, "event": event,
                     "reason": _history_reason(h)})
    return rows


def _grant_status(doc: dict[str, Any], grant: dict[str, Any] | None, now: int) -> str | None:
    if grant is None:
        return None
    if doc.get("revoked_at"):
        return "revoked"
    if now > grant["valid_until"]:
        return "expired"
    return "active" if now >= grant["valid_from"] else "not_yet_valid"


@routes.get(f"/portal/applications/{ID}", name="portal.application", template="application.html")
async def application(request: web.Request, person: Person | None) -> dict[str, Any]:
    assert person is not None
    doc = await _application(request, person, request.match_info["id"])
    return await _application_context(request, person, doc)


async def _act(request: web.Request, person: Person, form_values: dict[str, Any]) -> dict[str, Any]:
    """The application a form acts on, with the page to show again (the form as sent) if it is refused."""
    doc = await _application(request, person, request.match_info["id"])
    context = await _application_context(request, person, doc)
    for name, values in form_values.items():
        context[name] = {**context[name], **values}
    show_on_error(request, "application.html", **context)
    return doc


@contextmanager
def _in_turn() -> Iterator[None]:
    """A step the application is no longer at, or one the person may not take, said in words."""
    try:
        yield
    except Conflict as exc:
        raise Conflict("这件申请已不在这一环节（可能已由他人办理或已撤回），请查看页面上的最新状态。", exc.details) from None
    except Forbidden as exc:
        raise Forbidden("这一环节不由您办理。", exc.details) from None


def _done(request: web.Request, doc: dict[str, Any], what: str) -> web.Response:
    return redirect(request.app.router["portal.application"].url_for(id=doc["id"]).with_query(done=what))


@routes.post(f"/portal/applications/{ID}/review", name="portal.review", roles=("operator",))
async def review(request: web.Request, person: Person | None) -> web.StreamResponse:
    assert person is not None
    form = request[FORM]
    decision = "accept" if form.get("decision") == "accept" else "reject"
    reason = form_text(form, "note" if decision == "accept" else "reason")
    await _act(request, person, {"review": {"note": form_text(form, "note"), "reason": form_text(form, "reason")}})
    body = parse_form(Review, {"decision": decision, "reason": reason},
                      lambda loc, _: "note" if decision == "accept" else "reason")
    with _in_turn():
        doc = await request.app[APPLICATIONS].review(person.account, request.match_info["id"], body)
    note(request, decision=decision)
    return _done(request, doc, "accepted" if decision == "accept" else "rejected")


@routes.post(f"/portal/applications/{ID}/decision", name="portal.decide", roles=("dept",))
async def decide(request: web.Request, person: Person | None) -> web.StreamResponse:
    assert person is not None
    form = request[FORM]
    approve = form.get("decision") == "approve"
    sent = {"grant_fields": _all(form, "grant_fields"), "grant_ops": _all(form, "grant_ops"),
            "valid_until": form_text(form, "valid_until"), "note": form_text(form, "note"),
            "reject_reason": form_text(form, "reject_reason")}
    await _act(request, person, {"decision": sent})
    if approve:
        data: dict[str, Any] = {"decision": "approve", "reason": sent["note"], "fields": sent["grant_fields"],
                                "ops": sent["grant_ops"], "valid_until": sent["valid_until"] or None}
        controls = {"fields": "grant_fields", "ops": "grant_ops", "valid_until": "valid_until", "reason": "note"}
    else:
        data = {"decision": "reject", "reason": sent["reject_reason"]}
        controls = {"reason": "reject_reason"}
    body = parse_form(Decision, data, lambda loc, _: controls.get(str(loc[-1]) if loc else "", "decision"))
    try:
        with _in_turn():
            doc = await request.app[APPLICATIONS].decide(person.account, request.match_info["id"], body)
    except InvalidInput as exc:
        if isinstance(exc.details, list) and any(d.get("field") == "valid_until" for d in exc.details):
            raise InvalidInput("有效期不能早于今天。", [{"field": "valid_until", "error": "不能早于今天"}]) from None
        raise
    note(request, decision=body.decision, grant=(doc.get("grant") or {}).get("id"))
    return _done(request, doc, "approved" if approve else "rejected")


@routes.post(f"/portal/applications/{ID}/withdraw", name="portal.withdraw", roles=("dept",))
async def withdraw(request: web.Request, person: Person | None) -> web.StreamResponse:
    assert person is not None
    form = request[FORM]
    reason = form_text(form, "withdraw_reason")
    await _act(request, person, {"withdraw": {"withdraw_reason": reason}})
    parse_form(Reason, {"reason": reason}, lambda loc, _: "withdraw_reason")
    with _in_turn():
        doc = await request.app[APPLICATIONS].withdraw(person.account, request.match_info["id"], reason)
    return _done(request, doc, "withdrawn")
