"""The operator console, the auditor's view, and the licence, feedback and subscription pages (issue 16), in a real Chromium on the four-node tree (山东省 →
淄博市 → 桓台县, 张店区): the province's operator sees the review queue with an overdue review marked
overdue, a table source's progress and its last error, and the keys; adds a department (its token shown
once, and it works), a person (the initial password shown once), resets and disables them, and invites a
child node; the province's auditor filters the audit log down to those actions, opens a record, exports the
CSV, runs the chain check, and finds a record edited in the database; an auditor's POST to a management
action and a clerk's visit to the console or the log are refused; a multipart sign-in is answered, never 500.
A county clerk issues a licence and prints its page, finds it by its holder and verifies it, and the province's
auditor finds it across the federation; reports a wrong value from a query result and follows it to its
correction; subscribes a webhook, sees its state, lag and last error, and cancels it."""

from __future__ import annotations

import csv
import io
import re
import sqlite3

import pytest
import pytest_asyncio

from node.applications.http import APPLICATIONS
from node.exchange.http import EXCHANGE
from node.ids import make_gb11643, make_gb32100, now_ms
from portal_support import add_person_async
from support import SAMPLE_ENTRY, add_dept_async, free_port, raw_sql, start_federation, stop_all, wait_for

pytestmark = pytest.mark.asyncio(loop_scope="module")

POLICE = make_gb32100("11370000MB", 1)
CIVIL = make_gb32100("11370000MB", 2)
COUNTY_CIVIL = make_gb32100("11370321MB", 2)
COUNTY_POLICE = make_gb32100("11370321MB", 1)
LICENCE_TYPE = "11100000000013338W011"  # SPEC §13's example: the defining body's code + 3 digits
HOLDER = make_gb11643("370321", "19800101", 17)
NEW_PASSWORD = "运营控制台-2026ab"
# The people: username -> (node, department, name).
PEOPLE = {"wangwu": ("370000", "OPERATOR", "王五"), "zhaoliu": ("370000", "AUDITOR", "赵六"),
          "zhangsan": ("370321", COUNTY_CIVIL, "张三")}
UNLABELLED = ("() => [...document.querySelectorAll('input:not([type=hidden]), select, textarea')]"
              ".filter(e => !e.labels.length || !e.labels[0].offsetParent).map(e => e.name)")
ITEMS = [{"name": "公民身份号码", "field": "id_number", "type": "C", "length": 18, "key": True, "sensitive": True},
         {"name": "姓名", "field": "name", "type": "C", "length": 50}]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def tree(tmp_path_factory):
    base = tmp_path_factory.mktemp("tree")
    nodes = await start_federation(base)
    try:
        province, county = nodes["370000"], nodes["370321"]
        for node, code, name, role, key in (
                (province, POLICE, "山东省公安厅", "dept", "police"), (province, CIVIL, "山东省民政厅", "dept", "civil"),
                (province, "OPERATOR", "山东省大数据局", "operator", "operator"),
                (province, "AUDITOR", "山东省审计厅", "auditor", "auditor"),
                (county, COUNTY_CIVIL, "桓台县民政局", "dept", "civil"),
                (county, COUNTY_POLICE, "桓台县公安局", "dept", "police"),
                (county, "AUDITOR", "桓台县审计局", "auditor", "auditor")):
            node.tokens[key] = await add_dept_async(node.config.home, code, name, role)
        initial = {}
        for username, (node_id, dept, name) in PEOPLE.items():
            initial[username] = await add_person_async(nodes[node_id].config.home, username, dept, name=name)
        yield nodes, initial, base
    finally:
        await stop_all(nodes)


async def signed_in(portal_page, tree, username: str):
    nodes, initial, _ = tree
    page = await portal_page(nodes[PEOPLE[username][0]].url)
    if username in initial:
        await page.first_sign_in(username, initial.pop(username), NEW_PASSWORD)
    else:
        await page.sign_in(username, NEW_PASSWORD)
    return page


async def labelled(page) -> None:
    assert await page.page.evaluate(UNLABELLED) == [], page.page.url


async def csrf_of(page) -> str:
    return await page.page.locator("input[name=csrf]").first.get_attribute("value")


async def audit(node, action: str) -> list[dict]:
    status, body = await node.call("GET", f"/api/v1/audit?limit=500&action={action}", "auditor")
    assert status == 200, body
    return body["records"]


async def _overdue_application(province) -> str:
    """The provincial civil affairs department applied, on 2026-01-05, for the police's conditional resource;
    its review was due on the 3rd working day and nobody reviewed it."""
    status, entry = await province.call("POST", "/api/v1/catalog", "police", json_body={
        **SAMPLE_ENTRY, "name": "山东省户籍人口基本信息", "items": ITEMS,
        "share": {"type": "conditional", "condition": "用于社会救助", "methods": ["api", "table"]}})
    assert status == 201, entry
    svc = province.app[APPLICATIONS]
    svc.clock = lambda: 1767578400000  # 2026-01-05 10:00 CST
    try:
        status, app = await province.call("POST", "/api/v1/applications", "civil", json_body={
            "resource": entry["code"], "ops": ["verify"], "fields": ["name"], "purpose": "最低生活保障资格审核",
            "basis": "《社会救助暂行办法》第十一条"})
        assert status == 201 and app["review_due"] == "2026-01-08", app
    finally:
        svc.clock = now_ms
    assert app["id"] in await svc.check_deadlines()
    return entry["code"]


async def _bound_source(province, code: str, path) -> str:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE rk (sfzh TEXT PRIMARY KEY, xm TEXT, gxsj INTEGER)")
    db.executemany("INSERT INTO rk VALUES (?, ?, ?)",
                   [(make_gb11643("370000", f"1980010{i + 1}", i), f"居民{i}", i) for i in range(5)])
    db.commit()
    db.close()
    status, src = await province.call("POST", f"/api/v1/resources/{code}/sources", "police", json_body={
        "url": f"sqlite:///{path}", "table": "rk", "key_column": "sfzh", "updated_column": "gxsj",
        "columns": {"name": "xm"}, "interval_s": 3600})
    assert status == 201, src
    return src["id"]


async def test_the_operator_runs_the_node_from_the_console(tree, portal_page):
    nodes, _, base = tree
    province = nodes["370000"]
    code = await _overdue_application(province)
    source = await _bound_source(province, code, base / "frontend.db")
    exchange = province.app[EXCHANGE]
    # The first run over (a sync asked for while a run is under way is folded into that run).
    await wait_for(lambda: exchange.sources[source].state.get("last_success_at") and exchange.tasks.running(source) is None,
                   what="the initial load")
    # The source's table goes away: the next sync fails, and the console shows why.
    db = sqlite3.connect(base / "frontend.db")
    db.execute("ALTER TABLE rk RENAME TO rk_old")
    db.commit()
    db.close()
    status, body = await province.call("POST", f"/api/v1/resources/{code}/sources/{source}/sync", "police")
    assert status == 202, body
    await wait_for(lambda: exchange.sources[source].state.get("last_error"), what="the failed sync")

    op = await signed_in(portal_page, tree, "wangwu")
    await op.page.get_by_role("navigation", name="主导航").get_by_role("link", name="运营管理", exact=True).click()
    await op.page.wait_for_load_state()
    assert op.path == "/portal/admin"
    text = await op.text()
    # The overdue review, marked overdue with its due date; the source's progress and its error; the keys.
    queue = op.page.get_by_role("table", name=re.compile("待平台审核的申请"))
    row = queue.get_by_role("row", name=re.compile("山东省户籍人口基本信息"))
    assert "2026-01-08" in await row.inner_text() and "已逾期" in await row.inner_text()
    sources = op.page.get_by_role("table", name=re.compile("前置机库表"))
    source_row = await sources.locator("tbody tr").filter(has_text=code).inner_text()
    assert "出错" in source_row and "5 / 0 / 0" in source_row and "100.0%" in source_row, source_row
    assert "源表或字段已变化" in source_row and "连续失败 1 次" in source_row, source_row  # why, in Chinese
    assert "ed25519:1" in text and "无（从未轮换）" in text and "370300" in text  # its child 淄博市's certificate
    await op.screenshot("console")

    # A department: its token shown once, and it works on the API.
    await op.page.get_by_role("link", name="部门与令牌").click()
    await op.page.wait_for_load_state()
    await labelled(op)
    await op.fill("部门代码", "bad code!")
    await op.fill("部门名称", "山东省自然资源厅")
    assert (await op.press("添加部门")).status == 400
    assert await op.page.get_by_label("部门名称", exact=True).input_value() == "山东省自然资源厅"
    land = make_gb32100("11370000MB", 7)
    await op.fill("部门代码", land)
    await op.press("添加部门")
    token = (await op.page.locator("#secret").inner_text()).strip()
    assert token.startswith("gnt_")
    await op.screenshot("console-token")
    status, _ = await province.call("GET", "/api/v1/catalog", token)
    assert status == 200
    assert "gnt_" not in op.page.url
    await op.page.get_by_role("link", name="已妥善保存，返回").click()
    await op.page.wait_for_load_state()
    assert token not in await op.page.content()  # never shown again
    # Revoking it: the department is disabled and its token stops working.
    await op.page.get_by_role("button", name="停用山东省自然资源厅").click()
    await op.page.wait_for_load_state()
    assert "已作废" in await op.text()
    await wait_for(lambda: _refused(province, token), what="the revoked token refused")
    records = await audit(province, "portal.admin.departments.add")
    assert [(r["user"], r["outcome"]) for r in records] == [("wangwu", "ok"), ("wangwu", "INVALID_INPUT")]
    assert all(token not in str(r) for r in await audit(province, "portal.admin.departments.revoke"))
    assert all(token not in str(r) for r in records)

    # A person: the initial password shown once; reset gives a new one; disable ends the account.
    await op.page.get_by_role("link", name="人员", exact=True).click()
    await op.page.wait_for_load_state()
    await labelled(op)
    await op.fill("用户名", "sunqi")
    await op.fill("姓名", "孙七")
    await op.page.get_by_label("所在部门", exact=True).select_option(POLICE)
    await op.press("添加人员")
    first = (await op.page.locator("#secret").inner_text()).strip()
    assert re.fullmatch(r"\w{4}-\w{4}-\w{4}", first)
    await op.page.get_by_role("link", name="已妥善保存，返回").click()
    await op.page.wait_for_load_state()
    assert "待修改初始密码" in await op.page.get_by_role("row", name=re.compile("sunqi")).inner_text()
    await op.page.get_by_role("button", name="重置sunqi的密码").click()
    await op.page.wait_for_load_state()
    second = (await op.page.locator("#secret").inner_text()).strip()
    assert second != first
    await op.goto("/portal/admin/people")
    await op.page.get_by_role("button", name="停用sunqi").click()
    await op.page.wait_for_load_state()
    assert "已停用" in await op.page.get_by_role("row", name=re.compile("sunqi")).inner_text()

    # An invite for a child node: the rule of `govnode invite`, now the service's.
    await op.goto("/portal/admin/invites")
    await labelled(op)
    await op.fill("下级节点代码", "3703")
    assert (await op.press("生成加入令牌")).status == 400
    assert "6 位数字" in await op.alert()
    await op.fill("下级节点代码", "370322")
    await op.press("生成加入令牌")
    invite = (await op.page.locator("#secret").inner_text()).strip()
    assert invite.startswith("gni_")
    rows = await raw_sql(province.config, "SELECT node FROM invites WHERE used_at IS NULL")
    assert ("370322",) in rows


async def _refused(node, token: str) -> bool:
    status, _ = await node.call("GET", "/api/v1/catalog", token)
    return status == 401


async def test_the_auditor_filters_exports_and_finds_a_tampered_record(tree, portal_page):
    nodes, _, _ = tree
    province = nodes["370000"]
    auditor = await signed_in(portal_page, tree, "zhaoliu")
    await auditor.page.get_by_role("navigation", name="主导航").get_by_role("link", name="审计日志", exact=True).click()
    await auditor.page.wait_for_load_state()
    assert auditor.path == "/portal/audit"
    await labelled(auditor)
    # The operator's department additions, by person and operation.
    await auditor.fill("人员（用户名）", "wangwu")
    await auditor.fill("操作", "portal.admin.departments.add")
    await auditor.press("筛选")
    table = auditor.page.get_by_role("table", name=re.compile("审计记录"))
    rows = table.locator("tbody tr")
    assert await rows.count() == 2
    assert "INVALID_INPUT" in await rows.nth(1).inner_text() and "成功" in await rows.nth(0).inner_text()
    await auditor.screenshot("audit")
    # By outcome and department: refusals only.
    await auditor.page.get_by_label("结果", exact=True).select_option("INVALID_INPUT")
    await auditor.press("筛选")
    assert await rows.count() == 1
    # A record's details.
    await rows.first.get_by_role("link").click()
    await auditor.page.wait_for_load_state()
    assert "/portal/audit/" in auditor.path
    detail = await auditor.text()
    assert "portal.admin.departments.add" in detail and "wangwu" in detail and "INVALID_INPUT" in detail

    # The CSV export: the filtered records, streamed.
    await auditor.goto("/portal/audit?user=wangwu")
    link = await auditor.page.get_by_role("link", name="导出为 CSV").get_attribute("href")
    answer = await auditor.page.request.get(auditor.base_url + link)
    assert answer.status == 200 and answer.headers["content-type"].startswith("text/csv")
    exported = list(csv.reader(io.StringIO((await answer.body()).decode("utf-8-sig"))))
    assert exported[0][:3] == ["序号", "时间", "请求编号"]
    assert len(exported) > 5 and {row[5] for row in exported[1:]} == {"wangwu"}
    status, page = await province.call("GET", "/api/v1/audit?user=wangwu&limit=1000", "auditor")
    assert [int(row[0]) for row in exported[1:]] == [r["seq"] for r in page["records"]]

    # Read-only: an auditor's POST to a management action is refused (and audited as refused).
    token = await csrf_of(auditor)
    response = await auditor.page.request.post(auditor.base_url + "/portal/admin/departments", max_redirects=0,
                                               form={"csrf": token, "code": "X1", "name": "某部门", "role": "dept"})
    assert response.status == 403
    assert [r["outcome"] for r in await audit(province, "portal.admin.departments.add")][0] == "FORBIDDEN"
    status, depts = await province.call("GET", "/api/v1/audit?limit=1", "auditor")  # nothing was added
    assert ("X1",) not in await raw_sql(province.config, "SELECT code FROM departments WHERE code = 'X1'")
    # The console opens for the auditor, read-only: no form to change anything.
    await auditor.goto("/portal/admin/departments")
    assert await auditor.page.get_by_role("button", name="添加部门").count() == 0

    # The chain check: intact, then a record edited in the database is found and shown.
    await auditor.goto("/portal/audit")
    await auditor.press("校验审计链")
    assert "审计链完整" in await auditor.text()
    target = page["records"][-1]["seq"]
    await raw_sql(province.config, "UPDATE audit_log SET outcome = 'ok', status = 200 WHERE seq = :s", {"s": target})
    await auditor.goto("/portal/audit")
    await auditor.press("校验审计链")
    assert f"审计链在第 {target} 条记录处断开" in await auditor.alert()
    assert "被改动" in await auditor.alert()
    await auditor.screenshot("audit-broken")
    await auditor.page.get_by_role("link", name=str(target), exact=True).click()
    await auditor.page.wait_for_load_state()
    assert auditor.path == f"/portal/audit/{target}"


async def test_a_clerk_is_refused_the_console_and_the_log(tree, portal_page):
    nodes, _, _ = tree
    clerk = await signed_in(portal_page, tree, "zhangsan")
    nav = await clerk.page.get_by_role("navigation", name="主导航").inner_text()
    assert "运营管理" not in nav and "审计日志" not in nav
    for path in ("/portal/admin", "/portal/admin/people", "/portal/audit", "/portal/audit.csv", "/portal/audit/verify"):
        response = await clerk.goto(path)
        assert response.status == 403, path
    token = await csrf_of(clerk)
    response = await clerk.page.request.post(clerk.base_url + "/portal/admin/invites", max_redirects=0,
                                             form={"csrf": token, "code": "370399", "hours": "1"})
    assert response.status == 403


async def test_multipart_forms_are_answered_not_failed(tree, portal_page):
    """A sign-in or password form sent as multipart/form-data is read like the urlencoded one."""
    nodes, _, _ = tree
    county = nodes["370321"]
    page = await portal_page(county.url)
    await page.goto("/portal/login")
    token = await csrf_of(page)
    response = await page.page.request.post(county.url + "/portal/login", max_redirects=0, multipart={
        "csrf": token, "username": "zhangsan", "password": "wrong-password-1", "next": "/portal/"})
    assert response.status == 401 and "用户名或密码不正确" in await response.text()
    response = await page.page.request.post(county.url + "/portal/login", max_redirects=0, multipart={
        "csrf": token, "username": "zhangsan", "password": NEW_PASSWORD, "next": "/portal/"})
    assert response.status == 303
    await page.goto("/portal/password")
    response = await page.page.request.post(county.url + "/portal/password", max_redirects=0, multipart={
        "csrf": await csrf_of(page), "current": "not-it-123", "new": "x", "confirm": "y"})
    assert response.status == 400 and "当前密码不正确" in await response.text()
    # JSON is not a form: refused as one without the form's token, never a 500.
    response = await page.page.request.post(county.url + "/portal/password", max_redirects=0,
                                            data='{"new": "x"}', headers={"Content-Type": "application/json"})
    assert response.status == 403


async def test_a_clerk_issues_prints_finds_and_verifies_a_licence(tree, portal_page):
    nodes, _, _ = tree
    clerk = await signed_in(portal_page, tree, "zhangsan")
    await clerk.page.get_by_role("navigation", name="主导航").get_by_role("link", name="电子证照", exact=True).click()
    await clerk.page.wait_for_load_state()
    await labelled(clerk)
    await clerk.page.get_by_role("link", name="签发证照").click()
    await clerk.page.wait_for_load_state()
    await labelled(clerk)
    await clerk.fill("证照类型代码", "12345")
    await clerk.fill("证照类型名称", "最低生活保障证")
    await clerk.fill("持证主体名称", "张小明")
    await clerk.fill("持证主体代码", HOLDER)
    await clerk.fill("照面信息", "保障人数：3\n月保障金额：1560元")
    assert (await clerk.press("签发")).status == 400
    assert await clerk.page.get_by_label("持证主体名称", exact=True).input_value() == "张小明"
    await clerk.fill("证照类型代码", LICENCE_TYPE)
    await clerk.fill("有效期截止", "2031-12-31")
    await clerk.press("签发")
    assert clerk.path.startswith("/portal/licences/1.2.156.3005.2." + LICENCE_TYPE)
    identifier = clerk.path.rsplit("/", 1)[1]
    sheet = clerk.page.get_by_role("article", name="证照")
    text = await sheet.inner_text()
    assert "张小明" in text and "1560元" in text and "桓台县民政局" in text and "有效" in text
    assert await sheet.locator("svg").count() == 1  # the QR code of the identifier
    await clerk.screenshot("licence")
    # On paper: the licence alone, without the portal's bars and buttons.
    await clerk.page.emulate_media(media="print")
    assert await sheet.is_visible()
    for chrome in ("header.topbar", "nav.side", "footer.foot"):
        assert not await clerk.page.locator(chrome).is_visible(), chrome
    assert not await clerk.page.get_by_role("button", name="打印").is_visible()
    await clerk.screenshot("licence-print")
    await clerk.page.emulate_media(media="screen")

    await clerk.goto("/portal/licences")
    await clerk.fill("持证主体代码", HOLDER)
    await clerk.press("查找")
    found = clerk.page.get_by_role("table", name=re.compile("该持证主体的证照"))
    assert "最低生活保障证" in await found.inner_text() and identifier in await found.inner_text()
    assert HOLDER not in clerk.page.url
    await clerk.fill("证照标识", identifier)
    await clerk.press("核验")
    assert "证照有效" in await clerk.text()
    await clerk.fill("证照标识", identifier[:-1] + ("A" if identifier[-1] != "A" else "B"))
    await clerk.press("核验")
    assert "证照无效" in await clerk.alert()

    # The index reaches the province; its auditor finds the licence there.
    province = nodes["370000"]

    async def indexed():
        status, body = await province.call("GET", f"/api/v1/licences?holder={HOLDER}", "auditor")
        return status == 200 and body["total"] == 1
    await wait_for(indexed, what="the licence index at the province")
    auditor = await signed_in(portal_page, tree, "zhaoliu")
    await auditor.goto("/portal/licences")
    await auditor.fill("持证主体代码", HOLDER)
    await auditor.press("查找")
    assert identifier in await auditor.page.get_by_role("table", name=re.compile("该持证主体的证照")).inner_text()


async def test_a_clerk_reports_a_wrong_value_from_a_query_and_follows_it(tree, portal_page):
    nodes, _, _ = tree
    county = nodes["370321"]
    status, entry = await county.call("POST", "/api/v1/catalog", "police", json_body={
        **SAMPLE_ENTRY, "name": "桓台县户籍人口姓名", "items": ITEMS,
        "share": {"type": "unconditional", "methods": ["api"]}})
    assert status == 201, entry
    code = entry["code"]
    status, body = await county.call("POST", f"/api/v1/resources/{code}/records", "police",
                                     json_body=[{"id_number": HOLDER, "name": "张小名"}])
    assert status == 200, body
    clerk = await signed_in(portal_page, tree, "zhangsan")
    await clerk.goto(f"/portal/catalog/{code}/query")
    await clerk.fill("公民身份号码", HOLDER)
    await clerk.fill("用途", "最低生活保障资格复核")
    await clerk.press("查询")
    assert "张小名" in await clerk.text()
    await clerk.page.get_by_role("link", name="报告数据有误").click()
    await clerk.page.wait_for_load_state()
    assert clerk.path == "/portal/feedback/new"
    await labelled(clerk)
    assert await clerk.page.get_by_label("记录主键", exact=True).input_value() == HOLDER
    assert (await clerk.press("提交纠错")).status == 400  # no item chosen, no description
    await clerk.page.get_by_label("姓名", exact=True).check()
    await clerk.fill("问题说明", "姓名应为“张小明”，见户口簿。")
    await clerk.press("提交纠错")
    assert clerk.path.startswith("/portal/feedback/")
    assert "待处理" in await clerk.text()
    fb_id = clerk.path.rsplit("/", 1)[1]
    await clerk.screenshot("feedback")
    status, doc = await county.call("POST", f"/api/v1/feedback/{fb_id}/correct", "police",
                                    json_body={"reason": "已按户口簿更正"})
    assert status == 200, doc
    await clerk.goto("/portal/feedback")
    row = clerk.page.locator("tbody tr").filter(has_text=code)
    assert "已更正" in await row.inner_text()
    await row.get_by_role("link").click()
    await clerk.page.wait_for_load_state()
    assert "已按户口簿更正" in await clerk.text()
    submitted = await audit_at(county, "portal.feedback.submit")
    assert [(r["user"], r["outcome"]) for r in submitted] == [("zhangsan", "ok"), ("zhangsan", "INVALID_INPUT")]


async def audit_at(node, action: str) -> list[dict]:
    status, body = await node.call("GET", f"/api/v1/audit?limit=100&action={action}", node.tokens["auditor"])
    assert status == 200, body
    return body["records"]


async def test_a_clerk_subscribes_sees_the_lag_and_cancels(tree, portal_page):
    nodes, _, _ = tree
    county = nodes["370321"]
    status, entry = await county.call("POST", "/api/v1/catalog", "civil", json_body={
        **SAMPLE_ENTRY, "name": "桓台县低保对象", "items": ITEMS, "share": {"type": "unconditional", "methods": ["api"]}})
    assert status == 201, entry
    code = entry["code"]
    status, body = await county.call("POST", f"/api/v1/resources/{code}/records", "civil",
                                     json_body=[{"id_number": HOLDER, "name": "张小明"}])
    assert status == 200, body
    clerk = await signed_in(portal_page, tree, "zhangsan")
    await clerk.page.get_by_role("navigation", name="主导航").get_by_role("link", name="数据订阅", exact=True).click()
    await clerk.page.wait_for_load_state()
    await labelled(clerk)
    await clerk.fill("资源代码", code)
    await clerk.page.get_by_label("订阅方式", exact=True).select_option("webhook")
    assert (await clerk.press("订阅")).status == 400  # a webhook needs its URL
    closed = f"http://127.0.0.1:{free_port()}/hook"  # nobody listens: every delivery fails
    await clerk.fill("推送地址", closed)
    await clerk.press("订阅")
    secret = (await clerk.page.locator("#secret").inner_text()).strip()
    assert len(secret) >= 32
    await clerk.page.get_by_role("link", name="已妥善保存，返回").click()
    await clerk.page.wait_for_load_state()
    assert secret not in await clerk.page.content()

    async def failing():
        await clerk.goto("/portal/subscriptions")
        row = clerk.page.locator("tbody tr").filter(has_text=code)
        return "出错" in await row.inner_text() and await row.inner_text()
    text = await wait_for(failing, 30, 0.5, "the failed delivery shown")
    assert "推送到本部门接口" in text and "尚未追平" in text and "ClientConnectorError" in text  # lag, last error
    await clerk.screenshot("subscriptions")
    await clerk.page.get_by_role("button", name=f"取消订阅 {code}").click()
    await clerk.page.wait_for_load_state()
    assert "订阅已取消" in await clerk.text()
    assert await clerk.page.locator("tbody tr").filter(has_text=code).count() == 0
