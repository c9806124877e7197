"""Envelope bodies only their destination can read (SPEC §15, issue 18): relays carry ciphertext, a body
altered or sealed for another node is refused with UNDECRYPTABLE, and a rotated key still opens what was
sealed for it."""

from __future__ import annotations

import copy
import json

import pytest

from federation.envelope import make_envelope, sign_envelope
from federation.signing import decode_b64, encode_b64
from node.federation.http import FEDERATION
from node.ids import now_ms
from support import (
    fed_call, open_body, raw_sql, seal_body, signing_key_of, start_federation, stop_all, wait_for,
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


async def test_a_message_queued_across_the_destinations_key_rotation_is_delivered(tree):
    """The county queues an application for the province; the province rotates its key before the message
    leaves; the province still opens it with the rotated key it keeps for decryption."""
    county, province = tree["370321"], tree["370000"]
    received: list = []
    province.app[FEDERATION].handlers["application.submit"] = _echo(received)
    # Held back while the province rotates.
    county_fed = county.app[FEDERATION]
    env = county_fed._envelope("application.submit", "370000", {"tag": "before rotation"}, ttl_ms=3_600_000)
    await raw_sql(county.config, "INSERT INTO outbox (peer, kind, payload, created_at, attempts, next_attempt_at) "
                                 "VALUES ('370300', 'message', :p, :t, 0, :later)",
                  {"p": json.dumps(env, ensure_ascii=False), "t": now_ms(), "later": now_ms() + 3_600_000})
    old_key_id = env["body"]["to_key"]
    cert = await province.app[FEDERATION].rotate_key()
    assert old_key_id not in cert["verify_keys"]
    await raw_sql(county.config, "UPDATE outbox SET next_attempt_at = :t WHERE kind = 'message'", {"t": now_ms()})
    county_fed.outbox.wake("370300")
    await wait_for(lambda: received, timeout=20, what="the message at the province")
    assert received[0]["body"] == {"tag": "before rotation"}
    # What the county seals from now on is for the new key.
    await wait_for(lambda: set(county_fed.trust.certificate("370000")["verify_keys"]) == set(cert["verify_keys"]),
                   what="the province's new certificate at the county")
    fresh = county_fed._envelope("application.submit", "370000", {"tag": "after"}, ttl_ms=60_000)
    assert fresh["body"]["to_key"] in cert["verify_keys"]
