"""Canonical JSON agrees byte for byte with matrix-org's canonicaljson, and refuses what SPEC §2 forbids."""

from __future__ import annotations

import json
import math
from collections import OrderedDict

import canonicaljson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from federation.canonical import MAX_DEPTH, MAX_SAFE_INTEGER, _check, _within_domain, check_canonical_value, encode_canonical_json
from federation.errors import CanonicalJSONError, FederationError

# Text with everything that needs care: controls, quotes, backslashes, DEL, non-BMP, U+2028/9, CJK.
tricky_text = st.text(
    alphabet=st.one_of(
        st.characters(codec="utf-8"),
        st.sampled_from(list('\x00\x01\x1f\x7f"\\/\n\r\t\b\f\u2028\u2029\ufeff桓台县😀\U0010ffff')),
    ),
    max_size=20,
)
safe_ints = st.integers(min_value=-MAX_SAFE_INTEGER, max_value=MAX_SAFE_INTEGER)
json_values = st.recursive(
    st.none() | st.booleans() | safe_ints | tricky_text,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(tricky_text, children, max_size=5),
    max_leaves=40,
)


@settings(max_examples=1000)
@given(json_values)
def test_matches_canonicaljson_byte_for_byte(value: object) -> None:
    assert encode_canonical_json(value) == canonicaljson.encode_canonical_json(value)


@given(st.dictionaries(tricky_text, safe_ints, min_size=2, max_size=10))
def test_key_order_is_code_point_order_whatever_the_insertion_order(value: dict[str, int]) -> None:
    reversed_insertion = dict(reversed(list(value.items())))
    encoded = encode_canonical_json(reversed_insertion)
    assert encoded == encode_canonical_json(value)
    assert list(json.loads(encoded)) == sorted(value)


def test_known_encodings() -> None:
    assert encode_canonical_json({"b": 1, "a": [True, False, None], "": ""}) == b'{"":"","a":[true,false,null],"b":1}'
    assert encode_canonical_json({"name": "桓台县"}) == '{"name":"桓台县"}'.encode()
    assert encode_canonical_json('\x00\x1f"\\\n\x7f\u2028') == b'"\\u0000\\u001f\\"\\\\\\n\x7f\xe2\x80\xa8"'
    assert encode_canonical_json("😀") == '"😀"'.encode()
    # code point order, not UTF-16 order: U+FF61 sorts before U+1F600 (a surrogate pair in UTF-16)
    assert encode_canonical_json({"😀": 1, "｡": 2}) == '{"｡":2,"😀":1}'.encode()
    assert encode_canonical_json((1, 2)) == b"[1,2]"
    assert encode_canonical_json(OrderedDict([("z", 1), ("a", 2)])) == b'{"a":2,"z":1}'


def test_integer_limits() -> None:
    assert encode_canonical_json([MAX_SAFE_INTEGER, -MAX_SAFE_INTEGER, 0]) == b"[9007199254740991,-9007199254740991,0]"
    for bad in (MAX_SAFE_INTEGER + 1, -MAX_SAFE_INTEGER - 1, 2**64):
        with pytest.raises(CanonicalJSONError, match=r"^\$\.n: integer"):
            encode_canonical_json({"n": bad})


@pytest.mark.parametrize("bad", [1.5, 0.0, -0.0, 1e300, math.nan, math.inf, -math.inf])
def test_floats_are_refused_with_their_path(bad: float) -> None:
    with pytest.raises(CanonicalJSONError) as info:
        encode_canonical_json({"body": {"items": [1, {"price": bad}]}})
    assert info.value.path == "$.body.items[1].price"
    assert "$.body.items[1].price" in str(info.value)
    assert info.value.code == "INVALID_INPUT"
    assert isinstance(info.value, ValueError) and isinstance(info.value, FederationError)


@pytest.mark.parametrize(
    ("value", "path"),
    [
        ({1: "x"}, "$"),
        ({"a": {None: 1}}, "$.a"),
        ({"a": b"bytes"}, "$.a"),
        ({"a": {1, 2}}, "$.a"),
        ({"a": object()}, "$.a"),
        ({"bad\ud800key": 1}, "$"),
        ({"k": ["ok", "lone \udc00 surrogate"]}, "$.k[1]"),
        ({"名称": [0, 0.5]}, '$["名称"][1]'),
        ({"with space": {"x-y": 1.0}}, '$["with space"]["x-y"]'),
    ],
)
def test_refusals_name_the_path(value: object, path: str) -> None:
    with pytest.raises(CanonicalJSONError) as info:
        check_canonical_value(value)
    assert info.value.path == path


def test_nesting_limit_and_cycles() -> None:
    deep: list[object] = []
    for _ in range(MAX_DEPTH - 1):
        deep = [deep]
    assert encode_canonical_json(deep) == b"[" * MAX_DEPTH + b"]" * MAX_DEPTH
    with pytest.raises(CanonicalJSONError, match="nested deeper"):
        encode_canonical_json([[deep]])
    cycle: dict[str, object] = {}
    cycle["self"] = cycle
    with pytest.raises(CanonicalJSONError, match="circular"):
        encode_canonical_json(cycle)


def test_bool_is_not_mistaken_for_int() -> None:
    assert encode_canonical_json([True, 1, False, 0]) == b"[true,1,false,0]"


# Anything a caller might hand over, in and out of the domain: floats, big integers, lone surrogates, bytes,
# sets, tuples, integer keys, subclasses of the JSON types.
class _Str(str):
    pass


anything = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(alphabet=st.characters(), max_size=8)
    | tricky_text | st.binary(max_size=3) | st.builds(_Str, tricky_text)
    | st.sampled_from([MAX_SAFE_INTEGER, MAX_SAFE_INTEGER + 1, -MAX_SAFE_INTEGER - 1, 2**70, -0.0, "\ud800", "桓\udfff"]),
    lambda children: st.lists(children, max_size=4) | st.lists(children, max_size=3).map(tuple)
    | st.dictionaries(tricky_text | st.integers() | st.builds(_Str, tricky_text) | st.sampled_from(["\udc00", "键\ud83d"]),
                      children, max_size=4)
    | st.frozensets(st.integers(), max_size=2),
    max_leaves=30,
)


@settings(max_examples=1500)
@given(anything)
@example({"n": MAX_SAFE_INTEGER + 1})
@example({"s": ["ok", "\ud800"]})
@example({"\udc00": 1})
@example([{"x": 0.5}])
@example(("t", {"k": b"x"}))
def test_the_quick_domain_walk_never_accepts_what_the_full_check_refuses(value: object) -> None:
    try:
        _check(value, [], 0)
        inside = True
    except CanonicalJSONError:
        inside = False
    if _within_domain(value):
        assert inside  # "certainly inside" must be right; "not sure" only costs the full walk
    elif inside:
        assert _has_subclass(value)  # the only values the quick walk leaves to the full one without a fault
    if inside:
        check_canonical_value(value)
    else:
        with pytest.raises(CanonicalJSONError):
            check_canonical_value(value)


def _has_subclass(value: object) -> bool:
    if type(value) is dict:
        return any(_has_subclass(k) or _has_subclass(v) for k, v in value.items())  # type: ignore[attr-defined]
    if type(value) is list or type(value) is tuple:
        return any(_has_subclass(v) for v in value)  # type: ignore[attr-defined]
    return type(value) not in (str, int, bool, type(None))


def test_the_quick_walk_agrees_on_the_nesting_limit_and_ends_on_cycles() -> None:
    deep: list[object] = []
    for _ in range(MAX_DEPTH - 1):
        deep = [deep]
    assert _within_domain(deep)  # as deep as allowed
    assert not _within_domain([[deep]])
    with pytest.raises(CanonicalJSONError, match="nested deeper"):
        check_canonical_value([[deep]])
    cycle: dict[str, object] = {}
    cycle["self"] = cycle
    assert not _within_domain(cycle)  # it ends, and leaves the naming to the full check
    with pytest.raises(CanonicalJSONError, match="circular"):
        check_canonical_value(cycle)
