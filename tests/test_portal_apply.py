"""The portal's 申请 pages (issue 15), in a real Chromium on the four-node tree (山东省 → 淄博市 → 桓台县,
张店区): a county clerk applies for the province's conditional population resource, the province's operator
reviews it and the providing department approves it (narrowed) in their portals, and the clerk's page shows
the grant; another department's clerk is refused the application (audited). Every page: no script error,
every control labelled."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
import pytest_asyncio

from node.ids import make_gb32100, now_ms
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
    await labelled(operator)
    response = await operator.press("不予通过")  # a rejection needs its reason
    assert response.status == 400 and "不能为空" in await operator.page.locator(".field", has_text="不予通过的理由").inner_text()
    await operator.fill("审核意见（选填）", "符合共享条件，转提供部门决定")
    await operator.press("通过审核")
    assert "已通过平台审核" in await operator.text() and "待提供部门决定" in await operator.text()
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
    status, doc = await county.call("GET", f"/api/v1/applications/{app_id}", "civil")
    assert doc["grant"]["fields"] == ["name", "phone"] and doc["grant"]["ops"] == ["query", "verify"]
    assert doc["grant"]["valid_until"] == end_of_day_ms(date.fromisoformat(wanted))

    # Each step is audited at the province as the person who took it.
    assert [r["user"] for r in await audit(province, "auditor", "portal.review") if r["outcome"] == "ok"] == ["wangwu"]
    decided = [r for r in await audit(province, "auditor", "portal.decide") if r["outcome"] == "ok"]
    assert [(r["user"], r["actor"]) for r in decided] == [("zhaoliu", f"370000/{PROVINCE_POLICE}")]
