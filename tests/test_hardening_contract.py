"""The contract's small print: the OpenAPI document says what the node does (SPEC §9, §10), names cannot
forge output, node-filled fields may travel back, and an empty cursor means the start of a feed."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest

from node.fields import RESOURCE_CODE_PATTERN
from support import (CIVIL, POLICE, TREE, error_code, fed_call, raw_sql, run_cli, signing_key_of, start_tree,
                     stop_all)
from test_foundation_catalog import content_body, entry_body

CATALOG = "/api/v1/catalog"


async def registered(node, **over: Any) -> dict[str, Any]:
    status, entry = await node.call("POST", CATALOG, "police", json_body=entry_body(**over))
    assert status == 201, entry
    return entry


async def document(node) -> dict[str, Any]:
    status, spec = await node.call("GET", "/api/v1/openapi.json")
    assert status == 200
    return spec


def body_schema(spec: dict[str, Any], path: str, method: str = "post") -> jsonschema.Validator:
    """A validator of an operation's JSON body as the document describes it ($refs resolved in the document)."""
    schema = spec["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]
    return jsonschema.Draft202012Validator({**schema, "components": spec["components"]})


# 6. The OpenAPI document and the node agree ---------------------------------------------------------------

async def test_an_encoded_code_reaches_every_route_that_takes_a_code(node):
    entry = await registered(node, share={"type": "unconditional", "methods": ["api"]})
    code = entry["code"]
    encoded = code.replace("/", "%2F")
    # The same answer as the plain form.
    status, got = await node.call("GET", f"{CATALOG}/{encoded}", "police")
    assert (status, got) == (200, entry)
    status, pushed = await node.call("POST", f"/api/v1/resources/{encoded}/records", "police",
                                     json_body=[{"id_number": "11010519491231002X", "name": "张三"}])
    assert status == 200 and pushed["resource"] == code and pushed["upserted"] == 1, pushed
    status, answer = await node.call("POST", f"/api/v1/resources/{encoded}/verify", "civil",
                                     json_body={"key": "11010519491231002X", "fields": {"name": "张三"}})
    assert (status, answer) == (200, {"match": True, "fields": {"name": True}}), answer
    # Every route whose path holds a resource code answers the encoded form, never "no such path".
    routes = [(r.method, r.resource.canonical) for r in node.app.router.routes()
              if r.resource is not None and "{code}" in r.resource.canonical and r.method != "HEAD"]
    assert len(routes) >= 12, routes
    for method, path in sorted(routes, key=lambda r: r[0] == "DELETE"):  # the withdrawal last
        url = path.replace("{code}", encoded).replace("{source}", "01JD3W6Z9K8Q4V7N2M5X1R0T6Y")
        status, answer = await node.call(method, url, "police", json_body={} if method in ("POST", "PUT") else None)
        assert not (status == 404 and "no such path" in str(answer)), (method, url, answer)
        assert status != 405, (method, url, answer)
    # The document tells a client that both forms are accepted.
    spec = await document(node)
    (param,) = spec["paths"]["/api/v1/catalog/{code}"]["get"]["parameters"][:1]
    assert param["name"] == "code" and "%2F" in param["description"]
    assert param["schema"]["pattern"] == "^[0-9]{6,9}/[0-9]{7,18}$"


async def test_request_schemas_are_as_strict_as_the_validators(node):
    spec = await document(node)
    good = {
        "/api/v1/applications": {"resource": "101001/370000000001", "ops": ["query"], "fields": ["name"],
                                 "purpose": "核验", "basis": "《条例》"},
        "/api/v1/feedback": {"resource": "101001/370000000001", "fields": ["name"], "description": "姓名有误"},
        "/api/v1/subscriptions": {"resource": "101001/370000000001", "mode": "replica"},
    }
    bad = {
        "/api/v1/applications": [({"resource": "101001-370000000001"}, "resource"), ({"purpose": "   "}, "purpose"),
                                 ({"fields": ["Name"]}, "fields.0")],
        "/api/v1/feedback": [({"resource": "1/2"}, "resource"), ({"description": " "}, "description"),
                             ({"fields": ["1x"]}, "fields.0")],
        "/api/v1/subscriptions": [({"resource": "abc"}, "resource"),
                                  ({"mode": "webhook", "url": "ftp://x"}, "url")],
    }
    for path, body in good.items():
        assert body_schema(spec, path).is_valid(body), path
        assert spec["paths"][path]["post"]["requestBody"]["required"] is True
        for change, field in bad[path]:
            wrong = {**body, **change}
            # The document refuses it, and so does the node, naming the same field.
            assert not body_schema(spec, path).is_valid(wrong), (path, wrong)
            status, answer = await node.call("POST", path, "police", json_body=wrong)
            assert status == 400 and error_code(answer) == "INVALID_INPUT", (path, answer)
            assert field in [d["field"] for d in answer["error"]["details"]], (path, answer)
    assert RESOURCE_CODE_PATTERN == "^([0-9]{6}(?:[0-9]{3})?)/(([0-9]{6})[0-9]{1,12})$"


async def test_a_rejection_needs_its_reason_in_the_document_too(node):
    spec = await document(node)
    review = body_schema(spec, "/api/v1/applications/{id}/review")
    decision = body_schema(spec, "/api/v1/applications/{id}/decision")
    reject = body_schema(spec, "/api/v1/feedback/{id}/reject")
    assert review.is_valid({"decision": "accept"}) and review.is_valid({"decision": "reject", "reason": "依据不足"})
    assert not review.is_valid({"decision": "reject"}) and not review.is_valid({"decision": "reject", "reason": " "})
    assert decision.is_valid({"decision": "approve", "fields": ["name"]})
    assert not decision.is_valid({"decision": "reject"}) and not decision.is_valid({"decision": "approve", "ops": []})
    assert not reject.is_valid({}) and reject.is_valid({"reason": "与出生医学证明一致"})
    assert spec["paths"]["/api/v1/feedback/{id}/reject"]["post"]["requestBody"]["required"] is True
    assert spec["paths"]["/api/v1/feedback/{id}/confirm"]["post"]["requestBody"]["required"] is False
    some_id = "01JD3W6Z9K8Q4V7N2M5X1R0T6Y"
    for path, token, body in [(f"/api/v1/applications/{some_id}/review", "operator", {"decision": "reject"}),
                              (f"/api/v1/applications/{some_id}/decision", "police", {"decision": "reject"}),
                              (f"/api/v1/feedback/{some_id}/reject", "police", {})]:
        status, answer = await node.call("POST", path, token, json_body=body)
        assert status == 400, (path, answer)  # refused before the application or feedback is looked up
        assert any(d["field"].endswith("reason") for d in answer["error"]["details"]), answer


async def test_empty_time_values_are_left_out_and_bad_ones_leak_nothing(node):
    for path in ("/api/v1/stats?since=&until=", "/api/v1/stats?until=", "/api/v1/audit?since=&until=",
                 "/api/v1/audit?until="):
        status, answer = await node.call("GET", path, "auditor")
        assert status == 200, (path, answer)
    for path in ("/api/v1/stats?until=abc", "/api/v1/audit?until=abc", "/api/v1/audit?since=2026-13-40",
                 "/api/v1/stats?since=2026-02-30T10:00"):
        status, answer = await node.call("GET", path, "auditor")
        assert status == 400 and error_code(answer) == "INVALID_INPUT", (path, answer)
        assert answer["error"]["details"][0]["field"] in ("since", "until")
        assert "isoformat" not in str(answer) and "Traceback" not in str(answer), answer
    spec = await document(node)
    params = {p["name"]: p for p in spec["paths"]["/api/v1/stats"]["get"]["parameters"]}
    assert params["until"]["schema"]["type"] == "string" and "pattern" in params["until"]["schema"]


async def test_verify_is_only_a_post(node):
    for method in ("OPTIONS", "GET"):
        async with node.session.request(method, node.url + "/api/v1/licences/verify",
                                        headers={"Authorization": f"Bearer {node.tokens['police']}"}) as resp:
            assert resp.status == 405, method
            assert resp.headers["Allow"] == "POST", resp.headers["Allow"]
            assert (await resp.json())["error"]["code"] == "METHOD_NOT_ALLOWED"


async def test_every_operation_lists_its_statuses_and_content_types(node):
    spec = await document(node)
    error_ref = {"$ref": "#/components/schemas/Error"}
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            responses = op["responses"]
            assert "default" not in responses, (path, method)
            successes = [s for s in responses if s.startswith("2")]
            assert len(successes) == 1, (path, method, successes)
            for status, resp in responses.items():
                if status.startswith(("4", "5")) and not (path == "/healthz" and status == "503"):
                    assert resp["content"]["application/json"]["schema"] == error_ref, (path, method, status)
            if path.startswith("/api/") and path != "/api/v1/openapi.json":
                assert {"401", "503"} <= set(responses), (path, method)
            if "roles" in op.get("description", "").lower():
                assert "403" in responses, (path, method)
    ops = spec["paths"]
    assert set(ops["/api/v1/catalog"]["post"]["responses"]) >= {"201", "400", "401", "403", "409", "413"}
    assert "security" not in ops["/api/v1/openapi.json"]["get"]
    assert set(ops["/api/v1/resources/{code}/records"]["post"]["requestBody"]["content"]) == {
        "application/json", "application/x-ndjson"}
    assert set(ops["/api/v1/resources/{code}/files"]["post"]["requestBody"]["content"]) == {
        "text/csv", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", "multipart/form-data"}
    assert "415" in ops["/api/v1/resources/{code}/files"]["post"]["responses"]
    assert "text/plain" in ops["/metrics"]["get"]["responses"]["200"]["content"]
    assert "text/html" in ops["/api/v1/licences/{identifier}.html"]["get"]["responses"]["200"]["content"]
    assert set(ops["/healthz"]["get"]["responses"]) == {"200", "503"}
    assert spec["components"]["schemas"]["Error"]["properties"]["error"]["required"] == ["code", "message",
                                                                                          "request_id"]
    # The error that an unsupported upload gets is one the document lists, in the shape it describes.
    code = (await registered(node))["code"]
    status, answer = await node.call("POST", f"/api/v1/resources/{code}/files", "police", data=b"x",
                                     headers={"Content-Type": "image/png"})
    assert status == 415
    jsonschema.Draft202012Validator(spec["components"]["schemas"]["Error"]).validate(answer)


# 9. The contract's small print ----------------------------------------------------------------------------

async def test_a_registration_may_carry_what_the_node_fills_in_when_it_agrees(node):
    agreeing = entry_body(kind="resource", type="catalog_entry",
                          provider={"dept": POLICE, "name": "桓台县公安局"})
    status, entry = await node.call("POST", CATALOG, "police", json_body=agreeing)
    assert status == 201 and entry["provider"] == {"dept": POLICE, "name": "桓台县公安局"}, entry
    for change, field in [({"kind": "service"}, "kind"), ({"provider": {"dept": CIVIL, "name": "桓台县公安局"}},
                                                          "provider"),
                          ({"provider": {"dept": POLICE, "name": "别的名字"}}, "provider")]:
        status, answer = await node.call("POST", CATALOG, "police", json_body=entry_body(**change))
        assert status == 400 and error_code(answer) == "INVALID_INPUT", answer
        assert [d["field"] for d in answer["error"]["details"]] == [field], answer
    # Only the one good registration was stored.
    assert (await raw_sql(node.config, "SELECT count(*) FROM catalog_entries"))[0][0] == 1


async def test_what_get_returns_can_be_changed_and_sent_back(node):
    entry = await registered(node)
    url = f"{CATALOG}/{entry['code']}"
    status, got = await node.call("GET", url, "police")
    changed = {**got, "name": "桓台县户籍人口基本信息(2026)"}
    status, updated = await node.call("PUT", url, "police", json_body=changed)
    assert status == 200, updated
    assert updated["name"] == changed["name"] and updated["version"] == got["version"] + 1
    assert updated["seq"] > got["seq"]
    # Sending the old copy back again is refused: its seq, version, updated_at and signatures are stale.
    status, answer = await node.call("PUT", url, "police", json_body=changed)
    assert status == 400 and error_code(answer) == "INVALID_INPUT", answer
    assert {d["field"] for d in answer["error"]["details"]} == {"seq", "version", "updated_at", "signatures"}
    for change, field in [({"code": "101001/370321999999"}, "code"), ({"node": "370300"}, "node"),
                          ({"deleted": True}, "deleted"), ({"kind": "service"}, "kind")]:
        status, answer = await node.call("PUT", url, "police", json_body={**updated, **change})
        assert status == 400, answer
        assert [d["field"] for d in answer["error"]["details"]] == [field], answer
    # The plain content alone still works, and the entry is as the last good change left it.
    status, last = await node.call("PUT", url, "police", json_body=content_body(name="又一次修改"))
    assert status == 200 and last["version"] == updated["version"] + 1


async def test_an_empty_cursor_means_from_the_start(node):
    code = (await registered(node))["code"]
    status, pushed = await node.call("POST", f"/api/v1/resources/{code}/records", "police",
                                     json_body=[{"id_number": "11010519491231002X", "name": "张三"}])
    assert status == 200, pushed
    base = f"/api/v1/resources/{code}/changes"
    answers = [await node.call("GET", base + q, "police") for q in ("", "?since=", "?since=0", "?since=&limit=5")]
    assert all(status == 200 for status, _ in answers), answers
    assert answers[0][1] == answers[1][1] == answers[2][1] == answers[3][1]
    assert [c["key"] for c in answers[1][1]["changes"]] == ["11010519491231002X"]
    status, answer = await node.call("GET", base + "?since=-1", "police")
    assert status == 400 and error_code(answer) == "INVALID_INPUT"


async def test_an_empty_cursor_on_the_federation_feeds(tmp_path):
    nodes = await start_tree(tmp_path, tree=TREE[:2])
    try:
        province, city = nodes["370000"], nodes["370300"]
        key = signing_key_of(city.config.home)
        for feed in ("/federation/v1/registry", "/federation/v1/catalog/changes"):
            pages = []
            for query in ("", "?since=", "?since=0"):
                status, page, _ = await fed_call(province, "GET", feed + query, "370300", key)
                assert status == 200, (feed, query, page)
                pages.append(page)
            assert pages[0] == pages[1] == pages[2], feed
        status, page, _ = await fed_call(province, "GET", "/federation/v1/registry?since=", "370300", key)
        assert {c.get("node") for c in page["entries"]} >= {"370000", "370300"}
    finally:
        await stop_all(nodes)


# 7. Names that could forge output --------------------------------------------------------------------------

FORGING_NAMES = ["公安局\nX\tdept\tactive\t伪造", "公安局\r", "公安\t局", "<b>公安局</b>", "\x1b[31m公安局\x1b[0m",
                 "公安局\u202e", "公安\u200b局", "公安局\x00"]


async def test_department_names_that_could_forge_a_row_are_refused(tmp_path, backend):
    from support import init_home

    config = init_home(tmp_path / "n", "370321", "桓台县", backend=backend)
    home = str(config.home)
    try:
        for i, name in enumerate(FORGING_NAMES):
            rc, out, err = run_cli(["dept", "add", f"X{i}", "--dir", home, "--name", name])
            assert rc == 1 and out == "", (name, out)
            assert "control characters or angle brackets" in err and "\n" not in err.rstrip("\n"), err
        rc, out, err = run_cli(["dept", "add", "X9", "--dir", home, "--name", "桓台县 公安局"])  # spaces are fine
        assert rc == 0, err
        # A name stored before the check (or written straight to the database) is printed escaped, one line a row.
        await raw_sql(config, "UPDATE departments SET name = :n WHERE code = 'X9'", {"n": "桓台\nX8\tdept\tactive\t<i>"})
        rc, out, err = run_cli(["dept", "list", "--dir", home])
        assert rc == 0 and out.splitlines() == ["X9\tdept\tactive\t桓台\\nX8\\tdept\\tactive\\t<i>"], out
    finally:
        if config.database.schema_:
            from support import drop_pg_schema

            await drop_pg_schema(config.database.schema_)


def test_node_names_and_join_tokens_that_could_forge_output_are_refused(tmp_path):
    for i, name in enumerate(["桓台县\n", "<script>桓台县", "桓台\x1b[2J县"]):
        home = tmp_path / f"h{i}"
        rc, out, err = run_cli(["init", "--dir", str(home), "--node", "370321", "--name", name])
        assert rc == 2 and "control characters or angle brackets" in err, err
        assert not (home / "config.yaml").exists()
    home = tmp_path / "ok"
    assert run_cli(["init", "--dir", str(home), "--node", "370321", "--name", "桓台县", "--parent-url",
                    "http://127.0.0.1:9"])[0] == 0
    rc, out, err = run_cli(["join", "http://127.0.0.1:9", "gni_abc\n\x1b[31mjoined", "--dir", str(home)])
    assert rc == 2 and "control characters" in err and out == "", err


async def test_a_joining_node_with_a_forging_name_is_refused(tmp_path):
    from federation.certs import level_of, make_certificate
    from federation.signing import sign_json, verify_key_b64
    from support import init_home, run_cli_full_async

    nodes = await start_tree(tmp_path, tree=TREE[:1])
    try:
        province = nodes["370000"]
        rc, out, _ = await run_cli_full_async(["invite", "370300", "--dir", str(province.config.home)])
        token = out.strip().splitlines()[-1]
        child = init_home(tmp_path / "child", "370300", "淄博市", parent_url=province.url)
        key = signing_key_of(child.home)
        draft = sign_json(make_certificate("370300", "淄博市\n370303 张店区", level_of("370300"), "370000",
                                           child.endpoint, {key.key_id: verify_key_b64(key)}, {}, 0, 1, "370300"),
                          "370300", key)
        status, answer = await province.call("POST", "/federation/v1/join", json_body={"token": token,
                                                                                       "certificate": draft})
        assert status == 400 and error_code(answer) == "INVALID_INPUT", answer
        assert answer["error"]["details"][0]["field"] == "certificate.name"
    finally:
        await stop_all(nodes)


@pytest.mark.parametrize("text,shown", [("a\nb", "a\\nb"), ("\x1b[0m", "\\x1b[0m"), ("桓台 县", "桓台 县"),
                                        ("a\u202eb", "a\\u202eb")])
def test_printable_escapes_what_a_terminal_would_act_on(text, shown):
    from node.fields import printable

    assert printable(text) == shown
