"""Data requests (供需对接, SPEC §16) on the one workflow mechanism of applications and feedback.

Across the four-node tree (山东省 → 淄博市 → 桓台县, 张店区): a county department asks the province for data no
catalog entry has; the province's operator assigns it to a department, which registers a new catalog entry and
fulfils the request with it; both nodes show it fulfilled with that entry, and the entry reaches the county's
catalog. On one node (SQLite and PostgreSQL): deadlines and the overdue sweep, two people acting at once (one
transition wins), refusals of bad input, and the statistics every workflow answers alike."""

from __future__ import annotations

import asyncio
from datetime import datetime

import pytest
import pytest_asyncio

from node.federation.http import FEDERATION
from node.ids import make_gb32100
from node.requests.http import DATA_REQUESTS
from node.workdays import CST
from node.workflow import stats as workflow_stats
from support import (CIVIL, POLICE, SAMPLE_ENTRY, add_dept_async, error_code, start_federation, stop_all,
                     wait_for)

PROVINCE_CIVIL = make_gb32100("11370000MB", 2)
PROVINCE_POLICE = make_gb32100("11370000MB", 1)


def ms(y: int, m: int, d: int, hh: int = 10, mm: int = 0) -> int:
    return int(datetime(y, m, d, hh, mm, tzinfo=CST).timestamp() * 1000)


def ask(node: str, dept: str | None = None, **extra) -> dict:
    return {"to": {"node": node, "dept": dept}, "name": "婚姻登记信息", "fields": ["姓名", "婚姻状况", "登记日期"],
            "purpose": "最低生活保障家庭经济状况核对", "basis": "《社会救助暂行办法》第十一条", **extra}


async def audit_actions(node, token: str) -> list[dict]:
    status, body = await node.call("GET", "/api/v1/audit?limit=500", token)
    assert status == 200, body
    return body["records"]


# Across the tree -------------------------------------------------------------------------------------------

@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def tree(tmp_path_factory):
    nodes = await start_federation(tmp_path_factory.mktemp("tree"))
    try:
        province, county = nodes["370000"], nodes["370321"]
        for node, code, name, role, key in (
                (province, PROVINCE_CIVIL, "山东省民政厅", "dept", "civil"),
                (province, PROVINCE_POLICE, "山东省公安厅", "dept", "police"),
                (province, "OPERATOR", "山东省大数据局", "operator", "operator"),
                (province, "AUDITOR", "山东省审计厅", "auditor", "auditor"),
                (county, CIVIL, "桓台县民政局", "dept", "civil"),
                (county, "OPERATOR", "桓台县大数据中心", "operator", "operator")):
            node.tokens[key] = await add_dept_async(node.config.home, code, name, role)
        yield nodes
    finally:
        await stop_all(nodes)


async def copy_at(node, token: str, req_id: str, pred):
    async def check():
        status, doc = await node.call("GET", f"/api/v1/data-requests/{req_id}", token)
        return doc if status == 200 and pred(doc) else None
    return await wait_for(check, 20, what=f"data request {req_id} at {node.config.node.id}")


@pytest.mark.asyncio(loop_scope="module")
async def test_a_county_asks_the_province_and_a_new_catalog_entry_fulfils_it(tree):
    province, county = tree["370000"], tree["370321"]
    status, req = await county.call("POST", "/api/v1/data-requests", "civil", json_body=ask("370000"))
    assert status == 201, req
    assert req["status"] == "submitted" and req["version"] == 0 and req["provider"] == {"node": "370000", "dept": None}
    req_id = req["id"]

    # It arrives at the province, where the operator sees it and nobody else acts before the assignment.
    held = await copy_at(province, "operator", req_id, lambda d: True)
    assert held["received_at"] and held["assign_due"] == req["assign_due"]
    status, page = await province.call("GET", "/api/v1/data-requests?role=provider&status=submitted", "operator")
    assert [d["id"] for d in page["data_requests"]] == [req_id]
    status, body = await province.call("POST", f"/api/v1/data-requests/{req_id}/reject", "civil",
                                       json_body={"reason": "不是本部门"})
    assert (status, error_code(body)) == (403, "FORBIDDEN"), body
    status, body = await province.call("POST", f"/api/v1/data-requests/{req_id}/accept", "operator",
                                       json_body={"dept": "NOSUCHDEPT"})
    assert (status, error_code(body)) == (400, "INVALID_INPUT") and body["error"]["details"][0]["field"] == "dept"
    status, doc = await province.call("POST", f"/api/v1/data-requests/{req_id}/accept", "operator",
                                      json_body={"dept": PROVINCE_CIVIL, "reason": "婚姻登记由民政厅负责"})
    assert status == 200 and doc["status"] == "accepted" and doc["provider"]["dept"] == PROVINCE_CIVIL, doc
    assert doc["answer_due"] and doc["assigned_at"]
    status, body = await province.call("POST", f"/api/v1/data-requests/{req_id}/accept", "operator",
                                       json_body={"dept": PROVINCE_CIVIL})
    assert (status, error_code(body)) == (409, "CONFLICT"), body

    # The department fulfils it with a new entry of its own: another department's entry, or none, is refused.
    status, other = await province.call("POST", "/api/v1/catalog", "police", json_body=SAMPLE_ENTRY)
    assert status == 201, other
    status, body = await province.call("POST", f"/api/v1/data-requests/{req_id}/fulfil", "civil",
                                       json_body={"entry": other["code"]})
    assert (status, error_code(body)) == (400, "INVALID_INPUT") and body["error"]["details"][0]["field"] == "entry"
    status, body = await province.call("POST", f"/api/v1/data-requests/{req_id}/fulfil", "police",
                                       json_body={"entry": other["code"]})
    assert (status, error_code(body)) == (403, "FORBIDDEN"), body
    status, entry = await province.call("POST", "/api/v1/catalog", "civil", json_body={
        **SAMPLE_ENTRY, "name": "山东省婚姻登记信息",
        "items": [{"name": "公民身份号码", "field": "id_number", "type": "C", "length": 18, "key": True},
                  {"name": "姓名", "field": "name", "type": "C", "length": 50},
                  {"name": "婚姻状况", "field": "marital_status", "type": "C", "length": 10},
                  {"name": "登记日期", "field": "registered_on", "type": "D"}]})
    assert status == 201, entry
    status, doc = await province.call("POST", f"/api/v1/data-requests/{req_id}/fulfil", "civil",
                                      json_body={"entry": entry["code"]})
    assert status == 200 and doc["status"] == "fulfilled", doc
    assert doc["entry"] == {"code": entry["code"], "name": "山东省婚姻登记信息"} and doc["answered_at"]

    # Both sides see it fulfilled, with the same history; the entry reaches the county's catalog.
    copy = await copy_at(county, "civil", req_id, lambda d: d["status"] == "fulfilled")
    assert copy == (await province.call("GET", f"/api/v1/data-requests/{req_id}", "operator"))[1]
    assert [h["event"] for h in copy["history"]] == ["submitted", "received", "accepted", "fulfilled"]

    async def replicated():
        return (await county.call("GET", f"/api/v1/catalog/{entry['code']}", "civil"))[0] == 200
    await wait_for(replicated, 20, what="the new entry in the county's catalog")

    # Every action is in the province's audit log, naming the request.
    actions = [(r["action"], r["outcome"]) for r in await audit_actions(province, "auditor")
               if (r.get("details") or {}).get("data_request") == req_id]
    for action in ("data_requests.accept", "data_requests.fulfil"):
        assert (action, "ok") in actions, actions
    assert ("data_requests.reject", "FORBIDDEN") in actions


@pytest.mark.asyncio(loop_scope="module")
async def test_a_request_to_a_department_unknown_there_is_rejected_on_receipt(tree):
    province, county = tree["370000"], tree["370321"]
    status, req = await county.call("POST", "/api/v1/data-requests", "civil", json_body=ask("370000", "NOSUCHDEPT"))
    assert status == 201, req
    copy = await copy_at(county, "civil", req["id"], lambda d: d["status"] == "rejected")
    assert "refused on receipt" in copy["history"][-1]["reason"] and "NOSUCHDEPT" in copy["history"][-1]["reason"]
    # To a node in no known subtree: refused at once, nothing stored.
    status, body = await county.call("POST", "/api/v1/data-requests", "civil", json_body=ask("450000"))
    assert (status, error_code(body)) == (404, "NODE_UNKNOWN"), body


@pytest.mark.asyncio(loop_scope="module")
async def test_a_node_that_does_not_take_data_requests_is_shown_as_not_delivered(tree):
    """A city still on a version without data requests answers KIND_UNSUPPORTED: the federation gives up on
    the submit, and the requester's copy says so instead of waiting for ever."""
    city, county = tree["370300"], tree["370321"]
    handlers = city.app[FEDERATION].handlers
    taken = handlers.pop("data_request.submit")
    try:
        status, req = await county.call("POST", "/api/v1/data-requests", "civil", json_body=ask("370300"))
        assert status == 201 and req["status"] == "submitted", req
        copy = await copy_at(county, "civil", req["id"], lambda d: d["status"] == "rejected")
    finally:
        handlers["data_request.submit"] = taken
    last = copy["history"][-1]
    assert (last["event"], last["by"]) == ("not_delivered", "370321/platform") and "KIND_UNSUPPORTED" in last["reason"]
    assert copy["version"] == 0 and copy["assigned_at"]


# On one node -----------------------------------------------------------------------------------------------

BAD = [
    ({"to": {"node": "37"}}, "to.node"),
    ({"fields": []}, "fields"),
    ({"fields": ["姓名", "姓名"]}, "fields"),
    ({"purpose": "  "}, "purpose"),
    ({"to": {"node": "370321", "dept": "NOSUCHDEPT"}}, "to.dept"),
]


async def test_bad_input_is_refused_with_the_field_named(node):
    for change, field in BAD:
        status, body = await node.call("POST", "/api/v1/data-requests", "civil", json_body={**ask("370321"), **change})
        assert (status, error_code(body)) == (400, "INVALID_INPUT"), (change, body)
        assert any(str(d.get("field", "")).startswith(field) for d in body["error"]["details"]), (change, body)
    status, body = await node.call("POST", "/api/v1/data-requests", "operator", json_body=ask("370321"))
    assert (status, error_code(body)) == (403, "FORBIDDEN"), body
    status, page = await node.call("GET", "/api/v1/data-requests", "operator")
    assert page["total"] == 0  # nothing was stored


async def test_deadlines_two_people_at_once_and_statistics(node):
    svc = node.app[DATA_REQUESTS]
    # Spring Festival 2026: asked Thursday 02-12, the assignment is due on the 10th working day, 03-04.
    svc.clock = lambda: ms(2026, 2, 12)
    status, req = await node.call("POST", "/api/v1/data-requests", "civil", json_body=ask("370321", POLICE))
    assert status == 201 and req["version"] == 1 and req["assign_due"] == "2026-03-04", req
    assert req["received_at"] and req["provider"] == {"node": "370321", "dept": None}
    svc.clock = lambda: ms(2026, 3, 4, 23, 59)
    assert await svc.check_deadlines() == []
    svc.clock = lambda: ms(2026, 3, 5, 0, 1)
    assert await svc.check_deadlines() == [req["id"]]
    assert await svc.check_deadlines() == []  # flagged once
    status, page = await node.call("GET", "/api/v1/data-requests?overdue=true", "operator")
    assert [d["id"] for d in page["data_requests"]] == [req["id"]]
    assert page["data_requests"][0]["history"][-1]["reason"] == "the platform's assignment was due on 2026-03-04"
    flagged = [r for r in await audit_actions(node, "auditor") if r["action"] == "data_requests.overdue"]
    assert [(r["details"]["data_request"], r["details"]["step"]) for r in flagged] == [(req["id"], "assign")]

    # Two operators assign at the same moment: one transition is made, the other is told it came too late.
    results = await asyncio.gather(*(
        node.call("POST", f"/api/v1/data-requests/{req['id']}/accept", "operator", json_body={"dept": dept})
        for dept in (POLICE, CIVIL)))
    assert sorted(s for s, _ in results) == [200, 409], results
    winner = next(b for s, b in results if s == 200)
    status, doc = await node.call("GET", f"/api/v1/data-requests/{req['id']}", "operator")
    assert doc["provider"]["dept"] == winner["provider"]["dept"] and doc["version"] == 3 and doc["overdue"] is False
    assert [h["event"] for h in doc["history"]].count("accepted") == 1

    # The assigned department rejects, in time: the statistics count the two steps (the first one late).
    dept = "police" if winner["provider"]["dept"] == POLICE else "civil"
    svc.clock = lambda: ms(2026, 3, 10)
    status, doc = await node.call("POST", f"/api/v1/data-requests/{req['id']}/reject", dept, json_body={"reason": ""})
    assert (status, error_code(doc)) == (400, "INVALID_INPUT"), doc
    status, doc = await node.call("POST", f"/api/v1/data-requests/{req['id']}/reject", dept,
                                  json_body={"reason": "本部门无此数据"})
    assert status == 200 and doc["status"] == "rejected", doc
    status, stats = await node.call("GET", f"/api/v1/stats?since=0&until={ms(2026, 4, 1)}", "operator")
    assert status == 200, stats
    [row] = stats["data_requests"]["by_provider"]
    assert row["dept"] == f"370321/{winner['provider']['dept']}" and row["by_status"]["rejected"] == 1
    assert row["steps"]["assign"]["done"] == 1 and row["steps"]["assign"]["on_time_rate"] == 0.0
    assert row["steps"]["answer"]["done"] == 1 and row["steps"]["answer"]["on_time_rate"] == 1.0
    # The same function answers for every workflow the node runs.
    every = await workflow_stats(node.app, 0, ms(2026, 4, 1))
    assert sorted(every) == ["applications", "data_requests", "feedback"]
    assert every["data_requests"] == stats["data_requests"]["by_provider"]
    svc.clock = __import__("node.ids", fromlist=["now_ms"]).now_ms
