"""Fixtures: a real node on a loopback port, on SQLite and on PostgreSQL."""

from __future__ import annotations

import pytest
import pytest_asyncio
from hypothesis import settings

from support import CIVIL, POLICE, drop_pg_schema, init_home, start_node

BACKENDS = ["sqlite", "postgresql"]

# Property tests assert what holds for every example, never how fast one ran: hypothesis' default 200 ms
# deadline per example is a timed assertion, and it failed a canonical-JSON property on a shared machine
# with a load average near 30. Speed lives in the benchmarks under scripts/.
settings.register_profile("govnode", deadline=None)
settings.load_profile("govnode")

@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
async def node(tmp_path, backend):
    """One county node (370321 桓台县) with a department, an operator and an auditor."""
    from support import add_dept

    home = tmp_path / "node"
    config = init_home(home, "370321", "桓台县", backend=backend, migrated=True)
    tokens = {
        "police": add_dept(home, POLICE, "桓台县公安局"),
        "civil": add_dept(home, CIVIL, "桓台县民政局"),
        "operator": add_dept(home, "OPERATOR", "桓台县大数据中心", "operator"),
        "auditor": add_dept(home, "AUDITOR", "桓台县审计局", "auditor"),
    }
    running = await start_node(config)
    running.tokens.update(tokens)
    try:
        yield running
    finally:
        await running.stop()
        if config.database.schema_:
            await drop_pg_schema(config.database.schema_)


# The portal's browser tests (tests/portal_support.py). A module using these runs its tests in one event
# loop per module (pytestmark = pytest.mark.asyncio(loop_scope="module")), so Chromium starts once a module.

@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser():
    from portal_support import launched

    async with launched() as b:
        yield b


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory):
    """Where a module's screenshots go (a temporary folder pytest names after the module)."""
    return tmp_path_factory.mktemp("portal-screens")


@pytest_asyncio.fixture(loop_scope="module")
async def portal_page(browser, screenshots):
    """Opens portal tabs: `await portal_page(node.url)`, each in a browser context of its own (its own
    cookies), at 1366×768. At the end, a script error or failed request on any page they showed fails the test."""
    from portal_support import LAPTOP, Portal

    opened: list = []

    async def open_page(base_url: str, **context_options):
        context = await browser.new_context(viewport=LAPTOP, locale="zh-CN", **context_options)
        portal = Portal(context, await context.new_page(), base_url, screenshots)
        opened.append(portal)
        return portal

    yield open_page
    for portal in opened:
        await portal.context.close()
    for portal in opened:
        portal.assert_clean()
