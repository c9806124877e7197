"""A portal session ended in one worker of a node ends in the others (issue 15's session cache): each worker
reuses a session it read for at most SESSION_CACHE_MS, and a sign-out is announced to the other workers with
its commit (PostgreSQL NOTIFY), so a copy of the cookie sent to another worker opens nothing once the
announcement arrived, well within the bound."""

from __future__ import annotations

import pytest

from node.accounts.http import PEOPLE
from node.accounts.people import SESSION_CACHE_MS, digest
from portal_support import add_person
from support import CIVIL, add_dept, drop_pg_schema, init_home, start_node, start_worker, wait_for

pytestmark = pytest.mark.asyncio(loop_scope="module")

NEW_PASSWORD = "会话缓存-2026ab"


async def test_a_sign_out_in_one_worker_ends_the_session_in_another(tmp_path, portal_page):
    home = tmp_path / "node"
    config = init_home(home, "370321", "桓台县", backend="postgresql")
    add_dept(home, CIVIL, "桓台县民政局")
    initial = add_person(home, "zhangsan", CIVIL)
    first = await start_node(config)
    second = await start_worker(config)
    try:
        page = await portal_page(first.url)
        await page.first_sign_in("zhangsan", initial, NEW_PASSWORD)
        cookie = await page.cookie("gn_session")
        other = await portal_page(second.url)
        await other.context.add_cookies([cookie])
        await other.goto("/portal/")
        assert other.path == "/portal/"  # the second worker read the session, and keeps it for a moment
        kept = second.app[PEOPLE]._sessions
        assert digest(cookie["value"]) in kept

        await page.press("退出登录")
        assert page.path == "/portal/login"
        # The sign-out's announcement made the second worker drop its copy (the bound alone would leave it).
        await wait_for(lambda: digest(cookie["value"]) not in kept, 10, what="the announcement of the sign-out")

        async def ended():
            await other.goto("/portal/")
            return other.path == "/portal/login"
        # Within the cache's bound (the announcement normally arrives in milliseconds).
        await wait_for(ended, SESSION_CACHE_MS / 1000 + 2, interval=0.05, what="the session ended in the other worker")
    finally:
        await second.stop()
        await first.stop()
        await drop_pg_schema(config.database.schema_)
