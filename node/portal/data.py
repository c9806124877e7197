"""Using a resource in the portal: 核验 (does the record with this key hold these values?), 查询 by key
(sensitive items masked unless granted) and 批量比对 (a CSV or XLSX file in, the same rows with the result
columns added back as a file to download).

Each page hands its call to `SharingService.call`, as the API's handlers do, with the person as requester
(`requester.user`) and the purpose they give (`requester.purpose`): the sharing rules, the routing to the
provider's node and every audit record are those of the API. A refusal shows the form again with its
message in Chinese."""

from __future__ import annotations

import asyncio
import csv
import io
import re
import tempfile
from collections.abc import AsyncIterator, Iterator
from datetime import date, datetime, time
from decimal import Decimal
from typing import IO, Any
from urllib.parse import quote

from aiohttp import BodyPartReader, web

from node.accounts.people import CST, Person
from node.audit.http import note
from node.context import CONFIG
from node.data.formats import Malformed, Rows, csv_rows
from node.data.rows import RecordSchema
from node.data.xlsx import release_memory, xlsx_rows
from node.errors import ApiError, InvalidInput, TooLarge
from node.portal.catalog import node_namer, resource_context
from node.portal.pages import ERROR_TITLES, FORM, UPLOAD, PortalRoutes, show_on_error
from node.sharing.http import SHARING, requester_of
from node.sharing.models import CompareParams, QueryParams, VerifyParams
from node.sharing.service import needs_purpose
from node.web import CODE

routes = PortalRoutes()
BASE = f"/portal/catalog/{CODE}"

READ_CHUNK = 256 * 1024
XLSX_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
# A form field beside the file (the purpose, the result's format) is short; the purpose at most 2000 characters.
MAX_FIELD_BYTES = 8 * 1024
PURPOSE_HINT = "说明本次使用数据的事由，如“最低生活保障资格复核”。将记入本节点和数据提供方节点的审计日志。"

# What a value of each item type looks like, for the hints beside the inputs and the refusals.
TYPE_HINTS = {"D": "日期，如 2024-01-31", "T": "日期时间，如 2024-01-31 08:30:00", "L": "是 或 否",
              "N": "数字", "Y": "金额（数字）", "F": "数字", "I": "整数", "G": "Base64 编码", "B": "Base64 编码"}
RESULTS = {"match": "一致", "differ": "不一致", "missing": "未查得"}


# Shared pieces -----------------------------------------------------------------------------------------

async def _context(request: web.Request, person: Person | None, op: str) -> dict[str, Any]:
    assert person is not None
    ctx = await resource_context(request, person)
    entry = ctx["entry"]
    schema = request.app[SHARING].data.schema(entry)
    access = ctx["access"]["ops"][op]
    key = schema.key
    # The items a call may name: every item when the operation is open, the grant's when it is granted.
    allowed = [r for r in schema.rules if not r.key and (access["state"] == "open" or r.field in access["fields"])]
    ctx.update({
        "op": op, "schema": schema, "key_rule": key, "key_hint": _hint(key), "allowed": allowed,
        "op_access": access, "asks_purpose": not ctx["own"], "purpose_hint": PURPOSE_HINT,
        "purpose_required": needs_purpose(entry, op, requester_of(person.account)),
        "hint": _hint, "values": {}, "result": None, "purpose": "", "key": "",
        "usable": access["state"] in ("open", "granted"),
        "format": "csv", "problems": [], "ignored": [], "max_rows": request.app[CONFIG].limits.compare_max_keys,
    })
    return ctx


def _hint(rule: Any) -> str | None:
    if rule.check == "gb11643":
        return "18 位，末位可能为 X"
    if rule.check == "gb32100":
        return "18 位统一社会信用代码"
    hint = TYPE_HINTS.get(rule.type)
    if rule.type in ("C", "M") and rule.length:
        hint = f"不超过 {rule.length} 个字符"
    return hint


def _reason(reason: str, rule: Any | None) -> str:
    """A refusal of one value in the clerk's words: what is wrong, and what the value should look like."""
    if m := re.match(r"longer than (\d+) (characters|bytes)", reason):
        return f"超过 {m[1]} 个字符"
    if "key is required" in reason or "must not be empty" in reason or reason in ("empty", "required"):
        return "未填写"
    if "not a real date" in reason:
        return "不是有效的日期"
    if "not granted" in reason:
        return "不在授权范围内"
    if "not an item" in reason:
        return "不是该资源的信息项"
    hint = _hint(rule) if rule is not None else None
    return f"格式不正确，应为{hint}" if hint else "格式不正确"


def _in_chinese(err: ApiError, schema: RecordSchema, field_of: dict[str, str]) -> ApiError:
    """The sharing service's refusal as the form shows it: a Chinese message, and each field it names under
    the name of the form's control (`field_of`: the item's field, or key or purpose → the control)."""
    details = err.details if isinstance(err.details, list) else []
    fields: list[dict[str, str]] = []
    names: list[str] = []
    for d in details:
        if not isinstance(d, dict) or "field" not in d:
            continue
        item = str(d["field"]).split(".", 1)[-1]  # "fields.name" (a value refused) or "name" (not granted)
        rule = schema.by_field.get(item)
        control = field_of.get(item)
        if control is None:
            continue
        text = _reason(str(d.get("error", "")), rule)
        fields.append({"field": control, "error": text})
        names.append(rule.name if rule is not None else ("用途" if control == "purpose" else control))
    if err.code == "INVALID_INPUT" and fields:
        if [f["field"] for f in fields] == ["purpose"]:
            message = "请填写用途：查询或比对其他部门的数据须说明用途"
        else:
            message = f"请检查填写的内容：{'、'.join(dict.fromkeys(names))}"
    elif err.code == "FIELD_NOT_GRANTED":
        message = f"以下数据项不在本部门的授权范围内：{'、'.join(dict.fromkeys(names)) or '（未列出）'}"
    elif err.code == "GRANT_REQUIRED":
        message = "使用该资源须先申请授权（授权已到期、已撤销或尚未申请）"
    elif err.code == "SHARE_FORBIDDEN":
        message = "该资源不予共享"
    else:
        message = f"{ERROR_TITLES.get(err.code, '出错了')}：{err.message}"
    return ApiError(message, fields or err.details, code=err.code)


def _form(request: web.Request) -> Any:
    """The form of a POST (urlencoded or multipart alike: node.portal.pages reads either whole)."""
    form = request.get(FORM)
    if form is None:
        raise InvalidInput("表单格式不正确，请在页面上重新填写后提交")
    return form


def _purpose(value: Any) -> str:
    purpose = str(value or "").strip()
    if len(purpose) > 2000:
        raise InvalidInput("用途不能超过 2000 个字符", [{"field": "purpose", "error": "不能超过 2000 个字符"}])
    return purpose


async def _call(request: web.Request, person: Person, ctx: dict[str, Any], params: Any, purpose: str,
                field_of: dict[str, str]) -> dict[str, Any]:
    """The call as the API makes it, audited here with its keys and the purpose (SPEC §15)."""
    sharing = request.app[SHARING]
    code = ctx["code"]
    note(request, resource=code, keys=await sharing.requested_keys(ctx["op"], code, params),
         **({"purpose": purpose} if purpose else {}))
    try:
        return await sharing.call(ctx["op"], code, params, requester_of(person.account, purpose))
    except ApiError as err:
        if err.status >= 500:
            raise
        raise _in_chinese(err, ctx["schema"], field_of) from None


def _display(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "是" if value else "否"
    return str(value)


# 核验 ------------------------------------------------------------------------------------------------

@routes.get(f"{BASE}/verify", name="portal.verify", template="verify.html")
async def verify_page(request: web.Request, person: Person | None) -> dict[str, Any]:
    return await _context(request, person, "verify")


@routes.post(f"{BASE}/verify", name="portal.verify.post", template="verify.html")
async def verify(request: web.Request, person: Person | None) -> dict[str, Any]:
    assert person is not None
    ctx = await _context(request, person, "verify")
    form = _form(request)
    key = str(form.get("key", "")).strip()
    values = {r.field: str(form.get(f"v_{r.field}", "")).strip() for r in ctx["allowed"]}
    purpose = _purpose(form.get("purpose"))
    ctx.update(values=values, key=key, purpose=purpose)
    show_on_error(request, "verify.html", **ctx)
    checked = {f: v for f, v in values.items() if v}
    if not key:
        raise InvalidInput(f"请填写{ctx['key_rule'].name}", [{"field": "key", "error": "未填写"}])
    if not checked:
        raise InvalidInput("请至少填写一项要核验的内容")
    field_of = {"key": "key", "purpose": "purpose", **{f: f"v_{f}" for f in values}}
    answer = await _call(request, person, ctx, VerifyParams(key=key, fields=checked), purpose, field_of)
    flags = answer["fields"]  # in the item order (an answer from another node comes with its keys sorted)
    ctx["result"] = {"match": answer["match"],
                     "rows": [{"name": r.name, "value": checked[r.field], "match": flags[r.field]}
                              for r in ctx["schema"].rules if r.field in flags]}
    return ctx


# 查询 ------------------------------------------------------------------------------------------------

@routes.get(f"{BASE}/query", name="portal.query", template="query.html")
async def query_page(request: web.Request, person: Person | None) -> dict[str, Any]:
    return await _context(request, person, "query")


@routes.post(f"{BASE}/query", name="portal.query.post", template="query.html")
async def query(request: web.Request, person: Person | None) -> dict[str, Any]:
    assert person is not None
    ctx = await _context(request, person, "query")
    form = _form(request)
    key = str(form.get("key", "")).strip()
    purpose = _purpose(form.get("purpose"))
    ctx.update(key=key, purpose=purpose)
    show_on_error(request, "query.html", **ctx)
    if not key:
        raise InvalidInput(f"请填写{ctx['key_rule'].name}", [{"field": "key", "error": "未填写"}])
    answer = await _call(request, person, ctx, QueryParams(key=key), purpose, {"key": "key", "purpose": "purpose"})
    rules = ctx["schema"].by_field
    masked = set(answer["masked"])
    order = ctx["schema"].fields  # an answer from another node comes with its keys sorted
    records = [[{"name": rules[f].name, "value": _display(rec[f]), "masked": f in masked} for f in order if f in rec]
               for rec in answer["records"]]
    ctx["result"] = {"records": records, "masked": [rules[f].name if f in rules else f for f in answer["masked"]],
                     "via": [node_namer(request)(n) for n in answer.get("via") or []]}
    return ctx


# 批量比对 ----------------------------------------------------------------------------------------------

@routes.get(f"{BASE}/compare", name="portal.compare", template="compare.html")
async def compare_page(request: web.Request, person: Person | None) -> dict[str, Any]:
    return await _context(request, person, "compare")


@routes.get(f"{BASE}/compare/template.csv", name="portal.compare.template")
async def compare_template(request: web.Request, person: Person | None) -> web.StreamResponse:
    """A file to fill in: the key's column and those of the items the department may compare."""
    ctx = await _context(request, person, "compare")
    header = [ctx["key_rule"].name] + [r.name for r in ctx["allowed"]]
    return _download(_csv_bytes([header]), f"比对模板-{ctx['entry']['name']}", "csv")


@routes.post(f"{BASE}/compare", name="portal.compare.post", template="compare.html", upload=True)
async def compare(request: web.Request, person: Person | None) -> web.StreamResponse:
    assert person is not None
    ctx = await _context(request, person, "compare")
    show_on_error(request, "compare.html", **ctx)
    limits = request.app[CONFIG].limits
    with tempfile.TemporaryFile() as spool:
        fields, kind, charset = await _read_form(request, spool, limits.max_upload_bytes)
        ctx.update(purpose=str(fields.get("purpose", "")).strip()[:2000],
                   format="xlsx" if fields.get("format") == "xlsx" else "csv")
        show_on_error(request, "compare.html", **ctx)  # the form again as sent (the file must be chosen again)
        purpose = _purpose(fields.get("purpose"))
        if kind is None:
            raise InvalidInput("请选择要比对的文件（CSV 或 XLSX）", [{"field": "file", "error": "未选择文件"}])
        rows = await _read_rows(spool, kind, charset, limits, limits.compare_max_keys)
    table = _Table(ctx, rows)
    ctx["ignored"] = table.ignored
    show_on_error(request, "compare.html", **ctx)
    field_of = {"purpose": "purpose"}
    try:
        answer = await _call(request, person, ctx, table.params(), purpose, field_of)
    except ApiError as err:
        ctx["problems"] = table.problems(err)
        if ctx["problems"]:
            show_on_error(request, "compare.html", **ctx)
            raise ApiError(f"文件中有 {len(ctx['problems'])} 处内容无法比对（见下表），本次未进行比对。请修改后重新上传。",
                           code=err.code) from None
        raise
    out_format = ctx["format"]
    body = await (_xlsx_bytes(table.result_rows(answer)) if out_format == "xlsx"
                  else asyncio.to_thread(_csv_bytes, table.result_rows(answer)))
    name = f"比对结果-{ctx['entry']['name']}-{datetime.now(CST):%Y%m%d%H%M}"
    resp = _download(body, name, out_format)
    resp.headers.update({"X-Compare-Total": str(answer["total"]), "X-Compare-Found": str(answer["found"]),
                         "X-Compare-Matched": str(answer["matched"])})
    return resp


async def _read_form(request: web.Request, spool: IO[bytes], limit: int) -> tuple[dict[str, str], str | None, str | None]:
    """The multipart form after its CSRF field: its short fields, and the file spooled to `spool` (its kind,
    csv or xlsx, and the charset it names)."""
    reader = request.get(UPLOAD)
    if reader is None:  # a urlencoded form: it cannot carry the file
        raise InvalidInput("请选择要比对的文件（CSV 或 XLSX）", [{"field": "file", "error": "未选择文件"}])
    fields: dict[str, str] = {}
    kind = charset = None
    try:
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                raise InvalidInput("表单格式不正确")
            if part.filename is None:
                raw = b""
                while chunk := await part.read_chunk(4096):
                    raw += chunk
                    if len(raw) > MAX_FIELD_BYTES:
                        raise InvalidInput("填写的内容过长")
                fields[part.name or ""] = raw.decode("utf-8", "replace")
                continue
            if not part.filename:  # the file control left empty
                while await part.read_chunk(READ_CHUNK):
                    pass
                continue
            if kind is not None:
                raise InvalidInput("每次只能上传一个文件")
            name = part.filename.lower()
            ctype = part.headers.get("Content-Type", "").split(";")[0].strip().lower()
            if name.endswith(".xlsx") or ctype == XLSX_TYPE:
                kind = "xlsx"
            elif name.endswith(".csv") or ctype in ("text/csv", "application/csv"):
                kind = "csv"
            else:
                raise InvalidInput("只能上传 CSV 或 XLSX 文件", [{"field": "file", "error": "文件类型不支持"}])
            charset = part.get_charset(None)
            size = 0
            while chunk := await part.read_chunk(READ_CHUNK):
                size += len(chunk)
                if size > limit:
                    raise TooLarge(f"文件超过 {limit // 1024 // 1024} MB 的上限（limits.max_upload_bytes）")
                spool.write(chunk)
            if size == 0:
                raise InvalidInput("上传的文件是空的", [{"field": "file", "error": "文件是空的"}])
    except ValueError:  # a malformed multipart stream
        raise InvalidInput("表单格式不正确，请重新提交") from None
    spool.seek(0)
    return fields, kind, charset


async def _read_rows(spool: IO[bytes], kind: str, charset: str | None, limits: Any, max_rows: int) -> Rows:
    """The file's rows (the header first) with their spreadsheet row numbers, read as the data uploads read
    them (node.data.formats, node.data.xlsx); more than `max_rows` rows is refused."""
    rows: Rows = []

    def take(chunk: Rows) -> None:
        for row, cells in chunk:
            if isinstance(cells, Malformed):
                raise InvalidInput(f"文件第 {row} 行无法读取（{cells.reason}）")
            rows.append((row, cells))
        if len(rows) > max_rows + 1:
            raise InvalidInput(f"一次最多比对 {max_rows} 行（limits.compare_max_keys），请分成几个文件")

    if kind == "csv":
        async def chunks() -> AsyncIterator[bytes]:
            while chunk := spool.read(READ_CHUNK):
                yield chunk

        async for chunk in csv_rows(chunks(), charset, limits.max_json_bytes):
            take(chunk)
    else:
        def work() -> None:
            it: Iterator[Rows] = xlsx_rows(spool, limits.xlsx)
            try:
                for chunk in it:
                    take(chunk)
            finally:
                it.close()
                release_memory()

        await asyncio.to_thread(work)
    if not rows:
        raise InvalidInput("文件是空的：第一行须为表头（信息项名称）", [{"field": "file", "error": "文件是空的"}])
    return rows


def _json_safe(value: Any) -> Any:
    """A spreadsheet cell as a value a call can carry (and a signed envelope, which has no floats)."""
    if isinstance(value, datetime):
        return value.date().isoformat() if value.time() == time(0) else value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, float):
        return int(value) if value.is_integer() else repr(value)
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, time):
        return value.isoformat()
    return value


class _Table:
    """An uploaded table: its header mapped to the resource's items (by item name or field), its rows as the
    records of one comparison, and the rows written back with the results."""

    def __init__(self, ctx: dict[str, Any], rows: Rows) -> None:
        schema: RecordSchema = ctx["schema"]
        allowed = {r.field for r in ctx["allowed"]}
        (self.header_row, header), self.rows = rows[0], rows[1:]
        self.header = ["" if c is None else str(c).strip().lstrip("\ufeff") for c in header]
        self.columns: list[str | None] = []
        self.ignored: list[str] = []
        seen: set[str] = set()
        for label in self.header:
            rule = schema.by_label.get(label)
            if rule is None or rule.field in seen or not (rule.key or rule.field in allowed):
                self.columns.append(None)
                if label:
                    self.ignored.append(label)
                continue
            seen.add(rule.field)
            self.columns.append(rule.field)
        self.key = schema.key
        if self.key.field not in seen:
            raise InvalidInput(f"文件第 {self.header_row} 行（表头）没有“{self.key.name}”列，无法比对",
                               [{"field": "file", "error": f"缺少“{self.key.name}”列"}])
        self.fields = [f for f in self.columns if f is not None and f != self.key.field]
        if not self.rows:
            raise InvalidInput("文件只有表头，没有要比对的行", [{"field": "file", "error": "没有数据行"}])
        self.schema = schema

    def params(self) -> CompareParams:
        records = []
        for _, cells in self.rows:
            rec: dict[str, Any] = {}
            for field, cell in zip(self.columns, cells):
                if field is not None and cell is not None and cell != "":
                    rec[field] = _json_safe(cell.strip() if isinstance(cell, str) else cell)
            records.append(rec)
        return CompareParams(records=records)

    def problems(self, err: ApiError) -> list[dict[str, Any]]:
        """The rows a refused comparison names, by their row in the file and their column's heading."""
        out = []
        labels = {f: self.header[i] for i, f in enumerate(self.columns) if f is not None}
        for d in err.details if isinstance(err.details, list) else []:
            if not isinstance(d, dict) or not isinstance(d.get("row"), int) or not 1 <= d["row"] <= len(self.rows):
                continue
            field = d.get("field")
            rule = self.schema.by_field.get(field) if isinstance(field, str) else None
            out.append({"row": self.rows[d["row"] - 1][0], "column": labels.get(field, field or ""),
                        "problem": _reason(str(d.get("error", "")), rule)})
        return out

    def result_rows(self, answer: dict[str, Any]) -> list[list[Any]]:
        names = {r.field: r.name for r in self.schema.rules}
        width = len(self.header)
        head = self.header + ["比对结果"] + [f"{names[f]}比对" for f in self.fields]
        out: list[list[Any]] = [head]
        for (_, cells), result in zip(self.rows, answer["results"]):
            row = list(cells[:width]) + [None] * (width - len(cells))
            if not result["found"]:
                out.append(row + [RESULTS["missing"]] + ["—"] * len(self.fields))
                continue
            flags = result["fields"]
            out.append(row + [RESULTS["match" if result["match"] else "differ"]]
                       + [("一致" if flags[f] else "不一致") if f in flags else "未比对" for f in self.fields])
        return out


def _csv_bytes(rows: list[list[Any]]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    for row in rows:
        writer.writerow(["" if v is None else _json_safe(v) for v in row])
    # With a byte-order mark, spreadsheet programs open the Chinese text as UTF-8.
    return buf.getvalue().encode("utf-8-sig")


async def _xlsx_bytes(rows: list[list[Any]]) -> bytes:
    def work() -> bytes:
        from openpyxl import Workbook

        wb = Workbook(write_only=True)
        ws = wb.create_sheet("比对结果")
        for row in rows:
            ws.append(row)
        buf = io.BytesIO()
        wb.save(buf)
        return buf.getvalue()

    return await asyncio.to_thread(work)


def _download(body: bytes, name: str, ext: str) -> web.Response:
    filename = re.sub(r'[\\/:*?"<>|\r\n]+', "_", name)[:80] + f".{ext}"
    ctype = XLSX_TYPE if ext == "xlsx" else "text/csv; charset=utf-8"
    return web.Response(body=body, headers={
        "Content-Type": ctype,
        "Content-Disposition": f"attachment; filename=\"result.{ext}\"; filename*=UTF-8''{quote(filename)}",
    })
