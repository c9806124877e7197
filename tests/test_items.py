"""Service items and 一证通办 (SPEC §16) on the four-node tree: population data at the province, a marriage
register at the city, a licence issued at the other county. An item implemented at a county with four
materials (one not shareable) gathers the three others for a valid ID in one call, each with its `via`; an
implemented item whose elements differ from its basic item is refused with the field named; items replicate
signed to every node; XLSX export and import (all or none, refusals by row); 材料减免率 counted; and with the
city stopped, the city's material is `unreachable` within the peer timeout while the others still arrive."""

from __future__ import annotations

import asyncio
import io
import time
from datetime import date, timedelta

import pytest
import pytest_asyncio
from openpyxl import Workbook, load_workbook

from node.ids import make_gb11643, make_gb32100
from portal_support import add_person_async
from support import (add_dept_async, error_code, init_home, start_federation, start_node, start_worker, stop_all,
                     wait_for)

pytestmark = pytest.mark.asyncio(loop_scope="module")

PROVINCE_POLICE = make_gb32100("11370000MB", 1)   # 山东省公安厅: the population register
CITY_CIVIL = make_gb32100("11370300MB", 2)        # 淄博市民政局: the marriage register
OTHER_MARKET = make_gb32100("11370303MB", 5)      # 张店区市场监督管理局: issues the licence
COUNTY_MARKET = make_gb32100("11370321MB", 5)     # 桓台县市场监督管理局: implements the item
PROVINCE_HALL = make_gb32100("11370000MB", 9)     # 山东省政务服务中心: a clerk at the province
BUSINESS_LICENCE = make_gb32100("11100000MB", 3) + "001"
PERSON = make_gb11643("370321", "19900101", 4)
STRANGER = make_gb11643("370303", "19851111", 7)
PEER_TIMEOUT_S = 5.0  # FAST_FEDERATION's

POPULATION = {
    "classification": "101001", "name": "山东省户籍人口基本信息", "category": "base", "format": "database",
    "items": [{"name": "公民身份号码", "field": "id_number", "type": "C", "length": 18, "key": True, "sensitive": True},
              {"name": "姓名", "field": "name", "type": "C", "length": 50},
              {"name": "住址", "field": "address", "type": "C", "length": 200}],
    "share": {"type": "unconditional", "methods": ["api"]}, "update_cycle": "realtime",
}
MARRIAGE = {
    "classification": "102003", "name": "淄博市婚姻登记信息", "category": "theme", "format": "database",
    "items": [{"name": "公民身份号码", "field": "id_number", "type": "C", "length": 18, "key": True, "sensitive": True},
              {"name": "姓名", "field": "name", "type": "C", "length": 50},
              {"name": "婚姻状况", "field": "marital_status", "type": "C", "length": 10}],
    "share": {"type": "unconditional", "methods": ["api"]}, "update_cycle": "daily",
}
BASIC = {"kind": "basic", "name": "食品经营许可", "type": "XK",
         "basis": "《中华人民共和国食品安全法》第三十五条"}


def implemented(basic_code: str, population: str, marriage: str, **kw) -> dict:  # noqa: ANN003
    body = {**BASIC, "kind": "implemented", "basic_code": basic_code, "time_limit": 10, "materials": [
        {"id": "m1", "name": "居民户口簿", "by_sharing": {"resource": population, "op": "query",
                                                          "fields": ["name", "address"]}},
        {"id": "m2", "name": "婚姻状况证明", "by_sharing": {"resource": marriage, "op": "verify",
                                                             "fields": ["name", "marital_status"]}},
        {"id": "m3", "name": "营业执照", "by_sharing": {"licence_type": BUSINESS_LICENCE}},
        {"id": "m4", "name": "经营场所使用证明", "by_sharing": None},
    ]}
    body.update(kw)
    return body


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def fed(tmp_path_factory):
    nodes = await start_federation(tmp_path_factory.mktemp("items"))
    try:
        province, city, county, other = (nodes[c] for c in ("370000", "370300", "370321", "370303"))
        province.tokens.update(police=await add_dept_async(province.config.home, PROVINCE_POLICE, "山东省公安厅"),
                               hall=await add_dept_async(province.config.home, PROVINCE_HALL, "山东省政务服务中心"),
                               operator=await add_dept_async(province.config.home, "OPERATOR", "山东省大数据局",
                                                             "operator"))
        city.tokens["civil"] = await add_dept_async(city.config.home, CITY_CIVIL, "淄博市民政局")
        other.tokens["market"] = await add_dept_async(other.config.home, OTHER_MARKET, "张店区市场监督管理局")
        county.tokens.update(market=await add_dept_async(county.config.home, COUNTY_MARKET, "桓台县市场监督管理局"),
                             operator=await add_dept_async(county.config.home, "OPERATOR", "桓台县大数据中心",
                                                           "operator"))
        status, pop = await province.call("POST", "/api/v1/catalog", "police", json_body=POPULATION)
        assert status == 201, pop
        status, pushed = await province.call("POST", f"/api/v1/resources/{pop['code']}/records", "police", json_body=[
            {"id_number": PERSON, "name": "张三", "address": "山东省淄博市桓台县索镇"}])
        assert status == 200, pushed
        status, mar = await city.call("POST", "/api/v1/catalog", "civil", json_body=MARRIAGE)
        assert status == 201, mar
        status, pushed = await city.call("POST", f"/api/v1/resources/{mar['code']}/records", "civil", json_body=[
            {"id_number": PERSON, "name": "张三", "marital_status": "已婚"}])
        assert status == 200, pushed
        status, licence = await other.call("POST", "/api/v1/licences", "market", json_body={
            "licence_type": {"code": BUSINESS_LICENCE, "name": "营业执照"},
            "holder": {"name": "张三", "code": PERSON},
            "valid_until": (date.today() + timedelta(days=1800)).isoformat(), "face": {"经营范围": "预包装食品销售"}})
        assert status == 201, licence
        status, basic = await province.call("POST", "/api/v1/items", "operator", json_body=BASIC)
        assert status == 201, basic

        async def everything_at_county() -> bool:
            for path in (f"/api/v1/catalog/{pop['code']}", f"/api/v1/catalog/{mar['code']}",
                         f"/api/v1/items/{basic['code']}"):
                if (await county.call("GET", path, "market"))[0] != 200:
                    return False
            status, found = await county.call("GET", f"/api/v1/licences?holder={PERSON}", "market")
            return status == 200 and found["total"] == 1

        await wait_for(everything_at_county, 30, what="the resources, the licence index and the basic item at the county")
        nodes["ctx"] = {"population": pop["code"], "marriage": mar["code"], "basic": basic,
                        "licence": licence["identifier"]}
        yield nodes
    finally:
        nodes.pop("ctx", None)
        await stop_all(nodes)


XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


async def exported(node, token: str) -> list[tuple]:  # noqa: ANN001
    url = node.url + f"/api/v1/items/export.xlsx?node={node.config.node.id}"
    async with node.session.get(url, headers={"Authorization": f"Bearer {node.tokens[token]}"}) as resp:
        assert resp.status == 200 and resp.content_type == XLSX
        return list(load_workbook(io.BytesIO(await resp.read())).active.iter_rows(values_only=True))


def item_sheet(rows: list[tuple], of: str, code: str, edit=None) -> bytes:  # noqa: ANN001
    """The exported rows of item `of` under a new code, each changed by `edit`, as an XLSX file."""
    wb = Workbook()
    ws = wb.active
    ws.append(list(rows[0]))
    for r in rows[1:]:
        if r[1] != of:
            continue
        r = list(r)
        r[1] = code
        if edit:
            edit(r)
        ws.append(r)
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()


def unknown_way_of_sharing(r: list) -> None:
    if r[7] == "m3":  # the 3rd material (row 4)
        r[10] = "邮寄"


async def publish_item(fed) -> dict:  # noqa: ANN001
    ctx = fed["ctx"]
    if "item" not in ctx:
        status, item = await fed["370321"].call("POST", "/api/v1/items", "market", json_body=implemented(
            ctx["basic"]["code"], ctx["population"], ctx["marriage"]))
        assert status == 201, item
        ctx["item"] = item
    return ctx["item"]


async def gather(node, token: str, code: str, subject: str, **values) -> dict:  # noqa: ANN001, ANN003
    status, result = await node.call("POST", f"/api/v1/items/{code}/materials", token, json_body={
        "subject": {"code": subject}, "purpose": "办理食品经营许可", "values": values})
    assert status == 200, result
    return result


async def test_basic_items_are_defined_at_the_province_and_implemented_ones_copy_them_unchanged(fed):
    province, county = fed["370000"], fed["370321"]
    basic = fed["ctx"]["basic"]
    assert basic["code"] == basic["basic_code"] and basic["code"].startswith("370000-XK-")
    assert basic["scope"] == "province" and set(basic["signatures"]) == {"370000"}
    # Not at a county, and not by a department.
    status, answer = await county.call("POST", "/api/v1/items", "operator", json_body=BASIC)
    assert status == 403 and error_code(answer) == "FORBIDDEN", answer
    status, answer = await province.call("POST", "/api/v1/items", "police", json_body=BASIC)
    assert status == 403, answer

    ctx = fed["ctx"]
    for field, value in (("name", "食品经营许可（告知承诺）"), ("type", "QR"), ("basis", "《食品经营许可管理办法》")):
        body = implemented(basic["code"], ctx["population"], ctx["marriage"], **{field: value})
        status, answer = await county.call("POST", "/api/v1/items", "market", json_body=body)
        assert status == 400 and error_code(answer) == "INVALID_INPUT", answer
        assert [d["field"] for d in answer["error"]["details"]] == [field], answer
    body = implemented(basic["code"], ctx["population"], ctx["marriage"])
    body["materials"][1]["by_sharing"]["fields"] = ["name", "spouse"]
    status, answer = await county.call("POST", "/api/v1/items", "market", json_body=body)
    assert status == 400 and answer["error"]["details"][0]["field"] == "materials.1.by_sharing.fields", answer
    status, answer = await county.call("POST", "/api/v1/items", "market", json_body=implemented(
        "370000-XK-99999", ctx["population"], ctx["marriage"]))
    assert status == 400 and answer["error"]["details"][0]["field"] == "basic_code", answer
    status, page = await county.call("GET", "/api/v1/items?kind=implemented", "market")
    assert status == 200 and page["total"] == 0, page  # nothing refused was stored

    item = await publish_item(fed)
    assert item["code"] == f"{basic['code']}/370321001" and item["dept"] == {"dept": COUNTY_MARKET,
                                                                             "name": "桓台县市场监督管理局"}
    assert {k: item[k] for k in ("name", "type", "basis", "basic_code")} == {
        k: basic[k] for k in ("name", "type", "basis", "basic_code")}
    # Replicated, signed by the county, to every node of the province.
    for code in ("370000", "370300", "370303"):
        node = fed[code]
        got = await wait_for(lambda node=node: _get(node, item["code"]), 20, what=f"the item at {code}")
        assert got == item
    status, page = await province.call("GET", "/api/v1/items?q=食品经营", "hall")
    assert status == 200 and {i["code"] for i in page["items"]} == {basic["code"], item["code"]}, page


async def _get(node, code: str) -> dict | None:  # noqa: ANN001
    token = next(iter(node.tokens))
    status, got = await node.call("GET", f"/api/v1/items/{code.replace('/', '%2F')}", token)
    return got if status == 200 else None


async def test_one_id_gathers_three_materials_from_three_nodes_in_one_call(fed):
    county, province = fed["370321"], fed["370000"]
    item = await publish_item(fed)
    result = await gather(county, "market", item["code"], PERSON, name="张三", marital_status="已婚")
    by_id = {m["id"]: m for m in result["materials"]}
    assert by_id["m1"]["outcome"] == "obtained" and by_id["m1"]["via"] == ["370300", "370000"], by_id["m1"]
    assert by_id["m1"]["record"] == {"name": "张三", "address": "山东省淄博市桓台县索镇"}
    assert by_id["m2"]["outcome"] == "verified" and by_id["m2"]["via"] == ["370300"], by_id["m2"]
    assert by_id["m2"]["fields"] == {"name": True, "marital_status": True}
    assert by_id["m3"]["outcome"] == "verified" and by_id["m3"]["via"] == ["370303"], by_id["m3"]
    assert by_id["m3"]["licence"]["identifier"] == fed["ctx"]["licence"]
    assert by_id["m3"]["licence"]["source"] == "issuer"
    assert by_id["m4"]["outcome"] == "not_shareable" and by_id["m4"]["via"] == []
    assert (result["total"], result["shareable"], result["replaced"], result["to_bring"]) == (4, 3, 3, ["经营场所使用证明"])
    assert PERSON not in str(result["subject"])

    # A statement that the register does not confirm, and an applicant nobody holds anything on.
    result = await gather(county, "market", item["code"], PERSON, name="张三", marital_status="未婚")
    assert {m["id"]: m["outcome"] for m in result["materials"]} == {
        "m1": "obtained", "m2": "mismatch", "m3": "verified", "m4": "not_shareable"}
    assert result["materials"][1]["fields"] == {"name": True, "marital_status": False}
    result = await gather(county, "market", item["code"], STRANGER, name="李四", marital_status="未婚")
    assert {m["id"]: m["outcome"] for m in result["materials"]} == {
        "m1": "not_found", "m2": "mismatch", "m3": "not_found", "m4": "not_shareable"}

    # Bad input: a code that fails its check, a verified material's value left out, no purpose.
    for body, field in (({"subject": {"code": PERSON[:-1] + ("0" if PERSON[-1] != "0" else "1")}, "purpose": "x",
                          "values": {"name": "张三", "marital_status": "已婚"}}, "subject"),
                        ({"subject": {"code": PERSON}, "purpose": "x", "values": {"name": "张三"}},
                         "values.marital_status"),
                        ({"subject": {"code": PERSON}, "purpose": " ", "values": {}}, "purpose")):
        status, answer = await county.call("POST", f"/api/v1/items/{item['code']}/materials", "market", json_body=body)
        assert status == 400 and error_code(answer) == "INVALID_INPUT", answer
        assert any(d["field"].startswith(field) for d in answer["error"]["details"]), answer

    # 材料减免率: three calls of four materials, 3 + 2 + 0 obtained or verified.
    status, stats = await county.call("GET", "/api/v1/items/stats", "market")
    assert status == 200, stats
    (fig,) = stats["items"]
    assert (fig["code"], fig["calls"], fig["materials"], fig["shareable"], fig["replaced"]) == (
        item["code"], 3, 4, 3, 5), fig
    assert fig["design_rate"] == 0.75 and fig["reduction_rate"] == round(5 / 12, 4)
    assert fig["obtained_rate"] == round(5 / 9, 4)
    assert fig["outcomes"]["mismatch"] == 2 and fig["outcomes"]["not_found"] == 2
    assert stats["depts"] == [{"dept": COUNTY_MARKET, "name": "桓台县市场监督管理局", "items": 1, "materials": 4,
                               "shareable": 3, "design_rate": 0.75, "calls": 3, "replaced": 5,
                               "reduction_rate": round(5 / 12, 4)}]

    # Audited with the purpose at the clerk's node, and at the provider with the requester.
    status, audit = await county.call("GET", f"/api/v1/audit?resource={item['code']}", "operator")
    assert status == 200, audit
    record = next(r for r in audit["records"] if r["action"] == "items.materials" and r["status"] == 200)
    assert record["details"]["purpose"] == "办理食品经营许可" and record["keys_digest"]
    assert record["details"]["outcomes"]["m1"] in ("obtained", "not_found")
    status, audit = await province.call("GET", f"/api/v1/audit?resource={fed['ctx']['population']}&limit=20",
                                        "operator")
    assert status == 200, audit
    assert any(r["actor"] == "370321" and r["action"] == "federation.deliver"
               and r["details"].get("requester") == f"370321/{COUNTY_MARKET}"
               and r["details"].get("purpose") == "办理食品经营许可" for r in audit["records"]), audit


async def test_items_export_and_import_as_xlsx_all_or_none(fed):
    county = fed["370321"]
    item = await publish_item(fed)
    rows = await exported(county, "market")
    assert rows[0][:3] == ("基本编码", "实施编码", "事项名称")
    mine = [r for r in rows if r[1] == item["code"]]
    assert len(mine) == 4 and mine[0][7:12] == ("m1", "居民户口簿", "是", "查询", fed["ctx"]["population"])
    assert mine[2][10:12] == ("证照", BUSINESS_LICENCE) and mine[3][10] is None

    new_code = item["code"][:-3] + "002"
    status, answer = await county.call("POST", "/api/v1/items/import", "market",
                                       data=item_sheet(rows, item["code"], new_code, unknown_way_of_sharing),
                                       headers={"Content-Type": XLSX})
    assert status == 400 and answer["error"]["details"][0]["row"] == 4, answer
    assert answer["error"]["details"][0]["field"] == "共享方式"
    assert await _get(county, new_code) is None
    status, answer = await county.call("POST", "/api/v1/items/import", "market",
                                       data=item_sheet(rows, item["code"], new_code), headers={"Content-Type": XLSX})
    assert status == 201 and answer["published"] == [new_code], answer
    got = await _get(county, new_code)
    assert got["materials"] == item["materials"] and got["dept"] == item["dept"]
    # The same file again: the code is taken, and nothing is written twice.
    status, answer = await county.call("POST", "/api/v1/items/import", "market",
                                       data=item_sheet(rows, item["code"], new_code), headers={"Content-Type": XLSX})
    assert status == 409 and error_code(answer) == "CONFLICT", answer
    status, answer = await county.call("POST", "/api/v1/items/import", "market", data=b"PK not a workbook",
                                       headers={"Content-Type": XLSX})
    assert status == 400 and error_code(answer) == "INVALID_INPUT", answer


async def test_a_conditional_source_says_no_grant_and_items_change_and_withdraw_everywhere(fed):
    province, county = fed["370000"], fed["370321"]
    ctx = fed["ctx"]
    status, entry = await province.call("POST", "/api/v1/catalog", "police", json_body={
        **POPULATION, "classification": "101003", "name": "山东省不动产登记信息",
        "share": {"type": "conditional", "condition": "须经自然资源部门同意", "methods": ["api"]}})
    assert status == 201, entry
    await wait_for(lambda: _catalog_at(county, entry["code"]), 20, what="the conditional entry at the county")
    body = implemented(ctx["basic"]["code"], ctx["population"], ctx["marriage"], code=ctx["basic"]["code"] + "/370321010")
    body["materials"] = [{"id": "p1", "name": "不动产权证书", "by_sharing": {"resource": entry["code"], "op": "query",
                                                                        "fields": ["name"]}}]
    status, item = await county.call("POST", "/api/v1/items", "market", json_body=body)
    assert status == 201 and item["code"].endswith("/370321010"), item
    result = await gather(county, "market", item["code"], PERSON)
    (p1,) = result["materials"]
    assert (p1["outcome"], p1["error"]["code"]) == ("no_grant", "GRANT_REQUIRED"), p1

    # Changed (a new version, replicated) and withdrawn (a tombstone, replicated): only by its department.
    path = f"/api/v1/items/{item['code']}"
    status, answer = await county.call("PUT", path, "operator", json_body={**body, "time_limit": 5})
    assert status == 403, answer
    status, changed = await county.call("PUT", path, "market", json_body={**body, "time_limit": 5})
    assert status == 200 and (changed["version"], changed["time_limit"]) == (2, 5), changed
    status, answer = await county.call("PUT", path, "market", json_body={**body, "name": "别的名称"})
    assert status == 400 and answer["error"]["details"][0]["field"] == "name", answer
    got = await wait_for(lambda: _version_at(province, item["code"], 2), 20, what="version 2 at the province")
    assert got == changed
    status, answer = await province.call("DELETE", path, "operator")
    assert status == 403, answer  # only its origin changes it
    status, gone = await county.call("DELETE", path, "market")
    assert status == 200 and gone["deleted"] is True, gone
    await wait_for(lambda: _gone_at(province, item["code"]), 20, what="the tombstone at the province")
    status, answer = await county.call("POST", f"{path}/materials", "market", json_body={
        "subject": {"code": PERSON}, "purpose": "办理", "values": {}})
    assert status == 404 and error_code(answer) == "NOT_FOUND", answer


async def _catalog_at(node, code: str) -> bool:  # noqa: ANN001
    return (await node.call("GET", f"/api/v1/catalog/{code}", next(iter(node.tokens))))[0] == 200


async def _version_at(node, code: str, version: int) -> dict | None:  # noqa: ANN001
    got = await _get(node, code)
    return got if got is not None and got["version"] == version else None


async def _gone_at(node, code: str) -> bool:  # noqa: ANN001
    status, _ = await node.call("GET", f"/api/v1/items/{code.replace('/', '%2F')}", next(iter(node.tokens)))
    return status == 404


async def test_a_clerk_finds_the_item_and_gathers_its_materials_in_the_portal(fed, portal_page):
    county = fed["370321"]
    item = await publish_item(fed)
    initial = await add_person_async(county.config.home, "wangfang", COUNTY_MARKET, name="王芳")
    portal = await portal_page(county.url)
    await portal.first_sign_in("wangfang", initial, "Zibo-Huantai-2026")

    await portal.goto("/portal/items")
    await portal.fill("关键词", "食品经营")
    await portal.press("搜索")
    text = await portal.text()
    status, page = await county.call("GET", "/api/v1/items?q=食品经营", "market")
    assert status == 200 and page["total"] >= 2
    assert f"找到 {page['total']} 项事项" in text and "桓台县市场监督管理局" in text and "10 个工作日" in text, text
    await portal.screenshot("items-search")
    href = "/portal/items/" + item["code"].replace("/", "%2F")
    await portal.page.locator(f'a[href="{href}"]').click()
    await portal.page.wait_for_load_state()
    assert item["code"] in (await portal.text()), portal.page.url
    text = await portal.text()
    for words in ("申请材料（共 4 项，其中 3 项可由数据共享替代）", "居民户口簿", "数据查询", "山东省户籍人口基本信息",
                  "数据核验", "淄博市婚姻登记信息", "电子证照查验", "需申请人提交", "《中华人民共和国食品安全法》第三十五条"):
        assert words in text, (words, text)
    await portal.screenshot("item-page")

    await portal.page.get_by_role("link", name="一证通办").click()
    await portal.page.wait_for_load_state()
    await portal.press("获取材料")  # nothing filled in: refused, each control named
    assert "请填写申请人的证件号码" in await portal.alert()
    await portal.fill("证件号码", PERSON)
    await portal.fill("姓名", "张三")
    await portal.fill("婚姻状况", "已婚")
    await portal.fill("用途", "办理食品经营许可")
    await portal.press("获取材料")
    text = await portal.text()
    assert "结果：3 / 4 项材料无需申请人提交" in text and "仍需申请人提交：经营场所使用证明" in text, text
    rows = portal.page.locator("table.materials tbody tr")
    assert "已获取" in await rows.nth(0).inner_text() and "淄博市 → 山东省" in await rows.nth(0).inner_text()
    assert "住址：山东省淄博市桓台县索镇" in await rows.nth(0).inner_text()
    assert "已核验" in await rows.nth(1).inner_text() and "淄博市" in await rows.nth(1).inner_text()
    assert "已核验" in await rows.nth(2).inner_text() and "张店区" in await rows.nth(2).inner_text()
    assert "需申请人提交" in await rows.nth(3).inner_text()
    await portal.screenshot("item-gather")

    # Import from XLSX in the portal: a refused file shows its rows, and nothing is published; then a good one.
    rows = await exported(county, "market")
    new_code = item["code"][:-3] + "020"
    for data, expected in ((item_sheet(rows, item["code"], new_code, unknown_way_of_sharing),
                            "文件中有 1 处问题，整个文件未导入"),
                           (item_sheet(rows, item["code"], new_code), "已导入 1 项实施清单事项")):
        await portal.goto("/portal/items")
        await portal.page.get_by_text("从 XLSX 导入本部门的实施清单事项").click()
        await portal.page.get_by_label("事项文件").set_input_files(
            files=[{"name": "items.xlsx", "mimeType": XLSX, "buffer": data}])
        await portal.press("导入")
        text = await portal.text()
        assert expected in text, text
        if "问题" in expected:
            assert "应为 核验、查询、证照 或留空" in text and await _get(county, new_code) is None
            await portal.screenshot("items-import-refused")
    assert (await _get(county, new_code))["materials"] == item["materials"]

    await portal.goto("/portal/items/stats")
    text = await portal.text()
    assert "实际材料减免率" in text and "桓台县市场监督管理局" in text, text
    await portal.screenshot("item-stats")
    status, audit = await county.call("GET", f"/api/v1/audit?resource={item['code']}", "operator")
    assert any(r["user"] == "wangfang" and r["action"] == "portal.item.gather.post" and r["status"] == 200
               and r["details"]["purpose"] == "办理食品经营许可" for r in audit["records"]), audit


async def test_the_totals_add_up_across_workers_on_postgresql(tmp_path):
    """材料减免率 counted by two workers of one node at once (PostgreSQL): no call is lost or counted twice."""
    config = init_home(tmp_path / "province", "370000", "山东省", backend="postgresql")
    police = await add_dept_async(config.home, PROVINCE_POLICE, "山东省公安厅")
    hall = await add_dept_async(config.home, PROVINCE_HALL, "山东省政务服务中心")
    operator = await add_dept_async(config.home, "OPERATOR", "山东省大数据局", "operator")
    workers = {"a": await start_node(config)}
    try:
        workers["b"] = await start_worker(config)
        a, b = workers.values()
        status, pop = await a.call("POST", "/api/v1/catalog", police, json_body=POPULATION)
        assert status == 201, pop
        await a.call("POST", f"/api/v1/resources/{pop['code']}/records", police, json_body=[
            {"id_number": PERSON, "name": "张三", "address": "山东省济南市历下区"}])
        status, basic = await b.call("POST", "/api/v1/items", operator, json_body={**BASIC, "type": "GG"})
        assert status == 201, basic
        status, item = await a.call("POST", "/api/v1/items", hall, json_body={
            **BASIC, "type": "GG", "kind": "implemented", "basic_code": basic["code"], "time_limit": 1, "materials": [
                {"id": "m1", "name": "居民户口簿", "by_sharing": {"resource": pop["code"], "op": "query",
                                                                  "fields": ["name"]}},
                {"id": "m2", "name": "申请表", "by_sharing": None}]})
        assert status == 201, item
        subjects = [PERSON if i % 2 else STRANGER for i in range(24)]
        results = await asyncio.gather(*(gather(workers["ab"[i % 2]], hall, item["code"], s)
                                         for i, s in enumerate(subjects)))
        assert [r["replaced"] for r in results] == [1 if s == PERSON else 0 for s in subjects]
        status, stats = await b.call("GET", f"/api/v1/items/stats?item={item['code']}", hall)
        assert status == 200, stats
        (fig,) = stats["items"]
        assert (fig["calls"], fig["replaced"], fig["outcomes"]["not_found"], fig["outcomes"]["not_shareable"]) == (
            24, 12, 12, 24), fig
    finally:
        await stop_all(workers)


async def test_with_the_city_stopped_its_material_is_unreachable_and_the_others_arrive(fed):
    """Run last: it stops the city. The clerk is at the province (全省通办): the population register is its own,
    the licence's index reached it before, and the city's register is beyond the stopped node. First the city's
    address answers nothing at all (a hung node: a listener that accepts and never replies), then it refuses."""
    province, county = fed["370000"], fed["370321"]
    item = await publish_item(fed)
    await wait_for(lambda: _get(province, item["code"]), 20, what="the item at the province")
    city = fed.pop("370300")
    await city.stop()
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    hung = await asyncio.start_server(hold, "127.0.0.1", city.config.port)
    try:
        started = time.monotonic()
        result = await gather(province, "hall", item["code"], PERSON, name="张三", marital_status="已婚")
        elapsed = time.monotonic() - started
    finally:
        hung.close()
        for w in held:
            w.transport.abort()
        await hung.wait_closed()
    by_id = {m["id"]: m for m in result["materials"]}
    assert (by_id["m2"]["outcome"], by_id["m2"]["error"]["code"]) == ("unreachable", "PEER_TIMEOUT"), by_id["m2"]
    assert by_id["m1"]["outcome"] == "obtained" and by_id["m1"]["via"] == ["370000"], by_id["m1"]
    assert by_id["m3"]["outcome"] == "verified" and by_id["m3"]["licence"]["source"] == "replicated index"
    # The hung source cost the peer timeout and no more; the others did not wait for it.
    assert PEER_TIMEOUT_S - 0.5 < elapsed < PEER_TIMEOUT_S + 2.5, elapsed
    assert by_id["m1"]["elapsed_ms"] < 2000 and by_id["m2"]["elapsed_ms"] >= (PEER_TIMEOUT_S - 0.5) * 1000

    # Stopped (connections refused): the same outcome at once.
    started = time.monotonic()
    result = await gather(province, "hall", item["code"], PERSON, name="张三", marital_status="已婚")
    assert time.monotonic() - started < PEER_TIMEOUT_S
    assert {m["id"]: m["outcome"] for m in result["materials"]} == {
        "m1": "obtained", "m2": "unreachable", "m3": "verified", "m4": "not_shareable"}, result
    # At the county, beyond the city, every shareable material says so on its own, within the timeout.
    started = time.monotonic()
    result = await gather(county, "market", item["code"], PERSON, name="张三", marital_status="已婚")
    assert time.monotonic() - started < PEER_TIMEOUT_S + 2.5
    assert {m["id"]: m["outcome"] for m in result["materials"]} == {
        "m1": "unreachable", "m2": "unreachable", "m3": "verified", "m4": "not_shareable"}, result
