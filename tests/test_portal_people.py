"""The portal's people (issue 15, SPEC §14, §15), in a real Chromium on a real node: the first sign-in
changes the initial password, then the home page shows the department's resources, its applications and
what waits; wrong passwords, the lockout and every refusal are audited as the person; forms without the
session's CSRF token are refused; signing out (or idling) ends the session; the cookie's flags and the
pages' headers; no script error or failed request on any page; and `govnode user add/list/disable`."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import ssl

import pytest
import pytest_asyncio
from aiohttp import web

from node.accounts.people import ABSOLUTE_MS, IDLE_MS, SESSION_CACHE_MS
from node.audit import store as audit_store
from node.audit.service import GENESIS, record_hash
from node.ids import now_ms
from portal_support import add_person
from support import (CIVIL, POLICE, SAMPLE_ENTRY, LocalCA, add_dept, drop_pg_schema, free_port, init_home,
                     raw_sql, run_cli, start_node)

pytestmark = pytest.mark.asyncio(loop_scope="module")

NEW_PASSWORD = "桓台民政-2026a"
CSP_REQUIRED = ("default-src 'self'", "frame-ancestors 'none'", "script-src 'self'")


# The people of the test county: username -> (department, name as shown). Each test adds those it needs
# (`person`), since every account costs an Argon2 hash.
PEOPLE = {"zhangsan": (CIVIL, "张三"), "lisi": (POLICE, "李四"), "wangwu": ("OPERATOR", None),
          "zhaoliu": ("AUDITOR", "赵六")}


async def _county(tmp_path, backend):
    """桓台县 with two departments, an operator and an auditor; the clerk 张三 of the civil affairs bureau."""
    home = tmp_path / "node"
    config = init_home(home, "370321", "桓台县", backend=backend)
    tokens = {"police": add_dept(home, POLICE, "桓台县公安局"), "civil": add_dept(home, CIVIL, "桓台县民政局"),
              "operator": add_dept(home, "OPERATOR", "桓台县大数据中心", "operator"),
              "auditor": add_dept(home, "AUDITOR", "桓台县审计局", "auditor")}
    node = await start_node(config)
    node.tokens.update(tokens)
    node.initial = {}
    person(node, "zhangsan")
    return node


def person(node, username: str) -> str:
    """Add one of PEOPLE with `govnode user add`; their initial password."""
    dept, name = PEOPLE[username]
    node.initial[username] = add_person(node.config.home, username, dept, name=name)
    return node.initial[username]


async def _stop(node) -> None:
    await node.stop()
    if node.config.database.schema_:
        await drop_pg_schema(node.config.database.schema_)


@pytest_asyncio.fixture(loop_scope="module")
async def county(tmp_path, backend):
    """On SQLite and on PostgreSQL: for what the database keeps (people, sessions, failures, audit)."""
    node = await _county(tmp_path, backend)
    yield node
    await _stop(node)


@pytest_asyncio.fixture(loop_scope="module")
async def county_sqlite(tmp_path):
    """One store is enough for what the browser sees of it (headers, flags, forms)."""
    node = await _county(tmp_path, "sqlite")
    yield node
    await _stop(node)


async def audit_records(node, action: str | None = None) -> list[dict]:
    status, page = await node.call("GET", "/api/v1/audit?limit=500", "auditor")
    assert status == 200, page
    return [r for r in reversed(page["records"]) if action is None or r["action"] == action]


async def register(node, token: str, name: str, share: dict) -> str:
    status, entry = await node.call("POST", "/api/v1/catalog", token,
                                    json_body={**SAMPLE_ENTRY, "name": name, "share": share})
    assert status == 201, entry
    return entry["code"]


# The first sign-in, the home page ------------------------------------------------------------------------

async def test_first_sign_in_changes_the_password_then_home_shows_the_departments_work(county_sqlite, portal_page):
    # What the database keeps of this (people, sessions, the audit) is tested on both stores below.
    county = county_sqlite
    await register(county, "civil", "桓台县最低生活保障对象", {"type": "unconditional", "methods": ["api"]})
    code = await register(county, "police", "桓台县户籍人口基本信息",
                          {"type": "conditional", "condition": "用于社会救助资格核验", "methods": ["api"]})
    status, application = await county.call("POST", "/api/v1/applications", "civil", json_body={
        "resource": code, "ops": ["verify"], "fields": ["name"], "purpose": "最低生活保障资格审核",
        "basis": "《社会救助暂行办法》第十一条"})
    assert status == 201, application

    clerk = await portal_page(county.url)
    await clerk.goto("/portal/")
    assert clerk.path == "/portal/login"  # no session: the sign-in page, which returns to the home page after
    await clerk.screenshot("login")
    await clerk.sign_in("zhangsan", county.initial["zhangsan"])
    # The initial password opens only the page that replaces it; the current one is not asked again.
    assert clerk.path == "/portal/password"
    assert await clerk.page.get_by_label("新密码", exact=True).is_visible()
    assert await clerk.page.get_by_label("确认新密码", exact=True).is_visible()
    assert await clerk.page.get_by_label("当前密码", exact=True).count() == 0
    await clerk.screenshot("password")
    await clerk.goto("/portal/")
    assert clerk.path == "/portal/password"

    await clerk.fill("新密码", NEW_PASSWORD)
    await clerk.fill("确认新密码", NEW_PASSWORD + "x")
    response = await clerk.press("保存新密码")
    assert response.status == 400 and await clerk.alert() == "两次输入的新密码不一致"
    await clerk.fill("新密码", "short1")
    await clerk.fill("确认新密码", "short1")
    assert (await clerk.press("保存新密码")).status == 400
    assert "至少 10 个字符" in await clerk.alert()
    # A refused form never writes a password back into the page.
    assert await clerk.page.get_by_label("新密码", exact=True).input_value() == ""

    await clerk.fill("新密码", NEW_PASSWORD)
    await clerk.fill("确认新密码", NEW_PASSWORD)
    await clerk.press("保存新密码")
    assert clerk.path == "/portal/"
    text = await clerk.text()
    assert "密码已修改" in text
    assert "张三" in text and "桓台县民政局" in text and "县级节点" in text
    assert "桓台县最低生活保障对象" in text  # the department's own resource
    # Its application, with the step it waits for and that step's due date (as the API has it).
    row = clerk.page.locator("section", has_text="我的申请").locator("tr", has_text="桓台县户籍人口基本信息")
    assert await row.count() == 1
    assert "待平台审核" in await row.inner_text() and application["review_due"] in await row.inner_text()
    await clerk.screenshot("home")
    await clerk.page.set_viewport_size({"width": 1920, "height": 1080})
    await clerk.screenshot("home-1920")
    for secret in (NEW_PASSWORD, county.initial["zhangsan"], (await clerk.cookie("gn_session"))["value"]):
        assert secret not in await clerk.page.content()

    # The operator's home shows the review waiting; the providing department's shows nothing yet.
    operator = await portal_page(county.url)
    await operator.first_sign_in("wangwu", person(county, "wangwu"), NEW_PASSWORD)
    waiting = operator.page.locator("section", has_text="待办事项")
    assert "桓台县户籍人口基本信息" in await waiting.inner_text()
    assert application["review_due"] in await waiting.inner_text()
    await operator.screenshot("home-operator")
    status, _ = await county.call("POST", f"/api/v1/applications/{application['id']}/review", "operator",
                                  json_body={"decision": "accept"})
    assert status == 200
    provider = await portal_page(county.url)
    await provider.first_sign_in("lisi", person(county, "lisi"), NEW_PASSWORD)
    assert "待本部门决定的申请" in await provider.text()
    assert "桓台县户籍人口基本信息" in await provider.page.locator("section", has_text="待办事项").inner_text()

    # Each page and form is audited as the person: their department as actor, their name as user.
    changed = [r for r in await audit_records(county, "portal.password.post") if r["user"] == "zhangsan"]
    assert [r["outcome"] for r in changed] == ["INVALID_INPUT", "INVALID_INPUT", "ok"]
    assert {r["actor"] for r in changed} == {f"370321/{CIVIL}"} and changed[-1]["role"] == "dept"
    home = [r for r in await audit_records(county, "portal.home") if r["user"] == "wangwu"]
    assert home and home[0]["actor"] == "370321/OPERATOR" and home[0]["role"] == "operator"
    signed_in = [r for r in await audit_records(county, "portal.login.post") if r["outcome"] == "ok"]
    assert {r["user"] for r in signed_in} == {"zhangsan", "wangwu", "lisi"}
    # API calls made with a department's token name no person.
    assert all(r["user"] is None for r in await audit_records(county, "applications.submit"))


# Wrong passwords and the lockout -------------------------------------------------------------------------

async def test_wrong_passwords_lock_the_account_and_every_attempt_is_audited(county, portal_page):
    page = await portal_page(county.url)
    await page.goto("/portal/login")
    await page.fill("用户名", "nobody")
    await page.fill("密码", "whatever-123")
    response = await page.press("登录")
    assert response.status == 401 and await page.alert() == "用户名或密码不正确"
    for attempt in range(1, 5):
        response = await page.sign_in("zhangsan", f"wrong-password-{attempt}")
        assert response.status == 401 and page.path == "/portal/login"
        assert await page.alert() == "用户名或密码不正确"
        # The name stays in the form; the password is never written back.
        assert await page.page.get_by_label("用户名", exact=True).input_value() == "zhangsan"
        assert await page.page.get_by_label("密码", exact=True).input_value() == ""
    await page.sign_in("zhangsan", "wrong-password-5")
    assert "连续 5 次登录失败，账户已锁定" in await page.alert()
    await page.screenshot("locked")
    # Locked: even the right password is refused until the lock ends.
    response = await page.sign_in("zhangsan", county.initial["zhangsan"])
    assert response.status == 401 and "账户已锁定" in await page.alert() and page.path == "/portal/login"
    rc, out, _ = run_cli(["user", "list", "--dir", str(county.config.home)])
    assert rc == 0 and re.search(r"^zhangsan\t\S+\tdept\tlocked\t", out, re.M), out

    attempts = await audit_records(county, "portal.login.post")
    unknown, *named = attempts
    assert unknown["actor"] == "anonymous" and unknown["user"] is None and unknown["outcome"] == "UNAUTHENTICATED"
    assert "nobody" not in json.dumps(unknown, ensure_ascii=False)  # a mistyped name may be a password
    assert [(r["user"], r["actor"], r["outcome"]) for r in named] == [("zhangsan", f"370321/{CIVIL}", "UNAUTHENTICATED")] * 6
    assert [r["details"]["failures"] for r in named[:5]] == [1, 2, 3, 4, 5]
    assert "locked_until" not in named[3]["details"] and named[4]["details"]["locked_until"] > now_ms()
    assert named[5]["details"]["refused"] == "locked"
    assert not any(re.search(r"wrong-password|" + re.escape(county.initial["zhangsan"]), json.dumps(r))
                   for r in attempts)

    # The lock ends by itself (here: moved into the past); then the initial password works.
    await raw_sql(county.config, "UPDATE users SET locked_until = :t WHERE username = 'zhangsan'", {"t": now_ms() - 1})
    await page.sign_in("zhangsan", county.initial["zhangsan"])
    assert page.path == "/portal/password"

    # The person named in a record is covered by its hash: changing it breaks `govnode audit verify`.
    assert run_cli(["audit", "verify", "--dir", str(county.config.home)])[0] == 0
    await raw_sql(county.config, 'UPDATE audit_log SET "user" = \'lisi\' WHERE "user" = \'zhangsan\'')
    rc, _, err = run_cli(["audit", "verify", "--dir", str(county.config.home)])
    assert rc == 1 and "altered" in err


async def test_records_without_a_person_hash_as_before_people_existed():
    """The hash of a record without `user` is the one made before migration 0011, so old chains verify."""
    row = {"seq": 1, "at": 1763800000000, "request_id": "r", "message_id": None, "actor": "370321/X",
           "role": "dept", "action": "catalog.search", "method": "GET", "path": "/api/v1/catalog",
           "resource": None, "keys_digest": None, "outcome": "ok", "status": 200, "latency_ms": 3, "details": None}
    before = hashlib.sha256((GENESIS + json.dumps([row[f] for f in audit_store.HASHED_FIELDS], ensure_ascii=False,
                                                  separators=(",", ":"))).encode()).hexdigest()
    assert record_hash(GENESIS, {**row, "user": None}) == before
    assert record_hash(GENESIS, {**row, "user": "zhangsan"}) != before


# CSRF --------------------------------------------------------------------------------------------------

async def test_forms_without_the_sessions_token_are_refused_and_audited(county_sqlite, portal_page):
    node = county_sqlite
    page = await portal_page(node.url)
    await page.first_sign_in("zhangsan", node.initial["zhangsan"], NEW_PASSWORD)
    other = "另一个密码-2026b"
    change = {"current": NEW_PASSWORD, "new": other, "confirm": other}
    for form, refusal in ((change, "missing"), ({**change, "csrf": "0" * 64}, "wrong")):
        response = await page.page.request.post(node.url + "/portal/password", form=form, max_redirects=0)
        assert response.status == 403, refusal
        assert "表单校验码缺失或不符" in await response.text()
        assert response.headers["cache-control"] == "no-store"
    # Sign-out without the token is refused too: the session lives on.
    response = await page.page.request.post(node.url + "/portal/logout", form={}, max_redirects=0)
    assert response.status == 403
    await page.goto("/portal/")
    assert page.path == "/portal/"
    # The refused changes changed nothing: the password is still the one set at the first sign-in.
    await page.press("退出登录")
    await page.sign_in("zhangsan", NEW_PASSWORD)
    assert page.path == "/portal/"

    # The sign-in form's token is bound to its own cookie: a form from elsewhere (no cookie) is refused.
    stranger = await portal_page(node.url)
    response = await stranger.page.request.post(node.url + "/portal/login", max_redirects=0, form={
        "csrf": "x" * 32, "username": "zhangsan", "password": NEW_PASSWORD})
    assert response.status == 403 and await stranger.cookie("gn_session") is None

    refused = [r for r in await audit_records(node) if r["outcome"] == "FORBIDDEN"]
    assert [(r["action"], r["user"], r["details"]["csrf"]) for r in refused] == [
        ("portal.password.post", "zhangsan", "missing"), ("portal.password.post", "zhangsan", "wrong"),
        ("portal.logout", "zhangsan", "missing"), ("portal.login.post", None, "wrong")]

    # Every form of the portal, sent anything but a form (here 10,000 levels of JSON), is that same refusal.
    # A form about one thing (a resource, an application) is sent to a path naming one: any will do, since the
    # token is checked before anything is looked up.
    samples = {"code": "101001/370321000001", "id": "01JD3W6Z9K8Q4V7N2M5X1R0T6Y", "dept": "OPERATOR",
               "username": "zhangsan", "item": "370321-XK-00001", "list": "370321-0001",
               "entry": "01JD3W6Z9K8Q4V7N2M5X1R0T6Y"}
    posts = {str(r.resource.url_for(**{k: v for k, v in samples.items() if "{" + k in r.resource.canonical}))
             for r in node.app.router.routes() if r.method == "POST" and r.resource.canonical.startswith("/portal/")}
    assert {"/portal/login", "/portal/password", "/portal/logout"} <= posts
    # A path's parameters take a well-formed value, so that the form is reached (and refused) at all.
    sample = {"id": "0" * 26, "code": "101001/370321000001", "dept": "OPERATOR", "username": "zhangsan",
              "item": "370321-XK-00001", "list": "370321-0001", "entry": "0" * 26}
    for path in sorted(re.sub(r"\{(\w+)\}", lambda m: sample[m.group(1)], p) for p in posts):
        response = await page.page.request.post(node.url + path, data=b"[" * 10_000 + b"]" * 10_000,
                                                headers={"Content-Type": "application/json"}, max_redirects=0)
        assert response.status == 403 and "表单校验码" in await response.text(), path


# Sessions ------------------------------------------------------------------------------------------------

async def test_signing_out_or_idling_ends_the_session(county, portal_page, browser):
    page = await portal_page(county.url)
    await page.first_sign_in("zhangsan", county.initial["zhangsan"], NEW_PASSWORD)
    old = await page.cookie("gn_session")
    await page.press("退出登录")
    assert page.path == "/portal/login" and "您已安全退出" in await page.text()
    assert await page.cookie("gn_session") is None
    # The old cookie, sent again (as a copy of it would be), opens nothing.
    replay = await portal_page(county.url)
    await replay.context.add_cookies([{**old}])
    await replay.goto("/portal/")
    assert replay.path == "/portal/login"
    assert (await raw_sql(county.config, "SELECT count(*) FROM portal_sessions"))[0][0] == 0

    # Idle for longer than the idle limit, or older than the absolute limit: signed out either way.
    for column, age in (("seen_at", IDLE_MS), ("created_at", ABSOLUTE_MS)):
        await page.sign_in("zhangsan", NEW_PASSWORD)
        assert page.path == "/portal/"
        await raw_sql(county.config, f"UPDATE portal_sessions SET {column} = :t", {"t": now_ms() - age - 1000})
        # The node reuses a session it read for SESSION_CACHE_MS (node.accounts.people); a session that idled
        # for half an hour was last read long before that, as it is here once the bound has passed.
        await asyncio.sleep(SESSION_CACHE_MS / 1000)
        await page.goto("/portal/")
        assert page.path == "/portal/login", column
        await raw_sql(county.config, "DELETE FROM portal_sessions")


# Cookies and headers -------------------------------------------------------------------------------------

def _https_context(tmp_path) -> ssl.SSLContext:
    cert, key = LocalCA(tmp_path / "pki").issue("portal")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


async def test_cookie_flags_and_security_headers(county_sqlite, portal_page, tmp_path):
    node = county_sqlite
    page = await portal_page(node.url)
    login = await page.goto("/portal/login")
    signin = await page.cookie("gn_signin")
    assert signin["httpOnly"] and signin["sameSite"] == "Strict"
    await page.first_sign_in("zhangsan", node.initial["zhangsan"], NEW_PASSWORD)
    cookie = await page.cookie("gn_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax" and cookie["path"] == "/portal/"
    assert not cookie["secure"]  # plain HTTP on loopback
    assert cookie["expires"] == -1  # a browser session cookie; the server ends it when idle
    assert len(cookie["value"]) >= 40 and "zhangsan" not in cookie["value"]

    answers = {"login": login, "home": await page.goto("/portal/"), "password": await page.goto("/portal/password"),
               "missing": await page.goto("/portal/no-such-page")}
    assert answers["missing"].status == 404 and "页面或数据不存在" in await page.text()
    for name, response in answers.items():
        headers = await response.all_headers()
        csp = headers["content-security-policy"]
        assert all(part in csp for part in CSP_REQUIRED) and "unsafe-inline" not in csp, name
        assert headers["cache-control"] == "no-store", name
        assert headers["x-frame-options"] == "DENY" and headers["x-content-type-options"] == "nosniff", name
        assert headers["content-type"].startswith("text/html"), name
    static = await page.page.request.get(node.url + "/portal/static/portal.css")
    assert static.status == 200 and "no-store" not in static.headers["cache-control"]
    redirect = await page.page.request.get(node.url + "/", max_redirects=0)
    assert redirect.status == 303 and redirect.headers["location"] == "/portal/"
    # Every form control on the pages has a visible label.
    for path in ("/portal/login", "/portal/password"):
        await page.goto(path)
        unlabelled = await page.page.evaluate(
            "() => [...document.querySelectorAll('input:not([type=hidden]), select, textarea')]"
            ".filter(e => !e.labels.length || !e.labels[0].offsetParent).map(e => e.name)")
        assert unlabelled == [], path

    # After signing in, the page asked for, if it is the portal's; never another site.
    for asked, landed in (("//elsewhere.example/x", "/portal/"), ("/portal/password", "/portal/password")):
        await page.press("退出登录")
        await page.goto(f"/portal/login?next={asked}")
        await page.sign_in("zhangsan", NEW_PASSWORD)
        assert page.path == landed, asked

    # Served over HTTPS, the session cookie is Secure.
    site = web.TCPSite(node.runner, "127.0.0.1", port := free_port(), ssl_context=_https_context(tmp_path))
    await site.start()
    try:
        secure = await portal_page(f"https://127.0.0.1:{port}", ignore_https_errors=True)
        await secure.sign_in("zhangsan", NEW_PASSWORD)
        assert secure.path == "/portal/" and (await secure.cookie("gn_session"))["secure"]
    finally:
        await site.stop()


# Every page, every role ----------------------------------------------------------------------------------

async def test_every_page_for_every_role_loads_without_script_errors(county_sqlite, portal_page):
    """The fixture fails the test on any console error, script error or failed request of these pages."""
    node = county_sqlite
    for username in ("zhangsan", "wangwu", "zhaoliu"):
        page = await portal_page(node.url)
        await page.first_sign_in(username, node.initial.get(username) or person(node, username), NEW_PASSWORD)
        # A person takes the department's role unless given another: the operator's shows in the top bar.
        role = {"zhangsan": "部门用户", "wangwu": "平台运营", "zhaoliu": "审计"}[username]
        assert await page.page.locator("header .role").inner_text() == role
        links = page.page.locator("nav.side a")
        labels = [await links.nth(i).inner_text() for i in range(await links.count())]
        assert labels[0] == "首页", labels
        for label in labels:
            await page.page.get_by_role("link", name=label, exact=True).click()
            await page.page.wait_for_load_state()
        await page.goto("/portal/password")
        assert await page.page.get_by_label("当前密码", exact=True).is_visible()
        assert (await page.goto("/portal/missing")).status == 404
    # Without a session a form post is a page saying so, not a redirect that loses the form.
    stranger = await portal_page(node.url)
    await stranger.goto("/portal/login")
    response = await stranger.page.request.post(node.url + "/portal/password", form={"csrf": "x"}, max_redirects=0)
    assert response.status == 401 and "请重新登录" in await response.text()


# The operator's commands -----------------------------------------------------------------------------------

async def test_user_commands_add_list_and_disable(county, portal_page):
    home = str(county.config.home)
    rc, out, err = run_cli(["user", "add", "sunqi", "--dept", CIVIL, "--name", "孙七", "--dir", home])
    assert rc == 0, err
    password = out.strip().splitlines()[-1]
    assert re.fullmatch(r"[A-Za-z2-9]{4}-[A-Za-z2-9]{4}-[A-Za-z2-9]{4}", password)
    refused = [run_cli(["user", "add", "sunqi", "--dept", CIVIL, "--dir", home]),
               run_cli(["user", "add", "zhouba", "--dept", "NOSUCHDEPT", "--dir", home]),
               run_cli(["user", "add", "Zhou Ba", "--dept", CIVIL, "--dir", home])]
    assert [(rc, err.split(":")[1].strip()) for rc, _, err in refused] == [
        (1, "CONFLICT"), (1, "NOT_FOUND"), (1, "INVALID_INPUT")]
    rc, out, _ = run_cli(["user", "list", "--dir", home])
    listed = {line.split("\t")[0]: line.split("\t") for line in out.strip().splitlines()}
    assert set(listed) == {"zhangsan", "sunqi"}
    assert listed["sunqi"][1:4] == [CIVIL, "dept", "must-change-password"] and listed["sunqi"][-1] == "孙七"

    page = await portal_page(county.url)
    await page.first_sign_in("sunqi", password, NEW_PASSWORD)
    rc, out, _ = run_cli(["user", "list", "--dir", home])
    assert re.search(r"^sunqi\t\S+\tdept\tactive\tlast sign-in \d{4}-\d\d-\d\d \d\d:\d\d\t孙七$", out, re.M), out
    rc, out, _ = run_cli(["user", "disable", "sunqi", "--dir", home])
    assert rc == 0 and "disabled" in out
    # The open session ends at once; signing in again is refused.
    await page.goto("/portal/")
    assert page.path == "/portal/login"
    response = await page.sign_in("sunqi", NEW_PASSWORD)
    assert response.status == 401 and "该账户已停用" in await page.alert()
    rc, out, _ = run_cli(["user", "list", "--dir", home])
    assert re.search(r"^sunqi\t\S+\tdept\tdisabled\t", out, re.M)
    assert run_cli(["user", "disable", "nobody", "--dir", home])[0] == 1
    # Revoking a department ends its people's sessions too.
    clerk = await portal_page(county.url)
    await clerk.first_sign_in("zhangsan", county.initial["zhangsan"], NEW_PASSWORD)
    assert run_cli(["dept", "revoke", CIVIL, "--dir", home])[0] == 0
    await clerk.goto("/portal/")
    assert clerk.path == "/portal/login"
