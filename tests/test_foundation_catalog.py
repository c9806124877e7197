"""Catalog (SPEC §7, §10): registration, every rule of an entry, ownership, versions, tombstones, search,
and entries exactly as signed (checked with the independent `signedjson` package)."""

from __future__ import annotations

import copy
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from signedjson.key import generate_signing_key as sj_generate, get_verify_key, read_signing_keys
from signedjson.sign import SignatureVerifyException, sign_json as sj_sign, verify_signed_json

from support import CIVIL, POLICE, raw_sql

CATALOG = "/api/v1/catalog"


def entry_body(**over: Any) -> dict[str, Any]:
    """A valid registration of the county police's household register (户籍人口基本信息)."""
    body: dict[str, Any] = {
        "classification": "101001",
        "name": "桓台县户籍人口基本信息",
        "category": "base",
        "summary": "全县户籍人口的基本信息",
        "format": "database",
        "items": [
            {"name": "公民身份号码", "field": "id_number", "type": "C", "length": 18, "key": True,
             "sensitive": True, "check": "gb11643"},
            {"name": "姓名", "field": "name", "type": "C", "length": 50},
            {"name": "出生日期", "field": "birth_date", "type": "D"},
        ],
        "share": {"type": "conditional", "condition": "用于社会保障资格核验", "methods": ["api", "table"]},
        "open": {"public": False},
        "update_cycle": "realtime",
    }
    body.update(over)
    return body


def content_body(**over: Any) -> dict[str, Any]:
    """A PUT body: the entry's content without code or classification."""
    body = entry_body(**over)
    del body["classification"]
    return body


def verify_key_of(home: Path):
    with (home / "signing.key").open() as stream:
        (key,) = read_signing_keys(stream)
    return get_verify_key(key)


async def create(node, body: dict | None = None, token: str = "police") -> dict:
    status, entry = await node.call("POST", CATALOG, token, json_body=body or entry_body())
    assert status == 201, entry
    return entry


async def count_entries(node) -> int:
    return (await raw_sql(node.config, "SELECT count(*) FROM catalog_entries"))[0][0]


# Registration ---------------------------------------------------------------------------------------

async def test_register_by_classification(node):
    first = await create(node)
    second = await create(node, entry_body(classification="101001001", name="另一个资源"))
    assert first["code"] == "101001/370321000001"
    assert second["code"] == "101001001/370321000002"
    # The 13 core elements of the guide, all present.
    assert first["code"].split("/")[0] == "101001"                       # 分类
    assert first["name"] == "桓台县户籍人口基本信息"                        # 名称
    assert first["provider"] == {"dept": POLICE, "name": "桓台县公安局"}  # 提供方, 提供方代码
    assert first["summary"] and first["format"] == "database"            # 摘要, 格式
    assert [i["field"] for i in first["items"]] == ["id_number", "name", "birth_date"]  # 信息项
    assert first["share"]["type"] == "conditional" and first["open"] == {"public": False, "condition": ""}
    assert first["update_cycle"] == "realtime" and first["related"] == []
    today = datetime.now(timezone(timedelta(hours=8))).date().isoformat()
    assert first["published_at"] == today                               # 发布日期
    assert (first["type"], first["kind"], first["node"]) == ("catalog_entry", "resource", "370321")
    assert (first["version"], first["deleted"]) == (1, False)
    assert (first["seq"], second["seq"]) == (1, 2)
    assert isinstance(first["updated_at"], int) and first["updated_at"] > 1_700_000_000_000
    # Unset item attributes are left out, set ones kept.
    assert first["items"][0]["key"] is True and first["items"][0]["check"] == "gb11643"
    assert "key" not in first["items"][1] and "sensitive" not in first["items"][1]


async def test_register_by_full_code(node):
    entry = await create(node, entry_body(classification=None, code="201002/370321900001",
                                          published_at="2026-01-05", related=["101001/370300000001"]))
    assert entry["code"] == "201002/370321900001"
    assert entry["published_at"] == "2026-01-05" and entry["related"] == ["101001/370300000001"]
    status, body = await node.call("POST", CATALOG, "civil",
                                   json_body=entry_body(classification=None, code="201002/370321900001"))
    assert status == 409 and body["error"]["code"] == "CONFLICT"
    assert (await node.call("GET", f"{CATALOG}/201002/370321900001", "police"))[1]["provider"]["dept"] == POLICE


async def test_numbering_skips_codes_registered_in_full(node):
    """An auto-numbered code never lands on (and overwrites) a code a department registered in full."""
    taken = await create(node, entry_body(classification=None, code="101001/370321000001"), token="civil")
    entry = await create(node)
    assert entry["code"] == "101001/370321000002"
    status, held = await node.call("GET", f"{CATALOG}/{taken['code']}", "police")
    assert status == 200 and held == taken


@pytest.mark.parametrize("code", ["101001/370300000001", "101001/110000000001"])
async def test_wrong_node_prefix_is_refused(node, code):
    status, body = await node.call("POST", CATALOG, "police", json_body=entry_body(classification=None, code=code))
    assert status == 400 and body["error"]["code"] == "INVALID_INPUT"
    assert "370321" in body["error"]["message"]
    assert body["error"]["details"][0]["field"] == "code"
    assert await count_entries(node) == 0


async def test_code_or_classification(node):
    for over, field in [
        ({"classification": None}, "(body)"),                                  # neither code nor classification
        ({"code": "101001/370321000009"}, "(body)"),                           # both
        ({"classification": "10100"}, "classification"),
        ({"classification": None, "code": "101001-370321000001"}, "code"),
    ]:
        status, body = await node.call("POST", CATALOG, "police", json_body=entry_body(**over))
        assert status == 400 and body["error"]["code"] == "INVALID_INPUT", over
        assert field in [d["field"] for d in body["error"]["details"]], over
    assert await count_entries(node) == 0


# The rules of SPEC §7 -------------------------------------------------------------------------------

def _items(*specs: dict) -> list[dict]:
    return list(specs)


KEY = {"name": "统一社会信用代码", "field": "credit_code", "type": "C", "key": True}


def without(key: str) -> dict:
    body = entry_body()
    del body[key]
    return body


BAD_BODIES = [
    # the required core elements
    ("no name", without("name"), "name"),
    ("empty name", entry_body(name=""), "name"),
    ("no category", without("category"), "category"),
    ("no format", without("format"), "format"),
    ("no items", without("items"), "items"),
    ("empty items", entry_body(items=[]), "items"),
    ("no share", without("share"), "share"),
    ("no update cycle", without("update_cycle"), "update_cycle"),
    # enumerations
    ("bad category", entry_body(category="misc"), "category"),
    ("bad format", entry_body(format="pdf"), "format"),
    ("bad update cycle", entry_body(update_cycle="hourly"), "update_cycle"),
    ("bad item type", entry_body(items=[{**KEY, "type": "X"}]), "items.0.type"),
    ("lower-case item type", entry_body(items=[{**KEY, "type": "c"}]), "items.0.type"),
    # exactly one key item
    ("no key item", entry_body(items=[{**KEY, "key": False}]), "items"),
    ("two key items", entry_body(items=[KEY, {"name": "名称", "field": "org_name", "type": "C", "key": True}]),
     "items"),
    # share-type conditions
    ("conditional without condition", entry_body(share={"type": "conditional"}), "share"),
    ("conditional with blank condition", entry_body(share={"type": "conditional", "condition": "  "}), "share"),
    ("none without basis", entry_body(share={"type": "none"}), "share"),
    ("bad share type", entry_body(share={"type": "sometimes"}), "share.type"),
    ("bad share method", entry_body(share={"type": "unconditional", "methods": ["email"]}), "share.methods.0"),
    ("repeated share method", entry_body(share={"type": "unconditional", "methods": ["api", "api"]}), "share"),
    # field pattern
    ("upper-case field", entry_body(items=[{**KEY, "field": "Credit"}]), "items.0.field"),
    ("field starting with a digit", entry_body(items=[{**KEY, "field": "1code"}]), "items.0.field"),
    ("field with a dash", entry_body(items=[{**KEY, "field": "credit-code"}]), "items.0.field"),
    ("field of 64 characters", entry_body(items=[{**KEY, "field": "a" * 64}]), "items.0.field"),
    ("empty field", entry_body(items=[{**KEY, "field": ""}]), "items.0.field"),
    # duplicates
    ("duplicate field", entry_body(items=[KEY, {"name": "别名", "field": "credit_code", "type": "C"}]), "items"),
    ("duplicate item name", entry_body(items=[KEY, {"name": KEY["name"], "field": "other", "type": "C"}]), "items"),
    # unknown fields, at every level
    ("unknown top-level field", entry_body(colour="red"), "colour"),
    ("unknown item field", entry_body(items=[{**KEY, "unit": "个"}]), "items.0.unit"),
    ("unknown share field", entry_body(share={"type": "unconditional", "price": 1}), "share.price"),
    ("unknown open field", entry_body(open={"public": True, "url": "x"}), "open.url"),
    ("client-set seq", entry_body(seq=99), "seq"),
    ("client-set provider", entry_body(provider={"dept": CIVIL, "name": "民政局"}), "provider"),
    # types and other values
    ("items not a list", entry_body(items={"a": 1}), "items"),
    ("key not a boolean", entry_body(items=[{**KEY, "key": "maybe"}]), "items.0.key"),
    ("zero length", entry_body(items=[{**KEY, "length": 0}]), "items.0.length"),
    ("bad check", entry_body(items=[{**KEY, "check": "luhn"}]), "items.0.check"),
    ("bad publish date", entry_body(published_at="2026-13-01"), "published_at"),
    ("short publish date", entry_body(published_at="2026-1-5"), "published_at"),
    ("bad related code", entry_body(related=["not-a-code"]), "related.0"),  # the bad element itself
]


async def test_entry_rules(node):
    """Each refusal names the bad field; one node serves every case (a node start per case is slow)."""
    for why, body, field in BAD_BODIES:
        status, answer = await node.call("POST", CATALOG, "police", json_body=body)
        assert status == 400, (why, answer)
        err = answer["error"]
        assert err["code"] == "INVALID_INPUT" and err["request_id"], why
        fields = [d["field"] for d in err["details"]]
        assert field in fields, (why, err["details"])
    assert await count_entries(node) == 0


GOOD_VARIANTS = [
    ("every item type", entry_body(items=[
        {**KEY, "type": "C"}, *({"name": f"项{t}", "field": f"f_{t.lower()}", "type": t} for t in "NYDTLMGBIF")])),
    ("unconditional", entry_body(share={"type": "unconditional"})),
    ("none with basis", entry_body(share={"type": "none", "basis": "《中华人民共和国个人信息保护法》"})),
    ("63-character field", entry_body(items=[{**KEY, "field": "a" + "b" * 62}])),
    ("every category, format and cycle", entry_body(category="theme", format="self_describing", update_cycle="other")),
]


async def test_entry_rules_accept(node):
    for why, body in GOOD_VARIANTS:
        entry = await create(node, body)
        assert entry["items"] == [{k: v for k, v in i.items() if v is not False} for i in body["items"]], why
        assert entry["share"]["type"] == body["share"]["type"], why
    assert await count_entries(node) == len(GOOD_VARIANTS)


async def test_methods_default_to_api(node):
    entry = await create(node, entry_body(share={"type": "unconditional"}))
    assert entry["share"] == {"type": "unconditional", "condition": "", "basis": "", "methods": ["api"]}


# Ownership, versions, tombstones ---------------------------------------------------------------------

async def test_only_the_provider_changes_or_withdraws(node):
    entry = await create(node)
    path = f"{CATALOG}/{entry['code']}"
    changed = content_body(name="改名")
    for method, body in (("PUT", changed), ("DELETE", None)):
        status, answer = await node.call(method, path, "civil", json_body=body)
        assert status == 403 and answer["error"]["code"] == "FORBIDDEN", answer
        for role in ("operator", "auditor"):
            status, answer = await node.call(method, path, role, json_body=body)
            assert status == 403 and answer["error"]["code"] == "FORBIDDEN"
    status, held = await node.call("GET", path, "civil")
    assert held == entry  # unchanged


async def test_operator_and_auditor_cannot_register(node):
    for role in ("operator", "auditor"):
        status, body = await node.call("POST", CATALOG, role, json_body=entry_body())
        assert status == 403 and body["error"]["code"] == "FORBIDDEN"
    assert await count_entries(node) == 0


async def test_changes_bump_version_and_seq(node):
    a = await create(node)
    b = await create(node, entry_body(name="桓台县婚姻登记信息"), token="civil")
    assert (a["seq"], b["seq"]) == (1, 2)
    status, a2 = await node.call("PUT", f"{CATALOG}/{a['code']}", "police",
                                 json_body=content_body(name="桓台县户籍人口信息（新）"))
    assert status == 200, a2
    assert (a2["version"], a2["seq"], a2["name"]) == (2, 3, "桓台县户籍人口信息（新）")
    assert a2["code"] == a["code"] and a2["provider"] == a["provider"]
    assert a2["published_at"] == a["published_at"]  # kept when the change does not give one
    assert a2["updated_at"] >= a["updated_at"]
    status, a3 = await node.call("PUT", f"{CATALOG}/{a['code']}", "police",
                                 json_body=content_body(published_at="2025-12-31"))
    assert (a3["version"], a3["seq"], a3["published_at"]) == (3, 4, "2025-12-31")
    # The stored entry is the newest one.
    assert (await node.call("GET", f"{CATALOG}/{a['code']}", "civil"))[1] == a3
    # The body of a change is checked like a registration, and a refused change changes nothing.
    status, body = await node.call("PUT", f"{CATALOG}/{a['code']}", "police",
                                   json_body={**entry_body(), "classification": "101001"})
    assert status == 400 and body["error"]["details"][0]["field"] == "classification"
    status, body = await node.call("PUT", f"{CATALOG}/{a['code']}", "police", json_body={"name": "only"})
    assert status == 400
    assert (await node.call("GET", f"{CATALOG}/{a['code']}", "civil"))[1] == a3


async def test_withdrawal_is_a_tombstone(node):
    keep = await create(node)
    gone = await create(node, entry_body(name="将撤销的资源"))
    path = f"{CATALOG}/{gone['code']}"
    status, tomb = await node.call("DELETE", path, "police")
    assert status == 200, tomb
    assert tomb["deleted"] is True and tomb["version"] == 2 and tomb["seq"] == 3
    assert tomb["name"] == gone["name"] and tomb["items"] == gone["items"]
    status, body = await node.call("GET", path, "civil")
    assert status == 404 and body["error"]["code"] == "NOT_FOUND"
    status, held = await node.call("GET", f"{path}?deleted=true", "civil")
    assert status == 200 and held == tomb
    status, page = await node.call("GET", CATALOG, "civil")
    assert [e["code"] for e in page["entries"]] == [keep["code"]] and page["total"] == 1
    status, page = await node.call("GET", f"{CATALOG}?deleted=true", "civil")
    assert {e["code"] for e in page["entries"]} == {keep["code"], gone["code"]} and page["total"] == 2
    # A withdrawn entry is not changed or withdrawn again.
    for method, body in (("PUT", content_body()), ("DELETE", None)):
        status, answer = await node.call(method, path, "police", json_body=body)
        assert status == 404, answer
    assert (await node.call("GET", f"{path}?deleted=true", "civil"))[1] == tomb


async def test_unknown_codes(node):
    for method in ("GET", "PUT", "DELETE"):
        body = content_body() if method == "PUT" else None
        status, answer = await node.call(method, f"{CATALOG}/101001/370321999999", "police", json_body=body)
        assert status == 404 and answer["error"]["code"] == "NOT_FOUND", (method, answer)


# Signed exactly as returned ---------------------------------------------------------------------------

async def test_get_returns_the_entry_exactly_as_signed(node):
    entry = await create(node)
    status, got = await node.call("GET", f"{CATALOG}/{entry['code']}", "civil")
    assert status == 200 and got == entry
    assert set(got["signatures"]) == {"370321"} and set(got["signatures"]["370321"]) == {"ed25519:1"}
    vk = verify_key_of(node.config.home)
    verify_signed_json(copy.deepcopy(got), "370321", vk)
    # And the signature really covers the content.
    for field, value in (("name", "别的名字"), ("seq", got["seq"] + 1), ("deleted", True)):
        forged = copy.deepcopy(got)
        forged[field] = value
        with pytest.raises(SignatureVerifyException):
            verify_signed_json(forged, "370321", vk)
    forged = copy.deepcopy(got)
    forged["items"][0]["sensitive"] = False
    with pytest.raises(SignatureVerifyException):
        verify_signed_json(forged, "370321", vk)


async def test_changes_and_tombstones_are_signed_too(node):
    vk = verify_key_of(node.config.home)
    entry = await create(node)
    path = f"{CATALOG}/{entry['code']}"
    _, changed = await node.call("PUT", path, "police",
                                 json_body=content_body(summary="新摘要"))
    _, tomb = await node.call("DELETE", path, "police")
    _, found = await node.call("GET", f"{CATALOG}?deleted=true", "police")
    for e in (changed, tomb, found["entries"][0]):
        verify_signed_json(copy.deepcopy(e), "370321", vk)
    assert found["entries"][0] == tomb


# Search ---------------------------------------------------------------------------------------------

async def seed_search(node) -> dict[str, dict]:
    bodies = {
        "hukou": ("police", entry_body(name="户籍人口基本信息", summary="户口登记")),
        "vehicle": ("police", entry_body(name="机动车登记信息", summary="机动车和驾驶人", category="department",
                                         share={"type": "unconditional"},
                                         items=[{"name": "号牌号码", "field": "plate", "type": "C", "key": True},
                                                {"name": "车辆类型", "field": "vehicle_type", "type": "C"}])),
        "marriage": ("civil", entry_body(name="婚姻登记信息", summary="结婚和离婚登记", category="theme",
                                         share={"type": "none", "basis": "依法不予共享"},
                                         items=[{"name": "登记证号", "field": "certno", "type": "C", "key": True}])),
        "relief": ("civil", entry_body(name="最低生活保障对象", summary="低保 救助",
                                       share={"type": "unconditional"},
                                       items=[{"name": "公民身份号码", "field": "id_number", "type": "C", "key": True},
                                              {"name": "保障金额", "field": "amount", "type": "N"}])),
        "funeral": ("civil", entry_body(name="殡葬信息", summary="100%_完成",
                                        items=[{"name": "火化证号", "field": "certno", "type": "C", "key": True}])),
    }
    return {k: await create(node, b, token=t) for k, (t, b) in bodies.items()}


async def search_codes(node, query: str, token: str = "auditor") -> tuple[int, set[str]]:
    status, page = await node.call("GET", f"{CATALOG}?{query}", token)
    assert status == 200, page
    return page["total"], {e["code"] for e in page["entries"]}


async def test_search_filters(node):
    e = await seed_search(node)
    c = {k: v["code"] for k, v in e.items()}
    cases = [
        ("", set(c.values())),
        ("q=婚姻", {c["marriage"]}),                       # name
        ("q=驾驶人", {c["vehicle"]}),                      # summary
        ("q=号牌号码", {c["vehicle"]}),                    # item name
        ("q=公民身份号码", {c["hukou"], c["relief"]}),      # item name shared by two
        ("q=登记 信息", {c["hukou"], c["vehicle"], c["marriage"]}),  # every word must match
        ("q=登记 机动车", {c["vehicle"]}),
        ("q=PLATE", {c["vehicle"]}),                       # case-insensitive, item field
        ("q=%25", {c["funeral"]}),                         # % is a literal, not a wildcard
        ("q=_", {c["funeral"]} | {c[k] for k in ("hukou", "relief", "vehicle") }),  # id_number, birth_date, vehicle_type
        ("q=不存在的词", set()),
        ("category=theme", {c["marriage"]}),
        ("category=department", {c["vehicle"]}),
        ("share_type=unconditional", {c["vehicle"], c["relief"]}),
        ("share_type=none", {c["marriage"]}),
        ("share_type=conditional", {c["hukou"], c["funeral"]}),
        (f"provider={POLICE}", {c["hukou"], c["vehicle"]}),
        (f"provider={CIVIL}&share_type=unconditional", {c["relief"]}),
        ("node=370321", set(c.values())),
        ("node=370300", set()),
        ("q=信息&category=base&share_type=conditional", {c["hukou"], c["funeral"]}),
        ("q=户口&category=base&share_type=conditional", {c["hukou"]}),
    ]
    for query, expected in cases:
        total, codes = await search_codes(node, query)
        assert (total, codes) == (len(expected), expected), query


async def test_search_pages(node):
    for i in range(7):
        await create(node, entry_body(name=f"资源{i}"), token="police" if i % 2 else "civil")
    seen: list[str] = []
    for page in (1, 2, 3):
        status, body = await node.call("GET", f"{CATALOG}?page={page}&page_size=3", "police")
        assert status == 200 and body["total"] == 7 and body["page"] == page and body["page_size"] == 3
        seen += [e["code"] for e in body["entries"]]
    assert len(seen) == 7 and len(set(seen)) == 7  # every entry once, none twice
    status, body = await node.call("GET", f"{CATALOG}?page=4&page_size=3", "police")
    assert body["entries"] == [] and body["total"] == 7


async def test_search_bad_parameters(node):
    for query, field in [
        ("page=0", "page"), ("page_size=0", "page_size"), ("page_size=201", "page_size"), ("page=x", "page"),
        ("category=misc", "category"), ("share_type=maybe", "share_type"), ("node=37", "node"),
        ("deleted=perhaps", "deleted"), ("colour=red", "colour"), ("q=" + "x" * 201, "q"),
    ]:
        status, body = await node.call("GET", f"{CATALOG}?{query}", "police")
        assert status == 400 and body["error"]["code"] == "INVALID_INPUT", query
        assert field in [d["field"] for d in body["error"]["details"]], query


# Entries of other origins ------------------------------------------------------------------------------

async def test_an_entry_of_another_node(node):
    """A replicated entry (as the federation stores it): returned exactly as its origin signed it, found by
    node, and never changed here."""
    from node.catalog.http import CATALOG as CATALOG_KEY
    from node.db import write_tx

    city_key = sj_generate("1")
    foreign = {
        "type": "catalog_entry", "kind": "resource", "code": "101001/370300000007", "node": "370300", "seq": 41,
        "version": 2, "deleted": False, "updated_at": 1763800000000, "name": "淄博市法人基本信息",
        "category": "base", "provider": {"dept": "11370300MB0000001X", "name": "淄博市市场监管局"},
        "summary": "", "format": "database",
        "items": [{"name": "统一社会信用代码", "field": "credit_code", "type": "C", "length": 18, "key": True}],
        "share": {"type": "unconditional", "condition": "", "basis": "", "methods": ["api"]},
        "open": {"public": True, "condition": ""}, "update_cycle": "daily", "published_at": "2026-03-01",
        "related": [],
    }
    signed = sj_sign(copy.deepcopy(foreign), "370300", city_key)
    service = node.app[CATALOG_KEY]
    async with write_tx(node.app[_db_key()]) as conn:
        assert await service.apply_received(copy.deepcopy(signed), conn) is True
    async with write_tx(node.app[_db_key()]) as conn:  # an older or equal seq is not applied
        assert await service.apply_received({**copy.deepcopy(signed), "seq": 40}, conn) is False

    status, got = await node.call("GET", f"{CATALOG}/{signed['code']}", "police")
    assert status == 200 and got == signed
    verify_signed_json(copy.deepcopy(got), "370300", get_verify_key(city_key))
    assert await search_codes(node, "node=370300") == (1, {signed["code"]})
    body = content_body()
    for method in ("PUT", "DELETE"):
        status, answer = await node.call(method, f"{CATALOG}/{signed['code']}", "police",
                                         json_body=body if method == "PUT" else None)
        assert status == 403 and answer["error"]["code"] == "FORBIDDEN"
    assert (await node.call("GET", f"{CATALOG}/{signed['code']}", "police"))[1] == signed
    # Its seq is the origin's: this node's own numbering goes on from its own counter.
    assert (await create(node))["seq"] == 1


def _db_key():
    from node.context import DB

    return DB


async def test_signedjson_verifies_what_the_service_signs(tmp_path):
    """Unit level (no HTTP): the catalog service signs with the home's key; signedjson, reading that same
    key file on its own, verifies every entry (with non-ASCII text, nested items and a tombstone)."""
    from federation.signing import read_signing_key_file
    from node.accounts.service import Account
    from node.catalog.models import EntryCreate
    from node.catalog.service import CatalogService
    from node.db import make_engine, upgrade
    from support import init_home

    config = init_home(tmp_path / "home", "370321", "桓台县")
    engine = make_engine(config.database)
    try:
        await upgrade(engine)
        service = CatalogService(engine, "370321", read_signing_key_file(config.key_path))
        acct = Account("370321", POLICE, "桓台县公安局", "dept")
        entry = await service.create(acct, EntryCreate.model_validate(entry_body(summary="含“引号”与\\\\反斜杠")))
        tomb = await service.withdraw(acct, entry["code"])
    finally:
        await engine.dispose()
    vk = verify_key_of(config.home)
    for e in (entry, tomb):
        verify_signed_json(copy.deepcopy(e), "370321", vk)
    with pytest.raises(SignatureVerifyException):
        verify_signed_json({**copy.deepcopy(entry), "version": 9}, "370321", vk)
