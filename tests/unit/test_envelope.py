"""Envelopes and tree routing (SPEC §6)."""

from __future__ import annotations

import copy
import os
from typing import Any

import pytest
import signedjson.key
import signedjson.sign
from ulid import ULID

from federation.certs import TrustStore, level_of, make_certificate, make_revocation
from federation.envelope import (
    KINDS,
    Envelope,
    hop_count,
    make_envelope,
    new_ulid,
    next_hop,
    sign_envelope,
    verify_envelope_origin,
)
from federation.errors import EnvelopeError
from federation.signing import SigningKey, encode_b64, generate_signing_key, sign_json, signed_bytes, verify_key_b64

T0 = 1_763_800_000_000
NOW = T0 + 60_000
PARENTS = {
    "370000": None,
    "370300": "370000",
    "370321": "370300",
    "370303": "370300",
    "370200": "370000",
    "370211": "370200",
}
KEYS: dict[str, SigningKey] = {node: generate_signing_key() for node in PARENTS}
CALL_BODY = {
    "resource": "101001/370000000001",
    "op": "verify",
    "params": {"key": "11010519491231002X", "fields": {"name": "张三"}},
    "requester": {"node": "370321", "dept": "11370321MB1234567X", "user": "u1", "purpose": "社保核验"},
    "grant": None,
}


@pytest.fixture
def trust() -> TrustStore:
    store = TrustStore("370000", verify_key_b64(KEYS["370000"]))
    for node, parent in PARENTS.items():
        issuer = parent or node
        cert = make_certificate(
            node=node,
            name=node,
            level=level_of(node),
            parent=parent,
            endpoint="http://127.0.0.1:8000",
            verify_keys={"ed25519:1": verify_key_b64(KEYS[node])},
            old_verify_keys={},
            valid_from=T0,
            valid_until=T0 + 10**10,
            issuer=issuer,
        )
        store.add_certificate(sign_json(cert, issuer, KEYS[issuer]))
    return store


def call(**overrides: Any) -> dict[str, Any]:
    args: dict[str, Any] = dict(kind="service.call", origin="370321", destination="370000", body=CALL_BODY, now_ms=NOW)
    args.update(overrides)
    return sign_envelope(make_envelope(**args), args["origin"], KEYS[args["origin"]])


def envelope_code(envelope: Any, trust: TrustStore, now_ms: int = NOW) -> str:
    with pytest.raises(EnvelopeError) as info:
        verify_envelope_origin(envelope, trust, now_ms)
    return info.value.code


def test_kinds() -> None:
    expected = {
        "service.call",
        "reply",
        "error",
        "application.submit",
        "application.update",
        "feedback.submit",
        "feedback.update",
        "data_request.submit",  # SPEC §16: data requests travel like applications
        "data_request.update",
        "licence.verify",
        "list.hit",
    }
    assert expected == KINDS


def test_new_ulid() -> None:
    ids = {new_ulid() for _ in range(100)}
    assert len(ids) == 100
    assert all(len(i) == 26 for i in ids)
    assert ULID.from_str(new_ulid(T0)).milliseconds == T0


def test_new_ulids_are_ulids_made_in_order() -> None:
    """Read back by python-ulid: the same string, the time part the clock's; and ids made one after another
    in one process sort in the order they were made, many in one millisecond included."""
    import time

    before = time.time_ns() // 1_000_000
    made = [new_ulid() for _ in range(20_000)]
    after = time.time_ns() // 1_000_000
    assert sorted(made) == made and len(set(made)) == len(made)
    parsed = [ULID.from_str(m) for m in made]
    assert [str(p) for p in parsed] == made
    assert before <= parsed[0].milliseconds <= parsed[-1].milliseconds <= after + 1
    # Within one millisecond the random part counts up by one; a new millisecond draws afresh.
    same_ms = [(a, b) for a, b in zip(parsed, parsed[1:]) if a.milliseconds == b.milliseconds]
    assert same_ms, "20,000 ids took more than 20,000 ms?"
    assert all(int.from_bytes(b.bytes[6:], "big") == int.from_bytes(a.bytes[6:], "big") + 1 for a, b in same_ms)
    # Every character is Crockford's (no I, L, O, U) and the first is at most 7 (128 bits in 130).
    assert all(set(m) <= set("0123456789ABCDEFGHJKMNPQRSTVWXYZ") and m[0] <= "7" for m in made)


def test_make_envelope_shape() -> None:
    envelope = make_envelope("service.call", "370321", "370000", CALL_BODY, ttl_ms=5_000, now_ms=NOW)
    assert envelope == {
        "type": "envelope",
        "v": 1,
        "id": envelope["id"],
        "kind": "service.call",
        "origin": "370321",
        "destination": "370000",
        "sent_at": NOW,
        "expires_at": NOW + 5_000,
        "in_reply_to": None,
        "body": CALL_BODY,
    }
    assert ULID.from_str(envelope["id"]).milliseconds == NOW
    Envelope.model_validate(envelope, strict=True)
    reply = make_envelope("reply", "370000", "370321", {"match": True}, in_reply_to=envelope["id"], now_ms=NOW)
    assert reply["in_reply_to"] == envelope["id"]


@pytest.mark.parametrize(
    ("args", "code"),
    [
        ({"kind": "service.cancel"}, "KIND_UNSUPPORTED"),
        ({"kind": "Service Call"}, "INVALID_INPUT"),
        ({"origin": "37032"}, "INVALID_INPUT"),
        ({"body": []}, "INVALID_INPUT"),
        ({"body": {"amount": 1.5}}, "INVALID_INPUT"),
        ({"ttl_ms": 0}, "INVALID_INPUT"),
        ({"kind": "reply"}, "INVALID_INPUT"),  # a reply needs in_reply_to
        ({"in_reply_to": "01JD3W6Z9K8Q4V7N2M5X1R0T6Y"}, "INVALID_INPUT"),  # a call must not have one
        ({"kind": "error", "in_reply_to": "not-a-ulid"}, "INVALID_INPUT"),
    ],
)
def test_make_envelope_refusals(args: dict[str, Any], code: str) -> None:
    base: dict[str, Any] = dict(kind="service.call", origin="370321", destination="370000", body={}, now_ms=NOW)
    with pytest.raises(EnvelopeError) as info:
        make_envelope(**{**base, **args})
    assert info.value.code == code


def test_origin_signature_verifies_and_relays_add_signatures(trust: TrustStore) -> None:
    envelope = call()
    verify_envelope_origin(envelope, trust, NOW)
    assert hop_count(envelope) == 1
    relayed = sign_envelope(sign_envelope(envelope, "370300", KEYS["370300"]), "370000", KEYS["370000"])
    assert hop_count(relayed) == 3
    assert {k: v for k, v in relayed.items() if k != "signatures"} == {
        k: v for k, v in envelope.items() if k != "signatures"
    }
    verify_envelope_origin(relayed, trust, NOW)
    # an independent implementation agrees on each signature
    for node in ("370321", "370300", "370000"):
        verify_key = signedjson.key.decode_verify_key_base64("ed25519", "1", verify_key_b64(KEYS[node]))
        signedjson.sign.verify_signed_json(relayed, node, verify_key)


def test_tampered_envelope(trust: TrustStore) -> None:
    envelope = call()
    for field, value in (
        ("destination", "370200"),
        ("expires_at", envelope["expires_at"] + 1),
        ("id", new_ulid()),
        ("body", {**CALL_BODY, "op": "query"}),
        ("body", {**CALL_BODY, "requester": {**CALL_BODY["requester"], "dept": "91370406L24894136J"}}),
    ):
        tampered = copy.deepcopy(envelope)
        tampered[field] = value
        assert envelope_code(tampered, trust) == "SIGNATURE_INVALID", field


def test_signature_must_be_the_origins(trust: TrustStore) -> None:
    envelope = call()
    # signed by a relay only
    relay_only = sign_envelope({**envelope, "signatures": {}}, "370300", KEYS["370300"])
    with pytest.raises(EnvelopeError, match="no signature from 370321"):
        verify_envelope_origin(relay_only, trust, NOW)
    # the origin's key id, but another node's key
    forged = sign_envelope({**envelope, "signatures": {}}, "370321", KEYS["370303"])
    assert envelope_code(forged, trust) == "SIGNATURE_INVALID"
    # an origin nobody knows
    stranger = make_envelope("service.call", "370399", "370000", {}, now_ms=NOW)
    stranger = sign_envelope(stranger, "370399", generate_signing_key())
    with pytest.raises(EnvelopeError) as info:
        verify_envelope_origin(stranger, trust, NOW)
    assert info.value.code == "SIGNATURE_INVALID" and info.value.details == {"trust": "UNKNOWN"}


def test_revoked_origin(trust: TrustStore) -> None:
    revocation = sign_json(make_revocation("370300", "ed25519:1", T0, "370000"), "370000", KEYS["370000"])
    trust.add_revocation(revocation)
    assert envelope_code(call(), trust) == "REVOKED"  # 370321 is below the revoked city
    other = call(origin="370211")
    assert verify_envelope_origin(other, trust, NOW) == signed_bytes(other)  # what it verified, for relays to reuse


def _rotate(trust: TrustStore, node: str, new_key: SigningKey, expired_at: int) -> None:
    """Give `node` a re-issued certificate with `new_key`; its first key becomes an old key."""
    parent = PARENTS[node]
    cert = make_certificate(
        node=node, name=node, level=level_of(node), parent=parent, endpoint="http://127.0.0.1:8000",
        verify_keys={new_key.key_id: verify_key_b64(new_key)},
        old_verify_keys={"ed25519:1": {"key": verify_key_b64(KEYS[node]), "expired_at": expired_at}},
        valid_from=T0 + 1, valid_until=T0 + 10**10, issuer=parent or node,
    )
    assert trust.add_certificate(sign_json(cert, parent or node, KEYS[parent or node]))


def test_an_envelope_sent_before_its_origin_rotated_still_verifies(trust: TrustStore) -> None:
    """SPEC §3: an old key verifies what was signed before its expired_at, so an envelope that waited in an
    outbox while its origin rotated is still delivered; one dated after the rotation is not."""
    queued = call(now_ms=NOW - 10_000, ttl_ms=3_600_000)
    new_key = generate_signing_key("2")
    _rotate(trust, "370321", new_key, expired_at=NOW - 5_000)
    verify_envelope_origin(queued, trust, NOW)
    forged = call(now_ms=NOW - 1_000, ttl_ms=3_600_000)  # signed with the old key after it expired
    assert envelope_code(forged, trust) == "SIGNATURE_INVALID"
    fresh = sign_envelope(make_envelope("service.call", "370321", "370000", CALL_BODY, now_ms=NOW), "370321", new_key)
    verify_envelope_origin(fresh, trust, NOW)
    # A revocation of the old key covers what it signed from then on.
    trust.add_revocation(sign_json(make_revocation("370321", "ed25519:1", NOW - 20_000, "370300"), "370300",
                                   KEYS["370300"]))
    assert envelope_code(queued, trust) == "SIGNATURE_INVALID"


def test_expiry(trust: TrustStore) -> None:
    envelope = call(ttl_ms=1_000)
    verify_envelope_origin(envelope, trust, NOW + 999)
    assert envelope_code(envelope, trust, NOW + 1_000) == "EXPIRED"


def test_shape_and_kind_checks_on_receipt(trust: TrustStore) -> None:
    envelope = call()
    assert envelope_code({**envelope, "hops": 1}, trust) == "INVALID_INPUT"
    assert envelope_code({**envelope, "v": 2}, trust) == "INVALID_INPUT"
    assert envelope_code({**envelope, "v": True}, trust) == "INVALID_INPUT"
    assert envelope_code({**envelope, "sent_at": str(NOW)}, trust) == "INVALID_INPUT"
    assert envelope_code({k: v for k, v in envelope.items() if k != "in_reply_to"}, trust) == "INVALID_INPUT"
    assert envelope_code([envelope], trust) == "INVALID_INPUT"
    # unsigned is allowed and not covered by the signature
    verify_envelope_origin({**envelope, "unsigned": {"received_at": NOW}}, trust, NOW)
    # an unknown kind, correctly signed by its origin
    raw = make_envelope("service.call", "370321", "370000", {}, now_ms=NOW)
    unknown = sign_envelope({**raw, "kind": "service.stream"}, "370321", KEYS["370321"])
    assert envelope_code(unknown, trust) == "KIND_UNSUPPORTED"


def test_reply_envelope(trust: TrustStore) -> None:
    request = call()
    reply = make_envelope("reply", "370000", "370321", {"match": True}, in_reply_to=request["id"], now_ms=NOW)
    reply = sign_envelope(reply, "370000", KEYS["370000"])
    verify_envelope_origin(reply, trust, NOW)
    seed = encode_b64(bytes(KEYS["370300"].nacl_key))
    relayed = signedjson.sign.sign_json(
        copy.deepcopy(reply), "370300", signedjson.key.decode_signing_key_base64("ed25519", "1", seed)
    )
    verify_envelope_origin(relayed, trust, NOW)
    assert hop_count(relayed) == 2


# --- routing --------------------------------------------------------------------------------


def route(trust: TrustStore, at: str, destination: str) -> str | None:
    children = {node for node, parent in PARENTS.items() if parent == at}
    return next_hop(
        self_node=at,
        destination=destination,
        children_subtrees={child: trust.subtree_of(child) for child in children},
        parent=PARENTS[at],
        known_nodes=trust.known_nodes(),
    )


def path(trust: TrustStore, origin: str, destination: str) -> list[str]:
    hops, at = [origin], origin
    while at != destination:
        nxt = route(trust, at, destination)
        assert nxt is not None and len(hops) < 8
        hops.append(nxt)
        at = nxt
    return hops


def test_next_hop_up_down_sideways(trust: TrustStore) -> None:
    assert route(trust, "370321", "370321") == "370321"  # itself
    assert route(trust, "370321", "370300") == "370300"  # up
    assert route(trust, "370321", "370000") == "370300"  # up, two levels
    assert route(trust, "370000", "370321") == "370300"  # down
    assert route(trust, "370000", "370211") == "370200"
    assert route(trust, "370300", "370303") == "370303"
    assert route(trust, "370321", "370303") == "370300"  # sideways goes through the common parent
    assert path(trust, "370321", "370303") == ["370321", "370300", "370303"]
    assert path(trust, "370321", "370211") == ["370321", "370300", "370000", "370200", "370211"]
    assert path(trust, "370211", "370000") == ["370211", "370200", "370000"]


def test_next_hop_unknown_destination(trust: TrustStore) -> None:
    assert route(trust, "370000", "370399") is None  # the root has nobody to ask
    assert route(trust, "370321", "370399") is None  # unknown here: no point sending it up
    assert route(trust, "370200", "370321") == "370000"  # known elsewhere: up


def test_next_hop_without_a_trust_store() -> None:
    subtrees = {"370300": {"370300", "370321"}, "370200": {"370200"}}
    known = {"370000", "370300", "370321", "370200", "370211"}
    assert next_hop("370000", "370321", subtrees, None, known) == "370300"
    assert next_hop("370000", "370211", subtrees, None, known) is None  # known, but in no subtree, and no parent
    assert next_hop("370300", "370211", {"370321": {"370321"}}, "370000", known) == "370000"


def test_a_forked_worker_makes_ids_of_its_own():
    """`govnode run --workers N` forks: a worker must not use its parent's random bytes read ahead, nor count up
    from its parent's last id, or two workers would make the same ids."""
    new_ulid()  # the parent has bytes read ahead and a last id
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its ids go to the parent, then it leaves without running pytest's exit handlers
        try:
            os.write(write_end, ",".join(new_ulid() for _ in range(50)).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    mine = [new_ulid() for _ in range(50)]
    chunks = []
    while chunk := os.read(read_end, 65536):
        chunks.append(chunk)
    os.close(read_end)
    os.waitpid(pid, 0)
    theirs = b"".join(chunks).decode().split(",")
    assert len(set(theirs)) == 50 and sorted(theirs) == theirs  # in order, within the child
    assert not {i[10:] for i in mine} & {i[10:] for i in theirs}  # random parts of their own
