"""Fixtures: a real node on a loopback port, on SQLite and on PostgreSQL."""

from __future__ import annotations

import pytest

from support import CIVIL, POLICE, drop_pg_schema, init_home, start_node

BACKENDS = ["sqlite", "postgresql"]



@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
async def node(tmp_path, backend):
    """One county node (370321 桓台县) with a department, an operator and an auditor."""
    from support import add_dept

    home = tmp_path / "node"
    config = init_home(home, "370321", "桓台县", backend=backend)
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
