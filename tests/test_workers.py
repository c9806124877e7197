"""One node, several processes (issue 17): on SQLite exactly one `govnode run` serves a home; on
PostgreSQL several workers serve one node, and what one worker learns the others act on."""

from __future__ import annotations

import pytest

from support import NodeProcess, add_dept_async, init_home, raw_sql, run_cli_full_async


async def test_a_second_run_on_a_sqlite_home_is_refused(tmp_path):
    config = init_home(tmp_path / "county", "370321", "桓台县")
    first = await NodeProcess(config).start()
    try:
        rc, out, err = await run_cli_full_async(["run", "--dir", str(config.home)])
        assert rc == 1 and out == "", out
        [line] = err.splitlines()  # one clear line, no traceback
        assert "already running" in line and f"pid {first.proc.pid}" in line, line
        # join would store trust state the running node never reads: refused before the token is spent.
        rc, _, err = await run_cli_full_async(["join", "http://127.0.0.1:9", "gni_unused", "--dir", str(config.home)])
        assert rc == 1 and "stop it before `govnode join`" in err, err
        # Adding a department beside the running node stays allowed (the database orders the two
        # writers), and the running node accepts the new token.
        token = await add_dept_async(config.home, "OPERATOR", "桓台县大数据中心", "operator")
        status, _ = await first.call("GET", "/api/v1/audit?limit=1", token)
        assert status == 200
        # A command of a newer govnode must not migrate the schema under the running node's feet.
        [(head,)] = await raw_sql(config, "SELECT version_num FROM alembic_version")
        await raw_sql(config, "UPDATE alembic_version SET version_num = '0009'")
        try:
            rc, _, err = await run_cli_full_async(["dept", "list", "--dir", str(config.home)])
            assert rc == 1 and "older database schema" in err and len(err.splitlines()) == 1, err
        finally:
            await raw_sql(config, "UPDATE alembic_version SET version_num = :v", {"v": head})
        # The lock dies with the process, however it dies: after kill -9 the home can be served again.
        first.kill()
        second = await NodeProcess(config).start()
        await second.stop()
    finally:
        first.kill()
