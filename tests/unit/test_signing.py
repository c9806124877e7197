"""Key files, base64 and signed JSON, checked against matrix-org's signedjson as an independent oracle."""

from __future__ import annotations

import copy
import io
import os
import stat
from pathlib import Path
from typing import Any

import nacl.signing
import pytest
import signedjson.key
import signedjson.sign
from hypothesis import given
from hypothesis import strategies as st

from federation.signing import (
    SignatureError,
    SigningKey,
    decode_b64,
    decode_verify_key,
    encode_b64,
    generate_signing_key,
    read_signing_key_file,
    sign_json,
    signed_bytes,
    verify_key_b64,
    verify_signed_json,
    write_signing_key_file,
)

ENTRY: dict[str, Any] = {
    "type": "catalog_entry",
    "code": "101001/370321000001",
    "node": "370321",
    "seq": 17,
    "deleted": False,
    "name": "桓台县户籍人口基本信息",
    "items": [{"name": "公民身份号码", "field": "id_number", "key": True}],
    "related": [],
    "summary": None,
}


def oracle_key(key: SigningKey) -> nacl.signing.SigningKey:
    """The same private key as a signedjson key object."""
    return signedjson.key.decode_signing_key_base64("ed25519", key.version, encode_b64(bytes(key.nacl_key)))


# --- base64 -------------------------------------------------------------------------------


@given(st.binary(max_size=100))
def test_b64_round_trip_unpadded(data: bytes) -> None:
    text = encode_b64(data)
    assert "=" not in text
    assert decode_b64(text) == data
    padded = text + "=" * (-len(text) % 4)
    assert decode_b64(padded) == data


@pytest.mark.parametrize(
    "garbage",
    ["a", "ab!c", "ab c", "abc\n", "-_-_", "AB=C", "AAA==", "AA===", "AB", "AAB", "é", "=", "YQ==="],
)
def test_b64_refuses_garbage(garbage: str) -> None:
    with pytest.raises(ValueError):
        decode_b64(garbage)


def test_b64_edge_cases() -> None:
    assert decode_b64("") == b""
    assert decode_b64("YQ") == decode_b64("YQ==") == b"a"
    assert encode_b64(b"\xfb\xff") == "+/8"


# --- keys and key files ---------------------------------------------------------------------


def test_key_id_and_version() -> None:
    key = generate_signing_key("7")
    assert key.key_id == "ed25519:7"
    assert "ed25519:7" in repr(key) and encode_b64(bytes(key.nacl_key)) not in repr(key)
    with pytest.raises(ValueError):
        generate_signing_key("a b")
    with pytest.raises(ValueError):
        generate_signing_key("")


def test_key_file_round_trip_and_mode(tmp_path: Path) -> None:
    key = generate_signing_key("3")
    path = tmp_path / "signing.key"
    old_umask = os.umask(0)
    try:
        write_signing_key_file(path, key)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == f"ed25519 3 {encode_b64(bytes(key.nacl_key))}\n"
    loaded = read_signing_key_file(path)
    assert loaded.version == "3"
    assert bytes(loaded.nacl_key) == bytes(key.nacl_key)
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_key_file_replaces_a_world_readable_file(tmp_path: Path) -> None:
    path = tmp_path / "signing.key"
    path.write_text("old\n")
    path.chmod(0o644)
    key = generate_signing_key()
    write_signing_key_file(path, key)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert bytes(read_signing_key_file(path).nacl_key) == bytes(key.nacl_key)


def test_key_file_is_what_signedjson_reads(tmp_path: Path) -> None:
    key = generate_signing_key("1")
    path = tmp_path / "signing.key"
    write_signing_key_file(path, key)
    with path.open() as stream:
        (theirs,) = signedjson.key.read_signing_keys(stream)
    assert theirs.alg == "ed25519" and theirs.version == "1"
    assert bytes(theirs) == bytes(key.nacl_key)


def test_reads_what_signedjson_writes(tmp_path: Path) -> None:
    theirs = signedjson.key.generate_signing_key("a_1")
    stream = io.StringIO()
    signedjson.key.write_signing_keys(stream, [theirs])
    path = tmp_path / "signing.key"
    path.write_text(stream.getvalue())
    ours = read_signing_key_file(path)
    assert ours.key_id == "ed25519:a_1"
    assert bytes(ours.nacl_key) == bytes(theirs)


@pytest.mark.parametrize(
    "content",
    [
        "",
        "\n",
        "ed25519 1\n",
        "ed25519 1 AAAA extra\n",
        "rsa 1 " + encode_b64(b"\0" * 32) + "\n",
        "ed25519 1 " + encode_b64(b"\0" * 31) + "\n",
        "ed25519 1 not*base64\n",
        "ed25519 v:1 " + encode_b64(b"\0" * 32) + "\n",
        "ed25519 1 {s}\ned25519 2 {s}\n".format(s=encode_b64(b"\0" * 32)),
    ],
)
def test_malformed_key_files(tmp_path: Path, content: str) -> None:
    path = tmp_path / "signing.key"
    path.write_text(content)
    with pytest.raises(ValueError, match=str(path)):
        read_signing_key_file(path)


def test_non_ascii_key_file(tmp_path: Path) -> None:
    path = tmp_path / "signing.key"
    path.write_bytes("ed25519 1 密钥\n".encode())
    with pytest.raises(ValueError, match="ASCII"):
        read_signing_key_file(path)


def test_verify_key_round_trip() -> None:
    key = generate_signing_key()
    text = verify_key_b64(key)
    assert decode_verify_key(text) == key.verify_key
    assert text == encode_b64(signedjson.key.get_verify_key(oracle_key(key)).encode())
    with pytest.raises(ValueError):
        decode_verify_key(encode_b64(b"\0" * 31))
    with pytest.raises(ValueError):
        decode_verify_key("!!")


# --- signed JSON ----------------------------------------------------------------------------


def test_signed_bytes_leave_out_signatures_and_unsigned() -> None:
    obj = {**ENTRY, "signatures": {"x": {"ed25519:1": "abc"}}, "unsigned": {"age": 5}}
    assert signed_bytes(obj) == signed_bytes(ENTRY)
    assert b"signatures" not in signed_bytes(obj) and b"unsigned" not in signed_bytes(obj)


def test_signedjson_verifies_what_we_sign() -> None:
    key = generate_signing_key("1")
    signed = sign_json(ENTRY, "370321", key)
    verify_key = signedjson.key.get_verify_key(oracle_key(key))
    signedjson.sign.verify_signed_json(signed, "370321", verify_key)
    # and the signature bytes are the ones signedjson itself produces (Ed25519 is deterministic)
    theirs = signedjson.sign.sign_json(copy.deepcopy(ENTRY), "370321", oracle_key(key))
    assert signed["signatures"] == theirs["signatures"]


def test_we_verify_what_signedjson_signs() -> None:
    theirs = signedjson.key.generate_signing_key("2")
    signed = signedjson.sign.sign_json(copy.deepcopy(ENTRY), "370300", theirs)
    verify_key = signedjson.key.get_verify_key(theirs)
    assert verify_signed_json(signed, "370300", {"ed25519:2": verify_key}) == "ed25519:2"
    assert verify_signed_json(signed, "370300", {"ed25519:2": encode_b64(verify_key.encode())}) == "ed25519:2"


def test_sign_json_returns_a_new_dict_and_keeps_other_signatures() -> None:
    origin, relay = generate_signing_key("1"), generate_signing_key("4")
    original = {**ENTRY, "unsigned": {"hops": 1}}
    once = sign_json(original, "370321", origin)
    assert "signatures" not in original
    twice = sign_json(once, "370300", relay)
    assert set(once["signatures"]) == {"370321"}  # the first copy is untouched
    assert set(twice["signatures"]) == {"370321", "370300"}
    assert twice["unsigned"] == {"hops": 1}
    verify_signed_json(twice, "370321", {"ed25519:1": origin.verify_key})
    verify_signed_json(twice, "370300", {"ed25519:4": relay.verify_key})
    # unsigned may change in transit without breaking anything
    verify_signed_json({**twice, "unsigned": {"hops": 9}}, "370321", {"ed25519:1": origin.verify_key})


def test_same_signer_second_key_is_added_alongside() -> None:
    old, new = generate_signing_key("1"), generate_signing_key("2")
    signed = sign_json(sign_json(ENTRY, "370321", old), "370321", new)
    assert set(signed["signatures"]["370321"]) == {"ed25519:1", "ed25519:2"}
    assert verify_signed_json(signed, "370321", {"ed25519:2": new.verify_key}) == "ed25519:2"


def _mutations(obj: dict[str, Any]) -> list[dict[str, Any]]:
    """Every object obtained by changing, removing or adding one field anywhere in ``obj``."""
    out: list[dict[str, Any]] = []
    for key, value in obj.items():
        if key == "signatures":
            continue
        changed = copy.deepcopy(obj)
        if isinstance(value, bool) or value is None:
            changed[key] = not value
        elif isinstance(value, int):
            changed[key] = value + 1
        elif isinstance(value, str):
            changed[key] = value + "x"
        elif isinstance(value, list):
            changed[key] = [*value, 0]
        out.append(changed)
        removed = copy.deepcopy(obj)
        del removed[key]
        out.append(removed)
    nested = copy.deepcopy(obj)
    nested["items"][0]["key"] = False
    out.append(nested)
    out.append({**copy.deepcopy(obj), "extra": 1})
    return out


def test_tampering_with_any_field_breaks_verification() -> None:
    key = generate_signing_key()
    signed = sign_json(ENTRY, "370321", key)
    mutations = _mutations(signed)
    assert len(mutations) == 2 * len(ENTRY) + 2
    for tampered in mutations:
        with pytest.raises(SignatureError, match="bad signature"):
            verify_signed_json(tampered, "370321", {key.key_id: key.verify_key})
        with pytest.raises(signedjson.sign.SignatureVerifyException):  # the oracle agrees
            signedjson.sign.verify_signed_json(tampered, "370321", signedjson.key.get_verify_key(oracle_key(key)))


def test_verification_failure_reasons() -> None:
    key, other = generate_signing_key("1"), generate_signing_key("1")
    signed = sign_json(ENTRY, "370321", key)
    keys = {"ed25519:1": key.verify_key}

    with pytest.raises(SignatureError, match="no signature from 370300") as info:
        verify_signed_json(signed, "370300", keys)
    assert info.value.code == "SIGNATURE_INVALID"
    with pytest.raises(SignatureError, match="no signature from 370321"):
        verify_signed_json(ENTRY, "370321", keys)
    with pytest.raises(SignatureError, match="known key id"):
        verify_signed_json(signed, "370321", {"ed25519:2": key.verify_key})
    with pytest.raises(SignatureError, match="bad signature"):
        verify_signed_json(signed, "370321", {"ed25519:1": other.verify_key})

    def with_sig(sig: object) -> dict[str, Any]:
        return {**signed, "signatures": {"370321": {"ed25519:1": sig}}}

    with pytest.raises(SignatureError, match="base64"):
        verify_signed_json(with_sig("not base64!"), "370321", keys)
    with pytest.raises(SignatureError, match="64 bytes"):
        verify_signed_json(with_sig(encode_b64(b"\0" * 10)), "370321", keys)
    with pytest.raises(SignatureError, match="not a string"):
        verify_signed_json(with_sig(12), "370321", keys)
    with pytest.raises(SignatureError, match="bad verify key"):
        verify_signed_json(signed, "370321", {"ed25519:1": "short"})
    with pytest.raises(SignatureError, match="must map"):
        verify_signed_json({**signed, "signatures": ["x"]}, "370321", keys)
    with pytest.raises(SignatureError, match="must map"):
        verify_signed_json({**signed, "signatures": {"370321": "x"}}, "370321", keys)


def test_one_good_signature_among_known_keys_is_enough() -> None:
    good = generate_signing_key("2")
    signed = sign_json(ENTRY, "370321", good)
    signed["signatures"]["370321"]["ed25519:1"] = encode_b64(b"\0" * 64)
    keys = {"ed25519:1": generate_signing_key("1").verify_key, "ed25519:2": good.verify_key}
    assert verify_signed_json(signed, "370321", keys) == "ed25519:2"
