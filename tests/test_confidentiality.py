"""Envelope bodies only their destination can read (SPEC §15, issue 18): relays carry ciphertext, a body
altered or sealed for another node is refused with UNDECRYPTABLE, and a rotated key still opens what was
sealed for it."""

from __future__ import annotations

import copy
import json

import pytest

from federation.envelope import make_envelope, sign_envelope
from federation.signing import decode_b64, encode_b64, read_signing_key_file
from node.federation.http import FEDERATION
from node.ids import make_gb11643, now_ms
from support import (
    fed_call, open_body, raw_sql, samples, seal_body, signing_key_of, start_federation, stop_all, wait_for,
)

pytestmark = pytest.mark.asyncio


@pytest.fixture
async def tree(tmp_path):
    nodes = await start_federation(tmp_path)
    try:
        yield nodes
    finally:
        await stop_all(nodes)


def _echo(received: list):
    async def handler(env: dict) -> dict:
        received.append(env)
        return {"echo": env["body"]}
    return handler


async def _post(tree, target: str, hop: str, env: dict) -> tuple[int, dict]:
    key = signing_key_of(tree[hop].config.home)
    status, body, _ = await fed_call(tree[target], "POST", "/federation/v1/messages", hop, key, env)
    return status, body


async def test_a_relay_forwards_a_body_it_cannot_read(tree):
    received: list = []
    tree["370000"].app[FEDERATION].handlers["licence.verify"] = _echo(received)
    secret = {"identifier": "张三 11010519491231002X 桓台县索镇"}
    reply = await tree["370321"].app[FEDERATION].call("licence.verify", "370000", secret)
    assert reply["echo"] == secret and reply["via"] == ["370300", "370000"]
    [env] = received
    sealed = env["unsigned"]["sealed_body"]
    assert set(sealed) == {"enc", "to", "to_key", "from_key", "nonce", "ct"} and sealed["to"] == "370000"
    # The city's audit record of the relay names the message, its ends, size and outcome, not the body.
    rows = await wait_for(lambda: raw_sql(tree["370300"].config, "SELECT action, resource, details FROM audit_log "
                                          "WHERE message_id = :m", {"m": env["id"]}), what="the relay's record")
    [(action, resource, details)] = rows
    details = json.loads(details)
    assert action == "federation.relay" and resource is None and "op" not in details
    assert details["size"] > 0 and details["origin"] == "370321" and details["destination"] == "370000"
    assert "张三" not in json.dumps(details, ensure_ascii=False)


async def test_metrics_show_each_nodes_part_of_a_routed_call(tree):
    """Where a slow routed call spent its time: the county's round trip to the city holds the city's relay,
    which holds its round trip to the province, which holds the province's delivery; each node's /metrics
    counts its own part once a call."""
    tree["370000"].app[FEDERATION].handlers["licence.verify"] = _echo([])

    async def figures() -> dict[str, dict]:
        out = {}
        for code in ("370321", "370300", "370000"):
            status, text = await tree[code].call("GET", "/metrics")
            assert status == 200
            out[code] = samples(text)
        return out

    def value(m: dict, name: str, **labels: str) -> float:
        return m.get((name, tuple(sorted(labels.items()))), 0.0)

    before = await figures()
    for i in range(3):
        reply = await tree["370321"].app[FEDERATION].call("licence.verify", "370000", {"n": i})
        assert reply["echo"] == {"n": i}
    after = await figures()

    def grew(code: str, name: str, **labels: str) -> float:
        return value(after[code], name, **labels) - value(before[code], name, **labels)

    msg, rtt = "govnode_federation_message_seconds", "govnode_peer_call_seconds"
    assert grew("370321", rtt + "_count", peer="370300", endpoint="messages") == 3
    assert grew("370300", msg + "_count", role="relay") == 3 and grew("370300", msg + "_count", role="deliver") == 0
    assert grew("370300", rtt + "_count", peer="370000", endpoint="messages") == 3
    assert grew("370000", msg + "_count", role="deliver") == 3 and grew("370000", msg + "_count", role="relay") == 0
    assert grew("370000", rtt + "_count", peer="370300", endpoint="messages") == 0  # it answered, it did not call
    # Each part holds the next one: the figures nest as the calls did.
    county_rtt = grew("370321", rtt + "_sum", peer="370300", endpoint="messages")
    relay = grew("370300", msg + "_sum", role="relay")
    city_rtt = grew("370300", rtt + "_sum", peer="370000", endpoint="messages")
    deliver = grew("370000", msg + "_sum", role="deliver")
    assert county_rtt > relay > city_rtt > deliver > 0, (county_rtt, relay, city_rtt, deliver)

    # An asynchronous message: the city queues it (its own role) and each outbox sends it on (its own label).
    received: list = []
    tree["370000"].app[FEDERATION].handlers["application.submit"] = _echo(received)
    before = after
    await tree["370321"].app[FEDERATION].send_async("application.submit", "370000", {"n": 9})

    async def sent_on() -> bool:
        # Both outboxes count a send once its answer is read; the county's may be read after the city's
        # own send is done (the nodes share this test's event loop), so wait for both.
        nonlocal after
        after = await figures()
        return (grew("370300", rtt + "_count", peer="370000", endpoint="outbox") >= 1
                and grew("370321", rtt + "_count", peer="370300", endpoint="outbox") >= 1)
    await wait_for(sent_on, 20, what="the message sent on by both outboxes")
    assert grew("370300", rtt + "_count", peer="370000", endpoint="outbox") == 1
    assert len(received) == 1
    assert grew("370321", rtt + "_count", peer="370300", endpoint="outbox") == 1
    assert grew("370300", msg + "_count", role="queue") == 1 and grew("370300", msg + "_count", role="relay") == 0
    assert grew("370000", msg + "_count", role="deliver") == 1
    assert grew("370300", rtt + "_count", peer="370000", endpoint="messages") == 0


async def test_an_altered_or_misaddressed_body_is_undecryptable(tree):
    keys = {c: signing_key_of(tree[c].config.home) for c in ("370000", "370300", "370321", "370303")}
    received: list = []
    tree["370300"].app[FEDERATION].handlers["licence.verify"] = _echo(received)

    def envelope(body: dict) -> dict:
        return sign_envelope(make_envelope("licence.verify", "370321", "370300", body), "370321", keys["370321"])

    good = seal_body({"identifier": "A"}, "370321", keys["370321"], "370300", keys["370300"])
    status, answer = await _post(tree, "370300", "370321", envelope(good))
    assert status == 200 and answer["kind"] == "reply"
    assert open_body(answer, keys["370321"], keys["370300"])["echo"] == {"identifier": "A"}
    # The origin signs a ciphertext with one bit flipped: the signature holds, the box does not open.
    flipped = copy.deepcopy(good)
    ct = bytearray(decode_b64(flipped["ct"]))
    ct[-1] ^= 1
    flipped["ct"] = encode_b64(bytes(ct))
    # A body sealed for the other county, in an envelope addressed to the city.
    elsewhere = seal_body({"identifier": "B"}, "370321", keys["370321"], "370303", keys["370303"])
    elsewhere_as_city = {**elsewhere, "to": "370300"}  # relabelled: the key agreement still fails
    for body in (flipped, elsewhere, elsewhere_as_city, {"identifier": "plain"}):
        status, answer = await _post(tree, "370300", "370321", envelope(body))
        assert status == 200 and answer["kind"] == "error", answer
        error = open_body(answer, keys["370321"], keys["370300"])["error"]
        assert error["code"] == "UNDECRYPTABLE", error
    assert len(received) == 1


async def test_a_message_queued_across_the_destinations_key_rotation_is_delivered(tree, monkeypatch):
    """The county queues two applications for the province; the province rotates its key before they leave;
    the province still opens them with the rotated key it keeps for decryption, read from its backup file
    once."""
    from node.federation import membership

    county, province = tree["370321"], tree["370000"]
    received: list = []
    province.app[FEDERATION].handlers["application.submit"] = _echo(received)
    reads: list = []

    def counted(path):  # noqa: ANN001
        reads.append(path)
        return read_signing_key_file(path)

    # Held back while the province rotates.
    county_fed = county.app[FEDERATION]
    envs = [county_fed._envelope("application.submit", "370000", {"tag": f"before rotation {i}"}, ttl_ms=3_600_000)
            for i in (1, 2)]
    for env in envs:
        await raw_sql(county.config, "INSERT INTO outbox (peer, kind, payload, created_at, attempts, next_attempt_at) "
                                     "VALUES ('370300', 'message', :p, :t, 0, :later)",
                      {"p": json.dumps(env, ensure_ascii=False), "t": now_ms(), "later": now_ms() + 3_600_000})
    old_key_id = envs[0]["body"]["to_key"]
    cert = await province.app[FEDERATION].rotate_key()
    assert old_key_id not in cert["verify_keys"]
    monkeypatch.setattr(membership, "read_signing_key_file", counted)  # (the root's rotation read its anchor key)
    await raw_sql(county.config, "UPDATE outbox SET next_attempt_at = :t WHERE kind = 'message'", {"t": now_ms()})
    county_fed.outbox.wake("370300")
    await wait_for(lambda: len(received) == 2, timeout=20, what="both messages at the province")
    assert sorted(r["body"]["tag"] for r in received) == ["before rotation 1", "before rotation 2"]
    assert [p.name for p in reads] == [f"signing.key.{old_key_id.replace(':', '-')}.old"]
    # What the county seals from now on is for the new key.
    await wait_for(lambda: set(county_fed.trust.certificate("370000")["verify_keys"]) == set(cert["verify_keys"]),
                   what="the province's new certificate at the county")
    fresh = county_fed._envelope("application.submit", "370000", {"tag": "after"}, ttl_ms=60_000)
    assert fresh["body"]["to_key"] in cert["verify_keys"]


NAME, ADDRESS = "张三丰", "淄博市桓台县索镇中心街8号"


def _leaks(blob: bytes, secrets: list[str]) -> list[str]:
    """Which of `secrets` appear in `blob`, as UTF-8 or as JSON \\u escapes."""
    found = []
    for s in secrets:
        escaped = json.dumps(s).strip('"').encode()
        if s.encode() in blob or escaped in blob or escaped.lower() in blob:
            found.append(s)
    return found


async def test_what_crosses_the_city_holds_no_personal_data(tmp_path, caplog):
    """A routed query, an application and a feedback report between a county and the province pass the
    city through a proxy that records every byte: no citizen's name, ID number or address is in it, nor in
    the city's database or in any log line; the province still answers and the county still reads it."""
    from support import CIVIL, POLICE, add_child, add_dept_async, free_port
    from tcpproxy import TcpProxy

    caplog.set_level("INFO")  # the level nodes log at (DEBUG lets aiosqlite print statements and values)
    city_port = free_port()
    nodes = await start_federation(tmp_path, tree=[("370000", "山东省", None)])
    try:
        async with TcpProxy(city_port) as wire:
            # The city is reached at the proxy's address: its certificate names it as its endpoint.
            await add_child(nodes, tmp_path, "370300", "淄博市", "370000", port=city_port,
                            extra={"endpoint": f"http://127.0.0.1:{wire.port}"})
            await add_child(nodes, tmp_path, "370321", "桓台县", "370300")
            province, city, county = nodes["370000"], nodes["370300"], nodes["370321"]
            province.tokens["police"] = await add_dept_async(province.config.home, POLICE, "山东省公安厅")
            county.tokens["civil"] = await add_dept_async(county.config.home, CIVIL, "桓台县民政局")
            id_number = make_gb11643("370321", "19800101", 7)
            status, entry = await province.call("POST", "/api/v1/catalog", "police", json_body={
                "classification": "101001", "name": "山东省户籍人口", "category": "base", "format": "database",
                "items": [{"name": "公民身份号码", "field": "id_number", "type": "C", "length": 18, "key": True},
                          {"name": "姓名", "field": "name", "type": "C", "length": 50},
                          {"name": "住址", "field": "address", "type": "C", "length": 200}],
                "share": {"type": "unconditional"}, "update_cycle": "daily"})
            assert status == 201, entry
            code = entry["code"]
            status, res = await province.call("POST", f"/api/v1/resources/{code}/records", "police",
                                              json_body=[{"id_number": id_number, "name": NAME, "address": ADDRESS}])
            assert status == 200, res

            async def county_sees_entry() -> bool:
                return (await county.call("GET", f"/api/v1/catalog/{code}", "civil"))[0] == 200

            await wait_for(county_sees_entry, what="the entry at the county")
            status, answer = await county.call("POST", f"/api/v1/resources/{code}/query", "civil",
                                               json_body={"key": id_number})
            assert status == 200, answer
            assert answer["via"] == ["370300", "370000"]
            assert json.dumps(answer, ensure_ascii=False).count(NAME) == 1 and ADDRESS in json.dumps(answer, ensure_ascii=False)
            status, application = await county.call("POST", "/api/v1/applications", "civil", json_body={
                "resource": code, "ops": ["query"], "fields": ["name", "address"],
                "purpose": f"核实{NAME}（{id_number}）的住址{ADDRESS}", "basis": "社会救助暂行办法"})
            assert status in (201, 202), application
            status, report = await county.call("POST", "/api/v1/feedback", "civil", json_body={
                "resource": code, "key": id_number, "fields": ["address"],
                "description": f"{NAME}已迁出{ADDRESS}", "expected": {"address": "淄博市张店区"}})
            assert status in (201, 202), report

            async def delivered() -> bool:  # both arrived at the province: they crossed the city
                s1, a = await county.call("GET", f"/api/v1/applications/{application['id']}", "civil")
                s2, f = await county.call("GET", f"/api/v1/feedback/{report['id']}", "civil")
                return s1 == 200 and s2 == 200 and a["status"] != "pending" and f.get("status") != "pending"

            await wait_for(delivered, what="the application and the report at the province")
            assert len(wire.recorded) > 5000  # the calls did cross the wire
            secrets = [NAME, id_number, ADDRESS]
            assert _leaks(bytes(wire.recorded), secrets) == []
            city_db = b"".join(p.read_bytes() for p in city.config.home.glob("govnode.db*"))
            assert _leaks(city_db, secrets) == []
            for record in caplog.records:
                assert _leaks(record.getMessage().encode(), secrets) == [], record.getMessage()
    finally:
        await stop_all(nodes)
