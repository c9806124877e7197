"""Node certificates, revocations and the trust store (SPEC §1, §3)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import pytest

from federation.certs import (
    TrustStore,
    expected_parent_prefix_ok,
    level_of,
    make_certificate,
    make_revocation,
    valid_node_id,
)
from federation.errors import TrustError
from federation.signing import SigningKey, generate_signing_key, sign_json, verify_key_b64, verify_signed_json

T0 = 1_763_800_000_000
DAY = 86_400_000
T_END = T0 + 365 * DAY
NOW = T0 + DAY

PARENTS = {
    "370000": None,
    "370300": "370000",
    "370321": "370300",
    "370303": "370300",
    "370200": "370000",
    "370211": "370200",
}


@dataclass
class Tree:
    """A province 370000 (the anchor) with cities 370300 (counties 370321, 370303) and 370200 (county 370211)."""

    keys: dict[str, SigningKey] = field(default_factory=lambda: {n: generate_signing_key() for n in PARENTS})
    certs: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for node, parent in PARENTS.items():
            self.certs[node] = self.issue(node, parent)

    def issue(
        self,
        node: str,
        parent: str | None,
        *,
        issuer: str | None = None,
        signer: str | None = None,
        key: SigningKey | None = None,
        old: dict[str, dict[str, Any]] | None = None,
        valid_from: int = T0,
        valid_until: int = T_END,
    ) -> dict[str, Any]:
        """Certificate for ``node`` (key: its current key) issued by ``issuer`` and signed by ``signer``."""
        issuer = issuer or parent or node
        signer = signer or issuer
        key = key or self.keys.setdefault(node, generate_signing_key())
        cert = make_certificate(
            node=node,
            name=f"node {node}",
            level=level_of(node),
            parent=parent,
            endpoint=f"http://127.0.0.1:{8000 + int(node) % 1000}",
            verify_keys={key.key_id: verify_key_b64(key)},
            old_verify_keys=old or {},
            valid_from=valid_from,
            valid_until=valid_until,
            issuer=issuer,
        )
        return sign_json(cert, signer, self.keys[signer])

    def store(self) -> TrustStore:
        trust = TrustStore("370000", verify_key_b64(self.keys["370000"]))
        for node in PARENTS:  # parents come first in PARENTS
            assert trust.add_certificate(self.certs[node])
        return trust

    def revocation(self, node: str, issuer: str, revoked_at: int = T0, key_id: str = "ed25519:1") -> dict[str, Any]:
        return sign_json(make_revocation(node, key_id, revoked_at, issuer), issuer, self.keys[issuer])


@pytest.fixture
def tree() -> Tree:
    return Tree()


def trust_code(call: Any, *args: Any, **kwargs: Any) -> str:
    with pytest.raises(TrustError) as info:
        call(*args, **kwargs)
    return info.value.code


# --- identifiers ----------------------------------------------------------------------------


def test_levels_and_ids() -> None:
    assert [level_of(n) for n in ("000000", "370000", "370300", "370321", "429004")] == [
        "national",
        "province",
        "city",
        "county",
        "county",
    ]
    for bad in (
        "37030",
        "3703000",
        "37030a",
        "\uff13\uff17\uff10\uff13\uff10\uff10",
        "370300\n",
        "001000",
        370300,
        None,
    ):
        assert not valid_node_id(bad)
    with pytest.raises(ValueError):
        level_of("abc")


@pytest.mark.parametrize(
    ("node", "parent", "ok"),
    [
        ("370000", "000000", True),
        ("370300", "370000", True),
        ("370321", "370300", True),
        ("429004", "420000", True),  # 省直辖县级市 (Xiantao) directly under Hubei
        ("110105", "110000", True),  # a district directly under a municipality
        ("370321", "370200", False),
        ("370300", "000000", False),
        ("370300", "420000", False),
        ("370000", "110000", False),
        ("000000", "370000", False),
    ],
)
def test_expected_parent_prefix(node: str, parent: str, ok: bool) -> None:
    assert expected_parent_prefix_ok(node, parent) is ok


# --- certificate shape ----------------------------------------------------------------------


def test_make_certificate_shape(tree: Tree) -> None:
    cert = tree.certs["370321"]
    assert cert["type"] == "node_cert" and cert["issuer"] == "370300" and cert["level"] == "county"
    assert set(cert["signatures"]) == {"370300"}
    key_b64 = verify_key_b64(tree.keys["370321"])
    good = dict(
        node="370321",
        name="桓台县",
        level="county",
        parent="370300",
        endpoint="http://127.0.0.1:8321",
        verify_keys={"ed25519:1": key_b64},
        old_verify_keys={},
        valid_from=T0,
        valid_until=T_END,
        issuer="370300",
    )
    make_certificate(**good)
    for change in (
        {"level": "city"},
        {"node": "37032"},
        {"parent": "370321"},
        {"verify_keys": {}},
        {"verify_keys": {"ed25519:1": "short"}},
        {"verify_keys": {"rsa:1": key_b64}},
        {"old_verify_keys": {"ed25519:1": {"key": key_b64, "expired_at": T0}}},
        {"old_verify_keys": {"ed25519:0": {"key": key_b64}}},
        {"valid_until": T0},
        {"valid_from": float(T0)},
        {"valid_from": True},
        {"endpoint": "ftp://x"},
        {"name": ""},
    ):
        with pytest.raises(TrustError) as info:
            make_certificate(**{**good, **change})
        assert info.value.code == "INVALID_INPUT", change
        assert info.value.details, change


def test_malformed_certificates_are_refused(tree: Tree) -> None:
    trust = tree.store()
    cert = copy.deepcopy(tree.certs["370303"])
    assert trust_code(trust.add_certificate, {**cert, "extra": 1}) == "INVALID_INPUT"
    assert trust_code(trust.add_certificate, {k: v for k, v in cert.items() if k != "endpoint"}) == "INVALID_INPUT"
    assert trust_code(trust.add_certificate, {**cert, "type": "grant"}) == "INVALID_INPUT"
    assert trust_code(trust.add_certificate, {**cert, "name": "bad \udc00"}) == "INVALID_INPUT"


# --- chains ---------------------------------------------------------------------------------


def test_valid_chain(tree: Tree) -> None:
    trust = tree.store()
    chain = trust.verify_chain("370321", NOW)
    assert [c["node"] for c in chain] == ["370321", "370300", "370000"]
    assert chain == [tree.certs["370321"], tree.certs["370300"], tree.certs["370000"]]
    assert [c["node"] for c in trust.verify_chain("370000", NOW)] == ["370000"]
    assert [c["node"] for c in trust.chain_for("370211")] == ["370211", "370200", "370000"]
    assert trust.chain_for("999999") == []
    assert trust.known_nodes() == set(PARENTS)
    keys = trust.verify_keys_for("370321", now_ms=NOW)
    assert keys == {"ed25519:1": tree.keys["370321"].verify_key}


def test_store_keeps_its_own_copy(tree: Tree) -> None:
    trust = tree.store()
    tree.certs["370321"]["valid_until"] = T0 + 1
    assert trust.verify_chain("370321", NOW)[0]["valid_until"] == T_END


def test_unknown_node(tree: Tree) -> None:
    assert trust_code(tree.store().verify_chain, "370322", NOW) == "UNKNOWN"


def test_expiry_of_leaf_and_intermediate(tree: Tree) -> None:
    trust = tree.store()
    assert trust_code(trust.verify_chain, "370321", T_END) == "EXPIRED"
    assert trust_code(trust.verify_chain, "370321", T0 - 1) == "EXPIRED"  # not yet valid
    assert trust.add_certificate(tree.issue("370300", "370000", valid_from=T0 + 1, valid_until=NOW))
    with pytest.raises(TrustError, match="370300") as info:
        trust.verify_chain("370321", NOW)
    assert info.value.code == "EXPIRED"
    assert [c["node"] for c in trust.verify_chain("370321", NOW - 1)] == ["370321", "370300", "370000"]
    assert len(trust.verify_chain("370211", NOW)) == 3  # the other branch is unaffected


def test_tampered_certificate_is_refused(tree: Tree) -> None:
    trust = tree.store()
    forged = copy.deepcopy(tree.certs["370303"])
    forged["valid_from"] = T0 + 5
    forged["endpoint"] = "http://evil.example"
    assert trust_code(trust.add_certificate, forged) == "SIGNATURE_INVALID"
    assert trust.certificate("370303") == tree.certs["370303"]


def test_certificate_signed_by_a_non_parent_is_refused(tree: Tree) -> None:
    trust = tree.store()
    # names its parent as issuer, but the grandparent signed it
    by_grandparent = tree.issue("370303", "370300", signer="370000", valid_from=T0 + 1)
    assert trust_code(trust.add_certificate, by_grandparent) == "SIGNATURE_INVALID"
    # issued by someone other than the parent it names
    by_other = tree.issue("370303", "370300", issuer="370200", valid_from=T0 + 1)
    assert trust_code(trust.add_certificate, by_other) == "BROKEN_CHAIN"
    # self-signed draft (what a joining child sends) is no certificate
    draft = tree.issue("370303", "370300", issuer="370303", valid_from=T0 + 1)
    assert trust_code(trust.add_certificate, draft) == "BROKEN_CHAIN"
    assert trust.certificate("370303") == tree.certs["370303"]


def test_structure_rules(tree: Tree) -> None:
    anchor_key = verify_key_b64(tree.keys["370000"])
    empty = TrustStore("370000", anchor_key)
    # parents first: the issuer must be known
    assert trust_code(empty.add_certificate, tree.certs["370300"]) == "BROKEN_CHAIN"
    # a root that is not the anchor
    assert trust_code(empty.add_certificate, tree.issue("370300", None)) == "BROKEN_CHAIN"
    # the anchor's certificate signed by another key
    tree.keys["impostor"] = generate_signing_key()
    impostor = sign_json(
        {k: v for k, v in tree.issue("370000", None).items() if k != "signatures"}, "370000", tree.keys["impostor"]
    )
    assert trust_code(empty.add_certificate, impostor) == "SIGNATURE_INVALID"
    # the anchor's certificate naming a parent
    assert trust_code(empty.add_certificate, tree.issue("370000", "000000", issuer="370000")) == "BROKEN_CHAIN"

    trust = tree.store()
    # a county cannot certify anybody, a city cannot certify a city
    assert trust_code(trust.add_certificate, tree.issue("370322", "370321")) == "BROKEN_CHAIN"
    assert trust_code(trust.add_certificate, tree.issue("370400", "370300")) == "BROKEN_CHAIN"


def test_newest_valid_from_wins_and_identities_cannot_be_hijacked(tree: Tree) -> None:
    trust = tree.store()
    assert trust.add_certificate(tree.certs["370321"]) is False  # same one again
    older = tree.issue("370321", "370300", valid_from=T0 - DAY)
    assert trust.add_certificate(older) is False
    assert trust.certificate("370321") == tree.certs["370321"]

    # 370200 certifies 370321 as its own child, with a new key: refused
    tree.keys["hijack"] = generate_signing_key()
    hijack = tree.issue("370321", "370200", key=tree.keys["hijack"], valid_from=T0 + 10)
    assert trust_code(trust.add_certificate, hijack) == "BROKEN_CHAIN"
    assert trust.verify_keys_for("370321", now_ms=NOW) == {"ed25519:1": tree.keys["370321"].verify_key}

    # an ancestor of the issuer may re-parent (e.g. the county becomes directly administered)
    moved = tree.issue("370321", "370000", valid_from=T0 + 10)
    assert trust.add_certificate(moved) is True
    assert [c["node"] for c in trust.verify_chain("370321", NOW)] == ["370321", "370000"]
    assert trust.subtree_of("370300") == {"370300", "370303"}


def test_subtrees(tree: Tree) -> None:
    trust = tree.store()
    assert trust.subtree_of("370000") == set(PARENTS)
    assert trust.subtree_of("370300") == {"370300", "370321", "370303"}
    assert trust.subtree_of("370200") == {"370200", "370211"}
    assert trust.subtree_of("370321") == {"370321"}
    assert trust.subtree_of("999999") == set()


# --- rotation -------------------------------------------------------------------------------


def test_issuer_rotation_requires_reissuing_children(tree: Tree) -> None:
    trust = tree.store()
    assert len(trust.verify_chain("370321", NOW)) == 3  # fills the link cache
    old_key = tree.keys["370300"]
    new_key = generate_signing_key("2")
    rotated = tree.issue(
        "370300",
        "370000",
        key=new_key,
        old={old_key.key_id: {"key": verify_key_b64(old_key), "expired_at": NOW}},
        valid_from=T0 + 1,
    )
    assert trust.add_certificate(rotated)
    assert trust_code(trust.verify_chain, "370321", NOW) == "SIGNATURE_INVALID"
    stale = trust.certificate("370321")  # signed with the old key, as a neighbour's registry still holds it
    tree.keys["370300"] = new_key
    assert trust.add_certificate(tree.issue("370321", "370300", valid_from=T0 + 1))
    assert len(trust.verify_chain("370321", NOW)) == 3
    # That older copy arriving afterwards is not newer: ignored, not refused for its issuer's retired key.
    assert trust.add_certificate(stale) is False
    assert trust.certificate("370321")["valid_from"] == T0 + 1
    assert trust_code(trust.verify_chain, "370303", NOW) == "SIGNATURE_INVALID"  # not re-issued yet


def test_old_keys_verify_objects_signed_before_expiry_only(tree: Tree) -> None:
    trust = tree.store()
    old_key, new_key = tree.keys["370321"], generate_signing_key("2")
    expired_at = T0 + DAY // 2
    entry = {"type": "catalog_entry", "code": "101001/370321000001", "node": "370321", "seq": 1}
    before = sign_json({**entry, "updated_at": expired_at - 1}, "370321", old_key)
    after = sign_json({**entry, "updated_at": expired_at}, "370321", old_key)
    rotated = tree.issue(
        "370321",
        "370300",
        key=new_key,
        old={old_key.key_id: {"key": verify_key_b64(old_key), "expired_at": expired_at}},
        valid_from=T0 + 1,
    )
    assert trust.add_certificate(rotated)

    keys_before = trust.verify_keys_for("370321", before["updated_at"], now_ms=NOW)
    assert set(keys_before) == {"ed25519:1", "ed25519:2"}
    assert verify_signed_json(before, "370321", keys_before) == "ed25519:1"

    keys_after = trust.verify_keys_for("370321", after["updated_at"], now_ms=NOW)
    assert set(keys_after) == {"ed25519:2"}
    with pytest.raises(ValueError, match="known key id"):
        verify_signed_json(after, "370321", keys_after)
    # requests use current keys only
    assert set(trust.verify_keys_for("370321", now_ms=NOW)) == {"ed25519:2"}


# --- revocation -----------------------------------------------------------------------------


def test_revoked_intermediate_breaks_its_subtree(tree: Tree) -> None:
    trust = tree.store()
    assert trust.add_revocation(tree.revocation("370300", "370000", revoked_at=NOW - 1))
    for node in ("370300", "370321", "370303"):
        with pytest.raises(TrustError, match="370300 is revoked") as info:
            trust.verify_chain(node, NOW)
        assert info.value.code == "REVOKED"
        assert trust_code(trust.verify_keys_for, node, now_ms=NOW) == "REVOKED"
    assert trust.is_revoked("370300") and not trust.is_revoked("370321")
    for node in ("370000", "370200", "370211"):
        assert trust.verify_chain(node, NOW)
    # not yet in force before revoked_at
    assert len(trust.verify_chain("370321", NOW - 2)) == 3
    assert not trust.is_revoked("370300", NOW - 2)
    # duplicates and later copies change nothing; an earlier revoked_at does
    assert trust.add_revocation(tree.revocation("370300", "370000", revoked_at=NOW)) is False
    assert trust.add_revocation(tree.revocation("370300", "370000", revoked_at=NOW - 5)) is True


def test_revocation_issuer_rules(tree: Tree) -> None:
    trust = tree.store()
    assert trust_code(trust.add_revocation, tree.revocation("370321", "370200")) == "BROKEN_CHAIN"  # sibling branch
    assert trust_code(trust.add_revocation, tree.revocation("370321", "370321")) == "BROKEN_CHAIN"  # itself
    assert trust_code(trust.add_revocation, tree.revocation("370000", "370000")) == "BROKEN_CHAIN"  # the root
    assert trust_code(trust.add_revocation, tree.revocation("370399", "370300")) == "UNKNOWN"
    forged = tree.revocation("370321", "370300")
    forged["revoked_at"] += 1
    assert trust_code(trust.add_revocation, forged) == "SIGNATURE_INVALID"
    assert trust_code(trust.add_revocation, {**tree.revocation("370321", "370300"), "key_id": "1"}) == "INVALID_INPUT"
    # any ancestor may revoke, not only the parent
    assert trust.add_revocation(tree.revocation("370321", "370000"))
    assert trust_code(trust.verify_chain, "370321", NOW) == "REVOKED"
    assert len(trust.verify_chain("370303", NOW)) == 3


def test_revoking_an_old_key_after_rotation(tree: Tree) -> None:
    trust = tree.store()
    old_key, new_key = tree.keys["370321"], generate_signing_key("2")
    rotated = tree.issue(
        "370321",
        "370300",
        key=new_key,
        old={old_key.key_id: {"key": verify_key_b64(old_key), "expired_at": NOW}},
        valid_from=T0 + 1,
    )
    assert trust.add_certificate(rotated)
    compromised_at = T0 + 100
    assert trust.add_revocation(tree.revocation("370321", "370300", revoked_at=compromised_at))
    assert not trust.is_revoked("370321")  # its current key is fine
    assert len(trust.verify_chain("370321", NOW)) == 3
    assert "ed25519:1" in trust.verify_keys_for("370321", compromised_at - 1, now_ms=NOW)
    assert "ed25519:1" not in trust.verify_keys_for("370321", compromised_at, now_ms=NOW)


def test_revocation_signed_with_an_issuer_key_since_rotated(tree: Tree) -> None:
    """A revocation replicated after its issuer rotated still verifies with the issuer's old key."""
    trust = tree.store()
    revocation = tree.revocation("370321", "370300", revoked_at=T0 + 10)
    old_key, new_key = tree.keys["370300"], generate_signing_key("2")
    rotated = tree.issue(
        "370300",
        "370000",
        key=new_key,
        old={old_key.key_id: {"key": verify_key_b64(old_key), "expired_at": T0 + 20}},
        valid_from=T0 + 1,
    )
    assert trust.add_certificate(rotated)
    assert trust.add_revocation(revocation)
    late = tree.revocation("370303", "370300", revoked_at=T0 + 20)  # signed with the old key, too late
    assert trust_code(trust.add_revocation, late) == "SIGNATURE_INVALID"
