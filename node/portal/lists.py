"""Portal pages of the joint reward and punishment lists (联合奖惩, SPEC §17): 信用核查 (one subject, or a file of
them with the result to download), and for an issuing department its lists, their entries and the 双反馈 view.
Thin: each calls the ListService method the API handler calls, with the person's account."""

from __future__ import annotations

import tempfile
from datetime import datetime
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from node.accounts.people import CST, Person
from node.audit.http import note
from node.context import CONFIG
from node.errors import InvalidInput
from node.lists import tables
from node.lists.http import LISTS
from node.lists.models import CheckBody, CheckSubject, EntryIn, ListCreate
from node.portal.data import _csv_bytes, _download, _read_form, _xlsx_bytes
from node.portal.pages import FORM, PortalRoutes, redirect, show_on_error, url
from node.web import validation_details

routes = PortalRoutes()
KINDS = {"black": "黑名单（惩戒）", "red": "红名单（激励）"}
CODE_TYPES = (("", "自动识别"), ("001", "统一社会信用代码"), ("111", "公民身份号码"))
FORMATS = (("csv", "CSV（逗号分隔，UTF-8）"), ("xlsx", "XLSX（Excel 工作簿）"))


def _fields(err: ValidationError, names: dict[str, str]) -> InvalidInput:
    details = [{"field": names.get(d["field"].split(".")[-1], d["field"]), "error": d["error"]}
               for d in validation_details(err)]
    return InvalidInput("填写的内容有误：" + "；".join(d["error"] for d in details[:3]), details)


def _check_context(**kw: Any) -> dict[str, Any]:
    return {"code": "", "code_type": "", "purpose": "", "format": "csv", "result": None, "kinds": KINDS,
            "code_types": CODE_TYPES, "formats": FORMATS, **kw}


@routes.get("/portal/lists", name="portal.lists", template="lists_check.html", nav="信用核查", order=45)
async def check_page(request: web.Request, person: Person | None) -> dict[str, Any]:
    return _check_context()


@routes.post("/portal/lists/check", name="portal.lists.check", template="lists_check.html")
async def check_one(request: web.Request, person: Person | None) -> dict[str, Any]:
    assert person is not None
    form = request[FORM]
    ctx = _check_context(code=form.get("code", "").strip()[:18], code_type=form.get("code_type", ""),
                         purpose=form.get("purpose", "").strip()[:200])
    show_on_error(request, "lists_check.html", **ctx)
    try:
        body = CheckBody(subjects=[CheckSubject(code=ctx["code"], code_type=ctx["code_type"] or None)],
                         purpose=ctx["purpose"])
    except ValidationError as err:
        raise _fields(err, {"subjects": "code", "purpose": "purpose"}) from None
    try:
        answer = await request.app[LISTS].check(person.account, body)
    except InvalidInput as err:
        raise InvalidInput("主体代码有误：不是有效的统一社会信用代码或公民身份号码（校验位不符）",
                           [{"field": "code", "error": "校验位不符"}]) from err
    note(request, subjects=1, hit_subjects=answer["hit_subjects"], purpose=body.purpose)
    return {**ctx, "result": answer["results"][0], "checked_on": answer["checked_on"]}


@routes.post("/portal/lists/check/file", name="portal.lists.check.file", template="lists_check.html", upload=True)
async def check_file(request: web.Request, person: Person | None) -> web.StreamResponse:
    assert person is not None
    ctx = _check_context()
    show_on_error(request, "lists_check.html", **ctx)
    limits = request.app[CONFIG].limits
    with tempfile.TemporaryFile() as spool:
        fields, kind, charset = await _read_form(request, spool, limits.max_upload_bytes)
        ctx.update(purpose=str(fields.get("file_purpose", "")).strip()[:200],
                   format="xlsx" if fields.get("format") == "xlsx" else "csv")
        show_on_error(request, "lists_check.html", **ctx)
        if kind is None:
            raise InvalidInput("请选择要核查的文件（CSV 或 XLSX）", [{"field": "file", "error": "未选择文件"}])
        rows = await tables.read_table(spool.read(), kind, charset, limits)
    subjects = tables.subjects_from(rows)
    try:
        body = CheckBody(subjects=subjects, purpose=ctx["purpose"])
    except ValidationError as err:
        raise _fields(err, {"purpose": "file_purpose", "subjects": "file"}) from None
    try:
        answer = await request.app[LISTS].check(person.account, body)
    except InvalidInput as err:
        bad = [f"第 {int(d['row']) + 2} 行" for d in (err.details or []) if isinstance(d, dict) and "row" in d]
        raise InvalidInput(f"文件中有 {len(bad)} 个主体代码无效（{'、'.join(bad[:10])}），本次未核查。",
                           [{"field": "file", "error": "主体代码无效"}]) from err
    note(request, subjects=answer["checked"], hit_subjects=answer["hit_subjects"], purpose=body.purpose)
    out = [["主体代码", "代码类型", "核查结果", "名单", "名单类别", "奖惩措施", "列入事由", "有效期截止", "发布单位"]]
    for r in answer["results"]:
        kind_name = "统一社会信用代码" if r["code_type"] == "001" else "公民身份号码"
        if not r["hits"]:
            out.append([r["code"], kind_name, "未列入名单", "", "", "", "", "", ""])
        for h in r["hits"]:
            out.append([r["code"], kind_name, "列入名单", h["list"]["name"], KINDS[h["list"]["kind"]],
                        "；".join(h["measures"]), h["reason"], h["valid_until"] or "长期",
                        f"{h['issuer']['name']}（{h['issuer']['node']}）"])
    payload = await (_xlsx_bytes(out) if ctx["format"] == "xlsx" else _async_csv(out))
    resp = _download(payload, f"信用核查结果-{datetime.now(CST):%Y%m%d%H%M}", ctx["format"])
    resp.headers.update({"X-Check-Total": str(answer["checked"]), "X-Check-Hits": str(answer["hit_subjects"])})
    return resp


async def _async_csv(rows: list[list[Any]]) -> bytes:
    return _csv_bytes(rows)


# The issuer's lists ----------------------------------------------------------------------------------------

async def _mine(request: web.Request, person: Person, **kw: Any) -> dict[str, Any]:
    svc = request.app[LISTS]
    lists = await svc.own_lists(person.account)
    entries = {s["list"]["code"]: await svc.entries(s["list"]["code"], include_deleted=False, page=1, page_size=50)
               for s in lists}
    return {"lists": lists, "entries": entries, "hits": await svc.hits(person.account), "kinds": KINDS,
            "code_types": CODE_TYPES, "form": {},
            "lists_options": [(s["list"]["code"], f"{s['list']['name']}（{s['list']['code']}）") for s in lists], **kw}


@routes.get("/portal/lists/mine", name="portal.lists.mine", template="lists_mine.html", roles=("dept",),
            nav="名单管理", order=46)
async def mine(request: web.Request, person: Person | None) -> dict[str, Any]:
    assert person is not None
    return await _mine(request, person)


@routes.post("/portal/lists/mine", name="portal.lists.create", template="lists_mine.html", roles=("dept",))
async def create(request: web.Request, person: Person | None) -> web.StreamResponse:
    assert person is not None
    form = request[FORM]
    show_on_error(request, "lists_mine.html", **await _mine(request, person, form=dict(form)))
    measures = [m.strip() for m in form.get("measures", "").replace(";", "；").replace("\n", "；").split("；")
                if m.strip()]
    try:
        body = ListCreate(name=form.get("name", "").strip(), kind=form.get("kind", "black"),
                          public=form.get("public") == "1", measures=measures, basis=form.get("basis", "").strip())
    except ValidationError as err:
        raise _fields(err, {}) from None
    doc = await request.app[LISTS].create_list(person.account, body)
    note(request, keys=[doc["code"]])
    return redirect(url(request, "portal.lists.mine") + f"#list-{doc['code']}")


@routes.post("/portal/lists/mine/entries", name="portal.lists.add", template="lists_mine.html", roles=("dept",))
async def add(request: web.Request, person: Person | None) -> web.StreamResponse:
    assert person is not None
    form = request[FORM]
    code = form.get("list", "")
    show_on_error(request, "lists_mine.html", **await _mine(request, person, form=dict(form)))
    try:
        entry = EntryIn.model_validate({
            "subject": {"code": form.get("code", "").strip(), "code_type": form.get("code_type") or None,
                        "name": form.get("subject_name", "").strip() or None},
            "reason": form.get("reason", "").strip(), "basis": form.get("entry_basis", "").strip(),
            "valid_until": form.get("valid_until", "").strip() or None})
    except ValidationError as err:
        raise _fields(err, {"subject": "code", "code": "code", "name": "subject_name", "basis": "entry_basis"}) from None
    result = await request.app[LISTS].add_entries(person.account, code, [entry])
    note(request, keys=[code], added=result["added"], changed=result["changed"])
    return redirect(url(request, "portal.lists.mine") + f"#list-{code}")


@routes.post("/portal/lists/mine/{list:[0-9]{6}-[0-9]{4}}/entries/{entry:[0-9A-Z]{26}}/remove",
             name="portal.lists.remove", template="lists_mine.html", roles=("dept",))
async def remove(request: web.Request, person: Person | None) -> web.StreamResponse:
    assert person is not None
    code, entry = request.match_info["list"], request.match_info["entry"]
    form = request[FORM]
    show_on_error(request, "lists_mine.html", **await _mine(request, person))
    reason = form.get("reason", "").strip()
    if not reason:
        raise InvalidInput("请填写移出名单的原因（如：已完成信用修复）", [{"field": f"reason-{entry}", "error": "必填"}])
    await request.app[LISTS].remove_entry(person.account, code, entry, reason[:2000])
    note(request, keys=[code, entry])
    return redirect(url(request, "portal.lists.mine") + f"#list-{code}")
