"""The home page (首页): the department's resources, the person's applications and their due dates, and what
waits for them: reviews for an operator, decisions for a providing department, overdue steps for an auditor.
Each list comes from the service method its API endpoint calls, with the person's Account."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from node.accounts.http import ACCOUNTS
from node.accounts.people import Person
from node.applications.http import APPLICATIONS
from node.catalog.http import CATALOG
from node.context import CONFIG
from node.errors import NotFound
from node.federation.http import FEDERATION
from node.portal.pages import PortalRoutes

routes = PortalRoutes()
SHOWN = 10

SHARE_TYPES = {"unconditional": "无条件共享", "conditional": "有条件共享", "none": "不予共享"}
CYCLES = {"realtime": "实时", "daily": "每日", "weekly": "每周", "monthly": "每月", "quarterly": "每季度",
          "yearly": "每年", "other": "其他"}
STATUSES = {"submitted": "待平台审核", "accepted": "待提供部门决定", "approved": "已批准", "rejected": "未通过",
            "withdrawn": "已撤回"}


async def names_for(request: web.Request,
                    docs: list[dict[str, Any]]) -> tuple[dict[str, str], dict[tuple[str, str], str]]:
    """Names to show instead of codes: of the resources applications name (from the catalog; a withdrawn one
    keeps its code only) and of departments (this node's own, and each resource's provider; a department of
    another node that provides nothing here is named by its node and its code)."""
    resources: dict[str, str] = {}
    depts = {(request.app[CONFIG].node.id, d["code"]): d["name"] for d in await request.app[ACCOUNTS].list()}
    for code in {d["resource"] for d in docs}:
        try:
            entry = await request.app[CATALOG].get(code, include_deleted=True)
        except NotFound:
            continue
        resources[code] = entry["name"]
        depts.setdefault((entry["node"], entry["provider"]["dept"]), entry["provider"]["name"])
    trust = request.app[FEDERATION].trust
    for party in (p for d in docs for p in (d["applicant"], d["provider"])):
        cert = trust.certificate(party["node"]) if trust is not None else None
        if cert is not None:
            depts.setdefault((party["node"], party["dept"]), f"{cert['name']} {party['dept']}")
    return resources, depts


def due_of(doc: dict[str, Any]) -> str | None:
    """The due date of the step an application waits for, if it waits."""
    return {"submitted": doc.get("review_due"), "accepted": doc.get("decision_due")}.get(doc["status"])


@routes.get("/portal/", name="portal.home", template="home.html", nav="首页", order=10)
async def home(request: web.Request, person: Person | None) -> dict[str, Any]:
    assert person is not None
    acct = person.account
    apps = request.app[APPLICATIONS]
    resources: list[dict[str, Any]] = []
    resources_total = 0
    mine: list[dict[str, Any]] = []
    mine_total = 0
    if acct.role == "dept":
        resources_total, resources = await request.app[CATALOG].search(
            q=None, node=acct.node, category=None, share_type=None, provider=acct.dept, deleted=False,
            page=1, page_size=SHOWN)
        mine_total, mine = await apps.list_applications(acct, role="applicant", status=None, overdue=None,
                                                        resource=None, page=1, page_size=SHOWN)
    if acct.role == "operator":
        waiting_title = "待审核的申请（本节点资源）"
        waiting_total, waiting = await apps.list_applications(acct, role="provider", status="submitted", overdue=None,
                                                              resource=None, page=1, page_size=SHOWN)
    elif acct.role == "auditor":
        waiting_title = "逾期未办的申请"
        waiting_total, waiting = await apps.list_applications(acct, role=None, status=None, overdue=True,
                                                              resource=None, page=1, page_size=SHOWN)
    else:
        waiting_title = "待本部门决定的申请"
        waiting_total, waiting = await apps.list_applications(acct, role="provider", status="accepted", overdue=None,
                                                              resource=None, page=1, page_size=SHOWN)
    names, dept_names = await names_for(request, mine + waiting)
    from node.portal.figures import alerts_for  # the operator's alerts block (node.portal.figures)
    alerts = await alerts_for(request, person)
    return {
        "resources": resources, "resources_total": resources_total,
        "mine": mine, "mine_total": mine_total,
        "waiting": waiting, "waiting_total": waiting_total, "waiting_title": waiting_title,
        "names": names, "dept_names": dept_names,
        "due": due_of, "share_types": SHARE_TYPES, "cycles": CYCLES, "statuses": STATUSES,
        "done": request.query.get("done"), "alerts": alerts,
    }
