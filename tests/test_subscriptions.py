"""Change feeds, replicas (数据回流) and webhooks (SPEC §10 `changes`, §12) across the four-node tree
(山东省 → 淄博市 → 桓台县, 张店区), one tree for the module: a county department holding a grant with `subscribe`
reads a province resource's change feed, keeps a replica that answers its calls locally (same grant rules, same
masking) and stays in step through a restart of the city in between, and has changes posted to its webhook."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json

import pytest
import pytest_asyncio
from aiohttp import web

from node.ids import make_gb11643, make_gb32100
from node.sharing.masking import mask_text
from node.subscriptions.http import SUBSCRIPTIONS
from support import CIVIL, add_dept_async, error_code, free_port, start_node, start_tree, stop_all, wait_for

pytestmark = pytest.mark.asyncio(loop_scope="module")

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
PEOPLE = [make_gb11643("370321", "19900101", i) for i in range(4)]
RECORDS = [
    {"id_number": PEOPLE[0], "name": "张三", "phone": "13812345678", "address": "山东省淄博市桓台县索镇", "household": 3},
    {"id_number": PEOPLE[1], "name": "李四", "phone": "13900001111", "address": "山东省淄博市张店区", "household": 1},
    {"id_number": PEOPLE[2], "name": "王五"},
]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def tree(tmp_path_factory):
    nodes = await start_tree(tmp_path_factory.mktemp("tree"))
    try:
        province, county = nodes["370000"], nodes["370321"]
        province.tokens.update(police=await add_dept_async(province.config.home, PROVINCE_POLICE, "山东省公安厅"),
                               operator=await add_dept_async(province.config.home, "OPERATOR", "山东省大数据局",
                                                             "operator"))
        county.tokens.update(civil=await add_dept_async(county.config.home, CIVIL, "桓台县民政局"),
                             other=await add_dept_async(county.config.home, OTHER, "桓台县人社局"))
        county.app[SUBSCRIPTIONS].poll_wait_ms = 1000  # short long polls: a stopping relay waits for at most one
        status, entry = await province.call("POST", "/api/v1/catalog", "police", json_body={
            "classification": "101001", "name": "山东省户籍人口基本信息", "category": "base", "format": "database",
            "items": ITEMS, "share": {"type": "unconditional", "methods": ["api", "table"]}, "update_cycle": "realtime"})
        assert status == 201, entry
        code = entry["code"]
        status, res = await province.call("POST", f"/api/v1/resources/{code}/records", "police", json_body=RECORDS)
        assert status == 200, res
        await wait_for(lambda: catalog_has(county, code), 20, what="the entry at the county")
        # 桓台县民政局 applies for query and subscribe on the key, name and phone; the province grants it.
        status, app = await county.call("POST", "/api/v1/applications", "civil", json_body={
            "resource": code, "ops": ["query", "subscribe"], "fields": ["id_number", "name", "phone"],
            "purpose": "低保对象信息回流", "basis": "《社会救助暂行办法》第十一条"})
        assert status == 201, app
        await wait_for(lambda: province_has(province, app["id"]), 20, what="the application at the province")
        status, doc = await province.call("POST", f"/api/v1/applications/{app['id']}/review", "operator",
                                          json_body={"decision": "accept"})
        assert status == 200, doc
        status, doc = await province.call("POST", f"/api/v1/applications/{app['id']}/decision", "police",
                                          json_body={"decision": "approve"})
        assert status == 200 and doc["grant"]["ops"] == ["query", "subscribe"], doc
        await wait_for(lambda: county_granted(county, app["id"]), 20, what="the grant at the county")
        nodes["code"] = code  # type: ignore[assignment]
        nodes["grant"] = doc["grant"]  # type: ignore[assignment]
        yield nodes
    finally:
        await stop_all({k: v for k, v in nodes.items() if k.isdigit()})


async def catalog_has(node, code: str) -> bool:
    return (await node.call("GET", f"/api/v1/catalog/{code}", "civil"))[0] == 200


async def province_has(province, app_id: str) -> bool:
    return (await province.call("GET", f"/api/v1/applications/{app_id}", "operator"))[0] == 200


async def county_granted(county, app_id: str) -> bool:
    status, doc = await county.call("GET", f"/api/v1/applications/{app_id}", "civil")
    return status == 200 and doc["status"] == "approved"


async def push(tree, records) -> None:
    status, res = await tree["370000"].call("POST", f"/api/v1/resources/{tree['code']}/records", "police",
                                            json_body=records)
    assert status == 200, res


async def query(node, token: str, code: str, body: dict) -> dict:
    status, res = await node.call("POST", f"/api/v1/resources/{code}/query", token, json_body=body)
    assert status == 200, res
    return res


async def test_change_feed_is_served_only_with_a_subscribe_grant(tree):
    province, county, code = tree["370000"], tree["370321"], tree["code"]
    status, body = await county.call("GET", f"/api/v1/resources/{code}/changes?since=0", "other")
    assert (status, error_code(body)) == (403, "GRANT_REQUIRED"), body
    # Routed to the province with the grant: the key, the granted items and the non-sensitive ones in clear,
    # the other sensitive items masked.
    status, page = await county.call("GET", f"/api/v1/resources/{code}/changes?since=0&limit=2", "civil")
    assert status == 200, page
    assert page["more"] is True and len(page["changes"]) == 2 and page["masked"] == ["address"]
    assert page["fields"] == ["id_number", "name", "phone", "household"]
    first = page["changes"][0]
    assert first["key"] == PEOPLE[0] and first["deleted"] is False
    assert first["data"] == {"id_number": PEOPLE[0], "name": "张三", "phone": "13812345678", "household": 3,
                             "address": mask_text("山东省淄博市桓台县索镇")}
    status, rest = await county.call("GET", f"/api/v1/resources/{code}/changes?since={page['next']}", "civil")
    assert status == 200 and [c["key"] for c in rest["changes"]] == [PEOPLE[2]] and rest["more"] is False
    # The provider itself reads its feed unfiltered.
    status, raw = await province.call("GET", f"/api/v1/resources/{code}/changes?since=0", "police")
    assert status == 200 and raw["changes"][0]["data"]["address"] == "山东省淄博市桓台县索镇"


async def test_stats_count_calls_served_and_not_change_feed_pulls(tree):
    """A change-feed pull travels as a `service.call` like a query does; the provider audits both, but its
    statistics count only the query, verify and compare calls it served."""
    province, county, code = tree["370000"], tree["370321"], tree["code"]

    async def served() -> int:
        status, stats = await province.call("GET", "/api/v1/stats?since=0", "operator")
        assert status == 200, stats
        return next((r["calls"] for r in stats["calls"]["by_resource"] if r["key"] == code), 0)

    async def pulls() -> list[dict]:
        status, page = await province.call("GET", f"/api/v1/audit?resource={code}&limit=1000", "operator")
        assert status == 200, page
        return [r for r in page["records"] if (r["details"] or {}).get("op") == "changes"]

    before, pulled = await served(), len(await pulls())
    for _ in range(3):
        status, page = await county.call("GET", f"/api/v1/resources/{code}/changes?since=0", "civil")
        assert status == 200, page
    res = await query(county, "civil", code, {"key": PEOPLE[0], "fields": ["name"]})
    assert res["records"] == [{"name": "张三"}] and res["via"] == ["370300", "370000"], res
    assert await served() == before + 1
    records = await pulls()
    assert len(records) == pulled + 3  # still audited, op and all
    assert {(r["action"], r["actor"], r["outcome"]) for r in records[:3]} == {("federation.deliver", "370321", "ok")}


async def test_replica_answers_locally_and_stays_in_step_through_a_city_restart(tree):
    province, city, county, code = tree["370000"], tree["370300"], tree["370321"], tree["code"]
    status, body = await county.call("POST", "/api/v1/subscriptions", "other", json_body={
        "resource": code, "mode": "replica"})
    assert (status, error_code(body)) == (403, "GRANT_REQUIRED"), body
    status, sub = await county.call("POST", "/api/v1/subscriptions", "civil", json_body={
        "resource": code, "mode": "replica"})
    assert status == 201, sub
    sid = sub["id"]

    async def sub_state(pred):
        status, s = await county.call("GET", f"/api/v1/subscriptions/{sid}", "civil")
        assert status == 200, s
        return s if pred(s) else None

    s = await wait_for(lambda: sub_state(lambda s: s["state"] == "live" and s["records"] == 3), 20, what="the copy")
    assert s["masked"] == ["address"] and s["lag_ms"] == 0

    # Calls are answered from the copy, shaped and masked as the province answers them.
    res = await query(county, "civil", code, {"key": PEOPLE[0]})
    assert res["replica"] is True and res["lag_ms"] == 0 and "via" not in res
    assert res["records"] == [{"id_number": PEOPLE[0], "name": "张三", "phone": "13812345678",
                               "address": mask_text("山东省淄博市桓台县索镇"), "household": 3}]
    assert res["masked"] == ["address"]
    # Matching on an item the copy holds masked cannot be answered from it: the province answers.
    res = await query(county, "civil", code, {"where": {"address": "山东省淄博市张店区"}, "fields": ["name"]})
    assert res["via"] == ["370300", "370000"] and "replica" not in res and res["records"] == [{"name": "李四"}]
    # Another department of the county keeps no replica: its calls go to the province (and see phone masked).
    res = await query(county, "other", code, {"key": PEOPLE[0], "fields": ["phone"]})
    assert "replica" not in res and res["records"] == [{"phone": "138****5678"}]

    # A change at the province reaches the copy at once (long poll), deletions included.
    await push(tree, [{"id_number": PEOPLE[3], "name": "赵六", "household": 2},
                      {"id_number": PEOPLE[2], "_deleted": True}])

    async def replica_has(key: str, name: str | None):
        res = await query(county, "civil", code, {"key": key})
        got = res["records"][0]["name"] if res["records"] else None
        return res.get("replica") and got == name

    await wait_for(lambda: replica_has(PEOPLE[3], "赵六"), 5, what="the new record in the replica")
    assert await replica_has(PEOPLE[2], None)

    # The city in between restarts; changes made meanwhile arrive once it is back.
    await city.stop()
    await push(tree, [{"id_number": PEOPLE[1], "name": "李四（更正）", "phone": "13900001111"}])
    s = await wait_for(lambda: sub_state(lambda s: s["state"] == "error"), 10, what="the outage to show")
    assert s["last_error"]["code"] in ("PEER_UNREACHABLE", "PEER_TIMEOUT")
    res = await query(county, "civil", code, {"key": PEOPLE[1]})
    assert res["replica"] is True and res["lag_ms"] > 0 and res["records"][0]["name"] == "李四"  # served meanwhile
    tree["370300"] = await start_node(city.config)
    await wait_for(lambda: replica_has(PEOPLE[1], "李四（更正）"), 20, what="the copy to catch up")
    s = await wait_for(lambda: sub_state(lambda s: s["state"] == "live"), 10, what="live again")
    assert s["records"] == 3 and s["last_error"] is None


async def test_webhook_gets_signed_batches_with_retries(tree):
    county, code = tree["370321"], tree["code"]
    received: list[tuple[dict, dict]] = []
    answers = [500]  # the first delivery is refused: it must come again

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        received.append((dict(request.headers), {"raw": body}))
        status = answers.pop(0) if answers else 200
        return web.Response(status=status)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        status, sub = await county.call("POST", "/api/v1/subscriptions", "civil", json_body={
            "resource": code, "mode": "webhook", "url": f"http://127.0.0.1:{port}/hook"})
        assert status == 201, sub
        secret = sub["secret"]
        assert secret and len(secret) == 64
        await wait_for(lambda: len(received) >= 2, 10, what="the delivery to be retried")
        first, second = received[0], received[1]
        assert first[0]["X-GovNode-Delivery"] == second[0]["X-GovNode-Delivery"]  # the same batch again
        batch = json.loads(second[1]["raw"])
        assert batch["subscription"] == sub["id"] and batch["resource"] == code and batch["since"] == 0
        assert {c["key"] for c in batch["changes"]} >= {PEOPLE[0], PEOPLE[1]}
        # The receiver checks the signature: HMAC-SHA256(secret, "<t>." + body).
        sig = dict(p.split("=", 1) for p in second[0]["X-GovNode-Signature"].split(","))
        expect = hmac.new(secret.encode(), sig["t"].encode() + b"." + second[1]["raw"], hashlib.sha256).hexdigest()
        assert hmac.compare_digest(sig["v1"], expect)
        tampered = second[1]["raw"].replace(b"\xe5\xbc\xa0", b"\xe6\x9d\x8e")  # 张 → 李
        assert hmac.new(secret.encode(), sig["t"].encode() + b"." + tampered, hashlib.sha256).hexdigest() != sig["v1"]

        # A new change comes as the next batch, from where the last one ended.
        await push(tree, [{"id_number": PEOPLE[0], "name": "张三丰"}])
        await wait_for(lambda: any(b"\xe5\xbc\xa0\xe4\xb8\x89\xe4\xb8\xb0" in r[1]["raw"] for r in received), 10,
                       what="the next batch")
        last = json.loads(received[-1][1]["raw"])
        assert last["since"] == batch["next"] and [c["key"] for c in last["changes"]] == [PEOPLE[0]]
        status, s = await county.call("GET", f"/api/v1/subscriptions/{sub['id']}", "civil")
        assert status == 200 and s["deliveries"]["failures"] == 1 and s["deliveries"]["batches"] >= 2
        assert "secret" not in s or s["secret"] is None
        status, s = await county.call("DELETE", f"/api/v1/subscriptions/{sub['id']}", "civil")
        assert status == 200 and s["status"] == "cancelled"
    finally:
        await runner.cleanup()


async def test_revoked_grant_suspends_the_replica(tree):
    province, county, code, grant = tree["370000"], tree["370321"], tree["code"], tree["grant"]
    status, listing = await county.call("GET", "/api/v1/subscriptions", "civil")
    sid = next(s["id"] for s in listing["subscriptions"] if s["mode"] == "replica" and s["status"] == "active")
    status, res = await province.call("POST", f"/api/v1/grants/{grant['id']}/revoke", "police",
                                      json_body={"reason": "停止回流"})
    assert status == 200, res

    async def suspended():
        status, s = await county.call("GET", f"/api/v1/subscriptions/{sid}", "civil")
        return s if s["state"] == "suspended" else None

    await wait_for(suspended, 20, what="the replica to be suspended")
    # Without the grant the county's calls go to the province again: phone is masked there.
    res = await query(county, "civil", code, {"key": PEOPLE[1], "fields": ["phone"]})
    assert "replica" not in res and res["records"] == [{"phone": "139****1111"}]
    await asyncio.sleep(0)
