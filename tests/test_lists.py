"""Joint reward and punishment lists (联合奖惩, SPEC §17) on the four-node tree: a list published at a county is
checked at the other county and at the province from their own copies; a removal (信用修复) stops matching
everywhere; hits reach the issuer (双反馈); a forged entry is refused; 10,000 subjects in one call; entries by
CSV and kept in step with a resource's records."""

from __future__ import annotations

import json

import pytest
import pytest_asyncio

from federation.signing import generate_signing_key, sign_json
from node.ids import make_gb11643, make_gb32100
from support import add_dept_async, error_code, raw_sql, start_federation, stop_all, wait_for, write_at_next_change

pytestmark = pytest.mark.asyncio(loop_scope="module")

TAX = make_gb32100("11370321MB", 7)          # 桓台县税务局, the issuer
HR = make_gb32100("11370303MB", 1)           # 张店区人力资源和社会保障局
GOV = make_gb32100("11370000MB", 9)          # 山东省发展和改革委员会
COMPANY = make_gb32100("91370321MA", 11)     # on the blacklist
PERSON = make_gb11643("370321", "19800101", 3)
CLEAN = make_gb32100("91370303MA", 2)        # on no list
# The forged-entry test's later genuine entry: a subject of its own, so that the first test's hits for PERSON
# do not depend on whether that test ran before it on the same test worker (the tree is shared by the module).
LATER = make_gb11643("370321", "19900202", 5)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def tree(tmp_path_factory):
    nodes = await start_federation(tmp_path_factory.mktemp("lists"))
    try:
        county, other, province = nodes["370321"], nodes["370303"], nodes["370000"]
        county.tokens["tax"] = await add_dept_async(county.config.home, TAX, "国家税务总局桓台县税务局")
        other.tokens["hr"] = await add_dept_async(other.config.home, HR, "张店区人力资源和社会保障局")
        province.tokens["gov"] = await add_dept_async(province.config.home, GOV, "山东省发展和改革委员会")
        yield nodes
    finally:
        await stop_all(nodes)


async def check(node, token: str, *codes: str) -> dict:  # noqa: ANN001
    status, body = await node.call("POST", "/api/v1/lists/check", token, json_body={
        "subjects": [{"code": c} for c in codes], "purpose": "政府采购供应商资格审查"})
    assert status == 200, body
    return body


async def hits_of(node, token: str, code: str) -> list:  # noqa: ANN001
    return next(r["hits"] for r in (await check(node, token, code))["results"] if r["code"] == code)


async def new_list(county, **kw) -> dict:  # noqa: ANN001, ANN003
    body = {"name": "重大税收违法失信主体名单", "kind": "black", "public": True,
            "measures": ["限制政府采购", "限制取得政府供应土地"], "basis": "《重大税收违法失信主体信息公布管理办法》"}
    status, lst = await county.call("POST", "/api/v1/lists", "tax", json_body={**body, **kw})
    assert status == 201, lst
    return lst


async def test_an_entry_is_checked_everywhere_reported_to_its_issuer_and_removed(tree):
    county, other, province = tree["370321"], tree["370303"], tree["370000"]
    lst = await new_list(county)
    assert lst["code"].startswith("370321-") and lst["scope"] == "national" and set(lst["signatures"]) == {"370321"}
    status, added = await county.call("POST", f"/api/v1/lists/{lst['code']}/entries", "tax", json_body=[
        {"subject": {"code": COMPANY, "name": "淄博某某化工有限公司"}, "reason": "虚开增值税专用发票",
         "basis": "淄税稽罚〔2026〕12号", "valid_until": "2029-11-30"},
        {"subject": {"code": PERSON, "code_type": "111", "name": "王某"}, "reason": "逃避追缴欠税",
         "measures": ["阻止出境"]}])
    assert status == 200 and (added["added"], added["changed"]) == (2, 0), added
    company_entry = added["entries"][0]

    # The entry as held: the subject's digest, never its code; the name because the list is public.
    [(doc,)] = await raw_sql(county.config, "SELECT doc FROM list_entries WHERE id = :i", {"i": company_entry})
    assert COMPANY not in doc and "淄博某某化工有限公司" in doc

    # Found at the other county and at the province, each from its own copy.
    for node, token in ((other, "hr"), (province, "gov")):
        hits = await wait_for(lambda node=node, token=token: hits_of(node, token, COMPANY), 20,
                              what=f"the entry at {node.config.node.id}")
        [hit] = hits
        assert hit["list"] == {"code": lst["code"], "name": "重大税收违法失信主体名单", "kind": "black", "public": True}
        assert hit["measures"] == ["限制政府采购", "限制取得政府供应土地"] and hit["reason"] == "虚开增值税专用发票"
        assert hit["issuer"] == {"node": "370321", "dept": TAX, "name": "国家税务总局桓台县税务局"}
        assert hit["name"] == "淄博某某化工有限公司" and hit["valid_until"] == "2029-11-30"
    answer = await check(other, "hr", PERSON, CLEAN)
    assert [(r["hit"], [h["measures"] for h in r["hits"]]) for r in answer["results"]] == [
        (True, [["阻止出境"]]), (False, [])]
    assert answer["hit_subjects"] == 1

    # 双反馈: the issuer sees where and when its entries were applied.
    async def applied_at() -> set:
        status, view = await county.call("GET", "/api/v1/lists/hits", "tax")
        assert status == 200, view
        return {r["node"] for r in view["per_node"]} >= {"370303", "370000"} and view

    view = await wait_for(applied_at, 20, what="the hits at the issuer")
    recent = [r for r in view["recent"] if r["entry"] == company_entry and r["checked_node"] == "370303"]
    assert recent and recent[0]["checked_dept"] == HR and recent[0]["purpose"] == "政府采购供应商资格审查"
    assert recent[0]["checked_at"].startswith("20")
    # Another department's view has none of them.
    status, view = await other.call("GET", "/api/v1/lists/hits", "hr")
    assert status == 200 and view == {"per_node": [], "recent": []}

    # Removal (信用修复): a tombstone with its reason; the entry stops matching everywhere.
    status, body = await county.call("DELETE", f"/api/v1/lists/{lst['code']}/entries/{company_entry}", "tax",
                                     json_body={"reason": "已完成信用修复"})
    assert status == 200 and body["deleted"] is True and body["removal"]["reason"] == "已完成信用修复", body
    assert await hits_of(county, "tax", COMPANY) == []
    for node, token in ((other, "hr"), (province, "gov")):
        await wait_for(lambda node=node, token=token: _empty(hits_of(node, token, COMPANY)), 20,
                       what=f"the removal at {node.config.node.id}")
    status, body = await county.call("DELETE", f"/api/v1/lists/{lst['code']}/entries/{company_entry}", "tax",
                                     json_body={"reason": "again"})
    assert (status, error_code(body)) == (409, "CONFLICT")
    # Only the issuing department changes its list.
    status, body = await other.call("POST", f"/api/v1/lists/{lst['code']}/entries", "hr",
                                    json_body=[{"subject": {"code": CLEAN}, "reason": "x"}])
    assert (status, error_code(body)) == (403, "FORBIDDEN")


async def _empty(awaitable) -> bool:  # noqa: ANN001
    return await awaitable == []


async def test_a_forged_entry_is_refused_and_never_matches(tree):
    county, city, other = tree["370321"], tree["370300"], tree["370303"]
    lst = await new_list(county, name="拖欠农民工工资失信联合惩戒对象名单", public=False)
    status, added = await county.call("POST", f"/api/v1/lists/{lst['code']}/entries", "tax",
                                      json_body=[{"subject": {"code": CLEAN, "name": "不公开"}, "reason": "欠薪"}])
    assert status == 200, added
    [(doc,)] = await raw_sql(county.config, "SELECT doc FROM list_entries WHERE id = :i", {"i": added["entries"][0]})
    assert json.loads(doc)["subject"]["name"] is None  # not a public list: no name
    await wait_for(lambda: hits_of(other, "hr", CLEAN), 20, what="the genuine entry")
    await county.call("DELETE", f"/api/v1/lists/{lst['code']}/entries/{added['entries'][0]}", "tax",
                      json_body={"reason": "已整改"})
    await wait_for(lambda: _empty(hits_of(other, "hr", CLEAN)), 20, what="the removal")

    # The county's storage is altered to serve an entry signed with a key that is not the county's.
    genuine = json.loads(doc)
    unsigned = {k: v for k, v in genuine.items() if k != "signatures"}
    forged = sign_json({**unsigned, "id": "01JD3W6Z9K8Q4V7N2M5X1R0T6Y", "seq": genuine["seq"] + 100},
                       "370321", generate_signing_key("1"))
    # Written ahead of its counter, so no pull can pass its change id before the row is there.
    await write_at_next_change(
        county.config, "list_change",
        "INSERT INTO list_entries (id, list, node, seq, digest, deleted, valid_from, valid_until, updated_at,"
        " doc, change_id) VALUES (:id, :l, '370321', :s, :d, false, :vf, NULL, :u, :doc, {next_change})",
        {"id": forged["id"], "l": lst["code"], "s": forged["seq"], "d": forged["subject"]["digest"],
         "vf": forged["valid_from"], "u": forged["updated_at"], "doc": json.dumps(forged, ensure_ascii=False)})
    status, _ = await county.call("POST", f"/api/v1/lists/{lst['code']}/entries", "tax",  # a change that notifies
                                  json_body=[{"subject": {"code": LATER}, "reason": "欠薪"}])
    assert status == 200

    async def refused() -> list:
        return await raw_sql(city.config, "SELECT key, node, received_from, reason FROM list_refusals")

    [row] = await wait_for(refused, 20, what="the refusal at the city")
    assert row[:3] == (forged["id"], "370321", "370321") and "signature" in row[3]
    await wait_for(lambda: hits_of(other, "hr", LATER), 20, what="the later genuine entry")
    assert await hits_of(other, "hr", CLEAN) == []  # the forged one never arrived
    assert await raw_sql(other.config, "SELECT id FROM list_entries WHERE id = :i", {"i": forged["id"]}) == []


async def test_ten_thousand_subjects_in_one_call_and_bad_input(tree):
    county, other = tree["370321"], tree["370303"]
    lst = await new_list(county, name="失信被执行人名单")
    # Entries by CSV, columns by their Chinese names.
    listed = [make_gb32100("91370303MB", i) for i in range(1, 4)]
    csv = "主体代码,主体名称,列入事由,奖惩措施,有效期截止\n" + "".join(
        f"{c},公司{i},拒不履行生效判决,限制高消费；限制乘坐飞机,2030-01-01\n" for i, c in enumerate(listed))
    status, added = await county.call("POST", f"/api/v1/lists/{lst['code']}/entries", "tax", data=csv.encode(),
                                      headers={"Content-Type": "text/csv"})
    assert status == 200 and added["added"] == 3, added
    # The same file again changes nothing; a changed reason changes the entry in place.
    status, again = await county.call("POST", f"/api/v1/lists/{lst['code']}/entries", "tax", data=csv.encode(),
                                      headers={"Content-Type": "text/csv"})
    assert status == 200 and (again["added"], again["changed"], again["unchanged"]) == (0, 0, 3)
    assert again["entries"] == added["entries"]

    codes = [make_gb32100("91370303MC", i) for i in range(9_997)] + listed
    await wait_for(lambda: hits_of(other, "hr", listed[0]), 20, what="the CSV entries")
    answer = await check(other, "hr", *codes)
    assert answer["checked"] == 10_000 and answer["hit_subjects"] == 3
    hit = [r for r in answer["results"] if r["hit"]]
    assert [r["code"] for r in hit] == listed
    assert hit[0]["hits"][0]["measures"] == ["限制高消费", "限制乘坐飞机"]

    # Bad input: each bad row named, nothing stored; too many subjects; a bad CSV row.
    status, body = await other.call("POST", "/api/v1/lists/check", "hr", json_body={
        "subjects": [{"code": CLEAN}, {"code": "91370303MA000000X0"}], "purpose": "审查"})
    assert (status, error_code(body)) == (400, "INVALID_INPUT") and body["error"]["details"][0]["row"] == 1, body
    status, body = await other.call("POST", "/api/v1/lists/check", "hr", json_body={
        "subjects": [{"code": CLEAN}] * 10_001, "purpose": "审查"})
    assert (status, error_code(body)) == (400, "INVALID_INPUT")
    bad_csv = "主体代码,列入事由\n" + f"{CLEAN},欠税\n" + "123,欠税\n"
    status, body = await county.call("POST", f"/api/v1/lists/{lst['code']}/entries", "tax", data=bad_csv.encode(),
                                     headers={"Content-Type": "text/csv"})
    assert (status, error_code(body)) == (400, "INVALID_INPUT") and body["error"]["details"][0]["row"] == 3, body
    status, held = await county.call("GET", f"/api/v1/lists/{lst['code']}", "tax")
    assert status == 200 and held["entries"] == 3, held  # the file's good row was not stored either


async def test_a_list_kept_in_step_with_a_resource(tree):
    county, other = tree["370321"], tree["370303"]
    status, res = await county.call("POST", "/api/v1/catalog", "tax", json_body={
        "classification": "201001", "name": "桓台县欠税企业信息", "category": "department", "format": "database",
        "items": [{"name": "统一社会信用代码", "field": "uscc", "type": "C", "length": 18, "key": True},
                  {"name": "企业名称", "field": "company", "type": "C", "length": 200},
                  {"name": "欠税事由", "field": "reason", "type": "C", "length": 200}],
        "share": {"type": "conditional", "condition": "依申请", "methods": ["api"]}, "update_cycle": "daily"})
    assert status == 201, res
    firms = [make_gb32100("91370321MD", i) for i in range(1, 3)]
    status, body = await county.call("POST", f"/api/v1/resources/{res['code']}/records", "tax", json_body=[
        {"uscc": firms[0], "company": "甲公司", "reason": "欠缴增值税"},
        {"uscc": firms[1], "company": "乙公司", "reason": "欠缴企业所得税"}])
    assert status == 200, body
    lst = await new_list(county, name="欠税公告名单")
    status, state = await county.call("PUT", f"/api/v1/lists/{lst['code']}/source", "tax", json_body={
        "resource": res["code"], "reason_field": "reason", "name_field": "company"})
    assert status == 200 and state["entries"] == 2, state
    [hit] = await wait_for(lambda: hits_of(other, "hr", firms[1]), 20, what="the bound entries")
    assert (hit["reason"], hit["name"]) == ("欠缴企业所得税", "乙公司")

    # The resource changes: a record deleted stops matching, a reason changed follows.
    status, body = await county.call("POST", f"/api/v1/resources/{res['code']}/records", "tax", json_body=[
        {"uscc": firms[0], "_deleted": True}, {"uscc": firms[1], "company": "乙公司", "reason": "欠缴印花税"}])
    assert status == 200, body
    await wait_for(lambda: _empty(hits_of(other, "hr", firms[0])), 20, what="the deleted record's removal")

    async def reason() -> bool:
        hits = await hits_of(other, "hr", firms[1])
        return bool(hits) and hits[0]["reason"] == "欠缴印花税"

    await wait_for(reason, 20, what="the changed reason")
    status, state = await county.call("GET", f"/api/v1/lists/{lst['code']}/source", "tax")
    assert status == 200 and state["entries"] == 1 and state["error"] is None, state
