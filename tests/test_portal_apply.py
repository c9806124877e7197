"""The portal's 申请 and 我的资源 pages (issue 15), in a real Chromium on the four-node tree (山东省 → 淄博市 →
桓台县, 张店区): a county clerk applies for the province's conditional population resource, the province's
operator reviews it and the providing department approves it (narrowed) in their portals, and the clerk's
page shows the grant; another department's clerk is refused the application (audited); a department
registers a resource with the items editor, changes it, uploads a file with bad rows (refused rows shown,
nothing stored) and a good one, and withdraws it. Every page: no script error, every control labelled."""

from __future__ import annotations

import csv
import io
from datetime import date, timedelta

import openpyxl
import pytest
import pytest_asyncio

from node.applications.http import APPLICATIONS
from node.ids import make_gb11643, make_gb32100, now_ms
from node.workdays import cst_date, end_of_day_ms
from portal_support import add_person_async
from support import CIVIL, add_dept_async, start_federation, stop_all, wait_for

pytestmark = pytest.mark.asyncio(loop_scope="module")

PROVINCE_POLICE = make_gb32100("11370000MB", 1)
OTHER = make_gb32100("11370321MB", 3)
NEW_PASSWORD = "共享门户-2026ab"

ITEMS = [
    {"name": "公民身份号码", "field": "id_number", "type": "C", "length": 18, "key": True, "sensitive": True,
     "check": "gb11643"},
    {"name": "姓名", "field": "name", "type": "C", "length": 50},
    {"name": "手机号码", "field": "phone", "type": "C", "length": 11, "sensitive": True},
    {"name": "住址", "field": "address", "type": "C", "length": 200, "sensitive": True},
]
# The people: username -> (node, department, name).
PEOPLE = {"zhangsan": ("370321", CIVIL, "张三"), "lisi": ("370321", OTHER, "李四"),
          "wangwu": ("370000", "OPERATOR", "王五"), "zhaoliu": ("370000", PROVINCE_POLICE, "赵六")}

UNLABELLED = ("() => [...document.querySelectorAll('input:not([type=hidden]), select, textarea')]"
              ".filter(e => !e.labels.length || !e.labels[0].offsetParent).map(e => e.name)")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def tree(tmp_path_factory):
    nodes = await start_federation(tmp_path_factory.mktemp("tree"))
    try:
        province, county = nodes["370000"], nodes["370321"]
        for node, code, name, role, key in (
                (province, PROVINCE_POLICE, "山东省公安厅", "dept", "police"),
                (province, "OPERATOR", "山东省大数据局", "operator", "operator"),
                (province, "AUDITOR", "山东省审计厅", "auditor", "auditor"),
                (county, CIVIL, "桓台县民政局", "dept", "civil"), (county, OTHER, "桓台县人社局", "dept", "other"),
                (county, "AUDITOR", "桓台县审计局", "auditor", "auditor")):
            node.tokens[key] = await add_dept_async(node.config.home, code, name, role)
        initial = {}
        for username, (node_id, dept, name) in PEOPLE.items():
            initial[username] = await add_person_async(nodes[node_id].config.home, username, dept, name=name)
        yield nodes, initial
    finally:
        await stop_all(nodes)


async def signed_in(portal_page, tree, username: str):
    """A tab of the person's node, signed in (the first time, with the initial password changed)."""
    nodes, initial = tree
    page = await portal_page(nodes[PEOPLE[username][0]].url)
    if username in initial:
        await page.first_sign_in(username, initial.pop(username), NEW_PASSWORD)
    else:
        await page.sign_in(username, NEW_PASSWORD)
    return page


async def labelled(page) -> None:
    """Every control of the page has a visible label (the way a clerk, and these tests, find it)."""
    assert await page.page.evaluate(UNLABELLED) == [], page.page.url


async def navigate(page, label: str) -> None:
    await page.page.get_by_role("navigation", name="主导航").get_by_role("link", name=label, exact=True).click()
    await page.page.wait_for_load_state()


async def audit(node, token: str, action: str) -> list[dict]:
    status, body = await node.call("GET", "/api/v1/audit?limit=500", token)
    assert status == 200, body
    return [r for r in body["records"] if r["action"] == action]


# 申请: apply, review, decide, follow ---------------------------------------------------------------------------

async def test_a_county_clerk_applies_the_province_reviews_and_approves(tree, portal_page):
    nodes, _ = tree
    province, county = nodes["370000"], nodes["370321"]
    status, entry = await province.call("POST", "/api/v1/catalog", "police", json_body={
        "classification": "101001", "name": "山东省户籍人口基本信息", "category": "base", "format": "database",
        "items": ITEMS, "share": {"type": "conditional", "condition": "用于社会救助资格审核"}, "update_cycle": "daily"})
    assert status == 201, entry
    code = entry["code"]

    async def replicated():
        return (await county.call("GET", f"/api/v1/catalog/{code}", "civil"))[0] == 200
    await wait_for(replicated, 20, what="the province's resource in the county's catalog")

    # The clerk opens the form the catalog's resource page links to.
    clerk = await signed_in(portal_page, tree, "zhangsan")
    await clerk.goto(f"/portal/applications/new?resource={code}")
    text = await clerk.text()
    assert "山东省户籍人口基本信息" in text and "山东省公安厅（山东省）" in text and "用于社会救助资格审核" in text
    await labelled(clerk)
    # Nothing chosen: the form comes back with its notes, nothing is submitted.
    response = await clerk.press("提交申请")
    assert response.status == 400 and "填写的内容有误" in await clerk.alert()
    assert "请至少选择一项" in await clerk.page.locator("fieldset", has_text="申请的数据项").inner_text()
    assert "不能为空" in await clerk.page.locator(".field", has_text="用途").inner_text()

    wanted = (cst_date(now_ms()) + timedelta(days=180)).isoformat()
    await clerk.goto(f"/portal/applications/new?resource={code}")
    for label in ("姓名（name）", "手机号码（phone）", "住址（address）", "核验", "查询"):
        await clerk.page.get_by_label(label).check()
    await clerk.fill("用途", "最低生活保障资格审核")
    await clerk.fill("依据", "《社会救助暂行办法》第十一条")
    await clerk.fill("使用期限至", wanted)
    await clerk.page.evaluate("window.scrollTo(0, 0)")
    await clerk.screenshot("apply")
    await clerk.press("提交申请")
    assert clerk.path.startswith("/portal/applications/") and "申请已提交" in await clerk.text()
    app_id = clerk.path.rsplit("/", 1)[-1]
    status, doc = await county.call("GET", f"/api/v1/applications/{app_id}", "civil")
    assert status == 200 and doc["wanted_until"] == wanted and doc["fields"] == ["name", "phone", "address"]
    steps = await clerk.page.get_by_label("办理进度").inner_text()
    assert "期限 " + doc["review_due"] in steps and "待平台审核" in await clerk.text()
    await clerk.screenshot("application-submitted")

    # 我的申请 lists it and leads to it.
    await navigate(clerk, "我的申请")
    row = clerk.page.locator("tr", has_text="山东省户籍人口基本信息")
    assert "待平台审核" in await row.inner_text() and doc["review_due"] in await row.inner_text()
    await labelled(clerk)
    await clerk.screenshot("applications")

    # Another department of the county may not open it: a refusal page, audited as that person.
    other = await signed_in(portal_page, tree, "lisi")
    response = await other.goto(f"/portal/applications/{app_id}")
    assert response.status == 403 and "无权查看" in await other.text() and "最低生活保障" not in await other.text()
    refused = [r for r in await audit(county, "auditor", "portal.application") if r["user"] == "lisi"]
    assert [(r["outcome"], r["details"]["application"]) for r in refused] == [("FORBIDDEN", app_id)]

    # The province's operator finds it among what waits on the home page and reviews it.
    async def arrived():
        return (await province.call("GET", f"/api/v1/applications/{app_id}", "operator"))[0] == 200
    await wait_for(arrived, 20, what="the application at the province")
    operator = await signed_in(portal_page, tree, "wangwu")
    await operator.page.locator("section", has_text="待办事项").get_by_role("link", name="山东省户籍人口基本信息").click()
    await operator.page.wait_for_load_state()
    assert operator.path == f"/portal/applications/{app_id}"
    assert "桓台县" in await operator.page.locator(".facts").first.inner_text()
    # Left for three weeks, its review is overdue: flagged on the page, with the due date in its history.
    service = province.app[APPLICATIONS]
    service.clock = lambda: now_ms() + 21 * 86_400_000
    assert await service.check_deadlines() == [app_id]
    service.clock = now_ms
    await operator.goto(f"/portal/applications/{app_id}")
    assert "已逾期" in await operator.page.locator(".page-head").inner_text()
    overdue = operator.page.locator("tr", has_text="超过办理期限")
    assert f"平台审核应于 {doc['review_due']} 前办结" in await overdue.inner_text()
    await labelled(operator)
    response = await operator.press("不予通过")  # a rejection needs its reason
    assert response.status == 400 and "不能为空" in await operator.page.locator(".field", has_text="不予通过的理由").inner_text()
    await operator.fill("审核意见（选填）", "符合共享条件，转提供部门决定")
    await operator.press("通过审核")
    assert "已通过平台审核" in await operator.text() and "待提供部门决定" in await operator.text()
    assert "已逾期" not in await operator.page.locator(".page-head").inner_text()  # the review clears the flag
    status, held = await province.call("GET", f"/api/v1/applications/{app_id}", "operator")
    assert held["status"] == "accepted" and held["decision_due"] in await operator.text()
    assert held["wanted_until"] == wanted  # the period applied for crossed the tree with the application

    # The providing department decides: it narrows the fields; the validity proposed is the period applied for.
    provider = await signed_in(portal_page, tree, "zhaoliu")
    await provider.page.locator("section", has_text="待办事项").get_by_role("link", name="山东省户籍人口基本信息").click()
    await provider.page.wait_for_load_state()
    assert await provider.page.get_by_label("有效期至").input_value() == wanted
    decision = provider.page.locator("fieldset", has_text="授权的数据项")
    assert [await decision.get_by_label(f).is_checked() for f in ("姓名", "手机号码", "住址")] == [True] * 3
    # What needs a grant to be seen is marked as such.
    marked = [("敏感" in await decision.locator("label", has_text=f).inner_text()) for f in ("姓名", "手机号码", "住址")]
    assert marked == [False, True, True]
    await decision.get_by_label("住址").uncheck()
    await labelled(provider)
    await provider.screenshot("application-decide")
    await provider.press("批准")
    assert "已批准，授权已签发" in await provider.text()

    # The clerk's page follows: approved, the grant's fields and validity.
    async def approved():
        await clerk.goto(f"/portal/applications/{app_id}")
        return "已批准" in await clerk.page.locator(".page-head").inner_text()
    await wait_for(approved, 20, what="the approval at the county")
    grant = await clerk.page.locator("aside", has_text="授权").inner_text()
    assert "有效" in grant and f"至 {wanted}" in grant
    assert "姓名" in grant and "手机号码" in grant and "住址" not in grant
    history = await clerk.page.locator("section", has_text="办理记录").inner_text()
    for event in ("提交申请", "平台收到申请", "平台审核通过", "符合共享条件，转提供部门决定", "提供部门批准"):
        assert event in history, event
    await clerk.screenshot("application-approved")
    await clerk.page.set_viewport_size({"width": 1920, "height": 1080})
    await clerk.screenshot("application-approved-1920")
    status, doc = await county.call("GET", f"/api/v1/applications/{app_id}", "civil")
    assert doc["grant"]["fields"] == ["name", "phone"] and doc["grant"]["ops"] == ["query", "verify"]
    assert doc["grant"]["valid_until"] == end_of_day_ms(date.fromisoformat(wanted))

    # Each step is audited at the province as the person who took it.
    assert [r["user"] for r in await audit(province, "auditor", "portal.review") if r["outcome"] == "ok"] == ["wangwu"]
    decided = [r for r in await audit(province, "auditor", "portal.decide") if r["outcome"] == "ok"]
    assert [(r["user"], r["actor"]) for r in decided] == [("zhaoliu", f"370000/{PROVINCE_POLICE}")]


# 我的资源: register, change, upload, withdraw ------------------------------------------------------------------

def _csv(rows: list[list[str]]) -> bytes:
    out = io.StringIO()
    csv.writer(out).writerows(rows)
    return out.getvalue().encode("utf-8")


def _xlsx(rows: list[list[object]]) -> bytes:
    book = openpyxl.Workbook()
    for row in rows:
        book.active.append(row)
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


async def test_a_department_registers_changes_fills_and_withdraws_a_resource(tree, portal_page, tmp_path):
    nodes, _ = tree
    county = nodes["370321"]
    clerk = await signed_in(portal_page, tree, "zhangsan")
    await navigate(clerk, "我的资源")
    await clerk.page.get_by_role("link", name="登记新资源").click()
    await clerk.page.wait_for_load_state()
    assert clerk.path == "/portal/resources/new"
    await labelled(clerk)
    rows = clerk.page.locator("fieldset.item-row")
    assert await rows.count() == 5

    async def fill_row(i: int, name: str, field: str, type_: str, length: str = "") -> None:
        row = rows.nth(i)
        await row.get_by_label("名称", exact=True).fill(name)
        await row.get_by_label("字段名", exact=True).fill(field)
        await row.get_by_label("类型", exact=True).select_option(type_)
        await row.get_by_label("长度", exact=True).fill(length)

    await clerk.fill("资源名称", "桓台县最低生活保障对象")
    await clerk.fill("分类码", "101002")
    await clerk.page.get_by_label("共享类型", exact=True).select_option("conditional")
    await clerk.fill("共享条件", "用于社会救助和民生保障业务")
    await fill_row(0, "公民身份号码", "id_number", "C", "18")
    await rows.nth(0).get_by_label("敏感").check()
    await fill_row(1, "姓名", "name", "C", "50")
    await fill_row(2, "保障金额", "amount", "N", "10")
    await fill_row(3, "家庭人口", "household", "I")
    await fill_row(4, "备注", "Remark", "M")
    # 再加一行 brings the same form back with one row more, what was typed kept (no script involved).
    await clerk.press("再加一行")
    assert await rows.count() == 6
    assert await rows.nth(2).get_by_label("字段名", exact=True).input_value() == "amount"
    assert await rows.nth(0).get_by_label("主键").is_checked() and await rows.nth(0).get_by_label("敏感").is_checked()
    await fill_row(5, "发放日期", "paid_on", "D")
    await clerk.screenshot("resource-edit")
    # A field name the catalog refuses is marked on its row; nothing is registered.
    response = await clerk.press("保存")
    assert response.status == 400 and "填写的内容有误" in await clerk.alert()
    assert "小写英文字母开头" in await rows.nth(4).inner_text()
    await rows.nth(4).get_by_label("删除").check()
    await clerk.press("保存")
    assert clerk.path.endswith("/records") and "资源已登记" in await clerk.text()
    code = clerk.path.removeprefix("/portal/resources/").removesuffix("/records")
    status, entry = await county.call("GET", f"/api/v1/catalog/{code}", "civil")
    assert status == 200 and entry["provider"]["dept"] == CIVIL and entry["share"]["type"] == "conditional"
    assert [(i["field"], i.get("key", False), i.get("sensitive", False)) for i in entry["items"]] == [
        ("id_number", True, True), ("name", False, False), ("amount", False, False), ("household", False, False),
        ("paid_on", False, False)]

    # Changing it: the form holds what is registered, and two empty rows for more items.
    await clerk.page.get_by_role("link", name="修改资源信息").click()
    await clerk.page.wait_for_load_state()
    assert await clerk.page.get_by_label("资源名称").input_value() == "桓台县最低生活保障对象"
    assert await rows.count() == 7
    await fill_row(5, "所在乡镇", "town", "C", "50")
    await clerk.press("保存")
    assert "资源信息已保存（第 2 版）" in await clerk.text()
    status, entry = await county.call("GET", f"/api/v1/catalog/{code}", "civil")
    assert [i["field"] for i in entry["items"]][-1] == "town" and entry["version"] == 2

    response = await clerk.press("上传")  # no file chosen
    assert response.status == 400 and await clerk.alert() == "请选择要上传的文件。"

    # A file with bad rows: the refused rows in a table, nothing stored.
    people = [make_gb11643("370321", "19800101", i) for i in range(4)]
    header = ["公民身份号码", "姓名", "保障金额", "家庭人口", "发放日期", "所在乡镇"]
    bad = tmp_path / "bad.csv"
    bad.write_bytes(_csv([header, [people[0], "张三", "620.50", "3", "2026-11-05", "索镇"],
                          [people[1], "李四", "六百", "2", "2026-11-05", "果里镇"],
                          [people[2], "王五", "580", "1", "2026-13-05", "田庄镇"]]))
    await clerk.page.get_by_label("数据文件").set_input_files(str(bad))
    response = await clerk.press("上传")
    assert response.status == 400 and "其中 2 行有误，全部未入库" in await clerk.alert()
    table = clerk.page.locator("table.refused tbody tr")
    assert [await table.nth(i).inner_text() for i in range(await table.count())] == [
        "3\t保障金额\t须为数字", "4\t发放日期\t不是有效日期"]
    assert (await clerk.page.get_by_label("数据概况").inner_text()).startswith("0")
    await clerk.screenshot("resource-upload-refused")

    good = tmp_path / "good.xlsx"
    good.write_bytes(_xlsx([header, [people[0], "张三", 620.5, 3, "2026-11-05", "索镇"],
                            [people[1], "李四", 600, 2, "2026-11-05", "果里镇"],
                            [people[3], "赵六", 580, 1, "2026-11-05", "田庄镇"]]))
    await clerk.page.get_by_label("数据文件").set_input_files(str(good))
    await clerk.press("上传")
    assert "文件已入库：共 3 行，新增或更新 3 条" in await clerk.text()
    assert (await clerk.page.get_by_label("数据概况").inner_text()).startswith("3")
    await labelled(clerk)
    await clerk.screenshot("resource-records")
    template = await clerk.page.request.get(county.url + f"/portal/resources/{code}/template.csv")
    assert (await template.body()).decode("utf-8-sig").strip() == ",".join(header)

    # Another department's clerk may not change it, upload to it or withdraw it.
    other = await signed_in(portal_page, tree, "lisi")
    for path in ("edit", "records", "withdraw"):
        response = await other.goto(f"/portal/resources/{code}/{path}")
        assert response.status == 403 and "只有提供部门" in await other.text(), path

    # 我的资源: the count and the last update; then withdrawing it, after a page that asks.
    await navigate(clerk, "我的资源")
    row = clerk.page.locator("tr", has_text="桓台县最低生活保障对象")
    cells = row.locator("td")
    assert await cells.nth(3).inner_text() == "3" and await cells.nth(4).inner_text() != "尚无数据"
    await clerk.screenshot("resources")
    await row.get_by_role("link", name="撤销").click()
    await clerk.page.wait_for_load_state()
    assert "现有的 3 条记录不再对外提供" in await clerk.text()
    await clerk.press("确认撤销")
    assert clerk.path == "/portal/resources" and "已撤销资源“桓台县最低生活保障对象”" in await clerk.text()
    assert await clerk.page.locator("tr", has_text="桓台县最低生活保障对象").count() == 0
    assert (await county.call("GET", f"/api/v1/catalog/{code}", "civil"))[0] == 404
