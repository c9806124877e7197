"""The catalog's facets and its search by level (the portal's 数据目录), on both stores: the counts per facet
that one grouped query gives agree with counting the entries one by one, under every choice tried."""

from __future__ import annotations

import random
from typing import Any

from federation.signing import generate_signing_key, sign_json
from node.catalog.http import CATALOG
from node.catalog.service import FACETS
from node.context import DB
from node.db import write_tx
from node.ids import level_of, make_gb32100, now_ms

NODES = ["370000", "370300", "370321", "370303"]
# Two departments a node; a department's code names its node's region, as real credit codes do.
DEPTS = {n: [make_gb32100(f"11{n}MB", i) for i in (1, 2)] for n in NODES}
WORDS = ["户籍人口", "低保对象", "企业登记", "不动产", "婚姻登记"]


def _entries(count: int) -> list[dict[str, Any]]:
    rng = random.Random(15)
    keys = {n: generate_signing_key("1") for n in NODES}
    out = []
    for i in range(count):
        node = NODES[i % len(NODES)]
        dept = rng.choice(DEPTS[node])
        share = rng.choice([{"type": "unconditional", "condition": "", "basis": "", "methods": ["api"]},
                            {"type": "conditional", "condition": "核验", "basis": "", "methods": ["api"]},
                            {"type": "none", "condition": "", "basis": "法规", "methods": ["api"]}])
        entry = {
            "type": "catalog_entry", "kind": "resource", "code": f"101001/{node}{i + 1:06d}", "node": node,
            "seq": i + 1, "version": 1, "deleted": i % 17 == 0, "updated_at": now_ms(),
            "name": f"{WORDS[i % len(WORDS)]}信息{i}", "category": rng.choice(["base", "theme", "department"]),
            "provider": {"dept": dept, "name": f"{node}部门{DEPTS[node].index(dept) + 1}"}, "summary": "",
            "format": "database", "items": [{"name": "公民身份号码", "field": "id_number", "type": "C", "key": True}],
            "share": share, "open": {"public": False, "condition": ""}, "update_cycle": "daily",
            "published_at": "2026-01-01", "related": [],
        }
        out.append(sign_json(entry, node, keys[node]))
    return out


def _brute(entries: list[dict[str, Any]], q: str | None, chosen: dict[str, str]) -> tuple[int, dict[str, dict[str, int]]]:
    """The expected counts, entry by entry: each facet counted under every choice but its own."""
    def value(e: dict[str, Any], facet: str) -> str:
        return {"level": level_of(e["node"]), "node": e["node"], "category": e["category"],
                "share_type": e["share"]["type"], "provider": e["provider"]["dept"]}[facet]

    live = [e for e in entries if not e["deleted"] and (not q or q in e["name"])]
    total = sum(all(value(e, f) == v for f, v in chosen.items()) for e in live)
    counts: dict[str, dict[str, int]] = {f: {} for f in FACETS}
    for facet in FACETS:
        for e in live:
            if all(value(e, f) == v for f, v in chosen.items() if f != facet):
                counts[facet][value(e, facet)] = counts[facet].get(value(e, facet), 0) + 1
    return total, counts


async def test_facet_counts_agree_with_counting_entry_by_entry(node):
    entries = _entries(300)
    catalog = node.app[CATALOG]
    async with write_tx(node.app[DB]) as conn:
        assert len(await catalog.apply_received_many(entries, conn)) == 300

    choices = [{}, {"level": "county"}, {"node": "370300"}, {"share_type": "conditional", "category": "theme"},
               {"level": "province", "provider": DEPTS["370000"][1]}, {"level": "city", "node": "370321"},
               {"provider": DEPTS["370303"][0], "share_type": "none", "category": "base"}]
    for q in (None, "户籍", "不动产 信息"):
        for chosen in choices:
            found = await catalog.facets(q=q, **chosen)
            words = q.split() if q else []
            expected_total, expected = _brute([e for e in entries if all(w in e["name"] for w in words)], None, chosen)
            assert found["total"] == expected_total, (q, chosen)
            assert found["counts"] == expected, (q, chosen)
            # The search's own count, with the same choices, agrees (level narrows it as the facet counts it).
            total, page = await catalog.search(q=q, node=chosen.get("node"), level=chosen.get("level"),
                                               category=chosen.get("category"), share_type=chosen.get("share_type"),
                                               provider=chosen.get("provider"), deleted=False, page=1, page_size=200)
            assert total == expected_total, (q, chosen)
            assert all(level_of(e["node"]) == chosen.get("level", level_of(e["node"])) for e in page)
    # Every provider is named, with its node, from one of its entries.
    found = await catalog.facets(q=None)
    assert found["providers"][DEPTS["370300"][1]] == {"node": "370300", "name": "370300部门2"}
    assert set(found["providers"]) == {e["provider"]["dept"] for e in entries if not e["deleted"]}
    assert set(found["counts"]["level"]) == {"province", "city", "county"}


async def test_facet_counts_follow_changes_committed_after_they_were_first_counted(node):
    """Each process counts from its own copy of the facet columns: a later change, whoever committed it, must
    be in the next count (a new entry, an entry changed to another share type, an entry withdrawn)."""
    entries = _entries(60)
    catalog = node.app[CATALOG]
    async with write_tx(node.app[DB]) as conn:
        await catalog.apply_received_many(entries[:50], conn)
    before = await catalog.facets(q=None)
    assert before["total"] == sum(not e["deleted"] for e in entries[:50])

    keys = {n: generate_signing_key("1") for n in NODES}
    live = [e for e in entries[:50] if not e["deleted"]]
    changed, withdrawn = dict(live[0]), dict(live[1])
    for doc in (changed, withdrawn):
        doc.pop("signatures", None)
        doc["seq"] += 100
        doc["version"] += 1
    changed["share"] = {"type": "none", "condition": "", "basis": "法规", "methods": ["api"]}
    withdrawn["deleted"] = True
    fresh = [sign_json(doc, doc["node"], keys[doc["node"]]) for doc in (changed, withdrawn)]
    async with write_tx(node.app[DB]) as conn:
        await catalog.apply_received_many(entries[50:] + fresh, conn)
    now = [e for e in entries if e["code"] not in (changed["code"], withdrawn["code"])] + fresh
    expected_total, expected = _brute(now, None, {})
    after = await catalog.facets(q=None)
    assert after["total"] == expected_total == before["total"] + sum(not e["deleted"] for e in entries[50:]) - 1
    assert after["counts"] == expected
    # Narrowed to the changed entry's new share type, it is counted there.
    assert (await catalog.facets(q=None, share_type="none"))["total"] == _brute(now, None, {"share_type": "none"})[0]
