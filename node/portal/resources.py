"""我的资源: a department's own resources at this node with their record count and last update; registering,
changing and withdrawing one (an items editor that works without JavaScript), and uploading its records
as CSV or XLSX. Each action is the API's: the catalog service's create/update/withdraw with the person's
Account, and the upload path of the API's file endpoint (node.data.http.receive_upload), which stores a file
all or nothing and lists the rows it refused."""

from __future__ import annotations

import csv
import io
from typing import Any

from aiohttp import web
from multidict import MultiDictProxy

from node.accounts.people import Person
from node.catalog.http import CATALOG
from node.catalog.models import EntryCreate, EntryUpdate
from node.data.http import DATA, receive_upload
from node.errors import ApiError, Forbidden, InvalidInput, NotFound
from node.portal.applications import form_text, page_number, pager
from node.portal.home import CYCLES, SHARE_TYPES
from node.portal.pages import FORM, UPLOAD, PortalRoutes, redirect, show_on_error
from node.portal.wording import CATEGORIES, FORMATS, ITEM_TYPES, METHODS, parse_form, row_reason, upload_message
from node.web import CODE

routes = PortalRoutes()
PAGE_SIZE = 20
NEW_ROWS = 5    # empty item rows a new resource's editor starts with
SPARE_ROWS = 2  # empty rows under a resource's items when it is changed
MAX_ROWS = 500  # a resource has at most 500 items (node.catalog.models.EntryContent)
ROW_FIELDS = ("name", "field", "type", "length")

CHOICES = {"category": list(CATEGORIES.items()), "format": list(FORMATS.items()),
           "update_cycle": list(CYCLES.items()), "share_type": list(SHARE_TYPES.items()),
           "share_methods": list(METHODS.items()),
           "item_type": [(code, f"{code} {name}") for code, name in ITEM_TYPES.items()]}


def _blank_row() -> dict[str, Any]:
    return {"name": "", "field": "", "type": "C", "length": "", "key": False, "sensitive": False, "delete": False}


# The list ------------------------------------------------------------------------------------------------

@routes.get("/portal/resources", name="portal.resources", template="resources.html", roles=("dept",),
            nav="我的资源", order=50)
async def my_resources(request: web.Request, person: Person | None) -> dict[str, Any]:
    assert person is not None
    acct = person.account
    page = page_number(request)
    total, entries = await request.app[CATALOG].search(
        q=None, node=acct.node, category=None, share_type=None, provider=acct.dept, deleted=False,
        page=page, page_size=PAGE_SIZE)
    held = await request.app[DATA].summaries([e["code"] for e in entries])
    return {"entries": entries, "held": held, "total": total, "page": page, **pager(request, page, total, PAGE_SIZE),
            "share_types": SHARE_TYPES, "cycles": CYCLES, "done": request.query.get("done"),
            "done_name": request.query.get("name", "")[:200]}


# One of the department's resources -------------------------------------------------------------------------

async def _own(request: web.Request, person: Person) -> dict[str, Any]:
    """The resource of the route's code, if it is this department's at this node (the rule the data service
    applies to its records: the providing department, at the resource's own node)."""
    try:
        entry = await request.app[CATALOG].get(request.match_info["code"])
    except NotFound:
        raise NotFound("没有这个资源，或它已被撤销。") from None
    try:
        request.app[DATA].check_provider(person.account, entry)
    except Forbidden:
        raise Forbidden("这不是本部门在本节点登记的资源，只有提供部门可以修改、上传或撤销。") from None
    return entry


# The items editor --------------------------------------------------------------------------------------------

def _values_of(entry: dict[str, Any] | None) -> dict[str, Any]:
    """The editor's fields for an entry (or for a new one)."""
    if entry is None:
        return {"name": "", "classification": "", "category": "base", "format": "database", "update_cycle": "daily",
                "published_at": "", "summary": "", "share_type": "conditional", "share_condition": "",
                "share_basis": "", "share_methods": ["api"], "open_public": False, "open_condition": "",
                "related": ""}
    share, opened = entry["share"], entry.get("open") or {}
    return {"name": entry["name"], "classification": entry["code"].split("/")[0], "category": entry["category"],
            "format": entry["format"], "update_cycle": entry["update_cycle"], "published_at": entry["published_at"],
            "summary": entry.get("summary", ""), "share_type": share["type"],
            "share_condition": share.get("condition", ""), "share_basis": share.get("basis", ""),
            "share_methods": list(share.get("methods", [])), "open_public": bool(opened.get("public")),
            "open_condition": opened.get("condition", ""), "related": " ".join(entry.get("related", []))}


def _rows_of(entry: dict[str, Any]) -> list[dict[str, Any]]:
    rows = [{"name": i["name"], "field": i["field"], "type": i["type"],
             "length": "" if i.get("length") is None else str(i["length"]), "key": bool(i.get("key")),
             "sensitive": bool(i.get("sensitive")), "delete": False} for i in entry["items"]]
    return rows + [_blank_row() for _ in range(SPARE_ROWS)]


def _form_values(form: MultiDictProxy[Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    values = {name: form_text(form, name) for name in (
        "name", "classification", "category", "format", "update_cycle", "published_at", "summary", "share_type",
        "share_condition", "share_basis", "open_condition", "related")}
    values["share_methods"] = [v for v in form.getall("share_methods", []) if isinstance(v, str)]
    values["open_public"] = "open_public" in form
    count = form_text(form, "rows")
    n = min(int(count), MAX_ROWS) if count.isdigit() else 0
    key = form_text(form, "key")
    rows = []
    for i in range(n):
        row: dict[str, Any] = {k: form_text(form, f"items-{i}-{k}") for k in ROW_FIELDS}
        row["type"] = row["type"] or "C"
        row.update(key=key == str(i), sensitive=f"items-{i}-sensitive" in form, delete=f"items-{i}-delete" in form)
        rows.append(row)
    return values, rows


def _blank(row: dict[str, Any]) -> bool:
    return not (row["name"] or row["field"] or row["length"])


def _body(values: dict[str, Any], rows: list[dict[str, Any]], current: dict[str, Any] | None,
          ) -> tuple[dict[str, Any], list[int]]:
    """The catalog body the editor describes, and for each of its items the editor row it came from. What the
    editor does not show (an item's `required` and `check`, the resource's controlled operations) is kept."""
    kept = {i["field"]: i for i in current["items"]} if current else {}
    items, origin = [], []
    for i, row in enumerate(rows):
        if row["delete"] or (_blank(row) and not row["key"]):
            continue
        item: dict[str, Any] = {"name": row["name"], "field": row["field"], "type": row["type"],
                                "length": row["length"] or None, "key": row["key"], "sensitive": row["sensitive"]}
        before = kept.get(row["field"], {})
        item.update({k: before[k] for k in ("required", "check") if k in before})
        items.append(item)
        origin.append(i)
    body: dict[str, Any] = {
        "name": values["name"], "category": values["category"], "summary": values["summary"],
        "format": values["format"], "items": items, "update_cycle": values["update_cycle"],
        "published_at": values["published_at"] or None,
        "share": {"type": values["share_type"], "condition": values["share_condition"],
                  "basis": values["share_basis"], "methods": values["share_methods"]},
        "open": {"public": values["open_public"], "condition": values["open_condition"]},
        "related": values["related"].replace(",", " ").replace("，", " ").split(),
    }
    if current is None:
        body["classification"] = values["classification"] or None
    elif current.get("controlled_ops"):
        body["controlled_ops"] = current["controlled_ops"]
    return body, origin


def _controls(origin: list[int]) -> Any:
    """Which editor control a place in the catalog body is (so a refusal marks it)."""
    share = {"type": "share_type", "condition": "share_condition", "basis": "share_basis", "methods": "share_methods"}

    def control(loc: tuple[Any, ...], message: str) -> str:
        head = str(loc[0]) if loc else "classification"
        if head == "items":
            if len(loc) >= 3 and isinstance(loc[1], int) and loc[1] < len(origin) and loc[2] in ROW_FIELDS:
                return f"items-{origin[loc[1]]}-{loc[2]}"
            return "items"
        if head == "share":
            if len(loc) > 1:
                return share.get(str(loc[1]), "share_type")
            return "share_condition" if "条件" in message else "share_basis" if "依据" in message else "share_type"
        if head == "open":
            return "open_condition"
        return head

    return control


def _editor(entry: dict[str, Any] | None, values: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {"entry": entry, "values": values, "rows": rows, "choices": CHOICES, "max_rows": MAX_ROWS}


async def _save(request: web.Request, person: Person, current: dict[str, Any] | None) -> dict[str, Any] | web.Response:
    form = request[FORM]
    values, rows = _form_values(form)
    if "more" in form:  # 再加一行: the same form again, rows marked 删除 gone and one empty row more
        rows = [r for r in rows if not r["delete"]]
        rows = (rows + [_blank_row()])[:MAX_ROWS]
        return _editor(current, values, rows)
    show_on_error(request, "resource_edit.html", **_editor(current, values, rows))
    body, origin = _body(values, rows, current)
    if not body["items"]:
        raise InvalidInput("请至少填写一个数据项。", [{"field": "items", "error": "请至少填写一个数据项"}])
    catalog = request.app[CATALOG]
    if current is None:
        entry = await catalog.create(person.account, parse_form(EntryCreate, body, _controls(origin)))
        done = "created"
    else:
        entry = await catalog.update(person.account, current["code"], parse_form(EntryUpdate, body, _controls(origin)))
        done = "changed"
    return redirect(request.app.router["portal.resource.records"].url_for(code=entry["code"]).with_query(done=done))


@routes.get("/portal/resources/new", name="portal.resource.new", template="resource_edit.html", roles=("dept",))
async def new_resource(request: web.Request, person: Person | None) -> dict[str, Any]:
    rows = [_blank_row() for _ in range(NEW_ROWS)]
    rows[0]["key"] = True  # the identifier usually comes first
    return _editor(None, _values_of(None), rows)


@routes.post("/portal/resources/new", name="portal.resource.create", template="resource_edit.html", roles=("dept",))
async def create_resource(request: web.Request, person: Person | None) -> dict[str, Any] | web.Response:
    assert person is not None
    return await _save(request, person, None)


@routes.get(f"/portal/resources/{CODE}/edit", name="portal.resource.edit", template="resource_edit.html",
            roles=("dept",))
async def edit_resource(request: web.Request, person: Person | None) -> dict[str, Any]:
    assert person is not None
    entry = await _own(request, person)
    return _editor(entry, _values_of(entry), _rows_of(entry))


@routes.post(f"/portal/resources/{CODE}/edit", name="portal.resource.update", template="resource_edit.html",
             roles=("dept",))
async def update_resource(request: web.Request, person: Person | None) -> dict[str, Any] | web.Response:
    assert person is not None
    return await _save(request, person, await _own(request, person))


# Records -----------------------------------------------------------------------------------------------------

async def _records_context(request: web.Request, entry: dict[str, Any]) -> dict[str, Any]:
    held = (await request.app[DATA].summaries([entry["code"]]))[entry["code"]]
    labels = {i["field"]: i["name"] for i in entry["items"]}
    return {"entry": entry, "held": held, "item_types": ITEM_TYPES, "refused": [],
            "label": lambda field: labels.get(field, field) if field else "—", "reason": row_reason,
            "done": request.query.get("done"),
            "result": {k: request.query.get(k, "") for k in ("received", "upserted", "deleted")}}


@routes.get(f"/portal/resources/{CODE}/records", name="portal.resource.records", template="resource_records.html",
            roles=("dept",))
async def records(request: web.Request, person: Person | None) -> dict[str, Any]:
    assert person is not None
    return await _records_context(request, await _own(request, person))


@routes.post(f"/portal/resources/{CODE}/records", name="portal.resource.upload", roles=("dept",), upload=True)
async def upload(request: web.Request, person: Person | None) -> web.StreamResponse:
    assert person is not None
    entry = await _own(request, person)
    context = {**await _records_context(request, entry), "done": None}
    try:
        reader = request.get(UPLOAD)
        if reader is None:  # a form sent without its file (urlencoded) cannot carry one
            raise InvalidInput("请选择要上传的文件。", [{"field": "file", "error": "未选择文件"}])
        result = await receive_upload(request, reader)
    except ApiError as exc:
        # The same refusal (its status, its rows) in words a clerk reads, the rows in a table under the form.
        refused = [d for d in exc.details if isinstance(d, dict)] if isinstance(exc.details, list) else []
        show_on_error(request, "resource_records.html", **{**context, "refused": refused})
        raise ApiError(upload_message(exc.message), exc.details, code=exc.code) from None
    query = {"done": "uploaded", **{k: str(result[k]) for k in ("received", "upserted", "deleted")}}
    return redirect(request.app.router["portal.resource.records"].url_for(code=entry["code"]).with_query(query))


@routes.get(f"/portal/resources/{CODE}/template.csv", name="portal.resource.template", roles=("dept",))
async def template_csv(request: web.Request, person: Person | None) -> web.StreamResponse:
    """An empty CSV whose header names the items: the file a department fills in. With a byte-order mark, so
    that Excel and WPS open it as UTF-8."""
    assert person is not None
    entry = await _own(request, person)
    out = io.StringIO()
    csv.writer(out).writerow([i["name"] for i in entry["items"]])
    name = entry["code"].replace("/", "-") + ".csv"
    return web.Response(body=("\ufeff" + out.getvalue()).encode("utf-8"), content_type="text/csv", charset="utf-8",
                        headers={"Content-Disposition": f'attachment; filename="{name}"'})


# Withdrawing -----------------------------------------------------------------------------------------------

@routes.get(f"/portal/resources/{CODE}/withdraw", name="portal.resource.withdraw", template="resource_withdraw.html",
            roles=("dept",))
async def withdraw_page(request: web.Request, person: Person | None) -> dict[str, Any]:
    assert person is not None
    entry = await _own(request, person)
    held = (await request.app[DATA].summaries([entry["code"]]))[entry["code"]]
    return {"entry": entry, "held": held}


@routes.post(f"/portal/resources/{CODE}/withdraw", name="portal.resource.withdraw.post", roles=("dept",))
async def withdraw(request: web.Request, person: Person | None) -> web.StreamResponse:
    assert person is not None
    entry = await _own(request, person)
    await request.app[CATALOG].withdraw(person.account, entry["code"])
    return redirect(request.app.router["portal.resources"].url_for().with_query(done="withdrawn", name=entry["name"]))
