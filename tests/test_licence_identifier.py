"""Licence identifiers (GB/T 36904) and the ISO/IEC 7064 MOD 37,36 check character, against the standard's two
public examples; holder codes checked by type (GB 11643, GB 32100)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.ids import make_gb11643, make_gb32100
from node.licences.identifier import (ALPHABET, IdentifierError, holder_code_type, make, mod37_36, parse,
                                      valid_holder_code)

EXAMPLES = [
    "1.2.156.3005.2.11100000000013338W011.11430000006122244L.20230000403.001.U",
    "1.2.156.3005.2.11100000MB03271699022.340100.000000016.001.9",
]


@pytest.mark.parametrize("identifier", EXAMPLES)
def test_the_public_examples_verify(identifier):
    ident = parse(identifier)
    assert ident.check_ok
    assert ident.text == identifier
    assert mod37_36(ident.body) == identifier[-1]
    assert make(ident.type_code, ident.issuer_code, ident.serial, ident.version_number) == identifier


def test_parts_of_an_example():
    ident = parse(EXAMPLES[0])
    assert (ident.type_code, ident.issuer_code, ident.serial, ident.version, ident.check) == (
        "11100000000013338W011", "11430000006122244L", "20230000403", "001", "U")
    # The second example names its issuer by a division code (合肥市), with a 9-digit serial.
    ident = parse(EXAMPLES[1])
    assert (ident.issuer_code, ident.serial) == ("340100", "000000016")


@pytest.mark.parametrize("identifier", EXAMPLES)
def test_every_single_character_change_is_caught(identifier):
    """MOD 37,36 detects every substitution of one character: a change anywhere in the four parts (or of the
    check character itself) no longer verifies."""
    body_len = len(identifier)
    changed = 0
    for i in range(len("1.2.156.3005.2."), body_len):
        if identifier[i] == ".":
            continue
        for c in ALPHABET:
            if c == identifier[i]:
                continue
            text = identifier[:i] + c + identifier[i + 1:]
            try:
                ident = parse(text)
            except IdentifierError:
                continue  # the part's form already refuses it (e.g. a letter in the serial)
            assert not ident.check_ok, text
            changed += 1
    assert changed > 100


def test_adjacent_transpositions_are_caught():
    ident = parse(EXAMPLES[0])
    body = ident.body
    for i in range(len(body) - 1):
        if body[i] == body[i + 1]:
            continue
        swapped = body[:i] + body[i + 1] + body[i] + body[i + 2:]
        assert mod37_36(swapped) != ident.check, i


@given(st.text(alphabet=ALPHABET, min_size=1, max_size=60))
def test_a_made_check_character_always_verifies(text):
    check = mod37_36(text)
    assert check in ALPHABET
    # The defining property of the hybrid system (ISO/IEC 7064): run through the string with its check
    # character, the last step's sum is 1 (mod 36); no other character gives 1.
    def last_sum(full: str) -> int:
        p, s = 36, 0
        for ch in full:
            s = (p + ALPHABET.index(ch)) % 36
            p = ((s or 36) * 2) % 37
        return s

    assert last_sum(text + check) == 1
    assert all(last_sum(text + c) != 1 for c in ALPHABET if c != check)


@pytest.mark.parametrize(("text", "part"), [
    ("1.2.156.3005.3.11100000000013338W011.11430000006122244L.20230000403.001.U", "prefix"),
    ("1.2.156.3005.2.11100000000013338W011.11430000006122244L.20230000403.001", "parts"),
    ("1.2.156.3005.2.11100000000013338X011.11430000006122244L.20230000403.001.U", "type_code"),  # bad GB 32100
    ("1.2.156.3005.2.11100000000013338W01.11430000006122244L.20230000403.001.U", "type_code"),
    ("1.2.156.3005.2.11100000000013338W011.11430000006122244M.20230000403.001.U", "issuer_code"),
    ("1.2.156.3005.2.11100000000013338W011.3401.20230000403.001.U", "issuer_code"),
    ("1.2.156.3005.2.11100000000013338W011.11430000006122244L.2023A000403.001.U", "serial"),
    ("1.2.156.3005.2.11100000000013338W011.11430000006122244L.20230000403.000.U", "version"),
    ("1.2.156.3005.2.11100000000013338W011.11430000006122244L.20230000403.01.U", "version"),
    ("1.2.156.3005.2.11100000000013338W011.11430000006122244L.20230000403.001.u", "check"),
])
def test_malformed_parts_are_named(text, part):
    with pytest.raises(IdentifierError) as err:
        parse(text)
    assert err.value.part == part


def test_new_versions_keep_the_serial_and_change_the_check():
    first = make("11100000000013338W011", "11430000006122244L", "20260000001", 1)
    second = make("11100000000013338W011", "11430000006122244L", "20260000001", 2)
    a, b = parse(first), parse(second)
    assert a.serial == b.serial and (a.version, b.version) == ("001", "002")
    assert a.check_ok and b.check_ok


def test_holder_codes_are_checked_by_type():
    person = make_gb11643("370321", "19900101", 7)
    org = make_gb32100("91370321MA", 12)
    assert valid_holder_code(person, "111") and not valid_holder_code(person, "001")
    assert valid_holder_code(org, "001") and not valid_holder_code(org, "111")
    assert holder_code_type(person) == "111" and holder_code_type(org) == "001"
    assert holder_code_type("11010519491231002X") == "111"  # SPEC §1's example
    assert holder_code_type(person[:-1] + ("0" if person[-1] != "0" else "1")) is None
    assert not valid_holder_code(person, "414")  # other code types are not issued to
