"""The operator's figures, federation picture and alerts (issue 16), in a real Chromium on the four-node tree
(山东省 → 淄博市 → 桓台县, 张店区), reports every second: calls made through the API and the portal at 桓台县
and from 张店区 (relayed by 淄博市) are counted by the service action, once each, and reach the city's subtree
figures through the counties' signed reports; the tables download as CSV and XLSX; 张店区 stopped shows as
down on the city's federation picture, as an alert on its operator's home page and in /metrics, and as a
node whose reports stopped."""

from __future__ import annotations

import csv
import io
import re

import openpyxl
import pytest
import pytest_asyncio

from node.ids import make_gb11643, make_gb32100
from portal_support import add_person_async
from support import CIVIL, FAST_FEDERATION, POLICE, add_dept_async, start_federation, stop_all, wait_for

pytestmark = pytest.mark.asyncio(loop_scope="module")

ZHANGDIAN_DEPT = make_gb32100("11370303MB", 1)
NEW_PASSWORD = "绩效统计-2026ab"
PEOPLE = {"clerk": ("370321", CIVIL), "cityop": ("370300", "OPERATOR"), "countyop": ("370321", "OPERATOR")}
PERSON_ID = make_gb11643("370321", "19800101", 1)
ENTRY = {
    "classification": "101001", "name": "桓台县户籍人口基本信息", "category": "base", "format": "database",
    "items": [{"name": "公民身份号码", "field": "id_number", "type": "C", "length": 18, "key": True, "sensitive": True},
              {"name": "姓名", "field": "name", "type": "C", "length": 50}],
    "share": {"type": "unconditional", "methods": ["api"]}, "update_cycle": "daily",
}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def tree(tmp_path_factory):
    nodes = await start_federation(tmp_path_factory.mktemp("tree"),
                                   federation={**FAST_FEDERATION, "figures": {"report_interval_s": 1.0}})
    try:
        county, city, zhangdian = nodes["370321"], nodes["370300"], nodes["370303"]
        for node, code, name, role, key in (
                (county, POLICE, "桓台县公安局", "dept", "police"), (county, CIVIL, "桓台县民政局", "dept", "civil"),
                (county, "OPERATOR", "桓台县大数据中心", "operator", "operator"),
                (city, "OPERATOR", "淄博市大数据局", "operator", "operator"),
                (zhangdian, ZHANGDIAN_DEPT, "张店区民政局", "dept", "civil")):
            node.tokens[key] = await add_dept_async(node.config.home, code, name, role)
        initial = {u: await add_person_async(nodes[n].config.home, u, d) for u, (n, d) in PEOPLE.items()}
        yield nodes, initial
    finally:
        await stop_all(nodes)


async def signed_in(portal_page, tree, username: str):
    """A tab signed in as `username`: the first time with the initial password (then changed), afterwards with
    the new one, so a test does not depend on another having run before it on the same worker."""
    nodes, initial = tree
    page = await portal_page(nodes[PEOPLE[username][0]].url)
    if username in initial:
        await page.first_sign_in(username, initial.pop(username), NEW_PASSWORD)
    else:
        await page.sign_in(username, NEW_PASSWORD)
        assert page.path == "/portal/", page.page.url
    return page


async def number(page, selector: str) -> int:
    return int(await page.page.locator(selector).inner_text())


async def test_calls_are_counted_once_and_reach_the_city_and_download(tree, portal_page):
    nodes, _ = tree
    county, city, zhangdian = nodes["370321"], nodes["370300"], nodes["370303"]
    status, entry = await county.call("POST", "/api/v1/catalog", "police", json_body=ENTRY)
    assert status == 201, entry
    code = entry["code"]
    status, body = await county.call("POST", f"/api/v1/resources/{code}/records", "police",
                                     json_body=[{"id_number": PERSON_ID, "name": "张三"}])
    assert status in (200, 201), body
    # Two API verifies and a query by a department of the county, on its own resource.
    for fields in ({"name": "张三"}, {"name": "李四"}):
        status, body = await county.call("POST", f"/api/v1/resources/{code}/verify", "civil",
                                         json_body={"key": PERSON_ID, "fields": fields})
        assert status == 200, body
    # A clerk's 核验 in the portal counts like the API's.
    clerk = await signed_in(portal_page, tree, "clerk")
    await clerk.goto(f"/portal/catalog/{code}/verify")
    await clerk.fill("公民身份号码", PERSON_ID)
    await clerk.fill("姓名", "张三")
    response = await clerk.press("核验")
    assert response.status == 200 and "一致" in await clerk.text()

    # 张店区 verifies on 桓台县's resource, relayed by 淄博市: made at 张店区, served at 桓台县, nothing at the city.
    async def replicated():
        return (await zhangdian.call("GET", f"/api/v1/catalog/{code}", "civil"))[0] == 200
    await wait_for(replicated, 30, what="the county's resource at 张店区")
    status, body = await zhangdian.call("POST", f"/api/v1/resources/{code}/verify", "civil",
                                        json_body={"key": PERSON_ID, "fields": {"name": "张三"}})
    assert status == 200 and body["via"], body

    # The county's own figures: 4 served (3 by its department, 1 from 张店区), 3 made.
    op = await signed_in(portal_page, tree, "countyop")
    await op.goto("/portal/figures")
    assert await number(op, "#served-total") == 4 and await number(op, "#made-total") == 3
    rows = await op.page.locator("#table-resources tbody tr").all_inner_texts()
    assert len(rows) == 1 and code in rows[0] and "桓台县户籍人口基本信息\t4\t" in rows[0]
    depts = await op.page.locator("#table-depts tbody tr").all_inner_texts()
    assert len(depts) == 1 and f"370321/{CIVIL}" in depts[0]

    # The city's subtree: the counties' signed reports summed, the relay counted nowhere.
    city_op = await signed_in(portal_page, tree, "cityop")

    async def summed():
        await city_op.goto("/portal/figures?days=7&scope=subtree")
        return (await number(city_op, "#served-total"), await number(city_op, "#made-total")) == (4, 4)
    await wait_for(summed, 30, interval=0.5, what="the counties' figures at the city")
    nodes_table = await city_op.page.locator("#table-nodes tbody tr").all_inner_texts()
    assert any("桓台县（370321）" in r and "按时报送" in r for r in nodes_table), nodes_table
    await city_op.page.locator("svg.chart").first.wait_for()
    assert await city_op.page.locator("svg.chart").count() == 4
    await city_op.screenshot("figures-city-subtree")
    await city_op.page.locator("#daily-title").evaluate("e => window.scrollTo(0, e.getBoundingClientRect().top + window.scrollY - 180)")
    await city_op.screenshot("figures-city-daily")
    # Only the subtree scope adds the children: the city itself served nothing.
    await city_op.goto("/portal/figures?scope=node")
    assert await number(city_op, "#served-total") == 0

    # Downloads: one table as CSV, every table as XLSX, with the page's numbers.
    resp = await city_op.page.request.get(city_op.base_url + "/portal/figures/download.csv?table=resources&scope=subtree")
    assert resp.status == 200 and "text/csv" in resp.headers["content-type"]
    table = list(csv.reader(io.StringIO((await resp.body()).decode("utf-8-sig"))))
    assert table[0][:3] == ["资源代码", "资源名称", "调用次数"] and table[1][:3] == [code, "桓台县户籍人口基本信息", "4"]
    resp = await city_op.page.request.get(city_op.base_url + "/portal/figures/download.xlsx?scope=subtree")
    assert resp.status == 200
    book = openpyxl.load_workbook(io.BytesIO(await resp.body()), read_only=True)
    daily = [list(r) for r in book["每日调用"].iter_rows(values_only=True)]
    assert daily[0][:3] == ["日期", "服务调用次数", "发起调用次数"] and sum(r[1] for r in daily[1:]) == 4
    # A bad period is refused as such, not a 500.
    resp = await city_op.page.request.get(city_op.base_url + "/portal/figures/download.csv?table=nope")
    assert resp.status == 400
    city_op.expect_error("/portal/figures?days=13")
    resp = await city_op.goto("/portal/figures?days=13")
    assert resp.status == 400 and "统计周期" in await city_op.text()

    # A department's clerk does not see the figures.
    clerk.expect_error("/portal/figures")
    assert (await clerk.goto("/portal/figures")).status == 403


async def test_a_stopped_child_is_down_on_the_picture_alerted_and_stale(tree, portal_page):
    nodes, _ = tree
    city = nodes["370300"]
    op = await signed_in(portal_page, tree, "cityop")
    async def shown_up():  # "up" once the city has reached it (a fresh tree may not have yet: 尚未联系)
        await op.goto("/portal/federation")
        return await op.page.locator('svg g.peer[data-node="370303"].state-up').count() == 1
    await wait_for(shown_up, 30, interval=0.5, what="张店区 shown as up")
    assert await op.page.locator('#peers tr[data-node="370000"]').count() == 1
    await op.goto("/portal/")
    assert "当前没有告警" in await op.page.locator("#alerts").inner_text()

    await nodes.pop("370303").stop()

    async def shown_down():
        await op.goto("/portal/federation")
        return await op.page.locator('svg g.peer[data-node="370303"].state-down').count() == 1
    await wait_for(shown_down, 30, interval=0.5, what="张店区 shown as down")
    row = await op.page.locator('#peers tr[data-node="370303"]').inner_text()
    assert "无法连接" in row
    assert await op.page.locator('svg g.peer[data-node="370321"].state-up').count() == 1  # the other county is fine
    await op.screenshot("federation-child-down")

    await op.goto("/portal/")
    alert = op.page.locator("#alerts li.alert-peer_down")
    assert await alert.count() == 1 and "370303" in await alert.inner_text()
    await op.screenshot("home-alerts")
    await alert.get_by_role("link").click()
    await op.page.wait_for_load_state()
    assert op.path == "/portal/federation"

    status, metrics = await city.call("GET", "/metrics")
    assert re.search(r'govnode_alert\{kind="peer_down"\} 1\.0', metrics), metrics[-2000:]
    assert re.search(r'govnode_alert\{kind="audit_chain_broken"\} 0\.0', metrics)

    async def stale():
        await op.goto("/portal/figures?scope=subtree")
        rows = await op.page.locator("#table-nodes tbody tr").all_inner_texts()
        return any("张店区（370303）" in r and "报送中断" in r for r in rows)
    await wait_for(stale, 20, interval=0.5, what="张店区's reports shown as stopped")
    assert "1 个下级节点报送中断" in await op.page.get_by_role("status").first.inner_text()
