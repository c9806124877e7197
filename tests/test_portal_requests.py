"""The portal's 数据需求 pages (供需对接, SPEC §16), in a real Chromium on the four-node tree (山东省 → 淄博市 →
桓台县, 张店区): a county clerk asks the province for data no catalog entry has; the province's operator assigns
it to a department; that department registers a new catalog entry and fulfils the request with it; the clerk's
page shows 已满足 with the entry linked. Every page: no script error, every control labelled."""

from __future__ import annotations

import pytest
import pytest_asyncio

from node.ids import make_gb32100
from portal_support import add_person_async
from support import CIVIL, SAMPLE_ENTRY, add_dept_async, start_federation, stop_all, wait_for

pytestmark = pytest.mark.asyncio(loop_scope="module")

PROVINCE_CIVIL = make_gb32100("11370000MB", 2)
NEW_PASSWORD = "共享门户-2026ab"
# The people: username -> (node, department, name).
PEOPLE = {"zhangsan": ("370321", CIVIL, "张三"), "wangwu": ("370000", "OPERATOR", "王五"),
          "qianqi": ("370000", PROVINCE_CIVIL, "钱七")}

UNLABELLED = ("() => [...document.querySelectorAll('input:not([type=hidden]), select, textarea')]"
              ".filter(e => !e.labels.length || !e.labels[0].offsetParent).map(e => e.name)")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def tree(tmp_path_factory):
    nodes = await start_federation(tmp_path_factory.mktemp("tree"))
    try:
        province, county = nodes["370000"], nodes["370321"]
        for node, code, name, role, key in (
                (province, PROVINCE_CIVIL, "山东省民政厅", "dept", "civil"),
                (province, "OPERATOR", "山东省大数据局", "operator", "operator"),
                (county, CIVIL, "桓台县民政局", "dept", "civil")):
            node.tokens[key] = await add_dept_async(node.config.home, code, name, role)
        initial = {}
        for username, (node_id, dept, name) in PEOPLE.items():
            initial[username] = await add_person_async(nodes[node_id].config.home, username, dept, name=name)
        yield nodes, initial
    finally:
        await stop_all(nodes)


async def signed_in(portal_page, tree, username: str):
    nodes, initial = tree
    page = await portal_page(nodes[PEOPLE[username][0]].url)
    await page.first_sign_in(username, initial.pop(username), NEW_PASSWORD)
    return page


async def labelled(page) -> None:
    assert await page.page.evaluate(UNLABELLED) == [], page.page.url


async def test_a_county_clerk_asks_the_province_assigns_and_a_new_entry_fulfils_it(tree, portal_page):
    nodes, _ = tree
    province, county = nodes["370000"], nodes["370321"]

    # The clerk asks, from 数据需求: the form proposes the parent's platform... and refuses what is missing.
    clerk = await signed_in(portal_page, tree, "zhangsan")
    await clerk.page.get_by_role("navigation", name="主导航").get_by_role("link", name="数据需求", exact=True).click()
    await clerk.page.wait_for_load_state()
    await clerk.page.get_by_role("link", name="提出数据需求").click()
    await clerk.page.wait_for_load_state()
    assert clerk.path == "/portal/requests/new"
    await labelled(clerk)
    assert await clerk.page.get_by_label("向哪一级平台提出").input_value() == "370300"
    response = await clerk.press("提交需求")
    assert response.status == 400 and "填写的内容有误" in await clerk.alert()
    assert "不能为空" in await clerk.page.locator(".field", has_text="需求名称").inner_text()
    assert "请至少填写一项" in await clerk.page.locator(".field", has_text="所需数据项").inner_text()
    await clerk.page.get_by_label("向哪一级平台提出").select_option("370000")
    await clerk.fill("需求名称", "婚姻登记信息")
    await clerk.fill("所需数据项", "姓名\n婚姻状况\n登记日期")
    await clerk.fill("用途", "最低生活保障家庭经济状况核对")
    await clerk.fill("依据", "《社会救助暂行办法》第十一条")
    await clerk.page.evaluate("window.scrollTo(0, 0)")
    await clerk.screenshot("request-new")
    await clerk.press("提交需求")
    assert clerk.path.startswith("/portal/requests/") and "需求已提交" in await clerk.text()
    req_id = clerk.path.rsplit("/", 1)[-1]
    status, doc = await county.call("GET", f"/api/v1/data-requests/{req_id}", "civil")
    assert status == 200 and doc["fields"] == ["姓名", "婚姻状况", "登记日期"] and doc["to"]["node"] == "370000"
    assert "期限 " + doc["assign_due"] in await clerk.page.get_by_label("办理进度").inner_text()
    await clerk.screenshot("request-submitted")

    # The province's operator finds it under 数据需求 and assigns it to the 民政厅.
    async def arrived():
        return (await province.call("GET", f"/api/v1/data-requests/{req_id}", "operator"))[0] == 200
    await wait_for(arrived, 20, what="the request at the province")
    operator = await signed_in(portal_page, tree, "wangwu")
    await operator.goto("/portal/requests")
    row = operator.page.locator("tr", has_text="婚姻登记信息")
    assert "待平台分派" in await row.inner_text() and "桓台县" in await row.inner_text()
    await row.get_by_role("link", name="婚姻登记信息").click()
    await operator.page.wait_for_load_state()
    await labelled(operator)
    response = await operator.press("分派")  # no department chosen
    assert response.status == 400 and "请选择承办部门" in await operator.alert()
    await operator.page.get_by_label("承办部门").select_option(PROVINCE_CIVIL)
    await operator.fill("分派意见（选填）", "婚姻登记由民政厅负责")
    await operator.page.get_by_role("heading", name="平台分派").scroll_into_view_if_needed()
    await operator.screenshot("request-assign")
    await operator.press("分派")
    assert "已分派承办部门" in await operator.text() and "待承办部门答复" in await operator.text()

    # The department registers the data as a new catalog entry, then fulfils the request with it.
    status, entry = await province.call("POST", "/api/v1/catalog", "civil", json_body={
        **SAMPLE_ENTRY, "name": "山东省婚姻登记信息"})
    assert status == 201, entry
    officer = await signed_in(portal_page, tree, "qianqi")
    await officer.goto("/portal/requests?view=provider")
    await officer.page.get_by_role("link", name="婚姻登记信息").click()
    await officer.page.wait_for_load_state()
    await labelled(officer)
    await officer.page.get_by_label("提供该数据的目录资源").select_option(entry["code"])
    await officer.screenshot("request-fulfil")
    await officer.press("以此资源满足需求")
    assert "已满足" in await officer.page.locator(".page-head").inner_text()

    # The clerk's page follows: 已满足, with the entry linked to its page in the county's catalog.
    async def fulfilled():
        await clerk.goto(f"/portal/requests/{req_id}")
        return "已满足" in await clerk.page.locator(".page-head").inner_text()
    await wait_for(fulfilled, 20, interval=0.5, what="the fulfilment at the county")

    async def replicated():
        return (await county.call("GET", f"/api/v1/catalog/{entry['code']}", "civil"))[0] == 200
    await wait_for(replicated, 20, what="the new entry in the county's catalog")
    await clerk.goto(f"/portal/requests/{req_id}")
    assert "山东省民政厅" in await clerk.page.locator(".facts").first.inner_text()  # named by the entry's provider
    link = clerk.page.get_by_role("link", name="山东省婚姻登记信息")
    await clerk.screenshot("request-fulfilled")
    await link.click()
    await clerk.page.wait_for_load_state()
    assert clerk.path == f"/portal/catalog/{entry['code']}" and "山东省婚姻登记信息" in await clerk.text()
    await navigate_back(clerk)


async def navigate_back(page) -> None:
    """数据需求 lists the request as 已满足 for the clerk too."""
    await page.goto("/portal/requests")
    row = page.page.locator("tr", has_text="婚姻登记信息")
    assert "已满足" in await row.inner_text()
    await labelled(page)
    await page.screenshot("requests")
