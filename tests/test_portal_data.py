"""Finding and using data in the portal (issue 15), in a real Chromium on a four-node tree (山东省 → 淄博市 →
桓台县, 张店区): a county clerk searches the federation's catalog by keyword and facets, opens the
province's population resource, verifies a person (一致 / 不一致), queries one and sees the sensitive items
masked, compares an uploaded file and downloads the result, with and without JavaScript; the purpose they
give is in the audit records of the county and of the province, and the city's relay record names the
person only. A grant shows on the resource's page with its end date and items. No page has a script error."""

from __future__ import annotations

import asyncio
import csv
import io
from datetime import datetime

import openpyxl
import pytest
import pytest_asyncio

from node.ids import make_gb11643, make_gb32100
from portal_support import add_person
from support import CIVIL, POLICE, add_dept_async, start_federation, stop_all, wait_for

pytestmark = pytest.mark.asyncio(loop_scope="module")

PROVINCE_POLICE = make_gb32100("11370000MB", 1)
PROVINCE_CIVIL = make_gb32100("11370000MB", 2)
PASSWORD = "桓台民政-2026a"
ITEMS = [
    {"name": "公民身份号码", "field": "id_number", "type": "C", "length": 18, "key": True, "sensitive": True,
     "check": "gb11643"},
    {"name": "姓名", "field": "name", "type": "C", "length": 50},
    {"name": "出生日期", "field": "birth_date", "type": "D"},
    {"name": "手机号码", "field": "phone", "type": "C", "length": 11, "sensitive": True},
    {"name": "住址", "field": "address", "type": "C", "length": 200, "sensitive": True},
]
PEOPLE = [make_gb11643("370321", "19900101", i) for i in range(4)]
RECORDS = [
    {"id_number": PEOPLE[0], "name": "张三丰", "birth_date": "1990-01-01", "phone": "13812345678",
     "address": "山东省淄博市桓台县索镇中心街8号"},
    {"id_number": PEOPLE[1], "name": "李四光", "birth_date": "1990-01-01", "phone": "13900001111",
     "address": "山东省淄博市张店区"},
    {"id_number": PEOPLE[2], "name": "王五", "birth_date": "1985-06-30"},
]
CORE_LABELS = ["信息资源分类", "信息资源名称", "信息资源代码", "信息资源提供方", "提供方代码", "信息资源摘要",
               "信息资源格式", "信息项", "共享属性", "开放属性", "更新周期", "发布日期", "关联资源代码"]


async def _register(node, token: str, name: str, share: dict, records: list | None = None, **extra) -> str:
    body = {"classification": "101001", "name": name, "category": "base", "format": "database",
            "summary": f"{name}（测试）", "items": ITEMS, "share": share, "update_cycle": "daily", **extra}
    status, entry = await node.call("POST", "/api/v1/catalog", token, json_body=body)
    assert status == 201, entry
    if records:
        status, res = await node.call("POST", f"/api/v1/resources/{entry['code']}/records", token, json_body=records)
        assert status == 200, res
    return entry["code"]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def fed(tmp_path_factory):
    """The tree, with the province's population (unconditional), marriages (conditional) and secrets (never
    shared), 23 small resources of the county's police (so the catalog has pages), and the county clerk 张三."""
    nodes = await start_federation(tmp_path_factory.mktemp("fed"))
    try:
        province, city, county = nodes["370000"], nodes["370300"], nodes["370321"]
        for node, depts in ((province, [(PROVINCE_POLICE, "山东省公安厅", "dept"), (PROVINCE_CIVIL, "山东省民政厅", "dept"),
                                        ("OPERATOR", "山东省大数据局", "operator"), ("AUDITOR", "山东省审计厅", "auditor")]),
                            (city, [("AUDITOR", "淄博市审计局", "auditor")]),
                            (county, [(CIVIL, "桓台县民政局", "dept"), (POLICE, "桓台县公安局", "dept"),
                                      ("AUDITOR", "桓台县审计局", "auditor")])):
            for code, name, role in depts:
                node.tokens[{"dept": code, "operator": "operator", "auditor": "auditor"}[role]] = \
                    await add_dept_async(node.config.home, code, name, role)
        codes = {
            "people": await _register(province, PROVINCE_POLICE, "山东省户籍人口基本信息",
                                      {"type": "unconditional", "methods": ["api"]}, RECORDS),
            "marriage": await _register(province, PROVINCE_CIVIL, "山东省婚姻登记信息",
                                        {"type": "conditional", "condition": "用于社会救助家庭经济状况核对", "methods": ["api"]},
                                        RECORDS),
            "secret": await _register(province, PROVINCE_POLICE, "山东省涉密人员信息",
                                      {"type": "none", "basis": "《中华人民共和国保守国家秘密法》"}),
        }
        for i in range(23):
            await _register(county, POLICE, f"桓台县户籍业务资料{i:02d}", {"type": "unconditional", "methods": ["api"]})

        async def replicated() -> bool:
            for code in codes.values():
                if (await county.call("GET", f"/api/v1/catalog/{code}", CIVIL))[0] != 200:
                    return False
            return True
        await wait_for(replicated, 30, what="the province's entries at the county")
        initial = await asyncio.to_thread(add_person, county.config.home, "zhangsan", CIVIL, None, "张三")
        yield {"nodes": nodes, "codes": codes, "initial": initial, "signed_in_once": []}
    finally:
        await stop_all(nodes)


async def clerk_page(fed, portal_page, **context_options):
    """A tab of 张三 signed in at the county (the first time, setting the password)."""
    county = fed["nodes"]["370321"]
    page = await portal_page(county.url, **context_options)
    if not fed["signed_in_once"]:
        await page.first_sign_in("zhangsan", fed["initial"], PASSWORD)
        fed["signed_in_once"].append(True)
    else:
        await page.sign_in("zhangsan", PASSWORD)
        assert page.path == "/portal/", page.page.url
    return page


async def unlabelled(page) -> list[str]:
    return await page.page.evaluate(
        "() => [...document.querySelectorAll('input:not([type=hidden]), select, textarea')]"
        ".filter(e => !e.labels.length || !e.labels[0].offsetParent).map(e => e.name)")


async def audit(node, action: str | None = None, **match) -> list[dict]:
    status, page = await node.call("GET", "/api/v1/audit?limit=500", "auditor")
    assert status == 200, page
    return [r for r in reversed(page["records"]) if (action is None or r["action"] == action)
            and all(r.get(k) == v for k, v in match.items())]


# Finding -------------------------------------------------------------------------------------------------

async def test_a_clerk_searches_the_catalog_and_opens_the_provinces_resource(fed, portal_page):
    codes = fed["codes"]
    clerk = await clerk_page(fed, portal_page)
    await clerk.page.get_by_role("link", name="数据目录", exact=True).click()
    assert clerk.path == "/portal/catalog"
    # Everything this node holds: the county's 23 and the province's 3, on two pages of 20.
    assert "找到 26 项数据资源，第 1–20 项" in await clerk.text()
    level = clerk.page.locator("section.facet", has_text="层级")
    assert "省级\n3" in await level.inner_text() and "县级\n23" in await level.inner_text()
    await clerk.page.get_by_role("link", name="下一页").click()
    assert "第 21–26 项" in await clerk.text() and await clerk.page.locator("table.entries tbody tr").count() == 6
    assert await unlabelled(clerk) == []

    # A keyword, then a facet: each facet counts what choosing another value instead would find.
    await clerk.fill("关键词", "户籍")
    await clerk.press("搜索")
    assert "找到 24 项数据资源" in await clerk.text()
    await clerk.page.locator("section.facet", has_text="层级").get_by_role("link", name="省级").click()
    assert "找到 1 项数据资源" in await clerk.text()
    facets = {name: await clerk.page.locator(f"section.facet[aria-labelledby=facet-{name}]").inner_text()
              for name in ("level", "node", "provider", "share_type")}
    assert "县级\n23" in facets["level"]  # the other level, counted as if chosen instead
    assert "山东省公安厅" in facets["provider"] and "山东省\n省级\n1" in facets["node"]
    assert "无条件共享\n1" in facets["share_type"]
    # The search is in the address (no personal data): reloading it gives the same page.
    assert "q=%E6%88%B7%E7%B1%8D" in clerk.page.url and "level=province" in clerk.page.url
    await clerk.screenshot("catalog")
    await clerk.page.set_viewport_size({"width": 1920, "height": 1080})
    await clerk.goto("/portal/catalog")
    await clerk.screenshot("catalog-1920")
    await clerk.page.set_viewport_size({"width": 1366, "height": 768})
    await clerk.goto("/portal/catalog?q=户籍&level=province")

    await clerk.page.get_by_role("link", name="山东省户籍人口基本信息").click()
    assert clerk.path == f"/portal/catalog/{codes['people']}"
    text = await clerk.text()
    meta = await clerk.page.locator("table.meta th").all_inner_texts()
    assert meta == CORE_LABELS
    assert "山东省公安厅（山东省，省级节点）" in text and "所在节点：山东省（省级）" in text
    assert "共 5 项，见下方“信息项”，其中 3 项为敏感数据项" in text
    sensitive = await clerk.page.locator("table.items tr.sensitive td:nth-child(2)").all_inner_texts()
    assert [s.replace(" 敏感", "") for s in sensitive] == ["公民身份号码", "手机号码", "住址"]
    access = await clerk.page.locator("section.access").inner_text()
    assert access.count("可直接使用") == 3 and "脱敏显示：公民身份号码、手机号码、住址" in access
    # Masked items can be had in clear with a grant: the page says where to apply.
    apply = clerk.page.get_by_role("link", name="申请使用")
    assert await apply.get_attribute("href") == f"/portal/applications/new?resource={codes['people']}"
    await clerk.screenshot("resource")

    # A conditional resource needs a grant for every use; one that is never shared says so and offers nothing.
    await clerk.goto(f"/portal/catalog/{codes['marriage']}")
    access = await clerk.page.locator("section.access").inner_text()
    assert access.count("需申请授权") == 3 and await clerk.page.locator("p.use-links").count() == 0
    await clerk.goto(f"/portal/catalog/{codes['secret']}")
    assert "该资源不予共享" in await clerk.text() and await apply.count() == 0
    await clerk.goto(f"/portal/catalog/{codes['secret']}/query")
    assert "该资源不予共享，不能查询" in await clerk.text() and await clerk.page.locator("form.form").count() == 0
    # A search value no link makes is refused as such, and an unknown resource is a page saying so.
    assert (await clerk.goto("/portal/catalog?level=village")).status == 400
    assert (await clerk.goto("/portal/catalog/101001/370000999999")).status == 404


# Using -----------------------------------------------------------------------------------------------------

async def test_a_clerk_verifies_a_person_and_queries_one_with_masked_items(fed, portal_page):
    code = fed["codes"]["people"]
    clerk = await clerk_page(fed, portal_page)
    await clerk.goto(f"/portal/catalog/{code}")
    await clerk.page.get_by_role("link", name="核验", exact=True).first.click()
    assert clerk.path == f"/portal/catalog/{code}/verify"
    assert await unlabelled(clerk) == []
    await clerk.fill("公民身份号码", PEOPLE[0])
    await clerk.fill("姓名", "张三丰")
    await clerk.fill("出生日期", "1990-01-01")
    await clerk.press("核验")
    result = clerk.page.locator("section.use-result")
    assert "全部一致" in await result.inner_text()
    assert await result.locator("tbody tr").all_inner_texts() == ["姓名\t张三丰\t一致", "出生日期\t1990-01-01\t一致"]
    await clerk.fill("出生日期", "1990/1/2")  # another way of writing a date; not the one held
    await clerk.press("核验")
    assert await result.locator("tbody tr").all_inner_texts() == ["姓名\t张三丰\t一致", "出生日期\t1990/1/2\t不一致"]
    assert "不一致" in await result.locator("h2").inner_text()
    await clerk.screenshot("verify")
    # A value that is no date: the form again, the field marked, nothing verified.
    await clerk.fill("出生日期", "去年")
    response = await clerk.press("核验")
    assert response.status == 400 and "请检查填写的内容：出生日期" in await clerk.alert()
    assert await clerk.page.locator("#f-v_birth_date-note").inner_text() == "格式不正确，应为日期，如 2024-01-31"
    assert await clerk.page.get_by_label("姓名", exact=True).input_value() == "张三丰"

    # 查询 by key: the province's data; the purpose is asked, and the sensitive items come masked.
    await clerk.page.get_by_role("link", name="查询", exact=True).click()
    assert await unlabelled(clerk) == []
    await clerk.fill("公民身份号码", PEOPLE[0])
    response = await clerk.press("查询")
    assert response.status == 400 and "请填写用途" in await clerk.alert()
    assert await clerk.page.locator("#f-purpose-note").inner_text() == "未填写"
    await clerk.fill("用途", "最低生活保障资格复核（张三丰户）")
    assert (await clerk.press("查询")).status == 200
    rows = await clerk.page.locator("table.record tbody tr").all_inner_texts()
    assert rows == [f"公民身份号码\t{PEOPLE[0][:6]}********{PEOPLE[0][-4:]} 已脱敏", "姓名\t张三丰",
                    "出生日期\t1990-01-01", "手机号码\t138****5678 已脱敏", "住址\t山" + "*" * 14 + "号 已脱敏"]
    assert "以下敏感数据项已脱敏显示：公民身份号码、手机号码、住址" in await clerk.text()
    assert "数据经淄博市、山东省返回" in await clerk.text()
    await clerk.screenshot("query")
    for secret in ("13812345678", "索镇中心街"):  # the key is the one the clerk typed
        assert secret not in await clerk.page.locator("section.use-result").inner_text()
    await clerk.fill("公民身份号码", PEOPLE[3])
    await clerk.press("查询")
    assert f"没有查到公民身份号码为 {PEOPLE[3]} 的记录" in await clerk.text()


def _csv(rows: list[list[str]]) -> bytes:
    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    return buf.getvalue().encode("utf-8")


async def test_a_clerk_compares_an_uploaded_file_and_downloads_the_result(fed, portal_page, tmp_path):
    code = fed["codes"]["people"]
    clerk = await clerk_page(fed, portal_page, accept_downloads=True)
    await clerk.goto(f"/portal/catalog/{code}/compare")
    assert await unlabelled(clerk) == []
    # The template names the key and the items this department may compare.
    template = await clerk.page.request.get(clerk.base_url + f"/portal/catalog/{code}/compare/template.csv")
    assert (await template.body()).decode("utf-8-sig").strip() == "公民身份号码,姓名,出生日期,手机号码,住址"

    upload = tmp_path / "低保复核名单.csv"
    upload.write_bytes(_csv([["序号", "公民身份号码", "姓名", "出生日期", "备注"],
                             ["1", PEOPLE[0], "张三丰", "1990-01-01", "复核"],
                             ["2", PEOPLE[1], "李四", "1990-01-01", ""],
                             ["3", PEOPLE[2], "王五", "", "无出生日期"],
                             ["4", PEOPLE[3], "赵六", "1991-02-03", ""]]))
    await clerk.fill("用途", "低保对象年度复核")
    await clerk.page.get_by_label("比对文件", exact=True).set_input_files(str(upload))
    async with clerk.page.expect_download() as download:
        await clerk.page.get_by_role("button", name="开始比对").click()
    result = await download.value
    assert result.suggested_filename.startswith("比对结果-山东省户籍人口基本信息-") and result.suggested_filename.endswith(".csv")
    rows = list(csv.reader(io.StringIO(open(await result.path(), encoding="utf-8-sig").read())))
    assert rows == [["序号", "公民身份号码", "姓名", "出生日期", "备注", "比对结果", "姓名比对", "出生日期比对"],
                    ["1", PEOPLE[0], "张三丰", "1990-01-01", "复核", "一致", "一致", "一致"],
                    ["2", PEOPLE[1], "李四", "1990-01-01", "", "不一致", "不一致", "一致"],
                    ["3", PEOPLE[2], "王五", "", "无出生日期", "一致", "一致", "未比对"],
                    ["4", PEOPLE[3], "赵六", "1991-02-03", "", "未查得", "—", "—"]]
    done = clerk.page.locator("#compare-done")
    assert "比对完成：共 4 行，查得 3 行，其中完全一致 2 行" in await done.inner_text()
    await clerk.screenshot("compare")

    # A file with a value that is no date: nothing is compared, and the table says where (the script shows the
    # refused form that came back).
    clerk.expect_error(f"/portal/catalog/{code}/compare")
    bad = tmp_path / "bad.csv"
    bad.write_bytes(_csv([["公民身份号码", "姓名", "出生日期"], [PEOPLE[0], "张三丰", "1990-13-45"],
                          [PEOPLE[1], "李四光", "昨天"]]))
    await clerk.page.get_by_label("比对文件", exact=True).set_input_files(str(bad))
    await clerk.page.get_by_role("button", name="开始比对").click()
    problems = clerk.page.locator("table.problems tbody tr")
    await problems.first.wait_for()
    assert await problems.all_inner_texts() == ["2\t出生日期\t不是有效的日期", "3\t出生日期\t格式不正确，应为日期，如 2024-01-31"]
    assert "文件中有 2 处内容无法比对" in await clerk.alert()
    assert await clerk.page.get_by_label("用途", exact=True).input_value() == "低保对象年度复核"


async def test_without_javascript_an_xlsx_comes_back_as_an_xlsx(fed, portal_page, tmp_path):
    code = fed["codes"]["people"]
    clerk = await clerk_page(fed, portal_page, accept_downloads=True, java_script_enabled=False)
    await clerk.goto(f"/portal/catalog/{code}/compare")
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append(["公民身份号码", "姓名", "出生日期", "科室"])
    sheet.append([PEOPLE[0], "张三丰", datetime(1990, 1, 1), "救助科"])  # a date cell, as a spreadsheet keeps it
    sheet.append([PEOPLE[2], "王五", datetime(1985, 6, 30), "救助科"])
    upload = tmp_path / "名单.xlsx"
    book.save(upload)
    # Without a purpose the form comes back (the browser's own post), asking for one.
    await clerk.page.get_by_label("比对文件", exact=True).set_input_files(str(upload))
    response = await clerk.press("开始比对")
    assert response.status == 400 and "请填写用途" in await clerk.alert()
    await clerk.fill("用途", "救助对象核对")
    await clerk.page.get_by_label("结果文件格式", exact=True).select_option("xlsx")
    await clerk.page.get_by_label("比对文件", exact=True).set_input_files(str(upload))
    async with clerk.page.expect_download() as download:
        await clerk.page.get_by_role("button", name="开始比对").click()
    result = await download.value
    assert result.suggested_filename.endswith(".xlsx")
    rows = list(openpyxl.load_workbook(io.BytesIO((await result.path()).read_bytes())).active.iter_rows(values_only=True))
    assert rows == [("公民身份号码", "姓名", "出生日期", "科室", "比对结果", "姓名比对", "出生日期比对"),
                    (PEOPLE[0], "张三丰", datetime(1990, 1, 1), "救助科", "一致", "一致", "一致"),
                    (PEOPLE[2], "王五", datetime(1985, 6, 30), "救助科", "一致", "一致", "一致")]
    # Without the key's column there is nothing to compare by.
    sheet.delete_cols(1)
    book.save(upload)
    await clerk.page.get_by_label("比对文件", exact=True).set_input_files(str(upload))
    response = await clerk.press("开始比对")
    assert response.status == 400 and "没有“公民身份号码”列" in await clerk.alert()
    # A form of the wrong kind (no file, or a file where a form is read) is refused as such, not a failure.
    token = await clerk.page.locator("input[name=csrf]").first.get_attribute("value")
    response = await clerk.page.request.post(clerk.base_url + f"/portal/catalog/{code}/compare",
                                             form={"csrf": token, "purpose": "核对"})
    assert response.status == 400 and "请选择要比对的文件" in await response.text()
    # A form without a file sent as multipart is read like the urlencoded one, and answered the same.
    plain = await clerk.page.request.post(clerk.base_url + f"/portal/catalog/{code}/verify",
                                          form={"csrf": token, "key": PEOPLE[0]})
    response = await clerk.page.request.post(clerk.base_url + f"/portal/catalog/{code}/verify",
                                             multipart={"csrf": token, "key": PEOPLE[0]})
    assert response.status == plain.status == 400
    assert "请至少填写一项要核验的内容" in await response.text() and "请至少填写一项要核验的内容" in await plain.text()


# The purpose in the audit, at both ends ---------------------------------------------------------------------

async def test_the_purpose_is_recorded_here_and_at_the_provider_and_the_relay_names_only_the_person(fed, portal_page):
    province, city, county = (fed["nodes"][n] for n in ("370000", "370300", "370321"))
    code = fed["codes"]["people"]
    purpose = "核对救助申请家庭成员信息（审计测试）"
    clerk = await clerk_page(fed, portal_page)
    await clerk.goto(f"/portal/catalog/{code}/query")
    await clerk.fill("公民身份号码", PEOPLE[1])
    await clerk.fill("用途", purpose)
    assert (await clerk.press("查询")).status == 200

    # Here: the page's record, as the person, with the resource and the purpose.
    [here] = await audit(county, "portal.query.post", user="zhangsan", resource=code, outcome="ok",
                         details={"purpose": purpose})
    assert here["actor"] == f"370321/{CIVIL}" and here["keys_digest"]

    # At the provider: the delivered call names the person, their department and the purpose.
    async def delivered():
        return [r for r in await audit(province, "federation.deliver", resource=code)
                if (r["details"] or {}).get("purpose") == purpose]
    [there] = await wait_for(delivered, 10, what="the province's record of the query")
    assert there["user"] == "zhangsan" and there["actor"] == "370321" and there["outcome"] == "ok"
    assert there["details"]["requester"] == f"370321/{CIVIL}" and there["details"]["op"] == "query"

    # The relay between them: the person as given, and nothing of the sealed body (no purpose, no resource).
    async def relayed():
        return await audit(city, "federation.relay", message_id=there["message_id"])
    [relay] = await wait_for(relayed, 10, what="the city's record of the relay")
    assert relay["user"] == "zhangsan" and relay["resource"] is None
    assert "purpose" not in relay["details"] and "requester" not in relay["details"]

    # A department's token names no person and is asked no purpose; the provider records none.
    status, answer = await county.call("POST", f"/api/v1/resources/{code}/query", CIVIL, json_body={"key": PEOPLE[2]})
    assert status == 200 and answer["records"][0]["name"] == "王五"

    async def token_call():
        return [r for r in await audit(province, "federation.deliver", resource=code)
                if r["user"] is None and (r["details"] or {}).get("requester") == f"370321/{CIVIL}"]
    [plain] = await wait_for(token_call, 10, what="the province's record of the token's query")
    assert "purpose" not in plain["details"]


async def test_a_grant_shows_until_when_and_its_items_on_the_resource_and_its_forms(fed, portal_page):
    province, county = fed["nodes"]["370000"], fed["nodes"]["370321"]
    code = fed["codes"]["marriage"]
    status, app = await county.call("POST", "/api/v1/applications", CIVIL, json_body={
        "resource": code, "ops": ["verify", "query"], "fields": ["name", "birth_date"],
        "purpose": "社会救助家庭经济状况核对", "basis": "《社会救助暂行办法》"})
    assert status == 201, app

    async def at_province():
        return (await province.call("GET", f"/api/v1/applications/{app['id']}", "operator"))[0] == 200
    await wait_for(at_province, 20, what="the application at the province")
    status, doc = await province.call("POST", f"/api/v1/applications/{app['id']}/review", "operator",
                                      json_body={"decision": "accept"})
    assert status == 200, doc
    status, doc = await province.call("POST", f"/api/v1/applications/{app['id']}/decision", PROVINCE_CIVIL,
                                      json_body={"decision": "approve", "valid_until": "2099-12-31"})
    assert status == 200, doc

    async def granted():
        status, page = await county.call("GET", f"/api/v1/grants?resource={code}", CIVIL)
        return status == 200 and page["total"] == 1
    await wait_for(granted, 20, what="the grant at the county")

    clerk = await clerk_page(fed, portal_page)
    await clerk.goto(f"/portal/catalog/{code}")
    access = await clerk.page.locator("section.access").inner_text()
    assert access.count("已授权，至 2099-12-31") == 2 and "授权数据项：姓名、出生日期" in access
    assert access.count("需申请授权") == 1  # compare was not asked for
    # The verify form offers the granted items only; the query answers them in clear.
    await clerk.goto(f"/portal/catalog/{code}/verify")
    labels = await clerk.page.locator("form.form label").all_inner_texts()
    assert labels == ["公民身份号码", "姓名", "出生日期", "用途"]
    await clerk.goto(f"/portal/catalog/{code}/query")
    await clerk.fill("公民身份号码", PEOPLE[1])
    await clerk.fill("用途", "社会救助家庭经济状况核对")
    await clerk.press("查询")
    rows = await clerk.page.locator("table.record tbody tr").all_inner_texts()
    assert rows == ["姓名\t李四光", "出生日期\t1990-01-01"]
    await clerk.goto(f"/portal/catalog/{code}/compare")
    assert "须先取得授权" in await clerk.text()
