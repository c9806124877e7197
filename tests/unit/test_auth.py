"""The GovNode Authorization header (SPEC §4)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from federation.auth import (AuthParams, make_authorization, parse_authorization, request_signing_bytes,
                             verify_authorization)
from federation.canonical import encode_canonical_json
from federation.errors import AuthError
from federation.signing import decode_b64, generate_signing_key

NOW = 1_763_800_000_000
KEY = generate_signing_key("1")
URI = "/federation/v1/catalog/changes?since=abc%2F1&limit=50"
BODY: dict[str, Any] = {"feed": "catalog", "next": "c-17"}


def header(**overrides: Any) -> str:
    args: dict[str, Any] = dict(
        method="POST", uri="/federation/v1/notify", origin="370321", destination="370300", key=KEY, content=BODY, ts=NOW
    )
    args.update(overrides)
    return make_authorization(**args)


def verify(value: str, **overrides: Any) -> None:
    args: dict[str, Any] = dict(
        method="POST",
        uri="/federation/v1/notify",
        content=BODY,
        verify_key=KEY.verify_key,
        self_node="370300",
        now_ms=NOW,
    )
    args.update(overrides)
    verify_authorization(parse_authorization(value), **args)


def auth_code(call: Any, *args: Any, **kwargs: Any) -> str:
    with pytest.raises(AuthError) as info:
        call(*args, **kwargs)
    return info.value.code


def test_round_trip() -> None:
    value = header()
    assert re.fullmatch(
        r'GovNode origin="370321",destination="370300",key="ed25519:1",ts="1763800000000",'
        r'nonce="[A-Za-z0-9_-]{16,}",sig="[A-Za-z0-9+/]+"',
        value,
    )
    params = parse_authorization(value)
    assert params.origin == "370321" and params.destination == "370300"
    assert params.key_id == "ed25519:1" and params.ts == NOW
    assert len(decode_b64(params.sig)) == 64
    verify(value)


def test_get_without_body_and_query_in_uri() -> None:
    value = header(method="get", uri=URI, content=None)
    verify(value, method="GET", uri=URI, content=None)
    assert auth_code(verify, value, method="GET", uri=URI, content={}) == "SIGNATURE_INVALID"
    assert auth_code(verify, value, method="GET", uri=URI.replace("50", "51"), content=None) == "SIGNATURE_INVALID"
    assert auth_code(verify, value, method="GET", uri=URI.replace("%2F", "/"), content=None) == "SIGNATURE_INVALID"


def test_signed_object_has_integer_ts_and_content_only_with_a_body() -> None:
    params = parse_authorization(header(nonce="n" * 16))
    expected = encode_canonical_json(
        {
            "method": "POST",
            "uri": "/federation/v1/notify",
            "origin": "370321",
            "destination": "370300",
            "ts": NOW,
            "nonce": "n" * 16,
            "content": BODY,
        }
    )
    KEY.verify_key.verify(expected, decode_b64(params.sig))

    params = parse_authorization(header(method="get", uri=URI, content=None, nonce="n" * 16))
    expected = encode_canonical_json(
        {"method": "GET", "uri": URI, "origin": "370321", "destination": "370300", "ts": NOW, "nonce": "n" * 16}
    )
    KEY.verify_key.verify(expected, decode_b64(params.sig))


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | st.text(st.characters(exclude_categories=["Cs"])),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@given(content=JSON_VALUES.filter(lambda v: v is not None))
def test_body_bytes_spliced_into_the_signed_object_are_its_full_encoding(content: Any) -> None:
    """A relay passes the body's canonical JSON on rather than encoding the body again: the result must be
    byte for byte what encoding the whole signed object gives, whatever the body holds."""
    args = ("POST", "/federation/v1/messages", "370300", "370000", NOW, "n" * 16)
    whole = request_signing_bytes(*args, content)
    assert request_signing_bytes(*args, content, content_json=encode_canonical_json(content)) == whole
    assert whole == encode_canonical_json(dict(zip(("method", "uri", "origin", "destination", "ts", "nonce"), args),
                                               content=content))
    spliced = header(content=content, content_json=encode_canonical_json(content))
    verify(spliced, content=content)  # a header made from the bytes verifies the plain way
    verify(header(content=content), content=content, content_json=encode_canonical_json(content))
    assert auth_code(verify, spliced, content=content, content_json=encode_canonical_json([content])) == "SIGNATURE_INVALID"


def test_nonces_are_random() -> None:
    nonces = {parse_authorization(header()).nonce for _ in range(50)}
    assert len(nonces) == 50
    assert all(len(n) >= 16 for n in nonces)
    with pytest.raises(ValueError):
        header(nonce="short")


def test_tampering() -> None:
    value = header()
    assert auth_code(verify, value, content={**BODY, "next": "c-18"}) == "SIGNATURE_INVALID"
    assert auth_code(verify, value, content=None) == "SIGNATURE_INVALID"
    assert auth_code(verify, value, method="PUT") == "SIGNATURE_INVALID"
    assert auth_code(verify, value, uri="/federation/v1/messages") == "SIGNATURE_INVALID"
    assert auth_code(verify, value, verify_key=generate_signing_key().verify_key) == "SIGNATURE_INVALID"
    for name, new in (("origin", "370303"), ("ts", str(NOW + 1)), ("nonce", "x" * 22)):
        forged = re.sub(rf'{name}="[^"]*"', f'{name}="{new}"', value)
        assert forged != value
        assert auth_code(verify, forged) == "SIGNATURE_INVALID"
    forged_sig = re.sub(r'sig="[^"]*"', 'sig="abc!"', value)
    assert auth_code(verify, forged_sig) == "SIGNATURE_INVALID"
    assert auth_code(verify, value, content={"x": 0.5}) == "SIGNATURE_INVALID"


def test_wrong_destination() -> None:
    assert auth_code(verify, header(destination="370000")) == "UNAUTHENTICATED"


@pytest.mark.parametrize(
    ("offset", "ok"), [(0, True), (300_000, True), (-300_000, True), (300_001, False), (-300_001, False)]
)
def test_clock_skew(offset: int, ok: bool) -> None:
    value = header(ts=NOW + offset)
    if ok:
        verify(value)
    else:
        assert auth_code(verify, value) == "CLOCK_SKEW"
    assert auth_code(verify, value, now_ms=NOW + offset + 2_000, max_skew_ms=1_000) == "CLOCK_SKEW"


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "Bearer abc",
        "GovNode",
        'GovNode origin="370321"',
        'GovNode origin="370321",,destination="370300"',
        'GovNode origin=370321,destination="370300",key="ed25519:1",ts="1",nonce="aaaaaaaaaaaaaaaa",sig="x"',
        'GovNode origin="3703",destination="370300",key="ed25519:1",ts="1",nonce="aaaaaaaaaaaaaaaa",sig="x"',
        'GovNode origin="370321",destination="370300",key="rsa:1",ts="1",nonce="aaaaaaaaaaaaaaaa",sig="x"',
        'GovNode origin="370321",destination="370300",key="ed25519:1",ts="1.5",nonce="aaaaaaaaaaaaaaaa",sig="x"',
        'GovNode origin="370321",destination="370300",key="ed25519:1",ts="-1",nonce="aaaaaaaaaaaaaaaa",sig="x"',
        'GovNode origin="370321",destination="370300",key="ed25519:1",ts="1",nonce="short",sig="x"',
        'GovNode origin="370321",destination="370300",key="ed25519:1",ts="1",nonce="aaaaaaaaaaaaaaa!",sig="x"',
        'GovNode origin="370321",origin="370303",destination="370300",'
        'key="ed25519:1",ts="1",nonce="aaaaaaaaaaaaaaaa",sig="x"',
    ],
)
def test_malformed_headers(value: str | None) -> None:
    assert auth_code(parse_authorization, value) == "UNAUTHENTICATED"


def test_parse_tolerates_spacing_case_and_unknown_parameters() -> None:
    value = header()
    spaced = "govnode  " + value.removeprefix("GovNode ").replace(",", ", ") + ', future="x"'
    assert parse_authorization(spaced) == parse_authorization(value)
    assert isinstance(parse_authorization(value), AuthParams)
