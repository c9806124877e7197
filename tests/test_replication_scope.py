"""Replication scope (SPEC §18) on a national tree: a national root, two provinces, a city and a county each.
A province-scope catalog entry never leaves its province; a national-scope one and every list entry reach
the other province; a call from one province's county to the other's still routes (six hops)."""

from __future__ import annotations

import pytest
import pytest_asyncio

from node.ids import make_gb32100
from support import (SAMPLE_ENTRY, add_dept_async, raw_sql, start_federation, stop_all, wait_for,
                     write_at_next_change)

pytestmark = pytest.mark.asyncio(loop_scope="module")

NATION = [
    ("000000", "国家政务数据共享平台", None),
    ("370000", "山东省", "000000"),
    ("330000", "浙江省", "000000"),
    ("370300", "淄博市", "370000"),
    ("330100", "杭州市", "330000"),
    ("370321", "桓台县", "370300"),
    ("330106", "西湖区", "330100"),
]
ALL = [code for code, _, _ in NATION]
SD_DEPT = make_gb32100("11370321MB", 3)   # 桓台县市场监督管理局
ZJ_DEPT = make_gb32100("11330106MB", 4)   # 杭州市西湖区市场监督管理局
FIRM = make_gb32100("91370321MA", 21)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def nation(tmp_path_factory):
    nodes = await start_federation(tmp_path_factory.mktemp("nation"), tree=NATION)
    try:
        nodes["370321"].tokens["sd"] = await add_dept_async(nodes["370321"].config.home, SD_DEPT, "桓台县市场监督管理局")
        nodes["330106"].tokens["zj"] = await add_dept_async(nodes["330106"].config.home, ZJ_DEPT, "西湖区市场监督管理局")
        yield nodes
    finally:
        await stop_all(nodes)


async def held(node, code: str) -> bool:  # noqa: ANN001
    return bool(await raw_sql(node.config, "SELECT 1 FROM catalog_entries WHERE code = :c", {"c": code}))


async def register(node, token: str, name: str, **kw) -> dict:  # noqa: ANN001, ANN003
    status, entry = await node.call("POST", "/api/v1/catalog", token, json_body={**SAMPLE_ENTRY, "name": name, **kw})
    assert status == 201, entry
    return entry


async def test_province_scope_stays_home_national_scope_and_lists_travel(nation):
    sd, zj = nation["370321"], nation["330106"]
    local = await register(sd, "sd", "桓台县企业登记信息")
    assert "scope" not in local  # province, the default, is left out of the signed entry
    national = await register(sd, "sd", "桓台县国家级示范资源", scope="national")
    assert national["scope"] == "national"
    status, lst = await sd.call("POST", "/api/v1/lists", "sd", json_body={
        "name": "严重违法失信企业名单", "kind": "black", "public": True, "measures": ["限制招投标"]})
    assert status == 201, lst
    status, added = await sd.call("POST", f"/api/v1/lists/{lst['code']}/entries", "sd", json_body=[
        {"subject": {"code": FIRM, "name": "桓台某企业"}, "reason": "提交虚假材料取得许可"}])
    assert status == 200, added

    # The national entry and the list entry reach every node; the province-scope entry the Shandong nodes only.
    for code in ALL:
        await wait_for(lambda code=code: held(nation[code], national["code"]), 30, what=f"the national entry at {code}")

    async def listed(code: str) -> bool:
        status, body = await nation[code].call("GET", f"/api/v1/lists/{lst['code']}", "zj" if code == "330106" else None)
        return status == 200 and body["entries"] == 1 if code == "330106" else bool(
            await raw_sql(nation[code].config, "SELECT 1 FROM list_entries WHERE id = :i", {"i": added["entries"][0]}))

    for code in ALL:
        await wait_for(lambda code=code: listed(code), 30, what=f"the list entry at {code}")
    status, answer = await zj.call("POST", "/api/v1/lists/check", "zj", json_body={
        "subjects": [{"code": FIRM}], "purpose": "行政许可审查"})
    assert status == 200 and answer["results"][0]["hits"][0]["issuer"]["node"] == "370321", answer
    for code in ("370300", "370000"):
        await wait_for(lambda code=code: held(nation[code], local["code"]), 30, what=f"the province entry at {code}")
    # By now the root and the other province have pulled past it (they hold what came after it).
    for code in ("000000", "330000", "330100", "330106"):
        assert not await held(nation[code], local["code"]), code

    # A Zhejiang resource of province scope: the Shandong county does not hold it, yet calls it (six hops).
    zj_entry = await register(zj, "zj", "西湖区企业登记信息")
    status, body = await zj.call("POST", f"/api/v1/resources/{zj_entry['code']}/records", "zj", json_body=[
        {"id_number": "11010519491231002X", "name": "张三"}])
    assert status == 200, body
    await wait_for(lambda: held(nation["330000"], zj_entry["code"]), 30, what="the Zhejiang entry in its province")
    assert not await held(sd, zj_entry["code"])
    status, answer = await sd.call("POST", f"/api/v1/resources/{zj_entry['code']}/verify", "sd", json_body={
        "key": "11010519491231002X", "fields": {"name": "张三"}})
    assert status == 200 and answer["match"] is True, answer
    assert answer["via"] == ["370300", "370000", "000000", "330000", "330100", "330106"], answer


async def test_the_root_passes_down_no_province_scope_object(nation):
    """Should a province send the root a province-scope entry (an older or faulty node), the root keeps it
    from the other provinces."""
    sd, root = nation["370321"], nation["000000"]
    local = await register(sd, "sd", "桓台县不动产登记信息")
    await wait_for(lambda: held(nation["370000"], local["code"]), 30, what="the entry in its province")
    cols = ("code, node, seq, version, deleted, updated_at, provider_dept, name, category, share_type, search_text, "
            "entry")
    [row] = await raw_sql(sd.config, f"SELECT {cols} FROM catalog_entries WHERE code = :c", {"c": local["code"]})
    # Written ahead of its counter: otherwise the check below could pass without being tried.
    await write_at_next_change(root.config, "catalog_change",
                               f"INSERT INTO catalog_entries ({cols}, change_id) VALUES (:code, :node, :seq, "
                               ":version, :deleted, :updated_at, :provider_dept, :name, :category, :share_type, "
                               ":search_text, :entry, {next_change})",
                               dict(zip([c.strip() for c in cols.split(",")], row)))
    later = await register(sd, "sd", "桓台县国家级资源（之后）", scope="national")
    for code in ("330000", "330100", "330106"):
        await wait_for(lambda code=code: held(nation[code], later["code"]), 30, what=f"the later entry at {code}")
        assert not await held(nation[code], local["code"]), code
