"""The data capability: pushing records (JSON, NDJSON), uploading files (CSV, XLSX), validation all or
nothing, upsert and delete, the change feed, and who may do what — on a real node, both backends."""

from __future__ import annotations

import io
import json
from decimal import Decimal

import aiohttp
import pytest
from openpyxl import Workbook

from node.data.formats import Malformed, csv_rows, json_array_rows, ndjson_rows
from node.data.rows import RecordSchema
from node.ids import make_gb11643, make_gb32100
from support import POLICE, add_dept, drop_pg_schema, init_home, start_node

XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"

ITEMS = [
    {"name": "公民身份号码", "field": "id_number", "type": "C", "length": 18, "key": True, "sensitive": True,
     "check": "gb11643"},
    {"name": "姓名", "field": "name", "type": "C", "length": 50, "required": True},
    {"name": "出生日期", "field": "birth_date", "type": "D"},
    {"name": "登记时间", "field": "registered_at", "type": "T"},
    {"name": "家庭人口", "field": "household", "type": "I"},
    {"name": "月收入", "field": "income", "type": "N", "length": 12},
    {"name": "身高", "field": "height", "type": "F"},
    {"name": "是否户主", "field": "head", "type": "L"},
    {"name": "备注", "field": "remark", "type": "M"},
    {"name": "照片", "field": "photo", "type": "B", "length": 16},
    {"name": "工作单位代码", "field": "employer", "type": "C", "length": 18, "check": "gb32100"},
]


def ids(n: int, start: int = 0) -> list[str]:
    """n valid, distinct 公民身份号码."""
    out = []
    for i in range(start, start + n):
        day = i // 1000
        out.append(make_gb11643("370321", f"{1950 + day // 336:04d}{day % 12 + 1:02d}{day // 12 % 28 + 1:02d}", i % 1000))
    return out


async def create_resource(node, token: str = "police", items=None, share=None) -> str:
    status, entry = await node.call("POST", "/api/v1/catalog", token, json_body={
        "classification": "101001", "name": "桓台县户籍人口基本信息", "category": "base", "format": "database",
        "items": items or ITEMS, "share": share or {"type": "unconditional"}, "update_cycle": "daily",
    })
    assert status == 201, entry
    return entry["code"]


async def push(node, code: str, records, token: str = "police"):
    return await node.call("POST", f"/api/v1/resources/{code}/records", token, json_body=records)


async def push_ndjson(node, code: str, lines: list, token: str = "police"):
    body = "\n".join(x if isinstance(x, str) else json.dumps(x, ensure_ascii=False) for x in lines) + "\n"
    return await node.call("POST", f"/api/v1/resources/{code}/records", token, data=body.encode(),
                           headers={"Content-Type": "application/x-ndjson"})


async def feed(node, code: str, since: int = 0, limit: int = 1000, token: str = "police"):
    status, body = await node.call("GET", f"/api/v1/resources/{code}/changes?since={since}&limit={limit}", token)
    assert status == 200, body
    return body


async def all_changes(node, code: str) -> list[dict]:
    out, since = [], 0
    while True:
        page = await feed(node, code, since)
        out += page["changes"]
        since = page["next"]
        if not page["more"]:
            return out


async def current(node, code: str) -> dict[str, dict]:
    """Live records by key, rebuilt from the change feed."""
    state: dict[str, dict] = {}
    for c in await all_changes(node, code):
        if c["deleted"]:
            state.pop(c["key"], None)
        else:
            state[c["key"]] = c["data"]
    return state


# Pushing --------------------------------------------------------------------------------------------

async def test_push_json_and_ndjson_types_upsert_delete(node):
    code = await create_resource(node)
    k = ids(4)
    employer = make_gb32100("91370321MA", 7)
    status, body = await push(node, code, [
        {"id_number": k[0], "name": "张三", "birth_date": "1990-01-01", "registered_at": "2020-05-01T08:30:00+08:00",
         "household": 3, "income": 1234.50, "height": 1.75, "head": True, "remark": "长文本" * 100,
         "photo": "aGVsbG8=", "employer": employer},
        {"id_number": k[1], "name": "李四", "income": "0012.300"},
    ])
    assert status == 200, body
    assert body == {"resource": code, "received": 2, "upserted": 2, "deleted": 0, "change": body["change"]}
    status, body = await push_ndjson(node, code, [
        {"id_number": k[2], "name": "王五", "household": 0},
        "",
        {"id_number": k[3], "name": "赵六"},
    ])
    assert status == 200 and body["received"] == 2, body
    state = await current(node, code)
    assert set(state) == set(k)
    assert state[k[0]] == {"id_number": k[0], "name": "张三", "birth_date": "1990-01-01",
                           "registered_at": "2020-05-01T08:30:00+08:00", "household": 3, "income": "1234.5",
                           "height": 1.75, "head": True, "remark": "长文本" * 100, "photo": "aGVsbG8=",
                           "employer": employer}
    assert state[k[1]]["income"] == "12.3"  # decimals are kept exact, as canonical strings

    # Upsert replaces the record; _deleted leaves a tombstone.
    status, body = await push_ndjson(node, code, [{"id_number": k[1], "name": "李四改"},
                                                  {"id_number": k[2], "_deleted": True}])
    assert status == 200 and body["upserted"] == 1 and body["deleted"] == 1, body
    state = await current(node, code)
    assert state[k[1]] == {"id_number": k[1], "name": "李四改"}
    assert k[2] not in state
    changes = await all_changes(node, code)
    assert [c["change"] for c in changes] == sorted(c["change"] for c in changes)
    tomb = [c for c in changes if c["key"] == k[2]]
    assert tomb == [{"key": k[2], "data": None, "deleted": True, "change": tomb[0]["change"]}]
    # A record comes back after deletion.
    status, _ = await push(node, code, [{"id_number": k[2], "name": "王五"}])
    assert status == 200
    assert (await current(node, code))[k[2]]["name"] == "王五"


async def test_record_count_and_last_write_per_resource(node):
    """What a department's resource list shows: live records (tombstones not counted) and the last write."""
    from node.data.http import DATA
    from node.ids import now_ms

    filled, empty = await create_resource(node), await create_resource(node)
    k = ids(3)
    before = now_ms()
    assert (await push(node, filled, [{"id_number": key, "name": "张三"} for key in k]))[0] == 200
    assert (await push(node, filled, [{"id_number": k[0], "_deleted": True}]))[0] == 200
    held = await node.app[DATA].summaries([filled, empty])
    assert held[filled]["records"] == 2 and before <= held[filled]["updated_at"] <= now_ms()
    assert held[empty] == {"records": 0, "updated_at": None}
    assert await node.app[DATA].summaries([]) == {}
    # A count is kept until the resource's next write, then made again.
    assert await node.app[DATA].summaries([filled]) == {filled: held[filled]}
    assert (await push(node, filled, [{"id_number": k[0], "name": "张三"}]))[0] == 200
    again = (await node.app[DATA].summaries([filled]))[filled]
    assert again["records"] == 3 and again["updated_at"] >= held[filled]["updated_at"]


async def test_change_feed_order_paging_and_tombstones(node):
    code = await create_resource(node)
    k = ids(30)
    for i in range(3):
        status, _ = await push(node, code, [{"id_number": x, "name": f"第{i}批"} for x in k[i * 10:(i + 1) * 10]])
        assert status == 200
    status, _ = await push(node, code, [{"id_number": k[0], "name": "改"}, {"id_number": k[5], "_deleted": True}])
    assert status == 200
    page1 = await feed(node, code, 0, 25)
    assert len(page1["changes"]) == 25 and page1["more"] is True
    page2 = await feed(node, code, page1["next"], 25)
    assert page2["more"] is False
    seen = page1["changes"] + page2["changes"]
    ids_in_order = [c["change"] for c in seen]
    assert ids_in_order == sorted(ids_in_order) and len(set(ids_in_order)) == len(ids_in_order)
    # One row per key: k[0] and k[5] moved to the end, in the order of the last batch.
    assert len(seen) == 30
    assert [c["key"] for c in seen[-2:]] == [k[0], k[5]]
    assert seen[-1]["deleted"] is True and seen[-1]["data"] is None
    assert seen[-2]["data"]["name"] == "改"
    # Nothing new after the end; the cursor stays.
    end = await feed(node, code, page2["next"])
    assert end == {"changes": [], "next": page2["next"], "more": False}


async def test_bad_rows_refuse_the_whole_batch(node):
    code = await create_resource(node)
    k = ids(5)
    good = {"id_number": k[0], "name": "张三"}
    await push(node, code, [{"id_number": k[4], "name": "已有"}])
    before = await all_changes(node, code)
    bad_id = k[1][:17] + ("0" if k[1][17] != "0" else "1")
    status, body = await push(node, code, [
        good,
        {"id_number": bad_id, "name": "错号"},                       # row 2: check character
        {"id_number": k[2], "name": "x" * 51, "colour": "red"},     # row 3: too long, unknown field
        {"id_number": k[3], "household": 1.5, "birth_date": "1990-02-30", "head": "yes"},  # row 4
        {"id_number": k[4], "name": "也好", "employer": make_gb32100("91370321MA", 1)[:17] + "0"},
    ])
    assert status == 400 and body["error"]["code"] == "INVALID_INPUT", body
    errs = {(e["row"], e["field"]) for e in body["error"]["details"]}
    assert errs == {(2, "id_number"), (3, "name"), (3, "colour"), (4, "household"), (4, "birth_date"),
                    (4, "head"), (4, "name"), (5, "employer")}
    assert body["error"]["message"] == "4 of 5 rows are invalid; nothing was stored"
    assert all(set(e) == {"row", "field", "error"} for e in body["error"]["details"])
    # Nothing of the batch was stored, not even its good first row.
    assert await all_changes(node, code) == before

    # NDJSON: a line that is not JSON is named by its line number; other lines are still checked.
    status, body = await push_ndjson(node, code, [good, "{not json", {"id_number": k[1]}])
    assert status == 400
    details = body["error"]["details"]
    assert {(d["row"], d["field"]) for d in details} == {(2, None), (3, "name")}
    assert await all_changes(node, code) == before


async def test_error_list_is_capped_and_says_how_many_more(tmp_path, backend):
    home = tmp_path / "n"
    config = init_home(home, "370321", "桓台县", backend=backend, extra={"limits": {"max_batch_errors": 5}})
    token = add_dept(home, POLICE, "桓台县公安局")
    node = await start_node(config)
    node.tokens["police"] = token
    try:
        code = await create_resource(node)
        rows = [{"id_number": x} for x in ids(12)]  # each lacks the required name
        status, body = await push(node, code, rows)
        assert status == 400
        details = body["error"]["details"]
        assert len(details) == 6
        assert details[-1] == {"row": None, "field": None, "error": "7 more errors not listed"}
        assert [d["row"] for d in details[:5]] == [1, 2, 3, 4, 5]
        assert "12 of 12 rows" in body["error"]["message"]
    finally:
        await node.stop()
        if config.database.schema_:
            await drop_pg_schema(config.database.schema_)


async def test_csv_upload_by_name_and_by_field(node):
    code = await create_resource(node)
    k = ids(4)
    by_name = ("公民身份号码,姓名,出生日期,家庭人口,月收入,是否户主,备注\r\n"
               f"{k[0]},张三,1990/1/2,3,12.50,是,\"多行\n备注, 含逗号\"\r\n"
               f"{k[1]},李四,,,,否,\r\n")
    status, body = await node.call("POST", f"/api/v1/resources/{code}/files", "police", data=by_name.encode(),
                                   headers={"Content-Type": "text/csv"})
    assert status == 200 and body["received"] == 2, body
    by_field = f"id_number,name,head,_deleted\n{k[2]},王五,1,\n{k[3]},赵六,0,\n{k[1]},,,true\n"
    status, body = await node.call("POST", f"/api/v1/resources/{code}/files", "police",
                                   data=by_field.encode("gb18030"), headers={"Content-Type": "text/csv; charset=gb18030"})
    assert status == 200 and body["upserted"] == 2 and body["deleted"] == 1, body
    state = await current(node, code)
    assert state[k[0]] == {"id_number": k[0], "name": "张三", "birth_date": "1990-01-02", "household": 3,
                           "income": "12.5", "head": True, "remark": "多行\n备注, 含逗号"}
    assert state[k[2]]["head"] is True and state[k[3]]["head"] is False
    assert k[1] not in state
    # A GB 18030 file without a charset is recognised; a UTF-8 BOM is ignored.
    status, body = await node.call("POST", f"/api/v1/resources/{code}/files", "police",
                                   data=f"id_number,姓名\n{k[1]},钱七\n".encode("gb18030"),
                                   headers={"Content-Type": "text/csv"})
    assert status == 200, body
    status, body = await node.call("POST", f"/api/v1/resources/{code}/files", "police",
                                   data=("\ufeff" + f"id_number,姓名\n{k[1]},孙八\n").encode(),
                                   headers={"Content-Type": "text/csv"})
    assert status == 200, body
    assert (await current(node, code))[k[1]]["name"] == "孙八"


async def test_csv_refusals(node):
    code = await create_resource(node)
    k = ids(3)
    url = f"/api/v1/resources/{code}/files"
    csv_headers = {"Content-Type": "text/csv"}
    # An unknown column refuses the file before any row.
    status, body = await node.call("POST", url, "police", data=f"id_number,name,颜色\n{k[0]},张三,红\n".encode(),
                                   headers=csv_headers)
    assert status == 400 and body["error"]["details"] == [
        {"row": 1, "field": "颜色", "error": "unknown column: not the name or field of an item of this resource"}]
    # No key column.
    status, body = await node.call("POST", url, "police", data="name\n张三\n".encode(), headers=csv_headers)
    assert status == 400 and body["error"]["details"][0]["field"] == "id_number"
    # Bad cells name their spreadsheet row (the header is row 1).
    status, body = await node.call("POST", url, "police", headers=csv_headers, data=(
        f"id_number,name,household,head\n{k[0]},张三,3,是\n{k[1]},李四,三,是\n{k[2]},王五,1,也许\n").encode())
    assert status == 400
    assert [(d["row"], d["field"]) for d in body["error"]["details"]] == [(3, "household"), (4, "head")]
    # Empty file.
    status, body = await node.call("POST", url, "police", data=b"", headers=csv_headers)
    assert status == 400
    assert await all_changes(node, code) == []


def _xlsx(rows: list[list]) -> bytes:
    wb = Workbook()
    ws = wb.active
    for r in rows:
        ws.append(r)
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()


async def test_xlsx_upload_raw_and_multipart(node):
    import datetime as dt

    code = await create_resource(node)
    k = ids(3)
    data = _xlsx([
        ["公民身份号码", "姓名", "出生日期", "家庭人口", "身高", "是否户主"],
        [k[0], "张三", dt.date(1990, 1, 2), 3, 1.8, True],
        [k[1], "李四", "1991-03-04", 2.0, 2, "否"],
    ])
    status, body = await node.call("POST", f"/api/v1/resources/{code}/files", "police", data=data,
                                   headers={"Content-Type": XLSX})
    assert status == 200 and body["received"] == 2, body
    state = await current(node, code)
    assert state[k[0]] == {"id_number": k[0], "name": "张三", "birth_date": "1990-01-02", "household": 3,
                           "height": 1.8, "head": True}
    assert state[k[1]]["household"] == 2 and state[k[1]]["head"] is False and state[k[1]]["height"] == 2.0

    form = aiohttp.FormData()
    form.add_field("note", "月度更新")
    form.add_field("file", _xlsx([["id_number", "name"], [k[2], "王五"]]), filename="人口.xlsx",
                   content_type="application/octet-stream")
    status, body = await node.call("POST", f"/api/v1/resources/{code}/files", "police", data=form)
    assert status == 200 and body["received"] == 1, body
    # A bad cell in a spreadsheet names its row; nothing stored.
    bad = _xlsx([["id_number", "name", "出生日期"], [k[0], "张三", "昨天"]])
    status, body = await node.call("POST", f"/api/v1/resources/{code}/files", "police", data=bad,
                                   headers={"Content-Type": XLSX})
    assert status == 400 and body["error"]["details"] == [
        {"row": 2, "field": "birth_date", "error": "must be a date YYYY-MM-DD"}]
    # Rows are numbered as the spreadsheet shows them, even when the table starts lower down.
    wb = Workbook()
    ws = wb.active
    ws["B3"], ws["C3"], ws["D3"] = "id_number", "name", "家庭人口"
    ws["B4"], ws["C4"], ws["D4"] = k[0], "张三", 1
    ws["B6"], ws["C6"], ws["D6"] = k[1], "李四", "两"
    buf = io.BytesIO()
    wb.save(buf)
    status, body = await node.call("POST", f"/api/v1/resources/{code}/files", "police", data=buf.getvalue(),
                                   headers={"Content-Type": XLSX})
    assert status == 400 and body["error"]["details"] == [
        {"row": 6, "field": "household", "error": "must be an integer"}], body
    # Not a spreadsheet at all.
    status, body = await node.call("POST", f"/api/v1/resources/{code}/files", "police", data=b"PK\x03\x04junk",
                                   headers={"Content-Type": XLSX})
    assert status == 400 and body["error"]["code"] == "INVALID_INPUT"
    # Multipart with a CSV file part.
    form = aiohttp.FormData()
    form.add_field("file", f"id_number,name\n{k[0]},张三改\n".encode(), filename="a.csv", content_type="text/csv")
    status, body = await node.call("POST", f"/api/v1/resources/{code}/files", "police", data=form)
    assert status == 200, body
    # Two files in one upload are refused.
    form = aiohttp.FormData()
    form.add_field("a", b"id_number,name\n", filename="a.csv", content_type="text/csv")
    form.add_field("b", b"id_number,name\n", filename="b.csv", content_type="text/csv")
    status, body = await node.call("POST", f"/api/v1/resources/{code}/files", "police", data=form)
    assert status == 400
    assert (await current(node, code))[k[0]]["name"] == "张三改"


async def test_only_the_provider_pushes_and_reads_the_feed(node):
    code = await create_resource(node)
    rec = [{"id_number": ids(1)[0], "name": "张三"}]
    for token in ("civil", "operator", "auditor"):
        status, body = await push(node, code, rec, token)
        assert status == 403 and body["error"]["code"] == "FORBIDDEN", (token, body)
        status, body = await node.call("POST", f"/api/v1/resources/{code}/files", token, data=b"id_number,name\n",
                                       headers={"Content-Type": "text/csv"})
        assert status == 403
    status, _ = await push(node, code, rec, None)
    assert status == 401
    status, body = await node.call("GET", f"/api/v1/resources/{code}/changes", "civil")
    assert status == 403 and body["error"]["code"] == "GRANT_REQUIRED"  # a grant with subscribe opens it (issue 5)
    assert (await feed(node, code, token="operator"))["changes"] == []
    # A withdrawn resource takes no more records.
    status, _ = await node.call("DELETE", f"/api/v1/catalog/{code}", "police")
    assert status == 200
    status, body = await push(node, code, rec)
    assert status == 404 and body["error"]["code"] == "NOT_FOUND"


async def test_unknown_resource_content_type_and_shape(node):
    status, body = await push(node, "101001/370321999999", [{"id_number": "x"}])
    assert status == 404 and body["error"]["code"] == "NOT_FOUND"
    code = await create_resource(node)
    url = f"/api/v1/resources/{code}/records"
    status, body = await node.call("POST", url, "police", data=b"id_number\n", headers={"Content-Type": "text/plain"})
    assert status == 415 and body["error"]["code"] == "UNSUPPORTED_MEDIA_TYPE"
    status, body = await node.call("POST", url, "police", json_body={"id_number": ids(1)[0], "name": "x"})
    assert status == 400 and "array" in body["error"]["message"]
    status, body = await node.call("POST", url, "police", data=b'[{"id_number": "1"}', headers={"Content-Type": "application/json"})
    assert status == 400
    status, body = await node.call("POST", url, "police", data=b"[1, 2]", headers={"Content-Type": "application/json"})
    assert status == 400 and [d["row"] for d in body["error"]["details"]] == [1, 2]
    # PostgreSQL cannot hold NUL in text: refused on every backend as a row error, never a 500.
    status, body = await push_ndjson(node, code, [{"id_number": ids(1)[0], "name": "a\u0000b"},
                                                  '{"id_number": "%s", "name": "\\ud800"}' % ids(2)[1]])
    assert status == 400 and [d["field"] for d in body["error"]["details"]] == ["name", "name"], body
    status, body = await push(node, code, [])
    assert status == 200 and body == {"resource": code, "received": 0, "upserted": 0, "deleted": 0, "change": None}
    assert await all_changes(node, code) == []


async def test_upload_size_limit(tmp_path, backend):
    home = tmp_path / "n"
    config = init_home(home, "370321", "桓台县", backend=backend, extra={"limits": {"max_upload_bytes": 4096}})
    token = add_dept(home, POLICE, "桓台县公安局")
    node = await start_node(config)
    node.tokens["police"] = token
    try:
        code = await create_resource(node)
        rows = [{"id_number": x, "name": "张三" * 10} for x in ids(60)]
        status, body = await push(node, code, rows)
        assert status == 413 and body["error"]["code"] == "TOO_LARGE", body

        async def chunked():  # no Content-Length: the limit is enforced while streaming
            for r in rows:
                yield (json.dumps(r, ensure_ascii=False) + "\n").encode()

        status, body = await node.call("POST", f"/api/v1/resources/{code}/records", "police", data=chunked(),
                                       headers={"Content-Type": "application/x-ndjson"})
        assert status == 413 and body["error"]["code"] == "TOO_LARGE", body
        status, body = await push(node, code, rows[:5])
        assert status == 200
        assert (await feed(node, code))["changes"].__len__() == 5
    finally:
        await node.stop()
        if config.database.schema_:
            await drop_pg_schema(config.database.schema_)


async def test_large_ndjson_push_streams_in_chunks(node):
    code = await create_resource(node)
    keys = ids(12_000)

    async def body():
        for i in range(0, len(keys), 1000):
            yield "".join(json.dumps({"id_number": x, "name": "张三", "household": j}) + "\n"
                          for j, x in enumerate(keys[i:i + 1000])).encode()

    status, res = await node.call("POST", f"/api/v1/resources/{code}/records", "police", data=body(),
                                  headers={"Content-Type": "application/x-ndjson"})
    assert status == 200 and res["received"] == 12_000 and res["upserted"] == 12_000, res
    page = await feed(node, code, 0, 10_000)
    assert len(page["changes"]) == 10_000 and page["more"] is True
    assert res["change"] - page["changes"][0]["change"] == 11_999
    # The same as a JSON array, sent in small pieces.
    text = json.dumps([{"id_number": x, "name": "李四"} for x in keys[:3000]]).encode()

    async def pieces():
        for i in range(0, len(text), 777):
            yield text[i:i + 777]

    status, res = await node.call("POST", f"/api/v1/resources/{code}/records", "police", data=pieces(),
                                  headers={"Content-Type": "application/json"})
    assert status == 200 and res["received"] == 3000, res


# Readers and rules, without a node ----------------------------------------------------------------------

async def _collect(gen) -> list:
    out = []
    async for rows in gen:
        out += rows
    return out


async def _chunks(data: bytes, size: int):
    for i in range(0, len(data), size):
        yield data[i:i + size]


@pytest.mark.parametrize("size", [1, 3, 64, 10_000])
async def test_readers_split_chunks_anywhere(size):
    arr = '[ {"a": 1.10, "b": "中文"} ,{"a": [1,2]}, 7 ]'.encode()
    rows = await _collect(json_array_rows(_chunks(arr, size), 1 << 20))
    assert rows == [(1, {"a": Decimal("1.10"), "b": "中文"}), (2, {"a": [1, 2]}), (3, 7)]
    nd = '{"a": 1}\n\n{"b": "中文"}\r\n{bad\n{"c": 3}'.encode()
    rows = await _collect(ndjson_rows(_chunks(nd, size), 1 << 20))
    assert [r for r, _ in rows] == [1, 3, 4, 5]
    assert rows[1][1] == {"b": "中文"} and isinstance(rows[2][1], Malformed) and rows[3][1] == {"c": 3}
    csv_text = 'a,b\r\n1,"x\r\ny"\r\n\r\n2,"say ""hi"""\r\n3,中文'.encode()
    rows = await _collect(csv_rows(_chunks(csv_text, size), None, 1 << 20))
    assert rows == [(1, ["a", "b"]), (2, ["1", "x\r\ny"]), (4, ["2", 'say "hi"']), (5, ["3", "中文"])]


def test_type_rules():
    schema = RecordSchema({"code": "101001/370321000001", "items": ITEMS})
    key = ids(1)[0]

    def ok(obj, lenient=False):
        errs: list = []
        res = schema.validate({"id_number": key, "name": "张三", **obj}, lenient, errs)
        assert res is not None, errs
        return res[1]

    def bad(obj, lenient=False):
        errs: list = []
        assert schema.validate({"id_number": key, "name": "张三", **obj}, lenient, errs) is None
        return errs

    assert ok({"income": Decimal("1E+3")})["income"] == "1000"
    assert ok({"income": "-0.00"})["income"] == "0"
    assert ok({"income": 5})["income"] == "5"
    assert bad({"income": "1,000"}) and bad({"income": "1" * 13}) and bad({"income": True})
    assert ok({"household": 2**53 - 1})["household"] == 2**53 - 1
    assert bad({"household": 2**53}) and bad({"household": "3"}) and bad({"household": True})
    assert ok({"household": " 3 "}, lenient=True)["household"] == 3
    assert bad({"height": "1.8"}) and ok({"height": "1.8"}, lenient=True)["height"] == 1.8
    assert ok({"head": False})["head"] is False and bad({"head": 1})
    assert ok({"head": "否"}, lenient=True)["head"] is False and ok({"head": "TRUE"}, lenient=True)["head"] is True
    assert bad({"birth_date": "1990/01/02"}) and ok({"birth_date": "1990/1/2"}, lenient=True)["birth_date"] == "1990-01-02"
    assert bad({"birth_date": "1990-02-29"})
    assert ok({"registered_at": "2020-01-01T00:00:00Z"})["registered_at"] == "2020-01-01T00:00:00+00:00"
    assert bad({"registered_at": "yesterday"})
    assert bad({"photo": "not base64!"}) and bad({"photo": "QUFBQUFBQUFBQUFBQUFBQUFB"})  # 18 bytes > 16
    assert ok({"photo": "QUFB"})["photo"] == "QUFB"
    assert bad({"name": 5}) and ok({"name": 5}, lenient=True)["name"] == "5"
    assert bad({"name": "a\x00b"}) and bad({"remark": "\x00"}, lenient=True) and bad({"name": "张\ud800"})
    assert ok({"remark": None, "birth_date": ""}) == {"id_number": key, "name": "张三"}
    errs = bad({"name": ""})
    assert errs == [("name", "required")]
    errs: list = []
    assert schema.validate({"name": "x"}, False, errs) is None and errs == [("id_number", "the key is required")]
    errs = []
    assert schema.validate({"id_number": key, "_deleted": True, "nonsense": 1}, False, errs) is None
    assert errs == [("nonsense", "unknown field: not an item of this resource")]
    errs = []
    assert schema.validate({"id_number": key, "_deleted": True}, False, errs) == (key, None)
    assert schema.validate(["not", "an", "object"], False, errs) is None


def test_fast_check_characters_agree_with_the_reference():
    import random

    from node.data.rows import check_gb11643, check_gb32100
    from node.ids import GB32100_ALPHABET, valid_gb11643, valid_gb32100

    rng = random.Random(5)
    samples = ids(300) + [make_gb32100("91370321MA", i) for i in range(300)]
    for v in list(samples):  # every valid value, and one-character changes of it
        for _ in range(5):
            i = rng.randrange(18)
            samples.append(v[:i] + rng.choice("0123456789XAZIO中 ") + v[i + 1:])
    samples += ["", "X" * 18, "３７０３２１１９９００１０１００１５", "1" * 17, "1" * 19, make_gb11643("370321", "19900101", 1).lower()]
    samples += ["".join(rng.choice(GB32100_ALPHABET) for _ in range(18)) for _ in range(300)]
    for v in samples:
        assert check_gb11643(v) == valid_gb11643(v), v
        assert check_gb32100(v) == valid_gb32100(v), v


async def test_an_upload_cut_short_stores_nothing(node):
    import asyncio

    code = await create_resource(node)
    body = "".join(json.dumps({"id_number": x, "name": "张三"}) + "\n" for x in ids(50)).encode()
    reader, writer = await asyncio.open_connection(node.config.host, node.config.port)
    writer.write((f"POST /api/v1/resources/{code}/records HTTP/1.1\r\nHost: x\r\n"
                  f"Authorization: Bearer {node.tokens['police']}\r\nContent-Type: application/x-ndjson\r\n"
                  f"Content-Length: {len(body) * 2}\r\n\r\n").encode() + body)
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.close()
    for _ in range(50):  # the audit record is written once the node has seen the connection end
        status, page = await node.call("GET", f"/api/v1/audit?resource={code}&limit=1", "auditor")
        if page["records"] and page["records"][0]["action"] == "data.push":
            break
        await asyncio.sleep(0.05)
    assert page["records"][0]["action"] == "data.push"
    assert page["records"][0]["outcome"] == "INVALID_INPUT"
    assert await all_changes(node, code) == []
