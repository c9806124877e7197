"""数据纠错 (feedback) and 数据订阅 (subscriptions) in the portal. A person reports a wrong value straight from a
query result (the result links here with the resource and the record's key) and follows the report; the
providing department confirms, corrects or rejects it. A department subscribes to a resource (a replica at
this node, or a webhook) and sees each subscription's state and lag; operators and auditors see them all.
Each action is the API's service method with the person's Account."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from node.accounts.people import Person
from node.audit.http import note
from node.catalog.http import CATALOG
from node.errors import InvalidInput, NotFound
from node.portal.applications import form_text, page_number, pager
from node.portal.pages import FORM, PortalRoutes, redirect, render, show_on_error, url
from node.portal.wording import parse_form
from node.quality.http import FEEDBACK
from node.quality.models import FeedbackCreate
from node.subscriptions.http import SUBSCRIPTIONS
from node.subscriptions.models import SubscriptionCreate

routes = PortalRoutes()
ID = r"{id:[0-9A-HJKMNP-TV-Z]{26}}"
PAGE_SIZE = 20
FEEDBACK_STATUSES = {"open": "待处理", "confirmed": "已确认有误", "corrected": "已更正", "rejected": "不予采纳"}
FEEDBACK_EVENTS = {"submitted": "提交纠错", "received": "提供方节点收到", "calendar": "期限说明", "confirmed": "确认有误",
                   "corrected": "已更正", "rejected": "不予采纳", "overdue": "超过办理期限"}
FEEDBACK_VIEWS = {"dept": (("reporter", "本部门提出的纠错"), ("provider", "对本部门数据的纠错")),
                  "operator": (("", "本节点的全部纠错"),), "auditor": (("", "本节点的全部纠错"),)}
SUB_STATES = {"live": "同步中（已追平）", "syncing": "追赶中", "error": "出错", "suspended": "已暂停", "cancelled": "已取消"}
MODES = {"replica": "本节点副本（数据回流）", "webhook": "推送到本部门接口（Webhook）"}


# 数据纠错 ------------------------------------------------------------------------------------------------

@routes.get("/portal/feedback", name="portal.feedback", template="feedback_list.html", nav="数据纠错", order=57)
async def feedback_list(request: web.Request, person: Person | None) -> dict[str, Any]:
    assert person is not None
    views = FEEDBACK_VIEWS[person.account.role]
    view = request.query.get("view", views[0][0])
    view = view if view in dict(views) else views[0][0]
    status = request.query.get("status") or None
    status = status if status in FEEDBACK_STATUSES else None
    page = page_number(request)
    total, docs = await request.app[FEEDBACK].list_feedback(person.account, role=view or None, status=status,
                                                            overdue=None, resource=None, page=page, page_size=PAGE_SIZE)
    return {"docs": docs, "total": total, "page": page, "views": views, "view": view, "status": status or "",
            "statuses": FEEDBACK_STATUSES, "status_options": [("", "全部状态"), *FEEDBACK_STATUSES.items()],
            **pager(request, page, total, PAGE_SIZE)}


async def _entry(request: web.Request, code: str) -> dict[str, Any]:
    try:
        return await request.app[CATALOG].get(code)
    except NotFound:
        raise NotFound("目录中没有这个资源，或它已被提供部门撤销。") from None


def _report_context(entry: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    return {"entry": entry, "v": values, "items": [(i["field"], i["name"]) for i in entry["items"]]}


@routes.get("/portal/feedback/new", name="portal.feedback.new", template="feedback_new.html", roles=("dept",))
async def report_form(request: web.Request, person: Person | None) -> dict[str, Any]:
    entry = await _entry(request, request.query.get("resource", ""))
    fields = [f for f in request.query.getall("field", []) if isinstance(f, str)]
    return _report_context(entry, {"key": request.query.get("key", ""), "fields": fields, "description": ""})


@routes.post("/portal/feedback/new", name="portal.feedback.submit", roles=("dept",))
async def report(request: web.Request, person: Person | None) -> web.StreamResponse:
    assert person is not None
    form = request[FORM]
    entry = await _entry(request, form_text(form, "resource"))
    values = {"key": form_text(form, "key"), "fields": [f for f in form.getall("fields", []) if isinstance(f, str)],
              "description": form_text(form, "description")}
    show_on_error(request, "feedback_new.html", **_report_context(entry, values))
    body = parse_form(FeedbackCreate, {"resource": entry["code"], "key": values["key"] or None,
                                       "fields": values["fields"], "description": values["description"]},
                      lambda loc, _m: {"fields": "fields", "description": "description", "key": "key"}.get(
                          str(loc[0]) if loc else "", "fields"))
    doc = await request.app[FEEDBACK].submit(person.account, body)
    note(request, resource=doc["resource"], feedback=doc["id"])
    return redirect(url(request, "portal.feedback.one", id=doc["id"]))


@routes.get(f"/portal/feedback/{ID}", name="portal.feedback.one", template="feedback.html")
async def feedback_one(request: web.Request, person: Person | None) -> dict[str, Any]:
    assert person is not None
    doc = await request.app[FEEDBACK].get(person.account, request.match_info["id"])
    note(request, resource=doc["resource"], feedback=doc["id"])
    acct = person.account
    answers = (acct.role == "dept" and acct.node == doc["provider"]["node"] and acct.dept == doc["provider"]["dept"]
               and doc["status"] in ("open", "confirmed"))
    return {"doc": doc, "statuses": FEEDBACK_STATUSES, "events": FEEDBACK_EVENTS, "answers": answers}


@routes.post(f"/portal/feedback/{ID}/answer", name="portal.feedback.answer", roles=("dept",))
async def feedback_answer(request: web.Request, person: Person | None) -> web.StreamResponse:
    assert person is not None
    form = request[FORM]
    action, reason = form_text(form, "action"), form_text(form, "reason")
    fb = request.app[FEEDBACK]
    doc = await fb.get(person.account, request.match_info["id"])
    show_on_error(request, "feedback.html", doc=doc, statuses=FEEDBACK_STATUSES, events=FEEDBACK_EVENTS, answers=True)
    if action not in ("confirm", "correct", "reject"):
        raise InvalidInput("请选择处理方式", [{"field": "action", "error": "未选择"}])
    if action == "reject" and not reason:
        raise InvalidInput("不予采纳须说明理由", [{"field": "reason", "error": "请填写理由"}])
    doc = await fb.act(person.account, doc["id"], action, reason)
    note(request, resource=doc["resource"], feedback=doc["id"], action=action)
    return redirect(url(request, "portal.feedback.one", id=doc["id"]))


# 数据订阅 ------------------------------------------------------------------------------------------------

async def _subscriptions_context(request: web.Request, person: Person, **extra: Any) -> dict[str, Any]:
    subs = await request.app[SUBSCRIPTIONS].list_subscriptions(person.account)
    return {"subs": [s for s in subs if s["status"] == "active"], "states": SUB_STATES, "modes": MODES,
            "mode_options": list(MODES.items()), "v": {"resource": "", "mode": "replica", "url": ""}, **extra}


@routes.get("/portal/subscriptions", name="portal.subscriptions", template="subscriptions.html", nav="数据订阅",
            order=58)
async def subscriptions(request: web.Request, person: Person | None) -> dict[str, Any]:
    assert person is not None
    return await _subscriptions_context(request, person, done=request.query.get("done"))


@routes.post("/portal/subscriptions", name="portal.subscriptions.create", roles=("dept",))
async def subscribe(request: web.Request, person: Person | None) -> web.StreamResponse:
    assert person is not None
    form = request[FORM]
    values = {k: form_text(form, k) for k in ("resource", "mode", "url")}
    show_on_error(request, "subscriptions.html", **await _subscriptions_context(request, person, done=None, v=values))
    body = parse_form(SubscriptionCreate, {"resource": values["resource"], "mode": values["mode"],
                                           "url": values["url"] or None},
                      lambda loc, _m: str(loc[0]) if loc and loc[0] in ("resource", "mode", "url") else "url")
    view = await request.app[SUBSCRIPTIONS].create(person.account, body)
    note(request, resource=view["resource"], subscription=view["id"])
    if view.get("secret"):  # a webhook's signing secret: shown once, in this answer only
        return render(request, "admin_secret.html", {
            "title": "已订阅", "what": f"资源 {view['resource']} 的推送签名密钥", "secret": view["secret"],
            "back": url(request, "portal.subscriptions"),
            "note_text": "本部门接口用它核验每批推送的签名。密钥只显示这一次，请立即保存。"})
    return redirect(request.app.router["portal.subscriptions"].url_for().with_query(done="created"))


@routes.post(f"/portal/subscriptions/{ID}/cancel", name="portal.subscriptions.cancel", roles=("dept", "operator"))
async def unsubscribe(request: web.Request, person: Person | None) -> web.StreamResponse:
    assert person is not None
    show_on_error(request, "subscriptions.html", **await _subscriptions_context(request, person, done=None))
    view = await request.app[SUBSCRIPTIONS].cancel(person.account, request.match_info["id"])
    note(request, resource=view["resource"], subscription=view["id"])
    return redirect(request.app.router["portal.subscriptions"].url_for().with_query(done="cancelled"))
