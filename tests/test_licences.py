"""Electronic licences (电子证照, SPEC §13) on real nodes: issued at a county, found and verified at the other
county and at the province; altered, mis-checked, forged, expired, superseded and revoked licences refused
with the right reason; the face shown only to the issuer and to grant holders; the printable page; the issuer
offline; a key rotation between issue and verify; bad input on one node (SQLite and PostgreSQL)."""

from __future__ import annotations

import copy
import json
import re
from datetime import date, timedelta

import pytest

from federation.signing import generate_signing_key, read_signing_key_file, sign_json
from node.federation.http import FEDERATION
from node.ids import make_gb11643, make_gb32100, now_ms
from node.licences.identifier import ALPHABET, parse
from node.workdays import cst_date
from support import (CIVIL, POLICE, add_dept_async, error_code, raw_sql, run_cli_async, start_tree, stop_all, wait_for,
                     write_at_next_change)

MARKET = make_gb32100("11370321MB", 5)        # 桓台县市场监督管理局, the issuer
HR = make_gb32100("11370303MB", 1)            # 张店区人力资源和社会保障局
PROVINCE_DEPT = make_gb32100("11370000MB", 9)  # 山东省政务服务管理办公室
BUSINESS_LICENCE = {"code": make_gb32100("11100000MB", 3) + "001", "name": "营业执照"}
FOOD_LICENCE = {"code": make_gb32100("11100000MB", 3) + "017", "name": "食品经营许可证"}
COMPANY = make_gb32100("91370321MA", 11)
PERSON = make_gb11643("370321", "19900101", 4)


def today_cst() -> str:
    return cst_date(now_ms()).isoformat()


def issue_body(**kw) -> dict:  # noqa: ANN003
    body = {"licence_type": BUSINESS_LICENCE, "holder": {"name": "桓台县<鲜>食品有限公司", "code": COMPANY},
            "valid_until": (date.today() + timedelta(days=3650)).isoformat(),
            "face": {"类型": "有限责任公司", "法定代表人": "张三", "注册资本": "100万元", "住所": "山东省淄博市桓台县索镇"}}
    body.update(kw)
    return body


@pytest.fixture
async def tree(tmp_path):
    nodes = await start_tree(tmp_path, "sqlite")
    try:
        county, other, province = nodes["370321"], nodes["370303"], nodes["370000"]
        county.tokens.update(market=await add_dept_async(county.config.home, MARKET, "桓台县市场监督管理局"),
                             civil=await add_dept_async(county.config.home, CIVIL, "桓台县民政局"),
                             operator=await add_dept_async(county.config.home, "OPERATOR", "桓台县大数据中心", "operator"))
        other.tokens.update(hr=await add_dept_async(other.config.home, HR, "张店区人力资源和社会保障局"))
        province.tokens.update(gov=await add_dept_async(province.config.home, PROVINCE_DEPT, "山东省政务服务管理办公室"))
        yield nodes
    finally:
        await stop_all(nodes)


async def issue(node, token: str, **kw) -> dict:  # noqa: ANN001, ANN003
    status, licence = await node.call("POST", "/api/v1/licences", token, json_body=issue_body(**kw))
    assert status == 201, licence
    return licence


async def verify(node, token: str, body: dict) -> dict:  # noqa: ANN001
    status, result = await node.call("POST", "/api/v1/licences/verify", token, json_body=body)
    assert status == 200, result
    return result


async def found(node, token: str, holder: str, identifier: str, **kw) -> dict | None:  # noqa: ANN001, ANN003
    status, page = await node.call("GET", f"/api/v1/licences?holder={holder}", token)
    assert status == 200, page
    return next((s for s in page["licences"] if s["identifier"] == identifier and
                 all(s.get(k) == v for k, v in kw.items())), None)


def failed(result: dict) -> list[str]:
    return [r["check"] for r in result["reasons"]]


async def test_issue_find_see_verify_supersede_and_revoke_across_the_tree(tree):
    county, other, province = tree["370321"], tree["370303"], tree["370000"]
    licence = await issue(county, "market")
    ident = parse(licence["identifier"])
    assert ident.check_ok and ident.issuer_code == MARKET and ident.type_code == BUSINESS_LICENCE["code"]
    assert ident.version == "001" and re.fullmatch(r"\d{4}0000001", ident.serial)
    assert licence["issuer"] == {"node": "370321", "dept": MARKET, "name": "桓台县市场监督管理局", "code": MARKET}
    assert licence["holder"]["code_type"] == "001" and set(licence["signatures"]) == {"370321"}
    identifier = licence["identifier"]

    # Found by holder at the other county and at the province (the index replicated up and across), and the
    # index never carries the holder code.
    for node, token in ((other, "hr"), (province, "gov")):
        hit = await wait_for(lambda node=node, token=token: found(node, token, COMPANY, identifier), 15,
                             what=f"the index entry at {node.config.node.id}")
        assert hit["status"] == "valid" and hit["issuer"] == {"node": "370321", "dept": MARKET,
                                                              "name": "桓台县市场监督管理局"}
        rows = await raw_sql(node.config, "SELECT entry FROM licence_index WHERE identifier = :i", {"i": identifier})
        assert COMPANY not in rows[0][0] and "鲜" not in rows[0][0]
        assert json.loads(rows[0][0])["holder_digest"] == json.loads(
            (await raw_sql(county.config, "SELECT entry FROM licence_index WHERE identifier = :i",
                           {"i": identifier}))[0][0])["holder_digest"]
    assert await found(other, "hr", PERSON, identifier) is None  # another holder finds nothing

    # Verified at the other county and at the province: every check passes, the status comes from the issuer.
    for node, token in ((other, "hr"), (province, "gov"), (county, "civil")):
        result = await verify(node, token, licence)
        assert result["valid"] is True and result["status"] == "valid" and result["reasons"] == [], result
        assert set(result["checks"].values()) == {"ok"}
        assert (result["source"], result["issuer_reachable"], result["signed_with"]) == ("issuer", True, "ed25519:1")
    by_id = await verify(province, "gov", {"identifier": identifier})
    assert by_id["valid"] is True and by_id["checks"]["signature"] == "skipped" and by_id["checks"]["status"] == "ok"

    # Refused, each with the check that failed.
    altered = copy.deepcopy(licence)
    altered["face"]["注册资本"] = "10000万元"
    result = await verify(other, "hr", altered)
    assert (result["valid"], result["status"], failed(result)) == (False, "invalid", ["signature"]), result
    wrong_check = copy.deepcopy(licence)
    wrong_check["identifier"] = identifier[:-1] + next(c for c in ALPHABET if c != identifier[-1])
    result = await verify(province, "gov", wrong_check)
    assert result["status"] == "invalid" and failed(result)[0] == "check_character", result
    result = await verify(province, "gov", {"identifier": wrong_check["identifier"]})
    assert failed(result) == ["check_character"]
    unsigned = {k: v for k, v in licence.items() if k != "signatures"}
    forged = sign_json(unsigned, "370321", generate_signing_key("1"))  # same node and key id, another key
    result = await verify(province, "gov", forged)
    assert (result["status"], failed(result)) == ("invalid", ["signature"]), result
    impostor = sign_json({**unsigned, "issuer": {**licence["issuer"], "node": "370399"}}, "370399",
                         generate_signing_key("1"))
    result = await verify(other, "hr", impostor)
    assert (result["status"], failed(result)) == ("invalid", ["chain"]), result
    result = await verify(other, "hr", {"type": "licence", "identifier": identifier})
    assert (result["status"], failed(result)) == ("invalid", ["shape"])

    expired = await issue(county, "market", issued_on="2019-03-01", valid_until="2022-02-28",
                          holder={"name": "李四", "code": PERSON}, licence_type=FOOD_LICENCE)
    result = await verify(province, "gov", expired)
    assert (result["valid"], result["status"], failed(result)) == (False, "expired", ["validity"]), result
    assert result["checks"]["signature"] == "ok" and result["checks"]["status"] == "ok"

    # The face: the issuing department sees it; a department of another node without a grant sees only that
    # the licence exists and its status.
    status, mine = await county.call("GET", f"/api/v1/licences/{identifier}", "market")
    assert status == 200 and mine["face_visible"] is True and mine["licence"] == licence, mine
    status, theirs = await other.call("GET", f"/api/v1/licences/{identifier}", "hr")
    assert status == 200 and theirs["face_visible"] is False and theirs["licence"] is None, theirs
    assert theirs["status"] == "valid" and theirs["index"]["identifier"] == identifier
    assert theirs["via"] == ["370300", "370321"] and "grant" in theirs["face_withheld"]
    assert COMPANY not in json.dumps(theirs, ensure_ascii=False)

    # With a grant on the issuer's licence resource (applied for, reviewed, decided), the face is shown.
    resource = theirs["index"]["resource"]
    status, app = await other.call("POST", "/api/v1/applications", "hr", json_body={
        "resource": resource, "ops": ["query"], "fields": ["holder_name", "face"], "purpose": "就业补贴资格核验",
        "basis": "《就业补助资金管理办法》"})
    assert status == 201, app

    async def at_county() -> bool:
        return (await county.call("GET", f"/api/v1/applications/{app['id']}", "operator"))[0] == 200

    await wait_for(at_county, 15, what="the application at the issuer's node")
    status, doc = await county.call("POST", f"/api/v1/applications/{app['id']}/review", "operator",
                                    json_body={"decision": "accept", "reason": "材料齐全"})
    assert status == 200, doc
    status, doc = await county.call("POST", f"/api/v1/applications/{app['id']}/decision", "market",
                                    json_body={"decision": "approve", "reason": "同意"})
    assert status == 200 and doc["status"] == "approved", doc

    async def face_shown() -> dict | None:
        status, got = await other.call("GET", f"/api/v1/licences/{identifier}", "hr")
        return got if status == 200 and got["face_visible"] else None

    shown = await wait_for(face_shown, 15, what="the face shown with the grant")
    assert shown["licence"] == licence
    status, civil_view = await county.call("GET", f"/api/v1/licences/{identifier}", "civil")
    assert civil_view["face_visible"] is False  # the grant is the HR department's, not every department's

    # The printable page: escaped, with a QR code that carries the identifier.
    async with county.session.get(f"{county.url}/api/v1/licences/{identifier}.html",
                                  headers={"Authorization": f"Bearer {county.tokens['market']}"}) as resp:
        assert resp.status == 200 and resp.content_type == "text/html"
        html = await resp.text()
    assert "桓台县&lt;鲜&gt;食品有限公司" in html and "<鲜>" not in html and "<script" not in html
    assert identifier in html and "营业执照" in html and "桓台县市场监督管理局" in html
    assert qr_modules(html) == expected_modules(identifier)
    async with province.session.get(f"{province.url}/api/v1/licences/{expired['identifier']}.html",
                                    headers={"Authorization": f"Bearer {province.tokens['gov']}"}) as resp:
        assert resp.status == 200
        html = await resp.text()
    assert "已过期" in html and "李四" not in html and PERSON not in html

    # A change (变更): a new version with the same serial; the old one is superseded, everywhere.
    status, second = await county.call("POST", f"/api/v1/licences/{identifier}/versions", "market", json_body={
        "kind": "change", "reason": "住所变更", "face": {**licence["face"], "住所": "山东省淄博市桓台县果里镇"}})
    assert status == 201, second
    new_ident = parse(second["identifier"])
    assert (new_ident.serial, new_ident.version) == (ident.serial, "002") and new_ident.check_ok
    assert second["supersedes"] == identifier
    result = await verify(province, "gov", licence)
    assert (result["valid"], result["status"], failed(result)) == (False, "superseded", ["status"])
    assert result["superseded_by"] == second["identifier"]
    assert (await verify(province, "gov", second))["valid"] is True
    status, body = await county.call("POST", f"/api/v1/licences/{identifier}/versions", "market",
                                     json_body={"kind": "annotation", "reason": "年报", "annotation": "已年报"})
    assert (status, error_code(body)) == (409, "CONFLICT")

    # Revoked by the issuer, with a reason: verifiers see it at once, the index everywhere within seconds.
    await wait_for(lambda: found(other, "hr", COMPANY, second["identifier"]), 15, what="the new version")
    status, res = await other.call("POST", f"/api/v1/licences/{second['identifier']}/revoke", "hr",
                                   json_body={"reason": "x"})
    assert (status, error_code(res)) == (403, "FORBIDDEN")
    status, res = await county.call("POST", f"/api/v1/licences/{second['identifier']}/revoke", "civil",
                                    json_body={"reason": "x"})
    assert (status, error_code(res)) == (403, "FORBIDDEN")
    status, res = await county.call("POST", f"/api/v1/licences/{second['identifier']}/revoke", "market",
                                    json_body={"reason": "依法吊销"})
    assert status == 200 and res["status"] == "revoked", res
    result = await verify(other, "hr", second)
    assert (result["valid"], result["status"], failed(result)) == (False, "revoked", ["status"])
    assert result["revoked_reason"] == "依法吊销"
    for node, token in ((other, "hr"), (province, "gov")):
        await wait_for(lambda node=node, token=token: found(node, token, COMPANY, second["identifier"],
                                                            status="revoked"), 15,
                       what=f"the revocation at {node.config.node.id}")
    status, res = await county.call("POST", f"/api/v1/licences/{second['identifier']}/revoke", "market",
                                    json_body={"reason": "again"})
    assert (status, error_code(res)) == (409, "CONFLICT")
    # Superseded versions are left out of a search unless asked for.
    assert await found(province, "gov", COMPANY, identifier) is None
    status, page = await province.call("GET", f"/api/v1/licences?holder={COMPANY}&all=true", "gov")
    assert {s["identifier"]: s["status"] for s in page["licences"]} == {identifier: "superseded",
                                                                        second["identifier"]: "revoked"}


def qr_modules(html: str) -> set[tuple[int, int]]:
    svg = html[html.index("<svg"):html.index("</svg>")]
    return {(int(x), int(y)) for x, y in re.findall(r"M(\d+),(\d+)H", svg)}


def expected_modules(text: str) -> set[tuple[int, int]]:
    """The dark modules of the QR code of `text`, as the qrcode package computes them (2-module border)."""
    import qrcode

    qr = qrcode.QRCode(border=2, error_correction=qrcode.constants.ERROR_CORRECT_M)
    qr.add_data(text)
    qr.make(fit=True)
    return {(x, y) for y, row in enumerate(qr.get_matrix()) for x, dark in enumerate(row) if dark}


async def test_key_rotation_issuer_offline_and_refused_index_entries(tree):
    county, city, other, province = tree["370321"], tree["370300"], tree["370303"], tree["370000"]
    before = await issue(county, "market")
    doomed = await issue(county, "market", holder={"name": "李四", "code": PERSON}, licence_type=FOOD_LICENCE)
    await wait_for(lambda: found(province, "gov", COMPANY, before["identifier"]), 15, what="the index at the province")

    # A key rotation between issue and verify: the old licence still verifies, with the old key, once every
    # verifier knows the new certificate (the old key listed in old_verify_keys).
    rc, out = await run_cli_async(["keys", "rotate", "--dir", str(county.config.home)])
    assert rc == 0, out
    for node in (province, other):
        await wait_for(lambda node=node: "ed25519:2" in node.app[FEDERATION].trust.certificate("370321")["verify_keys"],
                       15, what=f"the new certificate at {node.config.node.id}")
    for node, token in ((province, "gov"), (other, "hr")):
        result = await verify(node, token, before)
        assert result["valid"] is True and result["signed_with"] == "ed25519:1", result
    after = await issue(county, "market", licence_type=FOOD_LICENCE)
    assert set(after["signatures"]["370321"]) == {"ed25519:2"}
    result = await verify(province, "gov", after)
    assert result["valid"] is True and result["signed_with"] == "ed25519:2", result
    # A licence signed with the old key after the rotation is refused: the old key verifies only what it
    # signed before it was retired.
    [backup] = county.config.home.glob("*.ed25519-1.old")  # the retired key, kept by `keys rotate`
    old_key = read_signing_key_file(backup)
    assert old_key.key_id == "ed25519:1"
    resigned = sign_json({k: v for k, v in before.items() if k != "signatures"}, "370321", old_key)
    assert resigned == before  # the same key: the same signature
    late = sign_json({**{k: v for k, v in before.items() if k != "signatures"}, "signed_at": now_ms()}, "370321",
                     old_key)
    result = await verify(province, "gov", late)
    assert (result["status"], failed(result)) == ("invalid", ["signature"]), result

    status, res = await county.call("POST", f"/api/v1/licences/{doomed['identifier']}/revoke", "market",
                                    json_body={"reason": "申请注销"})
    assert status == 200, res
    await wait_for(lambda: found(other, "hr", PERSON, doomed["identifier"], status="revoked"), 15,
                   what="the revocation at the other county")

    # An index entry altered at its origin (not re-signed) is refused by the city and logged there.
    rows = await raw_sql(county.config, "SELECT entry FROM licence_index WHERE identifier = :i",
                         {"i": before["identifier"]})
    tampered = json.loads(rows[0][0])
    tampered.update(status="revoked", seq=tampered["seq"] + 100)
    await write_at_next_change(county.config, "licence_change",
                               "UPDATE licence_index SET entry = :e, change_id = {next_change} WHERE identifier = :i",
                               {"e": json.dumps(tampered, ensure_ascii=False), "i": before["identifier"]})

    async def refused() -> list:
        return await raw_sql(city.config, "SELECT identifier, node, received_from, reason FROM licence_refusals")

    [row] = await wait_for(refused, 15, what="the refusal at the city")
    assert row[:3] == (before["identifier"], "370321", "370321") and "signature" in row[3]
    held = await raw_sql(city.config, "SELECT status FROM licence_index WHERE identifier = :i",
                         {"i": before["identifier"]})
    assert held == [("valid",)]

    # The issuer offline: verification goes on from the replicated index, and says so.
    stopped = tree.pop("370321")
    await stopped.stop()
    result = await verify(other, "hr", before)
    assert (result["valid"], result["status"], result["source"], result["issuer_reachable"]) == (
        True, "valid", "replicated index", False), result
    assert result["checks"]["signature"] == "ok" and result["status_as_of"]
    result = await verify(province, "gov", doomed)
    assert (result["valid"], result["status"], result["source"], result["issuer_reachable"]) == (
        False, "revoked", "replicated index", False), result
    # Fetching needs the issuer: the hop that failed is named.
    status, body = await other.call("GET", f"/api/v1/licences/{before['identifier']}", "hr")
    assert (status, error_code(body)) == (502, "PEER_UNREACHABLE") and body["error"]["details"]["hop"] == "370321"
    # Searching does not.
    assert (await found(other, "hr", COMPANY, after["identifier"]))["status"] == "valid"


async def test_bad_input_is_refused_clearly(node):
    """One county node (the `node` fixture: SQLite and PostgreSQL)."""
    good = issue_body()
    cases = [
        ({**good, "holder": {"name": "x", "code": COMPANY[:-1] + "0"}}, "holder"),
        ({**good, "holder": {"name": "x", "code": PERSON, "code_type": "001"}}, "holder"),
        ({**good, "licence_type": {"code": "123", "name": "x"}}, "licence_type.code"),
        ({**good, "valid_from": "2030-01-01", "valid_until": "2029-01-01"}, "(body)"),
        ({**good, "issued_on": "2026-02-30"}, "issued_on"),
        ({**good, "face": {"": "x"}}, "face"),
        ({**good, "extra": 1}, "extra"),
    ]
    for body, field in cases:
        status, res = await node.call("POST", "/api/v1/licences", "police", json_body=body)
        assert (status, error_code(res)) == (400, "INVALID_INPUT"), (body, res)
        assert field in [d["field"] for d in res["error"]["details"]], (field, res)
    status, res = await node.call("POST", "/api/v1/licences", "operator", json_body=good)
    assert (status, error_code(res)) == (403, "FORBIDDEN")
    # A department whose code is not a 统一社会信用代码 cannot issue (the identifier names the issuer by it).
    odd = await add_dept_async(node.config.home, "DEPT0001", "测试部门")
    status, res = await node.call("POST", "/api/v1/licences", odd, json_body=good)
    assert (status, error_code(res)) == (400, "INVALID_INPUT"), res

    status, licence = await node.call("POST", "/api/v1/licences", "police", json_body=good)
    assert status == 201, licence
    identifier = licence["identifier"]
    assert licence["valid_from"] == licence["issued_on"] == today_cst()
    for path in (f"/api/v1/licences/{identifier[:-1]}", "/api/v1/licences/not-an-identifier.html"):
        status, res = await node.call("GET", path, "civil")
        assert (status, error_code(res)) == (400, "INVALID_INPUT"), (path, res)
    other_version = identifier.rsplit(".", 2)[0] + ".002." + identifier[-1]
    status, res = await node.call("GET", f"/api/v1/licences/{other_version}", "civil")
    assert (status, error_code(res)) == (404, "NOT_FOUND"), res
    status, res = await node.call("GET", "/api/v1/licences?holder=123", "civil")
    assert (status, error_code(res)) == (400, "INVALID_INPUT")
    status, res = await node.call("GET", "/api/v1/licences", "civil")
    assert (status, error_code(res)) == (400, "INVALID_INPUT")
    status, res = await node.call("POST", "/api/v1/licences/verify", "civil", json_body=[licence])
    assert (status, error_code(res)) == (400, "INVALID_INPUT")
    status, res = await node.call("POST", "/api/v1/licences/verify", "civil", data=b"{not json",
                                  headers={"Content-Type": "application/json"})
    assert (status, error_code(res)) == (400, "INVALID_INPUT")
    status, res = await node.call("POST", f"/api/v1/licences/{identifier}/revoke", "police", json_body={})
    assert (status, error_code(res)) == (400, "INVALID_INPUT")
    status, res = await node.call("POST", f"/api/v1/licences/{identifier}/revoke", "civil",
                                  json_body={"reason": "x"})
    assert (status, error_code(res)) == (403, "FORBIDDEN")
    status, res = await node.call("POST", f"/api/v1/licences/{identifier}/versions", "police",
                                  json_body={"kind": "change", "reason": "无变更"})
    assert (status, error_code(res)) == (400, "INVALID_INPUT")

    # Nothing half-written: one licence, one index entry, the issuer's licence resource in the catalog.
    assert await raw_sql(node.config, "SELECT count(*) FROM licences") == [(1,)]
    assert await raw_sql(node.config, "SELECT count(*) FROM licence_index") == [(1,)]
    [(resource,)] = await raw_sql(node.config, "SELECT resource FROM licence_issuers")
    status, entry = await node.call("GET", f"/api/v1/catalog/{resource}", "civil")
    assert status == 200 and entry["share"]["type"] == "conditional" and entry["provider"]["dept"] == POLICE
    # An annotation (加注) makes version 002 on the same node; the search finds the current version.
    status, second = await node.call("POST", f"/api/v1/licences/{identifier}/versions", "police",
                                     json_body={"kind": "annotation", "reason": "年度报告", "annotation": "2026年度已公示"})
    assert status == 201, second
    assert second["annotations"] == [{"on": today_cst(), "text": "2026年度已公示"}]
    assert second["change"] == {"kind": "annotation", "reason": "年度报告", "on": today_cst()}
    status, page = await node.call("GET", f"/api/v1/licences?holder={COMPANY}", "civil")
    assert [s["identifier"] for s in page["licences"]] == [second["identifier"]]
