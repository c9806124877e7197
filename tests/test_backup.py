"""`govnode backup` and `govnode restore` (issue 21): a county backed up while it runs, the federation changes,
the county's home is lost and restored; the restored node's audit chain verifies, it rejoins its neighbours
and catches up with what changed while it was away."""

from __future__ import annotations

import asyncio
import json
import shutil

from node.ids import make_gb32100
from support import (
    POLICE, SAMPLE_ENTRY, add_dept_async, raw_sql, run_cli_full_async, start_federation, stop_all,
    wait_for,
)

PEOPLE = [{"id_number": "11010519491231002X", "name": "张三"}, {"id_number": "110105194912310037", "name": "李四"}]


async def register(node, token: str, name: str, **kw) -> dict:  # noqa: ANN001
    status, entry = await node.call("POST", "/api/v1/catalog", token, json_body={**SAMPLE_ENTRY, "name": name, **kw})
    assert status == 201, entry
    return entry


async def catalog_codes(node) -> set[str]:  # noqa: ANN001
    return {r[0] for r in await raw_sql(node.config, "SELECT code FROM catalog_entries")}


async def test_backup_beside_a_running_node_then_restore_rejoin_and_catch_up(tmp_path):
    nodes = await start_federation(tmp_path / "fed", subprocesses=("370321",))
    try:
        county, province, city = nodes["370321"], nodes["370000"], nodes["370300"]
        home = county.config.home
        ctok = await add_dept_async(home, POLICE, "桓台县公安局")
        ptok = await add_dept_async(province.config.home, make_gb32100("11370000MB", 1), "山东省公安厅")
        mine = await register(county, ctok, "桓台县户籍人口基本信息")
        status, body = await county.call("POST", f"/api/v1/resources/{mine['code']}/records", ctok, json_body=PEOPLE)
        assert status == 200, body
        before = await register(province, ptok, "山东省法人基本信息")
        status, body = await province.call("POST", f"/api/v1/resources/{before['code']}/records", ptok, json_body=PEOPLE)
        assert status == 200, body
        await wait_for(lambda: _holds(county, before["code"]), timeout=30, what="the province's entry at the county")

        # Online: the node keeps serving (and writing) while the copy is taken.
        dest = tmp_path / "backup-1"
        writes = asyncio.gather(*(county.call("POST", f"/api/v1/resources/{mine['code']}/records", ctok,
                                              json_body=PEOPLE) for _ in range(10)))
        rc, out, err = await run_cli_full_async(["backup", str(dest), "--dir", str(home)])
        assert rc == 0, err
        assert all(s == 200 for s, _ in await writes)
        manifest = json.loads((dest / "backup.json").read_text(encoding="utf-8"))
        assert manifest["node"] == "370321" and manifest["database"] == "govnode.db"
        assert {"config.yaml", "signing.key"} <= set(manifest["files"]) and "govnode.lock" not in manifest["files"]
        assert (dest / "signing.key").stat().st_mode & 0o077 == 0  # the key stays its owner's alone

        # A backup never lands on another: a second one into the same folder is refused.
        rc, _out, err = await run_cli_full_async(["backup", str(dest), "--dir", str(home)])
        assert rc == 2 and "not empty" in err

        # Restore refuses a home a node runs on, and writes nothing there.
        rc, _out, err = await run_cli_full_async(["restore", str(dest), "--dir", str(home)])
        assert rc == 1 and "running" in err
        assert (await county.call("GET", "/healthz"))[0] == 200

        # The county goes on after the backup: an entry its neighbours pull (their cursors on its feeds now
        # stand past the backup's heads), then lost with the county.
        lost = await register(county, ctok, "桓台县死亡登记信息")
        await wait_for(lambda: _holds(province, lost["code"]), timeout=60, what="the entry made after the backup")

        # The county is lost (killed, its home wiped); meanwhile the federation goes on.
        county.kill()
        shutil.rmtree(home)
        away = [await register(province, ptok, "山东省企业登记信息"),
                await register(city, await add_dept_async(city.config.home, make_gb32100("11370300MB", 1), "淄博市公安局"),
                               "淄博市户籍人口基本信息")]

        rc, out, err = await run_cli_full_async(["restore", str(dest), "--dir", str(home)])
        assert rc == 0, err
        assert "audit chain intact" in out
        assert (home / "signing.key").stat().st_mode & 0o077 == 0

        # Restoring again onto the restored node is refused: a restore never overwrites a node.
        rc, _out, err = await run_cli_full_async(["restore", str(dest), "--dir", str(home)])
        assert rc == 2 and "already holds a node" in err

        await county.start()
        rc, out, err = await run_cli_full_async(["audit", "verify", "--dir", str(home)])
        assert rc == 0 and "audit chain intact" in out, err

        # What the county held is back: its entry, its records, its department's token.
        status, body = await county.call("POST", f"/api/v1/resources/{mine['code']}/query", ctok,
                                         json_body={"key": PEOPLE[1]["id_number"], "fields": ["name"]})
        assert status == 200 and json.dumps(body, ensure_ascii=False).count("李四") == 1, body
        # It catches up: the entries registered while it was away arrive from its neighbours.
        await wait_for(lambda: _holds_all(county, [e["code"] for e in away]), timeout=60,
                       what="the entries registered while the county was away")
        # And it rejoined: its signed hops are accepted (a call routed county → city → province is answered).
        status, body = await county.call("POST", f"/api/v1/resources/{before['code']}/verify", ctok,
                                         json_body={"key": PEOPLE[0]["id_number"], "fields": {"name": "张三"}})
        assert status == 200 and body["match"] is True and body["via"][-1] == "370000", body
        # Its next entry reaches the province although the neighbours' cursors stood past the backup, and is
        # taken there for new although its numbers could have been given after the backup (the restore moves
        # the node's feed and document counters on).
        after = await register(county, ctok, "桓台县婚姻登记信息")
        await wait_for(lambda: _named(province, after["code"], "桓台县婚姻登记信息"), timeout=60,
                       what="the restored county's new entry at the province")
    finally:
        await stop_all(nodes)


async def _holds(node, code: str) -> bool:  # noqa: ANN001
    return code in await catalog_codes(node)


async def _named(node, code: str, name: str) -> bool:  # noqa: ANN001
    rows = await raw_sql(node.config, "SELECT name FROM catalog_entries WHERE code = :code", {"code": code})
    return [r[0] for r in rows] == [name]


async def _holds_all(node, codes: list[str]) -> bool:  # noqa: ANN001
    return set(codes) <= await catalog_codes(node)


async def test_restore_refuses_what_is_not_a_backup_and_leaves_the_home_empty(tmp_path):
    not_backup = tmp_path / "junk"
    not_backup.mkdir()
    (not_backup / "backup.json").write_text('{"format": 1, "files": ["config.yaml"], "database": "govnode.db"}')
    home = tmp_path / "home"
    rc, _out, err = await run_cli_full_async(["restore", str(not_backup), "--dir", str(home)])
    assert rc == 2 and "lacks 'config.yaml'" in err
    assert not (home / "config.yaml").exists()


async def test_restore_moves_feed_and_document_counters_on_and_leaves_the_audit_chain_alone(node):
    """On both databases (a PostgreSQL node's schema is restored with pg_restore, then `govnode restore`)."""
    from node.backup import COUNTER_GAP, advance_counters
    from node.context import DB

    await register(node, "police", "桓台县户籍人口基本信息")
    before = dict(await raw_sql(node.config, "SELECT name, value FROM counters"))
    assert before["catalog_change"] >= 1 and before["resource_serial"] >= 1
    assert any(n.startswith("audit") and v >= 1 for n, v in before.items())  # on PostgreSQL, a worker's segment
    moved = await advance_counters(node.app[DB])
    after = dict(await raw_sql(node.config, "SELECT name, value FROM counters"))
    assert moved == sum(1 for n in before if n.endswith(("_change", "_seq")))
    for name, value in before.items():
        gap = COUNTER_GAP if name.endswith(("_change", "_seq")) else 0
        assert after[name] == value + gap, name
