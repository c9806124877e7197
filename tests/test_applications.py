"""Applications and grants (SPEC §8, §11): 统一受理、平台授权 with working-day deadlines, on real nodes.

Across the four-node tree (山东省 → 淄博市 → 桓台县, 张店区) a county department applies for a province
resource: the province's operator reviews, the providing department decides, the signed grant reaches
the county and is attached to its calls, the province checks it on every call and revokes it. On one node
(applicant and provider departments of the same county): deadlines, overdue flags, masking and controlled
operations, withdrawal, refusals and statistics.
"""

from __future__ import annotations

import copy
import json
from datetime import datetime

import pytest

from federation.signing import sign_json
from node.applications.http import APPLICATIONS
from node.applications.service import ApplicationService
from node.federation.http import FEDERATION
from node.ids import make_gb11643, make_gb32100
from node.sharing.http import SHARING
from node.sharing.models import Requester
from node.workdays import CST
from support import (CIVIL, add_dept_async, error_code, signing_key_of, start_node, start_tree, stop_all,
                     wait_for)

PROVINCE_POLICE = make_gb32100("11370000MB", 1)
OTHER = make_gb32100("11370321MB", 3)

ITEMS = [
    {"name": "公民身份号码", "field": "id_number", "type": "C", "length": 18, "key": True, "sensitive": True,
     "check": "gb11643"},
    {"name": "姓名", "field": "name", "type": "C", "length": 50},
    {"name": "手机号码", "field": "phone", "type": "C", "length": 11, "sensitive": True},
    {"name": "住址", "field": "address", "type": "C", "length": 200, "sensitive": True},
    {"name": "家庭人口", "field": "household", "type": "I"},
]
PEOPLE = [make_gb11643("370321", "19900101", i) for i in range(3)]
RECORDS = [
    {"id_number": PEOPLE[0], "name": "张三", "phone": "13812345678", "address": "山东省淄博市桓台县索镇", "household": 3},
    {"id_number": PEOPLE[1], "name": "李四", "phone": "13900001111", "address": "山东省淄博市张店区", "household": 1},
    {"id_number": PEOPLE[2], "name": "王五"},
]


def ms(y: int, m: int, d: int, hh: int = 10, mm: int = 0) -> int:
    return int(datetime(y, m, d, hh, mm, tzinfo=CST).timestamp() * 1000)


def set_clock(nodes, at_ms: int) -> None:
    for n in nodes:
        n.app[APPLICATIONS].clock = lambda at=at_ms: at


async def register(node, token: str, share: dict, **extra) -> str:
    body = {"classification": "101001", "name": "户籍人口基本信息", "category": "base", "format": "database",
            "items": ITEMS, "share": share, "update_cycle": "daily", **extra}
    status, entry = await node.call("POST", "/api/v1/catalog", token, json_body=body)
    assert status == 201, entry
    status, res = await node.call("POST", f"/api/v1/resources/{entry['code']}/records", token, json_body=RECORDS)
    assert status == 200, res
    return entry["code"]


def apply_body(code: str, ops=("query", "verify"), fields=("name", "phone", "address")) -> dict:
    return {"resource": code, "ops": list(ops), "fields": list(fields), "purpose": "最低生活保障资格审核",
            "basis": "《社会救助暂行办法》第十一条"}


async def query(node, token: str, code: str, body: dict) -> tuple[int, dict]:
    return await node.call("POST", f"/api/v1/resources/{code}/query", token, json_body=body)


# The whole flow across the tree --------------------------------------------------------------------------

@pytest.fixture
async def tree(tmp_path, backend):
    nodes = await start_tree(tmp_path, backend)
    try:
        province, county = nodes["370000"], nodes["370321"]
        province.tokens.update(police=await add_dept_async(province.config.home, PROVINCE_POLICE, "山东省公安厅"),
                               operator=await add_dept_async(province.config.home, "OPERATOR", "山东省大数据局", "operator"),
                               auditor=await add_dept_async(province.config.home, "AUDITOR", "山东省审计厅", "auditor"))
        county.tokens.update(civil=await add_dept_async(county.config.home, CIVIL, "桓台县民政局"),
                             other=await add_dept_async(county.config.home, OTHER, "桓台县人社局"),
                             operator=await add_dept_async(county.config.home, "OPERATOR", "桓台县大数据中心", "operator"))
        yield nodes
    finally:
        await stop_all(nodes)


async def replicated(node, token: str, code: str) -> None:
    async def seen():
        return (await node.call("GET", f"/api/v1/catalog/{code}", token))[0] == 200
    await wait_for(seen, 20, what=f"{code} at {node.config.node.id}")


async def copy_at(node, token: str, app_id: str, pred):
    async def check():
        status, doc = await node.call("GET", f"/api/v1/applications/{app_id}", token)
        return doc if status == 200 and pred(doc) else None
    return await wait_for(check, 20, what=f"application {app_id} at {node.config.node.id}")


async def test_apply_review_decide_call_and_revoke_across_the_tree(tree):
    province, county = tree["370000"], tree["370321"]
    code = await register(province, "police", {"type": "conditional", "condition": "用于社会救助审核"})
    await replicated(county, "civil", code)
    set_clock(tree.values(), ms(2026, 9, 29))

    # Without a grant a conditional resource is refused, routed or not.
    status, body = await query(county, "civil", code, {"key": PEOPLE[0]})
    assert (status, error_code(body)) == (403, "GRANT_REQUIRED"), body

    status, app = await county.call("POST", "/api/v1/applications", "civil", json_body=apply_body(code))
    assert status == 201, app
    app_id = app["id"]
    assert app["status"] == "submitted" and app["submitted_at"] == "2026-09-29T10:00:00+08:00"
    assert app["review_due"] == "2026-10-09" and app["decision_due"] is None and app["overdue"] is False
    assert app["applicant"] == {"node": "370321", "dept": CIVIL}
    assert app["provider"] == {"node": "370000", "dept": PROVINCE_POLICE}
    # One pending application per department and resource.
    status, body = await county.call("POST", "/api/v1/applications", "civil", json_body=apply_body(code))
    assert (status, error_code(body)) == (409, "CONFLICT") and body["error"]["details"]["application"] == app_id

    # It lives at the province (received through the city), and the county's copy follows.
    held = await copy_at(province, "operator", app_id, lambda d: True)
    assert held["received_at"] and [h["event"] for h in held["history"]] == ["submitted", "received"]
    assert held["history"][0]["by"] == f"370321/{CIVIL}"
    await copy_at(county, "civil", app_id, lambda d: d["version"] >= 1 and d["received_at"])

    # Only the provider node's operator reviews; only the providing department decides.
    for node, token, path in ((county, "operator", "review"), (province, "police", "review"),
                              (county, "civil", "decision"), (province, "operator", "decision"),
                              (county, "civil", "review")):
        body = {"decision": "accept"} if path == "review" else {"decision": "approve"}
        status, res = await node.call("POST", f"/api/v1/applications/{app_id}/{path}", token, json_body=body)
        assert (status, error_code(res)) == (403, "FORBIDDEN"), (node.config.node.id, token, path, res)
    status, res = await province.call("POST", f"/api/v1/applications/{app_id}/decision", "police",
                                      json_body={"decision": "approve"})
    assert (status, error_code(res)) == (409, "CONFLICT"), res  # the platform review comes first
    status, res = await province.call("POST", f"/api/v1/applications/{app_id}/review", "operator",
                                      json_body={"decision": "reject"})
    assert (status, error_code(res)) == (400, "INVALID_INPUT")  # a rejection needs its reason

    status, doc = await province.call("POST", f"/api/v1/applications/{app_id}/review", "operator",
                                      json_body={"decision": "accept", "reason": "材料齐全"})
    assert status == 200, doc
    assert doc["status"] == "accepted" and doc["decision_due"] == "2026-10-19" and doc["reviewed_at"]
    status, res = await province.call("POST", f"/api/v1/applications/{app_id}/review", "operator",
                                      json_body={"decision": "accept"})
    assert (status, error_code(res)) == (409, "CONFLICT")

    # The decision may narrow, never widen.
    status, res = await province.call("POST", f"/api/v1/applications/{app_id}/decision", "police",
                                      json_body={"decision": "approve", "fields": ["name", "household"]})
    assert (status, error_code(res)) == (400, "INVALID_INPUT") and res["error"]["details"][0]["field"] == "fields.household"
    status, res = await province.call("POST", f"/api/v1/applications/{app_id}/decision", "police",
                                      json_body={"decision": "approve", "ops": ["compare"]})
    assert (status, error_code(res)) == (400, "INVALID_INPUT")
    status, doc = await province.call("POST", f"/api/v1/applications/{app_id}/decision", "police", json_body={
        "decision": "approve", "reason": "同意", "fields": ["phone", "name"], "ops": ["query"],
        "valid_until": "2027-09-30"})
    assert status == 200, doc
    grant = doc["grant"]
    assert doc["status"] == "approved" and grant["type"] == "grant" and grant["issuer"] == "370000"
    assert grant["consumer"] == {"node": "370321", "dept": CIVIL} and grant["resource"] == code
    assert grant["fields"] == ["name", "phone"] and grant["ops"] == ["query"]
    assert grant["valid_from"] == ms(2026, 9, 29) and grant["valid_until"] == ms(2027, 10, 1, 0, 0) - 1
    assert set(grant["signatures"]) == {"370000"}

    # Both sides see the same application: status, history, grant.
    mirror = await copy_at(county, "civil", app_id, lambda d: d["status"] == "approved")
    _, held = await province.call("GET", f"/api/v1/applications/{app_id}", "police")
    assert mirror == held
    assert [h["event"] for h in mirror["history"]] == ["submitted", "received", "accepted", "approved"]
    status, page = await county.call("GET", "/api/v1/grants?role=consumer", "civil")
    assert status == 200 and page["total"] == 1 and page["grants"][0]["status"] == "active"
    assert page["grants"][0]["grant"] == grant and page["grants"][0]["application"] == app_id
    status, page = await province.call("GET", "/api/v1/grants?role=provider", "police")
    assert page["total"] == 1 and page["grants"][0]["id"] == grant["id"]
    status, page = await county.call("GET", "/api/v1/grants", "other")
    assert page["total"] == 0

    # The county attaches the grant to its department's calls; the province returns the granted fields only.
    status, res = await query(county, "civil", code, {"key": PEOPLE[0]})
    assert status == 200, res
    assert res["records"] == [{"name": "张三", "phone": "13812345678"}] and res["masked"] == []
    assert res["via"] == ["370300", "370000"]
    status, res = await query(county, "civil", code, {"where": {"name": "李四"}, "fields": ["phone"]})
    assert status == 200 and res["records"] == [{"phone": "13900001111"}]
    for asked in ({"key": PEOPLE[0], "fields": ["name", "address"]}, {"where": {"household": 3}},
                  {"key": PEOPLE[0], "fields": ["id_number"]}):
        status, res = await query(county, "civil", code, asked)
        assert (status, error_code(res)) == (403, "FIELD_NOT_GRANTED"), (asked, res)
        assert "索镇" not in json.dumps(res, ensure_ascii=False)
    # verify was asked for and narrowed away; another department of the county holds no grant.
    status, res = await county.call("POST", f"/api/v1/resources/{code}/verify", "civil",
                                    json_body={"key": PEOPLE[0], "fields": {"name": "张三"}})
    assert (status, error_code(res)) == (403, "GRANT_REQUIRED"), res
    status, res = await query(county, "other", code, {"key": PEOPLE[0]})
    assert (status, error_code(res)) == (403, "GRANT_REQUIRED"), res

    # A grant presented by another department, forged, or signed by someone else is refused at the province.
    sharing = county.app[SHARING]
    civil, other = Requester(node="370321", dept=CIVIL), Requester(node="370321", dept=OTHER)
    with pytest.raises(Exception) as err:
        await sharing.call("query", code, {"key": PEOPLE[0]}, other, grant=grant)
    assert err.value.code == "FORBIDDEN", err.value.message
    widened = copy.deepcopy(grant)
    widened["fields"].append("address")
    with pytest.raises(Exception) as err:
        await sharing.call("query", code, {"key": PEOPLE[0]}, civil, grant=widened)
    assert err.value.code == "SIGNATURE_INVALID", err.value.message
    county_signed = sign_json({k: v for k, v in widened.items() if k != "signatures"}, "370000",
                              signing_key_of(county.config.home))
    with pytest.raises(Exception) as err:
        await sharing.call("query", code, {"key": PEOPLE[0]}, civil, grant=county_signed)
    assert err.value.code == "SIGNATURE_INVALID"
    self_issued = sign_json({**{k: v for k, v in widened.items() if k != "signatures"}, "issuer": "370321"},
                            "370321", signing_key_of(county.config.home))
    with pytest.raises(Exception) as err:
        await sharing.call("query", code, {"key": PEOPLE[0]}, civil, grant=self_issued)
    assert err.value.code == "SIGNATURE_INVALID"

    # After the province rotates its key, the grant signed before still verifies.
    fed = province.app[FEDERATION]
    old_key_id = fed.key.key_id
    await fed.rotate_key()
    assert fed.key.key_id != old_key_id
    await wait_for(lambda: fed.key.key_id in (county.app[FEDERATION].trust.certificate("370000") or {})
                   .get("verify_keys", {}), 20, what="the new province key at the county")
    status, res = await query(county, "civil", code, {"key": PEOPLE[1]})
    assert status == 200 and res["records"] == [{"name": "李四", "phone": "13900001111"}], res

    # Expired: the province's clock moves past the last valid day.
    province.app[APPLICATIONS].clock = lambda: ms(2027, 10, 1, 0, 1)
    with pytest.raises(Exception) as err:
        await sharing.call("query", code, {"key": PEOPLE[0]}, civil, grant=grant)
    assert err.value.code == "GRANT_REQUIRED" and "expired" in err.value.message
    province.app[APPLICATIONS].clock = lambda: ms(2026, 10, 9)

    # Revocation: only the issuer's department or operator; effective on the very next call.
    status, res = await county.call("POST", f"/api/v1/grants/{grant['id']}/revoke", "civil", json_body={})
    assert (status, error_code(res)) == (403, "FORBIDDEN")
    status, view = await province.call("POST", f"/api/v1/grants/{grant['id']}/revoke", "police",
                                       json_body={"reason": "用途已完成"})
    assert status == 200 and view["status"] == "revoked" and view["revoke_reason"] == "用途已完成"
    with pytest.raises(Exception) as err:
        await sharing.call("query", code, {"key": PEOPLE[0]}, civil, grant=grant)
    assert err.value.code == "REVOKED"
    status, res = await query(county, "civil", code, {"key": PEOPLE[0]})
    assert status == 403 and error_code(res) in ("REVOKED", "GRANT_REQUIRED"), res
    status, res = await province.call("POST", f"/api/v1/grants/{grant['id']}/revoke", "operator")
    assert (status, error_code(res)) == (409, "CONFLICT")
    mirror = await copy_at(county, "civil", app_id, lambda d: d["revoked_at"] is not None)
    assert mirror["history"][-1]["event"] == "revoked" and mirror["history"][-1]["reason"] == "用途已完成"
    status, page = await county.call("GET", "/api/v1/grants?status=revoked", "civil")
    assert page["total"] == 1
    status, res = await query(county, "civil", code, {"key": PEOPLE[0]})
    assert (status, error_code(res)) == (403, "GRANT_REQUIRED"), res  # no longer attached

    # Statistics at the province: the calls it served, and the approval against its deadlines.
    status, stats = await province.call("GET", "/api/v1/stats?since=0", "auditor")
    assert status == 200, stats
    assert stats["node"] == "370000"
    by_resource = {r["key"]: r for r in stats["calls"]["by_resource"]}
    assert by_resource[code]["calls"] >= 9 and by_resource[code]["errors"] >= 6
    assert {r["key"] for r in stats["calls"]["by_department"]} == {"370321"}
    (police,) = stats["approvals"]
    assert police["dept"] == f"370000/{PROVINCE_POLICE}" and police["applications"] == 1 and police["approved"] == 1
    assert police["review"] == {"done": 1, "on_time": 1, "on_time_rate": 1.0, "median_hours": 0.0, "overdue_open": 0}
    assert police["decision"]["done"] == 1 and police["decision"]["on_time_rate"] == 1.0
    status, _ = await province.call("GET", "/api/v1/stats", "police")
    assert status == 403


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_withdrawal_crosses_the_tree_and_a_decided_one_cannot_be_withdrawn(tree):
    province, county = tree["370000"], tree["370321"]
    code = await register(province, "police", {"type": "unconditional"})
    await replicated(county, "civil", code)
    status, app = await county.call("POST", "/api/v1/applications", "other",
                                    json_body=apply_body(code, ops=["query"], fields=["phone"]))
    assert status == 201, app
    await copy_at(province, "operator", app["id"], lambda d: True)
    status, res = await county.call("POST", f"/api/v1/applications/{app['id']}/withdraw", "civil")
    assert (status, error_code(res)) == (403, "FORBIDDEN")
    status, doc = await county.call("POST", f"/api/v1/applications/{app['id']}/withdraw", "other",
                                    json_body={"reason": "不再需要"})
    assert status == 200 and doc["status"] == "withdrawn", doc
    held = await copy_at(province, "operator", app["id"], lambda d: d["status"] == "withdrawn")
    assert held["history"][-1]["event"] == "withdrawn" and held["history"][-1]["by"] == f"370321/{OTHER}"
    mirror = await copy_at(county, "other", app["id"], lambda d: d["version"] == held["version"])
    assert mirror == held
    status, res = await province.call("POST", f"/api/v1/applications/{app['id']}/review", "operator",
                                      json_body={"decision": "accept"})
    assert (status, error_code(res)) == (409, "CONFLICT")

    # A decided application cannot be withdrawn; a withdrawal crossing the decision is refused at the
    # province, and the county's copy shows the refusal.
    status, app2 = await county.call("POST", "/api/v1/applications", "civil",
                                     json_body=apply_body(code, ops=["query"], fields=["phone"]))
    assert status == 201
    await copy_at(province, "operator", app2["id"], lambda d: True)
    status, doc = await province.call("POST", f"/api/v1/applications/{app2['id']}/review", "operator",
                                      json_body={"decision": "accept"})
    assert status == 200
    status, doc = await province.call("POST", f"/api/v1/applications/{app2['id']}/decision", "police",
                                      json_body={"decision": "reject", "reason": "依据不足"})
    assert status == 200 and doc["status"] == "rejected"
    mirror = await copy_at(county, "civil", app2["id"], lambda d: d["status"] == "rejected")
    assert (mirror["history"][-1]["event"], mirror["history"][-1]["reason"]) == ("rejected", "依据不足")
    status, res = await county.call("POST", f"/api/v1/applications/{app2['id']}/withdraw", "civil")
    assert (status, error_code(res)) == (409, "CONFLICT")
    await county.app[FEDERATION].send_async("application.update", "370000",
                                            {"withdraw": {"id": app2["id"], "dept": CIVIL, "reason": "晚了"}})
    mirror = await copy_at(county, "civil", app2["id"], lambda d: d["history"][-1]["event"] == "withdraw_refused")
    assert mirror["status"] == "rejected"

    # A submission the province cannot serve (an item the resource lacks) is stored there as rejected on
    # receipt, and the county learns why, even without a copy of its own.
    app_id = "01JD3W6Z9K8Q4V7N2M5X1R0T6Y"
    await county.app[FEDERATION].send_async("application.submit", "370000", {"application": {
        **apply_body(code, ops=["query"], fields=["phone", "colour"]), "id": app_id,
        "applicant": {"node": "370321", "dept": CIVIL}, "provider": {"node": "370000", "dept": PROVINCE_POLICE},
        "submitted_at": 1_790_000_000_000}})
    mirror = await copy_at(county, "civil", app_id, lambda d: True)
    assert mirror["status"] == "rejected" and "colour" in mirror["history"][-1]["reason"]
    assert mirror["history"][-1]["by"] == "370000/platform"
    # A node cannot submit for another node's department: the province refuses the message.
    message_id = await tree["370303"].app[FEDERATION].send_async("application.submit", "370000", {"application": {
        **apply_body(code), "id": "01JD3W6Z9K8Q4V7N2M5X1R0T6Z", "applicant": {"node": "370321", "dept": CIVIL},
        "provider": {"node": "370000", "dept": PROVINCE_POLICE}, "submitted_at": 1_790_000_000_000}})

    async def delivered():
        _, page = await province.call("GET", f"/api/v1/audit?message_id={message_id}", "auditor")
        return [r for r in page["records"] if r["action"] == "federation.deliver"]
    (record,) = await wait_for(delivered, 20, what="the forged submission at the province")
    assert record["outcome"] == "FORBIDDEN" and record["actor"] == "370303"
    status, res = await province.call("GET", "/api/v1/applications/01JD3W6Z9K8Q4V7N2M5X1R0T6Z", "operator")
    assert status == 404


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_an_application_made_while_the_city_relay_is_down_arrives_after_it_returns(tree):
    province, county, city = tree["370000"], tree["370321"], tree["370300"]
    code = await register(province, "police", {"type": "unconditional"})
    await replicated(county, "civil", code)
    # Unconditional: the sensitive items come back masked until a grant includes them.
    status, res = await query(county, "civil", code, {"key": PEOPLE[0], "fields": ["name", "phone", "address"]})
    assert status == 200 and res["records"] == [{"name": "张三", "phone": "138****5678",
                                                 "address": "山" + "*" * 9 + "镇"}], res
    await city.stop()
    try:
        status, app = await county.call("POST", "/api/v1/applications", "civil",
                                        json_body=apply_body(code, ops=["query"], fields=["phone"]))
        assert status == 201, app  # queued durably at the county
        status, res = await province.call("GET", f"/api/v1/applications/{app['id']}", "operator")
        assert (status, error_code(res)) == (404, "NOT_FOUND")
        # The county tried to deliver it and failed: it waits in the county's outbox.
        await wait_for(lambda: county.app[FEDERATION].peer_status.get("370300", {}).get("reachable") is False,
                       10, what="a failed delivery to the stopped city")
        _, health = await county.call("GET", "/healthz")
        assert health["federation"]["peers"]["370300"]["outbox"] >= 1, health
        status, res = await province.call("GET", f"/api/v1/applications/{app['id']}", "operator")
        assert (status, error_code(res)) == (404, "NOT_FOUND")
    finally:
        tree["370300"] = await start_node(city.config)  # same home, same port
    held = await copy_at(province, "operator", app["id"], lambda d: True)
    assert held["submitted_at"] == app["submitted_at"] and held["review_due"] == app["review_due"]
    await province.call("POST", f"/api/v1/applications/{app['id']}/review", "operator", json_body={"decision": "accept"})
    status, doc = await province.call("POST", f"/api/v1/applications/{app['id']}/decision", "police",
                                      json_body={"decision": "approve"})
    assert status == 200 and doc["grant"]["fields"] == ["phone"]
    await copy_at(county, "civil", app["id"], lambda d: d["status"] == "approved")
    status, res = await query(county, "civil", code, {"key": PEOPLE[0], "fields": ["name", "phone", "address"]})
    assert status == 200 and res["records"] == [{"name": "张三", "phone": "13812345678",
                                                 "address": "山" + "*" * 9 + "镇"}], res
    assert res["masked"] == ["address"]


# On one node: deadlines, masking, controlled operations, refusals ----------------------------------------

async def test_deadlines_overdue_flags_and_stats(node):
    svc: ApplicationService = node.app[APPLICATIONS]
    code = await register(node, "police", {"type": "conditional", "condition": "社会救助"})
    # Spring Festival 2026: submitted Thursday 02-12, review due on 02-24.
    svc.clock = lambda: ms(2026, 2, 12)
    status, app = await node.call("POST", "/api/v1/applications", "civil", json_body=apply_body(code))
    assert status == 201 and app["review_due"] == "2026-02-24" and app["version"] == 1, app
    assert [h["event"] for h in app["history"]] == ["submitted"]
    svc.clock = lambda: ms(2026, 2, 24, 23, 59)
    assert await svc.check_deadlines() == []  # due today: not late yet
    svc.clock = lambda: ms(2026, 2, 25, 0, 1)
    assert await svc.check_deadlines() == [app["id"]]
    assert await svc.check_deadlines() == []  # flagged once
    status, page = await node.call("GET", "/api/v1/applications?overdue=true", "operator")
    assert page["total"] == 1 and page["applications"][0]["overdue"] is True
    events = [(h["event"], h["by"]) for h in page["applications"][0]["history"]]
    assert events == [("submitted", f"370321/{CIVIL}"), ("overdue", "370321/platform")]
    status, audit = await node.call("GET", "/api/v1/audit?resource=" + code, "auditor")
    flagged = [r for r in audit["records"] if r["action"] == "applications.overdue"]
    assert len(flagged) == 1 and flagged[0]["details"]["application"] == app["id"]
    assert flagged[0]["details"]["step"] == "review" and flagged[0]["details"]["due"] == "2026-02-24"
    # A late review clears the flag; the decision is due 10 working days later.
    status, doc = await node.call("POST", f"/api/v1/applications/{app['id']}/review", "operator",
                                  json_body={"decision": "accept"})
    assert doc["overdue"] is False and doc["decision_due"] == "2026-03-10"  # Saturday 02-28 is worked
    svc.clock = lambda: ms(2026, 3, 12)
    assert await svc.check_deadlines() == [app["id"]]
    status, doc = await node.call("POST", f"/api/v1/applications/{app['id']}/decision", "police",
                                  json_body={"decision": "reject", "reason": "用途与职责不符"})
    assert doc["status"] == "rejected" and doc["overdue"] is False
    assert [h["event"] for h in doc["history"]] == ["submitted", "overdue", "accepted", "overdue", "rejected"]

    # A year the official calendar does not know: Monday to Friday, said in the history.
    svc.clock = lambda: ms(2026, 12, 30)
    status, app2 = await node.call("POST", "/api/v1/applications", "civil", json_body=apply_body(code))
    assert app2["review_due"] == "2027-01-04"
    note = app2["history"][-1]
    assert note["event"] == "calendar" and "2027" in note["reason"] and "Monday to Friday" in note["reason"]

    status, stats = await node.call("GET", f"/api/v1/stats?since=0&until={ms(2027, 1, 1)}", "operator")
    (police,) = stats["approvals"]
    assert (police["applications"], police["rejected"], police["submitted"]) == (2, 1, 1)
    assert police["review"]["done"] == 1 and police["review"]["on_time"] == 0 and police["review"]["on_time_rate"] == 0.0
    assert police["review"]["median_hours"] == round((ms(2026, 2, 25, 0, 1) - ms(2026, 2, 12)) / 3_600_000, 2)
    assert police["decision"]["on_time_rate"] == 0.0


async def test_the_period_applied_for_is_the_grants_validity_unless_the_decision_says_otherwise(node):
    svc: ApplicationService = node.app[APPLICATIONS]
    svc.clock = lambda: ms(2026, 9, 29)
    codes = [await register(node, "police", {"type": "conditional", "condition": "社会救助"}) for _ in range(3)]
    status, body = await node.call("POST", "/api/v1/applications", "civil",
                                   json_body={**apply_body(codes[0]), "wanted_until": "2026-09-28"})
    assert (status, body["error"]["details"]) == (400, [{"field": "wanted_until", "error": "before today"}]), body

    grants = []
    cases = ((codes[0], "2027-03-31", {}), (codes[1], "2027-03-31", {"valid_until": "2026-12-31"}),
             (codes[2], "2026-10-01", {}))
    for code, wanted, decision in cases:
        status, app = await node.call("POST", "/api/v1/applications", "civil",
                                      json_body={**apply_body(code), "wanted_until": wanted})
        assert status == 201 and app["wanted_until"] == wanted, app
        assert (await node.call("POST", f"/api/v1/applications/{app['id']}/review", "operator",
                                json_body={"decision": "accept"}))[0] == 200
        svc.clock = lambda: ms(2026, 10, 9)  # the third's period has passed by its decision: a year, as without one
        status, doc = await node.call("POST", f"/api/v1/applications/{app['id']}/decision", "police",
                                      json_body={"decision": "approve", **decision})
        assert status == 200 and doc["wanted_until"] == wanted, doc
        grants.append(datetime.fromtimestamp(doc["grant"]["valid_until"] / 1000, CST).isoformat())
        svc.clock = lambda: ms(2026, 9, 29)
    assert grants == ["2027-03-31T23:59:59.999000+08:00", "2026-12-31T23:59:59.999000+08:00",
                      "2027-10-09T23:59:59.999000+08:00"]


async def test_masking_controlled_operations_and_local_grants(node):
    code = await register(node, "police", {"type": "unconditional"}, controlled_ops=["compare"])
    status, entry = await node.call("GET", f"/api/v1/catalog/{code}", "civil")
    assert entry["controlled_ops"] == ["compare"]
    plain = await register(node, "police", {"type": "unconditional"})
    status, entry = await node.call("GET", f"/api/v1/catalog/{plain}", "civil")
    assert "controlled_ops" not in entry  # left out of the signed entry when empty
    status, res = await query(node, "civil", code, {"key": PEOPLE[0]})
    assert res["records"][0]["phone"] == "138****5678" and res["records"][0]["id_number"] == PEOPLE[0][:6] + "*" * 8 + PEOPLE[0][-4:]
    compare = {"records": [{"id_number": PEOPLE[0], "phone": "13812345678"}]}
    status, res = await node.call("POST", f"/api/v1/resources/{code}/compare", "civil", json_body=compare)
    assert (status, error_code(res)) == (403, "GRANT_REQUIRED"), res
    status, res = await node.call("POST", f"/api/v1/resources/{plain}/compare", "civil", json_body=compare)
    assert status == 200 and res["matched"] == 1

    status, app = await node.call("POST", "/api/v1/applications", "civil",
                                  json_body=apply_body(code, ops=["query", "compare"], fields=["phone"]))
    assert status == 201, app
    await node.call("POST", f"/api/v1/applications/{app['id']}/review", "operator", json_body={"decision": "accept"})
    status, doc = await node.call("POST", f"/api/v1/applications/{app['id']}/decision", "police",
                                  json_body={"decision": "approve", "valid_until": "2099-12-31"})
    assert status == 200 and doc["grant"]["issuer"] == "370321", doc
    # query: granted sensitive items in clear, the others still masked; the other department sees masks.
    status, res = await query(node, "civil", code, {"key": PEOPLE[0]})
    assert res["records"][0]["phone"] == "13812345678" and res["records"][0]["address"] == "山" + "*" * 9 + "镇"
    assert res["masked"] == ["id_number", "address"]
    status, res = await query(node, "auditor", code, {"key": PEOPLE[0], "fields": ["phone"]})
    assert res["records"] == [{"phone": "138****5678"}]
    # compare is controlled: the grant's fields only.
    status, res = await node.call("POST", f"/api/v1/resources/{code}/compare", "civil", json_body=compare)
    assert status == 200 and res["matched"] == 1, res
    status, res = await node.call("POST", f"/api/v1/resources/{code}/compare", "civil",
                                  json_body={"records": [{"id_number": PEOPLE[0], "name": "张三"}]})
    assert (status, error_code(res)) == (403, "FIELD_NOT_GRANTED") and res["error"]["details"][0]["field"] == "name"


async def test_bad_applications_are_refused_clearly(node):
    cond = await register(node, "police", {"type": "conditional", "condition": "社会救助"})
    none = await register(node, "police", {"type": "none", "basis": "《中华人民共和国个人信息保护法》"})
    cases = [
        ("civil", apply_body(cond, fields=["name", "colour"]), 400, "INVALID_INPUT"),
        ("civil", apply_body(cond, ops=["delete"]), 400, "INVALID_INPUT"),
        ("civil", apply_body(cond, ops=[]), 400, "INVALID_INPUT"),
        ("civil", {**apply_body(cond), "purpose": "  "}, 400, "INVALID_INPUT"),
        ("civil", {**apply_body(cond), "extra": 1}, 400, "INVALID_INPUT"),
        ("civil", apply_body("101001/370321999999"), 404, "NOT_FOUND"),
        ("civil", apply_body(none), 403, "SHARE_FORBIDDEN"),
        ("police", apply_body(cond), 400, "INVALID_INPUT"),  # its own resource
        ("operator", apply_body(cond), 403, "FORBIDDEN"),
    ]
    for token, body, want_status, want_code in cases:
        status, res = await node.call("POST", "/api/v1/applications", token, json_body=body)
        assert (status, error_code(res)) == (want_status, want_code), (body, res)
    status, app = await node.call("POST", "/api/v1/applications", "civil", json_body=apply_body(cond))
    assert status == 201
    base = f"/api/v1/applications/{app['id']}"
    for path, token, body, want in [
        ("/review", "operator", {"decision": "maybe"}, 400), ("/review", "operator", {}, 400),
        ("/decision", "police", {"decision": "approve"}, 409),
        ("/withdraw", "civil", {"reason": 5}, 400),
    ]:
        status, res = await node.call("POST", base + path, token, json_body=body)
        assert status == want and "error" in res, (path, res)
    await node.call("POST", base + "/review", "operator", json_body={"decision": "accept"})
    for body in ({"decision": "approve", "valid_until": "2020-01-01"}, {"decision": "approve", "valid_until": "2026-13-01"},
                 {"decision": "approve", "fields": []}, {"decision": "reject"}):
        status, res = await node.call("POST", base + "/decision", "police", json_body=body)
        assert (status, error_code(res)) == (400, "INVALID_INPUT"), (body, res)
    # Seeing: the applicant, the provider, the node's staff; not another department.
    other = await add_dept_async(node.config.home, OTHER, "桓台县人社局")
    for token in ("civil", "police", "operator", "auditor"):
        status, _ = await node.call("GET", base, token)
        assert status == 200
    status, res = await node.call("GET", base, other)
    assert (status, error_code(res)) == (403, "FORBIDDEN")
    status, page = await node.call("GET", "/api/v1/applications", other)
    assert page["total"] == 0
    status, page = await node.call("GET", "/api/v1/applications?role=provider", "police")
    assert page["total"] == 1
    status, page = await node.call("GET", "/api/v1/applications?role=provider", "civil")
    assert page["total"] == 0
    for q in ("status=lost", "role=x", "page=0", "overdue=perhaps"):
        status, res = await node.call("GET", "/api/v1/applications?" + q, "civil")
        assert (status, error_code(res)) == (400, "INVALID_INPUT"), q
    status, res = await node.call("GET", "/api/v1/applications/01JD3W6Z9K8Q4V7N2M5X1R0T6Y", "civil")
    assert (status, error_code(res)) == (404, "NOT_FOUND")
    status, res = await node.call("POST", "/api/v1/grants/01JD3W6Z9K8Q4V7N2M5X1R0T6Y/revoke", "police")
    assert (status, error_code(res)) == (404, "NOT_FOUND")
    for q in ("since=yesterday", "since=5&until=4"):
        status, res = await node.call("GET", "/api/v1/stats?" + q, "auditor")
        assert (status, error_code(res)) == (400, "INVALID_INPUT"), q
