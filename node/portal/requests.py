"""数据需求 (供需对接, SPEC §16): a department asks a node for data no catalog entry provides and follows its
request; at the node asked, the operator assigns it to a department or rejects it, and that department
fulfils it with one of its catalog entries or rejects it. Every action is the API's service method
(node.requests.service) with the person's Account, so the rules, refusals and audit are the API's."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from aiohttp import web

from node.accounts.http import ACCOUNTS
from node.accounts.people import Person
from node.audit.http import note
from node.catalog.http import CATALOG
from node.context import CONFIG
from node.errors import Conflict, Forbidden, InvalidInput, NotFound
from node.federation.http import FEDERATION
from node.mirror import PLATFORM
from node.portal.applications import form_text, list_filters, node_name, pager
from node.ids import level_of
from node.portal.pages import FORM, LEVEL_NAMES, PortalRoutes, redirect, show_on_error
from node.portal.wording import REQUEST_EVENTS, REQUEST_STATUSES, parse_form
from node.requests.http import DATA_REQUESTS
from node.requests.models import Acceptance, DataRequestCreate, Fulfilment, Rejection

routes = PortalRoutes()
PAGE_SIZE = 20
ID = r"{id:[0-9A-HJKMNP-TV-Z]{26}}"

LIST_VIEWS = {
    "dept": (("requester", "本部门提出的需求"), ("provider", "交本部门办理的需求")),
    "operator": (("provider", "向本节点提出的需求"), ("requester", "本节点部门提出的需求")),
    "auditor": (("provider", "向本节点提出的需求"), ("requester", "本节点部门提出的需求")),
}


async def _dept_names(request: web.Request, docs: list[dict[str, Any]]) -> dict[tuple[str, str | None], str]:
    """Departments by name: this node's own; another node's by its node's name and its code."""
    node_id = request.app[CONFIG].node.id
    names: dict[tuple[str, str | None], str] = {(node_id, d["code"]): d["name"]
                                                for d in await request.app[ACCOUNTS].list()}
    for doc in docs:
        if doc.get("entry"):  # the entry that fulfilled it names its provider, once it is in the catalog here
            try:
                entry = await request.app[CATALOG].get(doc["entry"]["code"], include_deleted=True)
            except NotFound:
                pass
            else:
                names.setdefault((entry["node"], entry["provider"]["dept"]), entry["provider"]["name"])
        for p in (doc["requester"], doc["provider"], doc["to"]):
            if p.get("dept"):
                names.setdefault((p["node"], p["dept"]), f"{node_name(request, p['node'])}（{p['dept']}）")
            names.setdefault((p["node"], None), f"{node_name(request, p['node'])}平台（待分派）")
    return names


def _due(doc: dict[str, Any]) -> str | None:
    return {"submitted": doc.get("assign_due"), "accepted": doc.get("answer_due")}.get(doc["status"])


@routes.get("/portal/requests", name="portal.requests", template="requests.html", nav="数据需求", order=45)
async def requests_list(request: web.Request, person: Person | None) -> dict[str, Any]:
    assert person is not None
    acct = person.account
    views = LIST_VIEWS[acct.role]
    view, status, overdue, page = list_filters(request, views, REQUEST_STATUSES)
    total, docs = await request.app[DATA_REQUESTS].list_requests(acct, role=view, status=status, overdue=overdue,
                                                                 page=page, page_size=PAGE_SIZE)
    return {"docs": docs, "total": total, "page": page, "page_size": PAGE_SIZE, "views": views, "view": view,
            "status": status or "", "overdue": overdue, "statuses": REQUEST_STATUSES, "due": _due,
            "dept_names": await _dept_names(request, docs),
            "status_options": [("", "全部状态"), *REQUEST_STATUSES.items()], **pager(request, page, total, PAGE_SIZE)}


# Asking --------------------------------------------------------------------------------------------------

def _node_options(request: web.Request) -> list[tuple[str, str]]:
    """The nodes a request can be sent to: this one and every node of the federation it knows."""
    config = request.app[CONFIG]
    trust = request.app[FEDERATION].trust
    known = trust.known_nodes() if trust is not None else set()
    nodes = sorted(known | {config.node.id})
    return [(n, f"{node_name(request, n)}（{LEVEL_NAMES[level_of(n)]}，{n}）") for n in nodes]


def _ask_context(request: web.Request, values: dict[str, Any]) -> dict[str, Any]:
    return {"values": values, "node_options": _node_options(request)}


def _ask_control(loc: tuple[Any, ...], message: str) -> str:
    first = str(loc[0]) if loc else ""
    if first == "to":
        return "dept" if len(loc) > 1 and loc[1] == "dept" else "node"
    return first if first in ("name", "fields", "purpose", "basis") else "name"


@routes.get("/portal/requests/new", name="portal.request.form", template="request_new.html", roles=("dept",))
async def ask_form(request: web.Request, person: Person | None) -> dict[str, Any]:
    parent = request.app[CONFIG].node.id
    trust = request.app[FEDERATION].trust
    cert = trust.certificate(parent) if trust is not None else None
    default = str(cert.get("parent") or parent) if cert is not None else parent
    return _ask_context(request, {"node": default, "dept": "", "name": "", "fields": "", "purpose": "", "basis": ""})


@routes.post("/portal/requests", name="portal.request.ask", roles=("dept",))
async def ask(request: web.Request, person: Person | None) -> web.StreamResponse:
    assert person is not None
    form = request[FORM]
    values = {k: form_text(form, k) for k in ("node", "dept", "name", "fields", "purpose", "basis")}
    show_on_error(request, "request_new.html", **_ask_context(request, values))
    fields = [line.strip() for line in values["fields"].replace("，", "\n").replace("、", "\n").splitlines()
              if line.strip()]
    try:
        body = parse_form(DataRequestCreate, {"to": {"node": values["node"], "dept": values["dept"] or None},
                                              "name": values["name"], "fields": fields, "purpose": values["purpose"],
                                              "basis": values["basis"]}, _ask_control)
    except InvalidInput as exc:  # the items are lines of a text box, not choices
        for d in exc.details if isinstance(exc.details, list) else []:
            if d.get("field") == "fields" and d.get("error") == "请至少选择一项":
                d["error"] = "请至少填写一项"
        raise
    try:
        doc = await request.app[DATA_REQUESTS].submit(person.account, body)
    except InvalidInput as exc:
        if isinstance(exc.details, list) and any(d.get("field") == "to.dept" for d in exc.details):
            raise InvalidInput("本节点没有这个部门，请核对部门代码，或留空由平台分派。",
                               [{"field": "dept", "error": "没有这个部门"}]) from None
        raise
    note(request, data_request=doc["id"])
    return redirect(request.app.router["portal.request"].url_for(id=doc["id"]).with_query(done="submitted"))


# One request ---------------------------------------------------------------------------------------------

async def _request(request: web.Request, person: Person, req_id: str) -> dict[str, Any]:
    note(request, data_request=req_id)  # a refusal's audit record names the request asked for
    try:
        return await request.app[DATA_REQUESTS].get(person.account, req_id)
    except NotFound:
        raise NotFound("没有找到这项数据需求。") from None
    except Forbidden:
        raise Forbidden("这项数据需求既不是本部门提出的，也没有交本部门办理，您无权查看。") from None


def _history(request: web.Request, doc: dict[str, Any], names: dict[tuple[str, str | None], str]) -> list[dict]:
    rows = []
    for h in doc["history"]:
        node, _, who = str(h["by"]).partition("/")
        actor = f"{node_name(request, node)}平台" if who == PLATFORM else names.get((node, who), h["by"])
        reason = str(h.get("reason") or "")
        if h["event"] == "overdue":
            step = "平台分派" if h["status"] == "submitted" else "承办部门答复"
            reason = f"{step}应于 {reason.rsplit(' ', 1)[-1]} 前办结，已超过期限。"
        elif h["event"] == "calendar":
            reason = "该年度的法定节假日安排本节点尚未获知，工作日暂按周一至周五计算。"
        elif reason.startswith("refused on receipt: "):
            reason = "被询问的节点收到需求时即予退回：" + reason.removeprefix("refused on receipt: ")
        rows.append({"at": str(h["at"])[:16].replace("T", " "), "actor": actor, "event": h["event"],
                     "what": REQUEST_EVENTS.get(h["event"], h["event"]), "reason": reason})
    return rows


async def _context(request: web.Request, person: Person, doc: dict[str, Any]) -> dict[str, Any]:
    """The request's page: what was asked, where it stands, its history, and the step this person may take
    now (the service refuses any other anyway)."""
    acct = person.account
    flow = request.app[DATA_REQUESTS].flow
    held_here = flow.held_here(doc)
    names = await _dept_names(request, [doc])
    may_assign = acct.role == "operator" and held_here and doc["status"] == "submitted"
    may_answer = flow.is_provider(acct, doc) and doc["status"] == "accepted"
    depts = [(d["code"], f"{d['name']}（{d['code']}）") for d in await request.app[ACCOUNTS].list()
             if d["role"] == "dept" and not d["disabled"]] if may_assign else []
    entries: list[tuple[str, str]] = []
    if may_answer:
        _, own = await request.app[CATALOG].search(q=None, node=acct.node, category=None, share_type=None,
                                                   provider=acct.dept, deleted=False, page=1, page_size=200)
        entries = [(e["code"], f"{e['name']}（{e['code']}）") for e in own]
    return {
        "doc": doc, "dept_names": names, "statuses": REQUEST_STATUSES, "history": _history(request, doc, names),
        "to_node": node_name(request, doc["to"]["node"]), "may_assign": may_assign, "may_answer": may_answer,
        "dept_options": [("", "请选择部门"), *depts], "entry_options": [("", "请选择本部门的目录资源"), *entries],
        "assign": {"dept": doc["to"].get("dept") or "", "note": "", "reason": ""},
        "answer": {"entry": "", "fulfil_note": "", "reject_reason": ""},
        "done": request.query.get("done"),
    }


@routes.get(f"/portal/requests/{ID}", name="portal.request", template="request.html")
async def one_request(request: web.Request, person: Person | None) -> dict[str, Any]:
    assert person is not None
    doc = await _request(request, person, request.match_info["id"])
    return await _context(request, person, doc)


async def _act(request: web.Request, person: Person, form_values: dict[str, Any]) -> None:
    """The page to show again (the form as sent) if the step is refused."""
    doc = await _request(request, person, request.match_info["id"])
    context = await _context(request, person, doc)
    for name, values in form_values.items():
        context[name] = {**context[name], **values}
    show_on_error(request, "request.html", **context)


@contextmanager
def _in_turn() -> Iterator[None]:
    try:
        yield
    except Conflict as exc:
        raise Conflict("这项需求已不在这一环节（可能已由他人办理），请查看页面上的最新状态。", exc.details) from None
    except Forbidden as exc:
        raise Forbidden("这一环节不由您办理。", exc.details) from None


def _done(request: web.Request, doc: dict[str, Any], what: str) -> web.Response:
    return redirect(request.app.router["portal.request"].url_for(id=doc["id"]).with_query(done=what))


@routes.post(f"/portal/requests/{ID}/accept", name="portal.request.accept", roles=("operator",))
async def accept(request: web.Request, person: Person | None) -> web.StreamResponse:
    assert person is not None
    form = request[FORM]
    sent = {"dept": form_text(form, "dept"), "note": form_text(form, "note")}
    await _act(request, person, {"assign": sent})
    if not sent["dept"]:
        raise InvalidInput("请选择承办部门。", [{"field": "dept", "error": "请选择承办部门"}])
    body = parse_form(Acceptance, {"dept": sent["dept"], "reason": sent["note"]},
                      lambda loc, _: "note" if loc and loc[0] == "reason" else "dept")
    with _in_turn():
        doc = await request.app[DATA_REQUESTS].accept(person.account, request.match_info["id"], body)
    note(request, dept=body.dept)
    return _done(request, doc, "accepted")


@routes.post(f"/portal/requests/{ID}/reject", name="portal.request.reject", roles=("operator", "dept"))
async def reject(request: web.Request, person: Person | None) -> web.StreamResponse:
    assert person is not None
    form = request[FORM]
    control = "reason" if person.account.role == "operator" else "reject_reason"
    reason = form_text(form, control)
    await _act(request, person, {"assign": {"reason": reason}} if control == "reason"
               else {"answer": {"reject_reason": reason}})
    body = parse_form(Rejection, {"reason": reason}, lambda loc, _: control)
    with _in_turn():
        doc = await request.app[DATA_REQUESTS].reject(person.account, request.match_info["id"], body.reason)
    return _done(request, doc, "rejected")


@routes.post(f"/portal/requests/{ID}/fulfil", name="portal.request.fulfil", roles=("dept",))
async def fulfil(request: web.Request, person: Person | None) -> web.StreamResponse:
    assert person is not None
    form = request[FORM]
    sent = {"entry": form_text(form, "entry"), "fulfil_note": form_text(form, "fulfil_note")}
    await _act(request, person, {"answer": sent})
    if not sent["entry"]:
        raise InvalidInput("请选择满足需求的目录资源；还没有的，先在“我的资源”中编目。",
                           [{"field": "entry", "error": "请选择目录资源"}])
    body = parse_form(Fulfilment, {"entry": sent["entry"], "reason": sent["fulfil_note"]},
                      lambda loc, _: "fulfil_note" if loc and loc[0] == "reason" else "entry")
    note(request, resource=body.entry)
    with _in_turn():
        doc = await request.app[DATA_REQUESTS].fulfil(person.account, request.match_info["id"], body)
    return _done(request, doc, "fulfilled")
