"""Service items in the portal (政务服务事项): searching the items this node holds, an item's page with its
materials and what replaces each, 一证通办 for a clerk (an ID in, per material 已获取 / 已核验 / 不一致 /
未找到 / 无授权 / 无法连接 and the nodes the answer came through), and the 材料减免率 figures.

Each page calls the same ItemService method as the API's handler, with the person's Account, so the rules,
the routing and the audit records (with the purpose) are the API's."""

from __future__ import annotations

from math import ceil
from typing import Any
from urllib.parse import quote, unquote, urlencode

from aiohttp import web
from pydantic import ValidationError

from node.accounts.people import Person
from node.audit.http import note
from node.catalog.http import CATALOG
from node.errors import ApiError, InvalidInput, NotFound
from node.context import CONFIG
from node.items import sheet
from node.items.http import ITEM, ITEMS, SHEET_LIMIT, XLSX, read_sheet
from node.items.models import TYPE_NAMES, GatherBody
from node.portal.catalog import node_namer, resource_url
from node.portal.pages import ERROR_TITLES, FORM, UPLOAD, PortalRoutes, redirect, show_on_error, url
from node.web import validation_details

routes = PortalRoutes()
PAGE_SIZE = 20
KINDS = {"basic": "基本目录事项", "implemented": "实施清单事项"}
OUTCOMES = {"obtained": "已获取", "verified": "已核验", "mismatch": "不一致", "not_found": "未找到",
            "no_grant": "无授权", "unreachable": "无法连接", "not_shareable": "需申请人提交"}
OUTCOME_CLASS = {"obtained": "match", "verified": "match", "mismatch": "differ", "not_found": "differ",
                 "no_grant": "differ", "unreachable": "differ", "not_shareable": "bring"}
HOW = {"verify": "核验", "query": "查询"}


def item_url(code: str, suffix: str = "") -> str:
    return f"/portal/items/{quote(code, safe='')}{suffix}"


async def _links(request: web.Request, item: dict[str, Any]) -> list[dict[str, Any]]:
    """Each material and, in words, what replaces it: a resource (its name, when this node holds its entry)
    with the operation and the items, or a licence type."""
    catalog = request.app[CATALOG]
    out = []
    for m in item.get("materials") or []:
        link = m.get("by_sharing")
        row: dict[str, Any] = {"m": m, "how": "需申请人提交", "what": "", "href": None, "labels": {},
                              "fields": []}
        if link and "licence_type" in link:
            row.update(how="电子证照查验", what=f"证照类型 {link['licence_type']}")
        elif link:
            try:
                entry = await catalog.get(link["resource"])
                names = {i["field"]: i["name"] for i in entry["items"]}
                row.update(what=entry["name"], href=resource_url(request, link["resource"]), labels=names)
            except NotFound:
                names = {}
                row["what"] = link["resource"]
            row["how"] = f"数据{HOW[link['op']]}"
            row["fields"] = [names.get(f, f) for f in link["fields"]]
        out.append(row)
    return out


@routes.get("/portal/items", name="portal.items", template="items.html", nav="政务服务事项", order=25)
async def items_page(request: web.Request, person: Person | None) -> dict[str, Any]:
    q = request.query.get("q", "").strip()[:200]
    kind = request.query.get("kind", "")
    kind = kind if kind in KINDS else None
    try:
        page = max(1, min(int(request.query.get("page", "1")), 100_000))
    except ValueError:
        page = 1
    total, items = await request.app[ITEMS].search(q=q or None, kind=kind, page=page, page_size=PAGE_SIZE)
    last = max(1, ceil(total / PAGE_SIZE))

    def link(n: int) -> str:
        return url(request, "portal.items") + "?" + urlencode({k: v for k, v in (("q", q), ("kind", kind or ""),
                                                                                  ("page", n)) if v})

    imported = request.query.get("imported", "")
    return {"q": q, "kind": kind or "", "kinds": KINDS, "imported": int(imported) if imported.isdigit() else None,
            "can_import": person is not None and person.account.role == "dept",
            "export_url": url(request, "portal.items.export") + ("?" + urlencode({"q": q}) if q else ""), "total": total, "items": items, "page": page, "last": last,
            "prev": link(page - 1) if page > 1 else None, "next": link(page + 1) if page < last else None,
            "type_names": TYPE_NAMES, "item_url": item_url, "node_name": node_namer(request)}


@routes.get(f"/portal/items/{ITEM}", name="portal.item", template="item.html")
async def item_page(request: web.Request, person: Person | None) -> dict[str, Any]:
    code = unquote(request.match_info["item"])
    items = request.app[ITEMS]
    item = await items.get(code)
    implementations: list[dict[str, Any]] = []
    if item["kind"] == "basic":
        _, implementations = await items.search(basic_code=code, kind="implemented", page_size=200)
    return {"item": item, "code": code, "type_names": TYPE_NAMES, "kinds": KINDS, "links": await _links(request, item),
            "implementations": implementations, "item_url": item_url, "node_name": node_namer(request),
            "can_gather": person is not None and person.account.role == "dept" and item["kind"] == "implemented"}


async def _gather_context(request: web.Request, code: str) -> dict[str, Any]:
    item = await request.app[ITEMS].get(code)
    if item["kind"] != "implemented":
        raise NotFound(f"{code} 是基本目录事项，一证通办须选择实施清单事项")
    links = await _links(request, item)
    # The values a clerk enters: every item that a verified material compares, named as its resource names it.
    asked: dict[str, str] = {}
    for row in links:
        link = row["m"].get("by_sharing") or {}
        if link.get("op") == "verify":
            for f in link["fields"]:
                asked.setdefault(f, row["labels"].get(f, f))
    return {"item": item, "code": code, "links": links, "asked": asked, "values": {}, "subject": "", "purpose": "",
            "result": None, "outcomes": OUTCOMES, "outcome_class": OUTCOME_CLASS, "item_url": item_url,
            "node_name": node_namer(request)}


@routes.get(f"/portal/items/{ITEM}/gather", name="portal.item.gather", template="item_gather.html", roles=("dept",))
async def gather_page(request: web.Request, person: Person | None) -> dict[str, Any]:
    return await _gather_context(request, unquote(request.match_info["item"]))


FIELD_OF = {"subject": "subject", "purpose": "purpose"}


@routes.post(f"/portal/items/{ITEM}/gather", name="portal.item.gather.post", template="item_gather.html",
             roles=("dept",))
async def gather(request: web.Request, person: Person | None) -> dict[str, Any]:
    assert person is not None
    code = unquote(request.match_info["item"])
    ctx = await _gather_context(request, code)
    form = request.get(FORM)
    if form is None:
        raise InvalidInput("表单格式不正确，请在页面上重新填写后提交")
    subject = str(form.get("subject", "")).strip()
    purpose = str(form.get("purpose", "")).strip()
    values = {f: str(form.get(f"v_{f}", "")).strip() for f in ctx["asked"]}
    ctx.update(subject=subject, purpose=purpose, values=values)
    show_on_error(request, "item_gather.html", **ctx)
    problems = []
    if not subject:
        problems.append({"field": "subject", "error": "未填写"})
    if not purpose:
        problems.append({"field": "purpose", "error": "未填写：一证通办须说明用途，记入各节点审计日志"})
    problems += [{"field": f"v_{f}", "error": "未填写"} for f, v in values.items() if not v]
    if problems:
        raise InvalidInput("请填写申请人的证件号码、用途和需核验的信息", problems)
    try:
        body = GatherBody.model_validate({"subject": {"code": subject}, "purpose": purpose, "values": values})
    except ValidationError as exc:
        fields = [{"field": "subject" if d["field"].startswith("subject") else d["field"].split(".")[0],
                   "error": "不是有效的公民身份号码或统一社会信用代码" if d["field"].startswith("subject") else d["error"]}
                  for d in validation_details(exc)]
        raise InvalidInput("请检查填写的内容", fields) from None
    note(request, resource=code, keys=[body.subject.code], purpose=purpose)
    result = await request.app[ITEMS].gather(person.account, code, body)
    note(request, outcomes={m["id"]: m["outcome"] for m in result["materials"]})
    ctx["result"] = result
    return ctx


@routes.get("/portal/items/export.xlsx", name="portal.items.export")
async def export_page(request: web.Request, person: Person | None) -> web.StreamResponse:
    """The items of this search as the XLSX the API exports (one row a material)."""
    q = request.query.get("q", "").strip()[:200] or None
    data = await sheet.export(request.app[ITEMS], q=q, node=None, dept=None)
    return web.Response(body=data, content_type=XLSX, headers={
        "Content-Disposition": 'attachment; filename="items.xlsx"'})


@routes.post("/portal/items/import", name="portal.items.upload", template="items.html", roles=("dept",),
             upload=True)
async def import_page(request: web.Request, person: Person | None) -> web.StreamResponse:
    """The department's implemented items from an XLSX sheet (the export's columns): all or none, a refusal
    naming each row."""
    assert person is not None
    reader = request.get(UPLOAD)
    if reader is None:
        raise InvalidInput("请选择要导入的 XLSX 文件", [{"field": "file", "error": "未选择文件"}])
    show_on_error(request, "items.html", **await items_page(request, person))
    try:
        data = await read_sheet(request, reader, SHEET_LIMIT)
        codes = await sheet.import_items(request.app[ITEMS], person.account, data, request.app[CONFIG].limits.xlsx)
    except ApiError as err:  # the same refusal, its rows listed under the form, its message in a clerk's words
        rows = [d for d in err.details if isinstance(d, dict)] if isinstance(err.details, list) else []
        if err.code == "INVALID_INPUT" and rows:
            message = f"文件中有 {len(rows)} 处问题，整个文件未导入；请按下表修改后重新导入"
        elif err.code == "INVALID_INPUT":
            message = f"无法读取该文件，整个文件未导入（{err.message}）"
        else:
            message = f"{ERROR_TITLES.get(err.code, '出错了')}，整个文件未导入（{err.message}）"
        raise ApiError(message, err.details, code=err.code) from None
    note(request, keys=codes)
    return redirect(url(request, "portal.items") + "?" + urlencode({"imported": len(codes)}))


@routes.get("/portal/items/stats", name="portal.items.stats", template="item_stats.html", nav="材料减免率", order=26)
async def stats_page(request: web.Request, person: Person | None) -> dict[str, Any]:
    stats = await request.app[ITEMS].stats()
    return {"stats": stats, "figures": await request.app[ITEMS].figures(), "item_url": item_url,
            "node_name": node_namer(request)}
