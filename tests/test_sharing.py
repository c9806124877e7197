"""Local sharing: query, verify and compare against a resource of this node, with the rules of SPEC §8
that apply without grants (masking, conditional, none) — on a real node, both backends."""

from __future__ import annotations

import json

import pytest

from federation.signing import sign_json
from node.audit.service import keys_digest
from node.catalog.http import CATALOG
from node.context import DB
from node.db import write_tx
from node.errors import ApiError
from node.ids import make_gb11643, make_gb32100, now_ms
from node.sharing.masking import masker, mask_text
from node.sharing.models import Requester
from node.sharing.http import SHARING
from node.sharing.service import SharingService
from support import CIVIL

ITEMS = [
    {"name": "公民身份号码", "field": "id_number", "type": "C", "length": 18, "key": True, "sensitive": True,
     "check": "gb11643"},
    {"name": "姓名", "field": "name", "type": "C", "length": 50, "required": True},
    {"name": "手机号码", "field": "phone", "type": "C", "length": 11, "sensitive": True},
    {"name": "出生日期", "field": "birth_date", "type": "D", "sensitive": True},
    {"name": "月收入", "field": "income", "type": "N", "sensitive": True},
    {"name": "家庭人口", "field": "household", "type": "I"},
    {"name": "是否户主", "field": "head", "type": "L"},
    {"name": "住址", "field": "address", "type": "C", "length": 200, "sensitive": True},
]


def person_ids(n: int) -> list[str]:
    out = []
    for i in range(n):
        day = i // 1000
        out.append(make_gb11643("370321", f"{1960 + day // 336:04d}{day % 12 + 1:02d}{day // 12 % 28 + 1:02d}", i % 1000))
    return out


async def create_resource(node, share=None, items=None) -> str:
    status, entry = await node.call("POST", "/api/v1/catalog", "police", json_body={
        "classification": "101001", "name": "桓台县户籍人口基本信息", "category": "base", "format": "database",
        "items": items or ITEMS, "share": share or {"type": "unconditional"}, "update_cycle": "daily",
    })
    assert status == 201, entry
    return entry["code"]


async def push_ndjson(node, code: str, records: list[dict]) -> None:
    body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()
    status, res = await node.call("POST", f"/api/v1/resources/{code}/records", "police", data=body,
                                  headers={"Content-Type": "application/x-ndjson"})
    assert status == 200, res


async def call(node, code: str, op: str, body, token: str = "civil"):
    return await node.call("POST", f"/api/v1/resources/{code}/{op}", token, json_body=body)


@pytest.fixture
async def people(node):
    """A resource with five people (the last one deleted again)."""
    code = await create_resource(node)
    k = person_ids(5)
    await push_ndjson(node, code, [
        {"id_number": k[0], "name": "张三", "phone": "13812345678", "birth_date": "1990-01-01", "income": "8000.50",
         "household": 3, "head": True, "address": "山东省淄博市桓台县索镇"},
        {"id_number": k[1], "name": "李四", "phone": "13900001111", "household": 1, "head": False},
        {"id_number": k[2], "name": "张三", "household": 2},
        {"id_number": k[3], "name": "王五"},
        {"id_number": k[4], "name": "赵六"},
    ])
    await push_ndjson(node, code, [{"id_number": k[4], "_deleted": True}])
    return node, code, k


# Query -----------------------------------------------------------------------------------------------

async def test_query_by_key_masks_sensitive_items(people):
    node, code, k = people
    status, body = await call(node, code, "query", {"key": k[0]})
    assert status == 200, body
    assert body == {
        "resource": code,
        "masked": ["id_number", "phone", "birth_date", "income", "address"],
        "records": [{"id_number": k[0][:6] + "********" + k[0][-4:], "name": "张三", "phone": "138****5678",
                     "birth_date": "1990-**-**", "income": None, "household": 3, "head": True,
                     "address": "山" + "*" * 9 + "镇"}],
    }
    # Absent values stay null; only the fields asked for come back.
    status, body = await call(node, code, "query", {"key": k[1], "fields": ["name", "birth_date"]})
    assert body["records"] == [{"name": "李四", "birth_date": None}] and body["masked"] == ["birth_date"]
    status, body = await call(node, code, "query", {"key": k[3], "fields": ["name", "household"]}, "operator")
    assert status == 200 and body["records"] == [{"name": "王五", "household": None}] and body["masked"] == []
    # A deleted record and an unknown key are simply not found.
    for key in (k[4], "370321199901010000"):
        status, body = await call(node, code, "query", {"key": key}, "auditor")
        assert status == 200 and body["records"] == []


async def test_query_where_fields_and_limits(people):
    node, code, k = people
    status, body = await call(node, code, "query", {"where": {"name": "张三"}, "fields": ["id_number", "household"]})
    assert status == 200
    assert sorted(r["household"] for r in body["records"]) == [2, 3]
    status, body = await call(node, code, "query", {"where": {"name": "张三", "household": "2"}, "fields": ["name"]})
    assert body["records"] == [{"name": "张三"}]
    status, body = await call(node, code, "query", {"where": {"head": "否"}, "fields": ["name"]})
    assert body["records"] == [{"name": "李四"}]
    status, body = await call(node, code, "query", {"where": {"income": "8000.5"}, "fields": ["name"]})
    assert body["records"] == [{"name": "张三"}]
    status, body = await call(node, code, "query", {"where": {"name": "张三"}, "fields": ["name"], "limit": 1})
    assert len(body["records"]) == 1
    status, body = await call(node, code, "query", {"where": {"name": "赵六"}})
    assert body["records"] == []  # deleted
    for bad, field in [({"key": k[0], "fields": ["name", "colour"]}, "fields.colour"),
                       ({"where": {"colour": "红"}}, "where.colour"),
                       ({"where": {"household": "三"}}, "where.household")]:
        status, body = await call(node, code, "query", bad)
        assert status == 400 and body["error"]["code"] == "INVALID_INPUT", body
        assert body["error"]["details"][0]["field"] == field
    for bad in ({}, {"key": k[0], "where": {"name": "x"}}, {"where": {}}, {"key": k[0], "limit": 0},
                {"key": k[0], "limit": 1001}, {"key": k[0], "extra": 1}, {"key": 1.5}):
        status, body = await call(node, code, "query", bad)
        assert status == 400 and body["error"]["code"] == "INVALID_INPUT", (bad, body)


# Verify ----------------------------------------------------------------------------------------------

async def test_verify_discloses_only_match_flags(people):
    node, code, k = people
    status, body = await call(node, code, "verify", {"key": k[0], "fields": {"name": "张三", "phone": "13812345678"}})
    assert status == 200 and body == {"match": True, "fields": {"name": True, "phone": True}}
    status, body = await call(node, code, "verify", {"key": k[0], "fields": {"name": "张三", "income": "8000.5000",
                                                                                "birth_date": "1990/1/1", "head": "是",
                                                                                "household": 4}})
    assert body == {"match": False, "fields": {"name": True, "income": True, "birth_date": True, "head": True,
                                               "household": False}}
    # No such record (or deleted): match false and every field false, nothing else.
    for key in ("370321199901010000", k[4]):
        status, body = await call(node, code, "verify", {"key": key, "fields": {"name": "赵六"}})
        assert status == 200 and body == {"match": False, "fields": {"name": False}}
    # A field the record lacks does not match.
    status, body = await call(node, code, "verify", {"key": k[3], "fields": {"phone": "13812345678"}})
    assert body == {"match": False, "fields": {"phone": False}}
    for bad in ({"key": k[0], "fields": {"colour": "红"}}, {"key": k[0], "fields": {"household": "many"}},
                {"key": k[0], "fields": {"name": None}}, {"fields": {"name": "张三"}}, {"key": k[0]}):
        status, body = await call(node, code, "verify", bad)
        assert status == 400 and body["error"]["code"] == "INVALID_INPUT", (bad, body)


# Compare ---------------------------------------------------------------------------------------------

async def test_compare_records_and_keys(people):
    node, code, k = people
    status, body = await call(node, code, "compare", {"records": [
        {"id_number": k[0], "name": "张三", "phone": "13812345678"},
        {"id_number": k[1], "name": "李四", "phone": "13800000000"},
        {"id_number": k[2], "name": "李四"},
        {"id_number": "370321199901010000", "name": "无名"},
        {"id_number": k[4], "name": "赵六"},
        {"id_number": k[3]},
    ]})
    assert status == 200, body
    assert body == {"resource": code, "total": 6, "found": 4, "matched": 2, "results": [
        {"key": k[0], "found": True, "match": True, "fields": {"name": True, "phone": True}},
        {"key": k[1], "found": True, "match": False, "fields": {"name": True, "phone": False}},
        {"key": k[2], "found": True, "match": False, "fields": {"name": False}},
        {"key": "370321199901010000", "found": False, "match": False, "fields": {"name": False}},
        {"key": k[4], "found": False, "match": False, "fields": {"name": False}},
        {"key": k[3], "found": True, "match": True, "fields": {}},
    ]}
    # Typed values compare in their stored form.
    status, body = await call(node, code, "compare", {"fields": ["income", "household", "head", "birth_date"], "records": [
        {"id_number": k[0], "income": 8000.5, "household": "3", "head": "1", "birth_date": "1990-1-1"}]})
    assert body["results"][0]["fields"] == {"income": True, "household": True, "head": True, "birth_date": True}
    status, body = await call(node, code, "compare", {"keys": [k[0], k[4], k[2], "nope"]})
    assert status == 200
    assert [(r["key"], r["found"], r["match"], r["fields"]) for r in body["results"]] == [
        (k[0], True, True, {}), (k[4], False, False, {}), (k[2], True, True, {}), ("nope", False, False, {})]
    assert (body["total"], body["found"]) == (4, 2)
    # Refusals name the row and field.
    status, body = await call(node, code, "compare", {"records": [{"id_number": k[0], "colour": "红"}, {"name": "x"}]})
    assert status == 400
    assert [(d["row"], d["field"]) for d in body["error"]["details"]] == [(1, "colour"), (2, "id_number")]
    status, body = await call(node, code, "compare", {"fields": ["name"], "records": [{"id_number": k[0]}]})
    assert status == 400 and body["error"]["details"][0] == {"row": 1, "field": "name",
                                                             "error": "missing: every record carries the fields compared"}
    for bad in ({"keys": [k[0]], "fields": ["name"]}, {}, {"keys": [k[0]], "records": []}, {"fields": ["colour"], "records": []}):
        status, body = await call(node, code, "compare", bad)
        assert status == 400 and body["error"]["code"] == "INVALID_INPUT", (bad, body)


async def test_compare_20k_records(node):
    code = await create_resource(node)
    keys = person_ids(20_000)
    await push_ndjson(node, code, [{"id_number": x, "name": f"人{i % 97}", "household": i % 5} for i, x in enumerate(keys)])
    submitted = [{"id_number": x, "name": f"人{i % 97}" if i % 3 else "别人"} for i, x in enumerate(keys)]
    submitted += [{"id_number": make_gb11643("370322", "19800101", i), "name": "外人"} for i in range(500)]
    status, body = await call(node, code, "compare", {"records": submitted})
    assert status == 200
    assert body["total"] == 20_500 and body["found"] == 20_000
    assert body["matched"] == sum(1 for i in range(20_000) if i % 3)
    assert body["results"][3] == {"key": keys[3], "found": True, "match": False, "fields": {"name": False}}
    assert body["results"][4] == {"key": keys[4], "found": True, "match": True, "fields": {"name": True}}
    assert body["results"][-1]["found"] is False


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_compare_100k_keys(node):
    code = await create_resource(node)
    keys = person_ids(100_000)
    stored = keys[::5]  # 20,000 records
    await push_ndjson(node, code, [{"id_number": x, "name": "张三"} for x in stored])
    status, body = await call(node, code, "compare", {"keys": keys})
    assert status == 200, body
    assert body["total"] == 100_000 and body["found"] == 20_000
    assert [r["found"] for r in body["results"][:10]] == [True, False, False, False, False] * 2


# Share types, other nodes, audit ---------------------------------------------------------------------------

async def test_conditional_and_none_share_types(node):
    cond = await create_resource(node, share={"type": "conditional", "condition": "用于社会救助审核"})
    none = await create_resource(node, share={"type": "none", "basis": "《中华人民共和国个人信息保护法》"})
    k = person_ids(1)[0]
    for code in (cond, none):
        await push_ndjson(node, code, [{"id_number": k, "name": "张三"}])
    for op, body in (("query", {"key": k}), ("verify", {"key": k, "fields": {"name": "张三"}}), ("compare", {"keys": [k]})):
        status, res = await call(node, cond, op, body)
        assert status == 403 and res["error"]["code"] == "GRANT_REQUIRED", res
        status, res = await call(node, none, op, body)
        assert status == 403 and res["error"]["code"] == "SHARE_FORBIDDEN", res
        assert "张三" not in json.dumps(res, ensure_ascii=False)
    # Even the provider's own department does not read a `none` resource through the sharing API.
    status, res = await call(node, none, "query", {"key": k}, "police")
    assert status == 403 and res["error"]["code"] == "SHARE_FORBIDDEN"
    # Without a grant checker a grant cannot be honoured; `none` refuses whatever the grant.
    sharing: SharingService = node.app[SHARING]
    req = Requester(node="370321", dept="X")
    checker = sharing.grant_checker
    sharing.grant_checker = None
    try:
        with pytest.raises(ApiError) as exc:
            await sharing.call("query", cond, {"key": k}, req, grant={"type": "grant"})
        assert exc.value.code == "GRANT_REQUIRED"
    finally:
        sharing.grant_checker = checker
    with pytest.raises(ApiError) as exc:
        await sharing.call("query", none, {"key": k}, req, grant={"type": "grant"})
    assert exc.value.code == "SHARE_FORBIDDEN"


async def test_grant_checker_hook_unmasks_granted_fields(people):
    node, code, k = people
    sharing: SharingService = node.app[SHARING]
    seen = []

    async def checker(entry, op, requester, grant):
        seen.append((entry["code"], op, requester.dept, grant["id"]))
        return frozenset({"phone"})

    original = sharing.grant_checker
    sharing.grant_checker = checker
    try:
        res = await sharing.call("query", code, {"key": k[0], "fields": ["name", "phone", "address"]},
                                 Requester(node="370300", dept="D1", user="u1", purpose="核查"), grant={"id": "G1"})
    finally:
        sharing.grant_checker = original
    assert res["records"] == [{"name": "张三", "phone": "13812345678", "address": "山" + "*" * 9 + "镇"}]
    assert res["masked"] == ["address"]
    assert seen == [(code, "query", "D1", "G1")]


async def test_resource_of_another_node_goes_to_the_remote_hook(node):
    """An entry received from another node: pushes are refused, calls go to `remote_call` and its router."""
    from federation.signing import generate_signing_key

    entry = {
        "type": "catalog_entry", "kind": "resource", "code": "101001/370300000001", "node": "370300", "seq": 1,
        "version": 1, "deleted": False, "updated_at": now_ms(), "name": "淄博市户籍人口", "category": "base",
        "provider": {"dept": make_gb32100("11370300MB", 1), "name": "淄博市公安局"}, "summary": "", "format": "database",
        "items": ITEMS[:2], "share": {"type": "unconditional", "condition": "", "basis": "", "methods": ["api"]},
        "open": {"public": False, "condition": ""}, "update_cycle": "daily", "published_at": "2026-01-01", "related": [],
    }
    signed = sign_json(entry, "370300", generate_signing_key("1"))
    async with write_tx(node.app[DB]) as conn:
        assert await node.app[CATALOG].apply_received(signed, conn)
    code = entry["code"]
    k = person_ids(1)[0]
    # The federation routes it; a lone node knows no subtree holding 370300.
    status, body = await call(node, code, "verify", {"key": k, "fields": {"name": "张三"}})
    assert status == 404 and body["error"]["code"] == "NODE_UNKNOWN", body
    status, body = await node.call("POST", f"/api/v1/resources/{code}/records", "police", json_body=[])
    assert status == 403
    sharing: SharingService = node.app[SHARING]
    federation_router = sharing.router
    sharing.router = None  # without the federation's router the hook answers PEER_UNREACHABLE
    try:
        status, body = await call(node, code, "verify", {"key": k, "fields": {"name": "张三"}})
    finally:
        sharing.router = federation_router
    assert status == 502 and body["error"]["code"] == "PEER_UNREACHABLE", body
    routed = []

    async def router(entry, op, params, requester, grant):
        routed.append((entry["node"], op, params, requester.dept))
        return {"match": True, "fields": {"name": True}, "via": ["370300"]}

    sharing.router = router
    try:
        status, body = await call(node, code, "verify", {"key": k, "fields": {"name": "张三"}})
    finally:
        sharing.router = federation_router
    assert status == 200 and body["via"] == ["370300"]
    assert routed == [("370300", "verify", {"key": k, "fields": {"name": "张三"}}, CIVIL)]


async def test_unknown_resource_and_audit(people):
    node, code, k = people
    status, body = await call(node, "101001/370321999999", "query", {"key": k[0]})
    assert status == 404 and body["error"]["code"] == "NOT_FOUND"
    status, body = await node.call("POST", f"/api/v1/resources/{code}/verify", None, json_body={"key": k[0], "fields": {}})
    assert status == 401
    status, _ = await call(node, code, "verify", {"key": k[1], "fields": {"name": "李四"}})
    assert status == 200
    status, _ = await call(node, code, "compare", {"records": [{"id_number": k[2], "name": "x"}, {"id_number": k[3]}]})
    assert status == 200
    status, page = await node.call("GET", f"/api/v1/audit?resource={code}&limit=5", "auditor")
    assert status == 200
    compare_rec, verify_rec = page["records"][0], page["records"][1]
    assert compare_rec["action"] == "sharing.compare" and compare_rec["keys_digest"] == keys_digest([k[2], k[3]])
    assert verify_rec["action"] == "sharing.verify" and verify_rec["keys_digest"] == keys_digest([k[1]])
    assert verify_rec["actor"] == f"370321/{CIVIL}" and compare_rec["resource"] == code


def test_masking_rules():
    assert masker("C", "gb11643")("370321199001010015") == "370321********0015"
    assert masker("C")("370321199001010015") == "370321********0015"
    assert masker("C")("13812345678") == "138****5678"
    assert masker("C")("+8613812345678") == "+86138****5678"
    assert masker("C", "gb32100")("91370406L24894136J") == "91370406********6J"
    assert masker("C")("张三") == "张*" and masker("C")("欧阳娜娜") == "欧**娜" and masker("M")("字") == "*"
    assert mask_text("") == ""
    assert masker("D")("1990-01-01") == "1990-**-**"
    assert masker("T")("1990-01-01T08:00:00") == "1990-**-**T**:**:**"
    for t, v in (("N", "8000.5"), ("Y", "1"), ("I", 3), ("F", 1.5), ("L", True), ("G", "QUFB"), ("B", "QUFB")):
        assert masker(t)(v) is None
