"""Request authentication (SPEC §4) on every federation endpoint, and envelope routing (SPEC §6).

One federation of real nodes on loopback serves the whole module: 山东省 with 淄博市 (桓台县, 张店区, and
淄川区, revoked at start) and 青岛市 (黄岛区). Requests are built with federation.auth.make_authorization and
the nodes' own signing keys, read from their homes.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import re
import time

import pytest
import pytest_asyncio
from signedjson.key import decode_verify_key_base64
from signedjson.sign import verify_signed_json as sj_verify

from federation.envelope import make_envelope, sign_envelope
from federation.signing import generate_signing_key, sign_json
from node.errors import ApiError
from node.federation import messages
from node.federation.http import FEDERATION
from node.ids import now_ms
from support import (
    TREE_TWO_CITIES, add_dept_async, error_code, fed_call, fed_headers, raw_sql, run_cli_full_async, send_raw,
    open_body, seal_body, signing_key_of, start_federation, start_node, stop_all, wait_for,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

TREE = TREE_TWO_CITIES + [("370302", "淄川区", "370300")]
ALL = [code for code, _, _ in TREE]
REVOKED = "370302"
LIVE = [c for c in ALL if c != REVOKED]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def fed(tmp_path_factory):
    nodes = await start_federation(tmp_path_factory.mktemp("fed"), tree=TREE)
    try:
        rc, out, err = await run_cli_full_async(["revoke", REVOKED, "--dir", str(nodes["370300"].config.home)])
        assert rc == 0, err
        for code in LIVE:
            f = nodes[code].app[FEDERATION]
            await wait_for(lambda f=f: set(ALL) <= f.trust.known_nodes() and f.trust.is_revoked(REVOKED),
                           timeout=30, what=f"the registry at {code}")
        nodes["keys"] = {code: signing_key_of(nodes[code].config.home) for code in ALL}
        yield nodes
    finally:
        nodes.pop("keys", None)
        await stop_all(nodes)


def envelope(origin: str, destination: str, keys: dict, kind: str = "licence.verify", body: dict | None = None,
             **kw) -> dict:
    """An envelope as `origin` sends it: its body sealed for `destination`, signed by `origin`."""
    sealed = seal_body(body or {}, origin, keys[origin], destination, keys[destination])
    return sign_envelope(make_envelope(kind, origin, destination, sealed, **kw), origin, keys[origin])


def endpoints(fed: dict, origin: str, destination: str) -> list[tuple[str, str, object]]:
    """Every authenticated federation endpoint, with a plausible body."""
    return [
        ("GET", "/federation/v1/registry?since=0", None),
        ("GET", "/federation/v1/catalog/changes?since=0&limit=5", None),
        ("GET", "/federation/v1/holder_key", None),
        ("POST", "/federation/v1/notify", {"feed": "catalog", "next": "0"}),
        ("POST", "/federation/v1/messages", envelope(origin, destination, fed["keys"])),
        ("POST", "/federation/v1/certificate", {"certificate": {}}),
        ("POST", "/federation/v1/admin/rotate", None),
        ("POST", "/federation/v1/admin/revoke", {"node": "370321"}),
    ]


async def expect_all(fed: dict, target: str, origin: str, key, status: int, code: str, **kw) -> None:  # noqa: ANN001
    for method, path, content in endpoints(fed, origin if origin in fed["keys"] else "370321", target):
        got, body, _ = await fed_call(fed[target], method, path, origin, key, content, **kw)
        assert (got, error_code(body)) == (status, code), (method, path, body)
        assert set(body["error"]) >= {"code", "message", "request_id"}


# Request authentication (SPEC §4) -------------------------------------------------------------------

async def test_a_good_request_is_accepted_on_every_endpoint(fed):
    county = fed["keys"]["370321"]
    answers = {}
    for method, path, content in endpoints(fed, "370321", "370300"):
        status, body, _ = await fed_call(fed["370300"], method, path, "370321", county, content)
        answers[path.split("?")[0]] = (status, error_code(body))
    assert answers == {
        "/federation/v1/registry": (200, None),
        "/federation/v1/catalog/changes": (200, None),
        "/federation/v1/holder_key": (200, None),  # the parent hands its child the holder-digest key
        "/federation/v1/notify": (200, None),
        "/federation/v1/messages": (200, None),  # the signed answer envelope (here: an error envelope)
        "/federation/v1/certificate": (400, "INVALID_INPUT"),  # authenticated; the body is refused
        "/federation/v1/admin/rotate": (403, "FORBIDDEN"),  # authenticated; only the node's own key acts
        "/federation/v1/admin/revoke": (403, "FORBIDDEN"),
    }


async def test_the_refusal_tests_cover_every_federation_endpoint(fed):
    """Every /federation/v1 route but the two open ones (node, join) is in `endpoints`."""
    covered = [(m, p.split("?")[0]) for m, p, _ in endpoints(fed, "370321", "370300")]
    checked = set()
    for route in fed["370300"].app.router.routes():
        canonical = route.resource.canonical if route.resource else ""
        if not canonical.startswith("/federation/v1/") or route.method == "HEAD":
            continue
        if canonical in ("/federation/v1/node", "/federation/v1/join"):
            continue
        pattern = re.compile(re.sub(r"\{[^}]+\}", "[^/]+", canonical) + "$")
        assert any(m == route.method and pattern.match(p) for m, p in covered), (route.method, canonical)
        checked.add(canonical)
    assert len(checked) >= 6, checked  # registry, catalog/changes, notify, messages, certificate, admin/…


async def test_forged_signature_is_refused(fed):
    impostor = generate_signing_key("1")  # claims to be 桓台县's key ed25519:1
    await expect_all(fed, "370300", "370321", impostor, 401, "SIGNATURE_INVALID")
    # The right key, but the request was changed after signing: the body, the query, the method.
    key = fed["keys"]["370321"]
    headers = fed_headers("POST", "/federation/v1/notify", "370321", "370300", key, {"feed": "catalog"})
    status, body = await send_raw(fed["370300"].url, "POST", "/federation/v1/notify", headers, {"feed": "registry"})
    assert (status, error_code(body)) == (401, "SIGNATURE_INVALID"), body
    headers = fed_headers("GET", "/federation/v1/registry?since=0", "370321", "370300", key)
    status, body = await send_raw(fed["370300"].url, "GET", "/federation/v1/registry?since=5", headers)
    assert (status, error_code(body)) == (401, "SIGNATURE_INVALID"), body
    # A key id the origin does not have.
    other = generate_signing_key("7")
    status, body, _ = await fed_call(fed["370300"], "GET", "/federation/v1/registry", "370321", other)
    assert (status, error_code(body)) == (401, "SIGNATURE_INVALID"), body


async def test_wrong_destination_is_refused(fed):
    # Signed for the province, sent to the city.
    await expect_all(fed, "370300", "370321", fed["keys"]["370321"], 401, "UNAUTHENTICATED", destination="370000")


async def test_clock_skew_beyond_300_s_is_refused(fed):
    key = fed["keys"]["370321"]
    await expect_all(fed, "370300", "370321", key, 401, "CLOCK_SKEW", ts=now_ms() - 301_000)
    await expect_all(fed, "370300", "370321", key, 401, "CLOCK_SKEW", ts=now_ms() + 301_000)
    # Within the window it is accepted.
    for ts in (now_ms() - 290_000, now_ms() + 290_000):
        status, body, _ = await fed_call(fed["370300"], "GET", "/federation/v1/registry", "370321", key, ts=ts)
        assert status == 200, body


async def test_replayed_nonce_is_refused(fed):
    key = fed["keys"]["370321"]
    for method, path, content in endpoints(fed, "370321", "370300"):
        status, body, headers = await fed_call(fed["370300"], method, path, "370321", key, content)
        assert error_code(body) not in ("REPLAY", "UNAUTHENTICATED", "SIGNATURE_INVALID"), body
        status, body = await send_raw(fed["370300"].url, method, path, headers, content)
        assert (status, error_code(body)) == (401, "REPLAY"), (path, body)
    # The same nonce in a new, correctly signed request is a replay too.
    status, body, headers = await fed_call(fed["370300"], "GET", "/federation/v1/registry", "370321", key)
    assert status == 200
    nonce = headers["Authorization"].split('nonce="')[1].split('"')[0]
    status, body, _ = await fed_call(fed["370300"], "GET", "/federation/v1/registry?since=1", "370321", key,
                                     nonce=nonce)
    assert (status, error_code(body)) == (401, "REPLAY"), body


async def test_non_neighbours_are_refused(fed):
    keys = fed["keys"]
    # A county calling the province directly, a county calling its sibling, a city calling another city,
    # the province calling a county.
    for origin, target in (("370321", "370000"), ("370321", "370303"), ("370300", "370200"),
                           ("370000", "370211"), ("370211", "370300")):
        await expect_all(fed, target, origin, keys[origin], 403, "NOT_NEIGHBOUR")


async def test_revoked_origin_is_refused_everywhere(fed):
    key = fed["keys"][REVOKED]
    for target in ("370300", "370000", "370321", "370200"):
        await expect_all(fed, target, REVOKED, key, 403, "REVOKED")


async def test_unknown_origin_and_missing_or_malformed_header_are_refused(fed):
    stranger = generate_signing_key("1")
    await expect_all(fed, "370300", "370399", stranger, 401, "UNAUTHENTICATED")
    for headers in ({}, {"Authorization": "Bearer abc"}, {"Authorization": 'GovNode origin="370321"'},
                    {"Authorization": 'GovNode origin="370321",destination="370300",key="ed25519:1",ts="x",'
                                      'nonce="aaaaaaaaaaaaaaaaaaaa",sig="AAAA"'}):
        status, body = await send_raw(fed["370300"].url, "GET", "/federation/v1/registry", headers)
        assert (status, error_code(body)) == (401, "UNAUTHENTICATED"), (headers, body)


async def test_unauthenticated_endpoints(fed):
    status, doc = await fed["370321"].call("GET", "/federation/v1/node")
    assert status == 200 and doc["node"] == "370321"
    status, body = await fed["370300"].call("POST", "/federation/v1/join", json_body={"token": "gni_nothing",
                                                                                         "certificate": {}})
    assert status == 400 and error_code(body) == "INVALID_INPUT", body


# Routing (SPEC §6) ----------------------------------------------------------------------------------

def sj_keys(cert: dict) -> list:
    return [decode_verify_key_base64("ed25519", k.split(":")[1], v) for k, v in cert["verify_keys"].items()]


@contextlib.contextmanager
def handler(node, fn, kind: str = "licence.verify"):  # noqa: ANN001, ANN201
    """Serve `kind` with `fn` at `node` (None: no handler) for a while; what was there before comes back."""
    handlers = node.app[FEDERATION].handlers
    kept = handlers.pop(kind, None)
    if fn is not None:
        handlers[kind] = fn
    try:
        yield fn
    finally:
        handlers.pop(kind, None)
        if kept is not None:
            handlers[kind] = kept


class Recorder:
    """A trivial `licence.verify` handler that keeps what it received."""

    def __init__(self) -> None:
        self.received: list[dict] = []

    async def __call__(self, env: dict) -> dict:
        self.received.append(copy.deepcopy(env))
        return {"valid": True, "status": "valid", "reasons": [], "echo": env["body"]}


async def audit_rows(node, message_id: str) -> list[tuple]:  # noqa: ANN001
    return await raw_sql(node.config, "SELECT action, actor, outcome, details FROM audit_log WHERE message_id = :m",
                         {"m": message_id})


@pytest.mark.parametrize(("origin", "destination", "via"), [
    ("370321", "370000", ["370300", "370000"]),                      # upward
    ("370000", "370321", ["370300", "370321"]),                      # downward
    ("370321", "370303", ["370300", "370303"]),                      # sideways in one city
    ("370321", "370211", ["370300", "370000", "370200", "370211"]),  # across cities
    ("370211", "370300", ["370200", "370000", "370300"]),
])
async def test_routing_relays_sign_and_audit(fed, origin, destination, via):
    recorder = Recorder()
    with handler(fed[destination], recorder):
        reply = await fed[origin].app[FEDERATION].call("licence.verify", destination, {"identifier": "x"})
    assert reply["via"] == via
    assert reply["echo"] == {"identifier": "x"}
    [opened] = recorder.received
    assert opened["body"] == {"identifier": "x"}  # the handler reads the plain body
    env = {k: v for k, v in opened.items() if k != "unsigned"} | {"body": opened["unsigned"]["sealed_body"]}
    assert "identifier" not in env["body"] and env["body"]["to"] == destination
    relays = via[:-1]
    # The origin and every relay signed the unchanged envelope; signedjson checks each signature with the
    # keys of the signer's certificate as published in /federation/v1/node.
    assert sorted(env["signatures"]) == sorted([origin, *relays])
    for signer in (origin, *relays):
        status, doc = await fed[signer].call("GET", "/federation/v1/node")
        [key] = sj_keys(doc["chain"][0])
        sj_verify(env, signer, key)
    # Each relay and the destination keep an audit record under the message id.
    for node in relays:
        rows = await wait_for(lambda node=node: audit_rows(fed[node], env["id"]), what=f"audit at {node}")
        assert [(r[0], r[1], r[2]) for r in rows] == [("federation.relay", origin, "ok")]
    rows = await wait_for(lambda: audit_rows(fed[destination], env["id"]), what="audit at the destination")
    assert [(r[0], r[1], r[2]) for r in rows] == [("federation.deliver", origin, "ok")]
    for node in set(ALL) - set(via) - {origin}:  # (the origin's record is its department request's)
        assert await audit_rows(fed[node], env["id"]) == []


async def test_audit_api_finds_a_relayed_message(fed):
    recorder = Recorder()
    with handler(fed["370211"], recorder):
        await fed["370321"].app[FEDERATION].call("licence.verify", "370211", {})
    message_id = recorder.received[0]["id"]
    token = await add_dept_async(fed["370000"].config.home, "AUDITOR", "山东省审计厅", "auditor")

    async def records() -> list:
        status, page = await fed["370000"].call("GET", f"/api/v1/audit?message_id={message_id}", token)
        assert status == 200, page
        return page["records"]

    [record] = await wait_for(records, what="the audit record")
    assert record["message_id"] == message_id and record["action"] == "federation.relay"
    assert record["details"]["from"] == "370300" and record["details"]["to"] == "370200"


async def post_message(fed, target: str, hop: str, env: dict) -> tuple[int, dict]:  # noqa: ANN001
    status, body, _ = await fed_call(fed[target], "POST", "/federation/v1/messages", hop, fed["keys"][hop], env)
    return status, body


async def test_expired_looping_too_long_duplicate_and_unknown_kind_are_refused(fed):
    keys = fed["keys"]
    # Expired before it reached the city.
    stale = envelope("370321", "370000", keys, now_ms=now_ms() - 60_000, ttl_ms=30_000)
    status, body = await post_message(fed, "370300", "370321", stale)
    assert (status, error_code(body)) == (504, "PEER_TIMEOUT"), body
    # A loop: the envelope already carries the receiving node's signature.
    looped = sign_envelope(envelope("370321", "370000", keys), "370300", keys["370300"])
    status, body = await post_message(fed, "370300", "370321", looped)
    assert (status, error_code(body)) == (400, "INVALID_INPUT") and "loop" in body["error"]["message"], body
    # Too many hops: nine signers so far.
    long = envelope("370321", "370000", keys)
    for fake in ("370381", "370382", "370383", "370384", "370385", "370386", "370387"):
        long = sign_envelope(long, fake, generate_signing_key("1"))
    long = sign_envelope(long, "370303", keys["370303"])
    status, body = await post_message(fed, "370300", "370303", long)
    assert (status, error_code(body)) == (400, "INVALID_INPUT") and "limit" in body["error"]["message"], body
    # The same message id twice (a replayed envelope in a fresh, correctly signed request).
    with handler(fed["370300"], Recorder()):
        once = envelope("370321", "370300", keys)
        status, body = await post_message(fed, "370300", "370321", once)
        assert status == 200 and body["kind"] == "reply" and body["in_reply_to"] == once["id"], body
        status, body = await post_message(fed, "370300", "370321", once)
        assert (status, error_code(body)) == (401, "REPLAY"), body
    # A kind that v1 does not know.
    odd = {**make_envelope("licence.verify", "370321", "370300", {}), "kind": "licence.forge"}
    status, body = await post_message(fed, "370300", "370321", sign_json(odd, "370321", keys["370321"]))
    assert (status, error_code(body)) == (422, "KIND_UNSUPPORTED"), body
    # A destination no node knows.
    with pytest.raises(ApiError) as err:
        await fed["370321"].app[FEDERATION].call("licence.verify", "370399", {})
    assert err.value.code == "NODE_UNKNOWN"
    # A kind the destination serves no handler for: an error answer, routed back.
    with handler(fed["370211"], None):
        with pytest.raises(ApiError) as err:
            await fed["370321"].app[FEDERATION].call("licence.verify", "370211", {})
        assert err.value.code == "KIND_UNSUPPORTED"
    # The origin's signature is missing (only a relay signed).
    bare = sign_envelope(make_envelope("licence.verify", "370321", "370000", {}), "370300", keys["370300"])
    status, body = await post_message(fed, "370000", "370300", bare)
    assert (status, error_code(body)) == (401, "SIGNATURE_INVALID"), body


async def test_a_relay_that_alters_the_body_is_caught_by_the_destination(fed):
    keys = fed["keys"]
    recorder = Recorder()
    with handler(fed["370303"], recorder):
        original = envelope("370321", "370303", keys, body={"identifier": "A"})
        tampered = copy.deepcopy(original)
        tampered["body"]["identifier"] = "B"
        tampered = sign_envelope(tampered, "370300", keys["370300"])  # the relay signs what it altered
        status, body = await post_message(fed, "370303", "370300", tampered)
        assert (status, error_code(body)) == (401, "SIGNATURE_INVALID"), body
        assert recorder.received == []
        # The unaltered envelope, relayed the same way, is delivered.
        status, body = await post_message(fed, "370303", "370300", sign_envelope(original, "370300", keys["370300"]))
        assert status == 200 and body["kind"] == "reply", body
        assert open_body(body, keys["370321"], keys["370303"])["echo"] == {"identifier": "A"}
        # A relay signature by someone other than the authenticated hop is refused too.
        other = envelope("370321", "370303", keys)
        status, body = await post_message(fed, "370303", "370300", sign_envelope(other, "370300",
                                                                                   generate_signing_key("1")))
        assert (status, error_code(body)) == (401, "SIGNATURE_INVALID"), body


async def test_a_slow_hop_gives_peer_timeout_within_the_expiry(fed, monkeypatch):
    # Each hop gives up a margin earlier than the one before it, so that the error of the node next to the slow
    # one travels back, through each hop's commit of its record, before the hop before it gives up. These nodes
    # share one process and one disk with the rest of the suite, where under full load that way back once took
    # longer than the node's 250 ms: the margin here is 1 s, the rule it tests the same.
    monkeypatch.setattr(messages, "HOP_MARGIN_MS", 1000)
    ttl_ms = 5000  # the farthest destination, behind four signers, still gets 1 s
    release = asyncio.Event()

    async def slow(env: dict) -> dict:
        try:
            await asyncio.wait_for(release.wait(), timeout=(env["expires_at"] - now_ms()) / 1000 + 1.0)
        except TimeoutError:
            pass
        return {"late": True}

    with handler(fed["370000"], slow), handler(fed["370211"], slow):
        for origin, destination in (("370321", "370000"), ("370321", "370211")):
            started = time.monotonic()
            with pytest.raises(ApiError) as err:
                await fed[origin].app[FEDERATION].call("licence.verify", destination, {}, ttl_ms=ttl_ms)
            elapsed = time.monotonic() - started
            assert err.value.code == "PEER_TIMEOUT", err.value.message
            assert elapsed < ttl_ms / 1000 + 0.5, elapsed
            # The hop that failed is named: the slow destination.
            assert err.value.details["hop"] == destination, err.value.details
        release.set()


async def test_a_hop_that_is_down_gives_peer_unreachable_naming_it(fed):
    qingdao = fed["370200"]
    await qingdao.stop()
    try:
        for origin, destination in (("370321", "370211"), ("370000", "370200"), ("370303", "370211")):
            started = time.monotonic()
            with pytest.raises(ApiError) as err:
                await fed[origin].app[FEDERATION].call("licence.verify", destination, {}, ttl_ms=10_000)
            assert err.value.code == "PEER_UNREACHABLE", err.value.message
            assert err.value.details["hop"] == "370200", err.value.details
            assert time.monotonic() - started < 5
        # The county of the stopped city cannot reach anyone.
        with pytest.raises(ApiError) as err:
            await fed["370211"].app[FEDERATION].call("licence.verify", "370000", {})
        assert (err.value.code, err.value.details["hop"]) == ("PEER_UNREACHABLE", "370200")
    finally:
        fed["370200"] = await start_node(qingdao.config)
    with handler(fed["370211"], Recorder()):
        reply = await fed["370321"].app[FEDERATION].call("licence.verify", "370211", {})
    assert reply["via"] == ["370300", "370000", "370200", "370211"]


async def test_a_replay_is_refused_after_a_restart(fed):
    key = fed["keys"]["370321"]
    captured = []
    for method, path, content in (("GET", "/federation/v1/registry?since=0", None),
                                  ("POST", "/federation/v1/notify", {"feed": "registry"})):
        status, body, headers = await fed_call(fed["370300"], method, path, "370321", key, content)
        assert status == 200, body
        captured.append((method, path, headers, content))
    city = fed["370300"]
    await city.stop()
    fed["370300"] = await start_node(city.config)  # same home, same port
    for method, path, headers, content in captured:
        status, body = await send_raw(fed["370300"].url, method, path, headers, content)
        assert (status, error_code(body)) == (401, "REPLAY"), (path, body)
    # A fresh request is accepted by the restarted node; the revocation still holds after the restart.
    status, body, _ = await fed_call(fed["370300"], "GET", "/federation/v1/registry?since=0", "370321", key)
    assert status == 200, body
    status, body, _ = await fed_call(fed["370300"], "GET", "/federation/v1/registry?since=0", REVOKED,
                                     fed["keys"][REVOKED])
    assert (status, error_code(body)) == (403, "REVOKED"), body
