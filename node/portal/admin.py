"""运营管理 (the operator console): this node's departments and people (add, disable, reset a password, issue
and revoke API tokens), invites for child nodes, the review queue with its due dates and what is overdue,
the table-exchange sources with their progress and last errors, and the state of the signing keys.

Every action is the method the command line calls (node.accounts, node.federation), so the rules are written
once; the portal's call is audited as the person who made it. Operators act; auditors see every page and
change nothing (each POST here is the operator's only). A token, an initial password or a join token is
shown once, in the answer to the form that made it: never in a URL, never in a log or an audit record."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from aiohttp import web

from node.accounts.http import ACCOUNTS, PEOPLE
from node.accounts.people import Person
from node.accounts.service import ROLES
from node.applications.http import APPLICATIONS
from node.audit.http import note
from node.context import CONFIG
from node.errors import ApiError, InvalidInput
from node.exchange.http import EXCHANGE
from node.federation.http import FEDERATION
from node.federation.service import FederationService
from node.portal.applications import form_text
from node.portal.home import STATUSES, due_of, names_for
from node.portal.pages import FORM, ROLE_NAMES, PortalRoutes, redirect, render, show_on_error, url
from node.workdays import CST

routes = PortalRoutes()
READERS = ("operator", "auditor")
MANAGERS = ("operator",)
SHOWN = 20
ROLE_OPTIONS = [(r, ROLE_NAMES[r]) for r in ROLES]
PERSON_STATUS = {"active": "正常", "disabled": "已停用", "locked": "已锁定", "must-change-password": "待修改初始密码"}
# The invite service's refusals: the form's control, and what it says.
INVITE_REFUSALS = {"code": ("code", "节点代码须为 6 位数字（GB/T 2260 行政区划代码）"),
                   "ttl_hours": ("hours", "有效时长须大于 0，至多 168 小时")}
SOURCE_STATES = {"ready": "正常", "loading": "首次加载中", "error": "出错"}
# What went wrong with a source, in the operator's words (node.exchange.models.SourceError.kind); the driver's
# own message follows as it was given, for the source database's administrator.
SOURCE_ERRORS = {"unreachable": "无法连接源库", "schema": "源表或字段已变化", "source": "源库报错",
                 "credentials": "源库账号或密码无效", "internal": "本节点内部错误"}


def _ms(ms: int | None) -> str:
    return datetime.fromtimestamp(ms / 1000, CST).strftime("%Y-%m-%d %H:%M") if ms else ""


def _secret(request: web.Request, title: str, what: str, secret: str, back: str, note_text: str) -> web.Response:
    """The one page that shows a secret: the answer to the form that made it (no-store, like every page)."""
    return render(request, "admin_secret.html", {"title": title, "what": what, "secret": secret, "back": back,
                                                 "note_text": note_text})


# The console's front page ------------------------------------------------------------------------------

def _keys(request: web.Request) -> dict[str, Any]:
    """This node's signing key and certificate, and its children's, as the trust store holds them."""
    fed = request.app[FEDERATION]
    trust = fed.trust
    own = trust.certificate(fed.node_id) if trust is not None else None
    children = []
    if trust is not None:
        for child in sorted(fed.children()):
            cert = trust.certificate(child)
            if cert is not None:
                children.append({"node": child, "name": cert.get("name", ""), "keys": ", ".join(cert["verify_keys"]),
                                 "valid_until": _ms(cert.get("valid_until"))})
    old = [{"key": k, "expired_at": _ms(v.get("expired_at"))}
           for k, v in sorted(((own or {}).get("old_verify_keys") or {}).items())]
    return {"key_id": fed.key.key_id, "joined": fed.joined, "parent": fed.parent,
            "valid_from": _ms((own or {}).get("valid_from")), "valid_until": _ms((own or {}).get("valid_until")),
            "old": old, "children": children}


@routes.get("/portal/admin", name="portal.admin", template="admin.html", roles=READERS, nav="运营管理", order=70)
async def console(request: web.Request, person: Person | None) -> dict[str, Any]:
    assert person is not None
    acct = person.account
    apps = request.app[APPLICATIONS]
    waiting_total, waiting = await apps.list_applications(acct, role="provider", status="submitted", overdue=None,
                                                          resource=None, page=1, page_size=SHOWN)
    overdue_total, overdue = await apps.list_applications(acct, role=None, status=None, overdue=True,
                                                          resource=None, page=1, page_size=SHOWN)
    # A review past its due date is in the queue above, marked so; this list adds the decisions past theirs.
    overdue = [d for d in overdue if d["status"] == "accepted"]
    names, dept_names = await names_for(request, waiting + overdue)
    sources = await request.app[EXCHANGE].list_all(acct)
    return {"waiting": waiting, "waiting_total": waiting_total, "overdue": overdue, "overdue_total": overdue_total,
            "names": names, "dept_names": dept_names, "statuses": STATUSES, "due": due_of,
            "sources": sources, "source_states": SOURCE_STATES, "source_errors": SOURCE_ERRORS, "keys": _keys(request),
            "departments": len(await request.app[ACCOUNTS].list()), "people": len(await request.app[PEOPLE].list())}


# Departments and their tokens ----------------------------------------------------------------------------

async def _departments_context(request: web.Request, **extra: Any) -> dict[str, Any]:
    return {"departments": await request.app[ACCOUNTS].list(), "roles": ROLE_OPTIONS, "role_names": ROLE_NAMES,
            "form": {"code": "", "name": "", "role": "dept"}, **extra}


@routes.get("/portal/admin/departments", name="portal.admin.departments", template="admin_departments.html",
            roles=READERS)
async def departments(request: web.Request, person: Person | None) -> dict[str, Any]:
    return await _departments_context(request, done=request.query.get("done"))


@routes.post("/portal/admin/departments", name="portal.admin.departments.add", roles=MANAGERS)
async def add_department(request: web.Request, person: Person | None) -> web.StreamResponse:
    form = request[FORM]
    code, name, role = form_text(form, "code").upper(), form_text(form, "name"), form_text(form, "role") or "dept"
    show_on_error(request, "admin_departments.html",
                  **await _departments_context(request, done=None, form={"code": code, "name": name, "role": role}))
    note(request, dept=code, role=role)
    token = await request.app[ACCOUNTS].add_department(code, name, role)
    return _secret(request, "部门已添加", f"部门 {name}（{code}）的接口令牌", token, url(request, "portal.admin.departments"),
                   "请立即复制并安全地交给该部门的系统管理员。令牌只显示这一次，本节点只保存其摘要，之后无法再查看。")


@routes.post(r"/portal/admin/departments/{dept:[0-9A-Z]{1,32}}/token", name="portal.admin.departments.token",
             roles=MANAGERS)
async def issue_token(request: web.Request, person: Person | None) -> web.StreamResponse:
    code = request.match_info["dept"]
    show_on_error(request, "admin_departments.html", **await _departments_context(request, done=None))
    note(request, dept=code)
    token = await request.app[ACCOUNTS].issue_token(code)
    return _secret(request, "已签发新令牌", f"部门 {code} 的新接口令牌", token, url(request, "portal.admin.departments"),
                   "原有令牌仍然有效；如需作废原有令牌，请停用该部门。新令牌只显示这一次。")


@routes.post(r"/portal/admin/departments/{dept:[0-9A-Z]{1,32}}/revoke", name="portal.admin.departments.revoke",
             roles=MANAGERS)
async def revoke_department(request: web.Request, person: Person | None) -> web.StreamResponse:
    code = request.match_info["dept"]
    show_on_error(request, "admin_departments.html", **await _departments_context(request, done=None))
    revoked = await request.app[ACCOUNTS].revoke(code)
    note(request, dept=code, tokens_revoked=revoked)
    return redirect(request.app.router["portal.admin.departments"].url_for().with_query(done="revoked"))


# People ----------------------------------------------------------------------------------------------------

async def _people_context(request: web.Request, **extra: Any) -> dict[str, Any]:
    people = await request.app[PEOPLE].list()
    for p in people:
        p["last_login"] = _ms(p["last_login_at"])
    depts = [(d["code"], f"{d['name']}（{d['code']}）") for d in await request.app[ACCOUNTS].list() if not d["disabled"]]
    return {"people": people, "depts": depts, "roles": [("", "与部门相同"), *ROLE_OPTIONS], "role_names": ROLE_NAMES,
            "person_status": PERSON_STATUS, "form": {"username": "", "dept": "", "role": "", "name": ""}, **extra}


@routes.get("/portal/admin/people", name="portal.admin.people", template="admin_people.html", roles=READERS)
async def people(request: web.Request, person: Person | None) -> dict[str, Any]:
    return await _people_context(request, done=request.query.get("done"))


@routes.post("/portal/admin/people", name="portal.admin.people.add", roles=MANAGERS)
async def add_person(request: web.Request, person: Person | None) -> web.StreamResponse:
    form = request[FORM]
    sent = {k: form_text(form, k) for k in ("username", "dept", "role", "name")}
    show_on_error(request, "admin_people.html", **await _people_context(request, done=None, form=sent))
    if not sent["dept"]:
        raise InvalidInput("请选择人员所在部门", [{"field": "dept", "error": "必选"}])
    note(request, username=sent["username"], dept=sent["dept"])
    password = await request.app[PEOPLE].add(sent["username"], sent["dept"], sent["role"] or None, sent["name"] or None)
    return _secret(request, "人员已添加", f"{sent['name'] or sent['username']}（用户名 {sent['username']}）的初始密码",
                   password, url(request, "portal.admin.people"),
                   "请当面或以安全方式告知本人。初始密码只显示这一次，首次登录时必须修改。")


@routes.post(r"/portal/admin/people/{username:[a-z][a-z0-9._-]{1,31}}/disable", name="portal.admin.people.disable",
             roles=MANAGERS)
async def disable_person(request: web.Request, person: Person | None) -> web.StreamResponse:
    username = request.match_info["username"]
    show_on_error(request, "admin_people.html", **await _people_context(request, done=None))
    note(request, username=username)
    await request.app[PEOPLE].disable(username)
    return redirect(request.app.router["portal.admin.people"].url_for().with_query(done="disabled"))


@routes.post(r"/portal/admin/people/{username:[a-z][a-z0-9._-]{1,31}}/reset", name="portal.admin.people.reset",
             roles=MANAGERS)
async def reset_person(request: web.Request, person: Person | None) -> web.StreamResponse:
    username = request.match_info["username"]
    show_on_error(request, "admin_people.html", **await _people_context(request, done=None))
    note(request, username=username)
    password = await request.app[PEOPLE].reset(username)
    return _secret(request, "密码已重置", f"用户 {username} 的新初始密码", password, url(request, "portal.admin.people"),
                   "该用户的所有会话已结束，账户已解锁。新初始密码只显示这一次，下次登录时必须修改。")


# Invites for child nodes --------------------------------------------------------------------------------------

@routes.get("/portal/admin/invites", name="portal.admin.invites", template="admin_invites.html", roles=READERS)
async def invites(request: web.Request, person: Person | None) -> dict[str, Any]:
    return {"form": {"code": "", "hours": "24"}, "children": _keys(request)["children"]}


@routes.post("/portal/admin/invites", name="portal.admin.invites.add", roles=MANAGERS)
async def invite(request: web.Request, person: Person | None) -> web.StreamResponse:
    form = request[FORM]
    sent = {"code": form_text(form, "code"), "hours": form_text(form, "hours") or "24"}
    show_on_error(request, "admin_invites.html", form=sent, children=_keys(request)["children"])
    try:
        hours = float(sent["hours"])
    except ValueError:
        hours = math.nan
    if not math.isfinite(hours):
        raise InvalidInput("有效时长须为数字（小时）", [{"field": "hours", "error": "须为数字"}])
    note(request, child=sent["code"], hours=hours)
    try:
        token = await FederationService.create_invite(request.app[FEDERATION].engine, sent["code"],
                                                      int(hours * 3600 * 1000))
    except ApiError as exc:  # the service's refusal, in the form's words
        field = (exc.details or [{}])[0].get("field") if isinstance(exc.details, list) else None
        if exc.code != "INVALID_INPUT" or field not in INVITE_REFUSALS:
            raise
        control, text = INVITE_REFUSALS[field]
        raise InvalidInput(text, [{"field": control, "error": text}]) from None
    endpoint = request.app[CONFIG].endpoint or ""
    return _secret(request, "已生成加入令牌", f"下级节点 {sent['code']} 的一次性加入令牌（{hours:g} 小时内有效）", token,
                   url(request, "portal.admin.invites"),
                   f"请安全地交给该节点的运营人员，由其执行 govnode join {endpoint} <令牌>。令牌只显示这一次，使用一次即失效。")
