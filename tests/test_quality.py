"""Data quality across the four-node tree (山东省 → 淄博市 → 桓台县, 张店区), one tree for the module: feedback on
wrong values filed at two counties, routed to the province, answered there (confirmed → corrected; rejected with a
reason), both sides in step, overdue feedback flagged in the statistics; and a multi-source check (多元校核) of a
county resource against a province resource with known disagreements."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
import pytest_asyncio

from node.ids import make_gb11643, make_gb32100
from node.quality.http import FEEDBACK
from node.sharing.masking import mask_id_number
from node.workdays import CST
from support import CIVIL, add_dept_async, error_code, start_tree, stop_all, wait_for

pytestmark = pytest.mark.asyncio(loop_scope="module")

PROVINCE_POLICE = make_gb32100("11370000MB", 1)
ZD_CIVIL = make_gb32100("11370303MB", 1)
ITEMS = [
    {"name": "公民身份号码", "field": "id_number", "type": "C", "length": 18, "key": True, "sensitive": True,
     "check": "gb11643"},
    {"name": "姓名", "field": "name", "type": "C", "length": 50},
    {"name": "出生日期", "field": "birth_date", "type": "D"},
]
P = [make_gb11643("370321", "19800101", i) for i in range(7)]


async def register(node, token: str, name: str, records: list[dict]) -> str:
    status, entry = await node.call("POST", "/api/v1/catalog", token, json_body={
        "classification": "101001", "name": name, "category": "base", "format": "database", "items": ITEMS,
        "share": {"type": "unconditional", "methods": ["api"]}, "update_cycle": "daily"})
    assert status == 201, entry
    status, res = await node.call("POST", f"/api/v1/resources/{entry['code']}/records", token, json_body=records)
    assert status == 200, res
    return entry["code"]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def tree(tmp_path_factory):
    nodes = await start_tree(tmp_path_factory.mktemp("tree"))
    try:
        province, county, zd = nodes["370000"], nodes["370321"], nodes["370303"]
        province.tokens.update(police=await add_dept_async(province.config.home, PROVINCE_POLICE, "山东省公安厅"),
                               operator=await add_dept_async(province.config.home, "OPERATOR", "山东省大数据局",
                                                             "operator"))
        county.tokens.update(civil=await add_dept_async(county.config.home, CIVIL, "桓台县民政局"),
                             operator=await add_dept_async(county.config.home, "OPERATOR", "桓台县大数据中心",
                                                           "operator"))
        zd.tokens.update(civil=await add_dept_async(zd.config.home, ZD_CIVIL, "张店区民政局"))
        right = [{"id_number": P[i], "name": n, "birth_date": "1980-01-0%d" % (i + 1)}
                 for i, n in ((0, "张三"), (1, "李四"), (2, "王五"), (3, "赵六"), (4, "孙七"), (6, "周九"))]
        code = await register(province, "police", "山东省户籍人口基本信息", right)
        for node in (county, zd):
            await wait_for(lambda n=node: seen(n, code), 20, what="the entry at the counties")
        nodes["code"] = code  # type: ignore[assignment]
        yield nodes
    finally:
        await stop_all({k: v for k, v in nodes.items() if k.isdigit()})


async def seen(node, code: str) -> bool:
    return (await node.call("GET", f"/api/v1/catalog/{code}", "civil"))[0] == 200


async def copy_at(node, token: str, fb_id: str, pred) -> dict:
    async def check():
        status, doc = await node.call("GET", f"/api/v1/feedback/{fb_id}", token)
        return doc if status == 200 and pred(doc) else None
    return await wait_for(check, 20, what=f"feedback {fb_id} at {node.config.node.id}")


async def test_feedback_routed_answered_and_kept_in_step(tree):
    province, county, zd, code = tree["370000"], tree["370321"], tree["370303"], tree["code"]
    # Bad reports are refused where they are filed.
    for body, field in (({"resource": code, "fields": ["nickname"], "description": "x"}, "fields.nickname"),
                        ({"resource": code, "key": "", "fields": ["name"], "description": "x"}, "key"),
                        ({"resource": code, "fields": ["name"], "description": " "}, "description")):
        status, res = await county.call("POST", "/api/v1/feedback", "civil", json_body=body)
        assert (status, error_code(res)) == (400, "INVALID_INPUT") and field in str(res["error"]["details"]), res

    status, fb = await county.call("POST", "/api/v1/feedback", "civil", json_body={
        "resource": code, "key": P[1], "fields": ["name"], "description": "低保复核时发现姓名与户口簿不符",
        "expected": {"name": "李思"}})
    assert status == 201, fb
    assert fb["status"] == "open" and fb["provider"] == {"node": "370000", "dept": PROVINCE_POLICE}
    assert fb["reporter"] == {"node": "370321", "dept": CIVIL} and fb["version"] == 0
    status, fb2 = await zd.call("POST", "/api/v1/feedback", "civil", json_body={
        "resource": code, "key": P[3], "fields": ["birth_date"], "description": "出生日期疑似录入错误"})
    assert status == 201, fb2

    # It reaches the province (through the city) and the providing department sees it; the copies follow.
    held = await copy_at(province, "police", fb["id"], lambda d: True)
    await copy_at(province, "police", fb2["id"], lambda d: True)
    assert [h["event"] for h in held["history"]] == ["submitted", "received"] and held["version"] == 1
    status, page = await province.call("GET", "/api/v1/feedback?role=provider&status=open", "police")
    assert status == 200 and {d["id"] for d in page["feedback"]} == {fb["id"], fb2["id"]}
    await copy_at(county, "civil", fb["id"], lambda d: d["version"] == 1 and d["received_at"])

    # Only the providing department answers, at its node.
    status, res = await county.call("POST", f"/api/v1/feedback/{fb['id']}/confirm", "civil")
    assert (status, error_code(res)) == (403, "FORBIDDEN"), res
    status, res = await province.call("POST", f"/api/v1/feedback/{fb['id']}/confirm", "operator")
    assert (status, error_code(res)) == (403, "FORBIDDEN"), res

    status, doc = await province.call("POST", f"/api/v1/feedback/{fb['id']}/confirm", "police",
                                      json_body={"reason": "经核实，姓名录入有误"})
    assert status == 200 and doc["status"] == "confirmed", doc
    await copy_at(county, "civil", fb["id"], lambda d: d["status"] == "confirmed")
    status, res = await province.call("POST", f"/api/v1/feedback/{fb['id']}/confirm", "police")
    assert (status, error_code(res)) == (409, "CONFLICT"), res
    status, res = await province.call("POST", f"/api/v1/resources/{code}/records", "police",
                                      json_body=[{"id_number": P[1], "name": "李思", "birth_date": "1980-01-02"}])
    assert status == 200, res
    status, doc = await province.call("POST", f"/api/v1/feedback/{fb['id']}/correct", "police",
                                      json_body={"reason": "已更正"})
    assert status == 200 and doc["status"] == "corrected" and doc["resolved_at"] and doc["late"] is False
    mirror = await copy_at(county, "civil", fb["id"], lambda d: d["status"] == "corrected")
    assert [h["status"] for h in mirror["history"]] == ["open", "open", "confirmed", "corrected"]
    assert mirror == (await province.call("GET", f"/api/v1/feedback/{fb['id']}", "police"))[1]

    # Unanswered past its 10 working days: flagged (once), in the statistics and at the reporter's node.
    svc = province.app[FEEDBACK]
    later = int((datetime.now(CST) + timedelta(days=30)).timestamp() * 1000)
    svc.clock = lambda: later
    try:
        assert await svc.check_deadlines() == [fb2["id"]]
        assert await svc.check_deadlines() == []
        status, stats = await province.call("GET", "/api/v1/stats?since=0", "operator")
        assert status == 200, stats
        [row] = stats["feedback"]["by_provider"]
        assert row["dept"] == f"370000/{PROVINCE_POLICE}" and row["received"] == 2 and row["corrected"] == 1
        assert row["overdue_open"] == 1 and row["flagged_overdue"] == 1 and stats["feedback"]["overdue_open"] == 1
        status, page = await province.call("GET", "/api/v1/feedback?overdue=true", "operator")
        assert [d["id"] for d in page["feedback"]] == [fb2["id"]]
        await copy_at(zd, "civil", fb2["id"], lambda d: d["overdue"] is True)

        # A rejection needs its reason; the reporter's copy shows it.
        status, res = await province.call("POST", f"/api/v1/feedback/{fb2['id']}/reject", "police")
        assert (status, error_code(res)) == (400, "INVALID_INPUT"), res
        status, doc = await province.call("POST", f"/api/v1/feedback/{fb2['id']}/reject", "police",
                                          json_body={"reason": "与出生医学证明一致，无误"})
        assert status == 200 and doc["status"] == "rejected" and doc["late"] is True and doc["overdue"] is False
    finally:
        svc.clock = __import__("node.ids", fromlist=["now_ms"]).now_ms
    copy = await copy_at(zd, "civil", fb2["id"], lambda d: d["status"] == "rejected")
    assert copy["history"][-1]["reason"] == "与出生医学证明一致，无误"
    # Neither side shows it to a department that is neither reporter nor provider.
    status, res = await zd.call("GET", f"/api/v1/feedback/{fb['id']}", "civil")
    assert (status, error_code(res)) == (404, "NOT_FOUND"), res


async def test_multi_source_check_reports_known_disagreements(tree):
    province, county, code = tree["370000"], tree["370321"], tree["code"]
    # The county's own register of the same people: two names and one birth date differ, one birth date is
    # missing, one person is only here (and one only at the province).
    left = [{"id_number": P[0], "name": "张三", "birth_date": "1980-01-01"},
            {"id_number": P[1], "name": "李斯", "birth_date": "1980-01-02"},
            {"id_number": P[2], "name": "王五", "birth_date": "1980-02-03"},
            {"id_number": P[3], "name": "赵陆", "birth_date": "1980-01-04"},
            {"id_number": P[4], "name": "孙七"},
            {"id_number": P[5], "name": "吴八", "birth_date": "1980-01-06"}]
    mine = await register(county, "civil", "桓台县低保对象基本信息", left)
    # Keys only at the province are counted when the province's records can be read: a subscribe grant.
    status, app = await county.call("POST", "/api/v1/applications", "civil", json_body={
        "resource": code, "ops": ["subscribe"], "fields": ["id_number", "name", "birth_date"],
        "purpose": "多元校核", "basis": "《政务信息资源共享管理暂行办法》"})
    assert status == 201, app

    async def at_province():
        return (await province.call("GET", f"/api/v1/applications/{app['id']}", "operator"))[0] == 200
    await wait_for(at_province, 20, what="the application at the province")
    assert (await province.call("POST", f"/api/v1/applications/{app['id']}/review", "operator",
                                json_body={"decision": "accept"}))[0] == 200
    assert (await province.call("POST", f"/api/v1/applications/{app['id']}/decision", "police",
                                json_body={"decision": "approve"}))[0] == 200

    async def granted():
        status, doc = await county.call("GET", f"/api/v1/applications/{app['id']}", "civil")
        return doc["status"] == "approved"
    await wait_for(granted, 20, what="the grant at the county")

    body = {"name": "低保对象与户籍人口比对", "left": mine, "right": code, "fields": ["name", "birth_date"],
            "dept": CIVIL, "batch_size": 2, "samples": 5}
    status, res = await county.call("POST", "/api/v1/checks", "civil", json_body=body)
    assert (status, error_code(res)) == (403, "FORBIDDEN"), res
    status, res = await county.call("POST", "/api/v1/checks", "operator", json_body={**body, "fields": ["height"]})
    assert (status, error_code(res)) == (400, "INVALID_INPUT"), res
    status, check = await county.call("POST", "/api/v1/checks", "operator", json_body=body)
    assert status == 201 and check["status"] == "running", check

    async def done():
        status, doc = await county.call("GET", f"/api/v1/checks/{check['id']}", "operator")
        return doc if doc["status"] != "running" else None
    doc = await wait_for(done, 20, what="the check to finish")
    report = doc["report"]
    assert doc["status"] == "done", report
    assert report["batches"] == 3 and report["left"]["records"] == 6 and report["right"]["records"] == 6
    assert report["keys"] == {"both": 5, "only_left": 1, "only_right": 1}
    name, birth = report["fields"]
    assert (name["agree"], name["disagree"], name["missing_left"], name["missing_right"]) == (3, 2, 1, 1)
    assert (birth["agree"], birth["disagree"], birth["missing_left"], birth["missing_right"]) == (3, 1, 2, 1)
    # Samples name the disagreeing keys and the left values, masked.
    assert sorted(s["key"] for s in name["samples"]) == sorted(mask_id_number(P[i]) for i in (1, 3))
    assert sorted(s["left"] for s in name["samples"]) == ["李*", "赵*"]
    assert birth["samples"] == [{"key": mask_id_number(P[2]), "left": "1980-**-**"}]
    assert "王五" not in str(report) and P[2] not in str(report)
