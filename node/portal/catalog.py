"""The catalog in the portal (数据目录): searching the whole federation's catalog as this node holds it, with
counts per facet, and a resource's page: its 13 core elements, items, share conditions, provider and the
person's access. Entries come from the catalog service the API's search and get call; access comes from
the applications service's grants, with the person's Account."""

from __future__ import annotations

from datetime import datetime
from math import ceil
from typing import Any

from aiohttp import web
from urllib.parse import urlencode

from yarl import URL

from node.accounts.people import CST, Person
from node.catalog.http import CATALOG
from node.context import CONFIG
from node.errors import InvalidInput
from node.federation.http import FEDERATION
from node.ids import DEPT_CODE, NODE_ID, level_of
from node.portal.home import CYCLES, SHARE_TYPES
from node.portal.pages import LEVEL_NAMES, PortalRoutes, url
from node.sharing.http import SHARING, requester_of
from node.sharing.service import conditional
from node.web import CODE

routes = PortalRoutes()
PAGE_SIZE = 20
# Values of a facet shown before the rest fold away under "其余 …" (a province's catalog names ~150 nodes).
FACET_SHOWN = 8
# Values listed in all (the rest fold away under a note to narrow the search): the departments named.
FACET_LISTED = 40
MAX_PAGE = 100_000

CATEGORIES = {"base": "基础信息资源", "theme": "主题信息资源", "department": "部门信息资源"}
FORMATS = {"file": "电子文件", "spreadsheet": "电子表格", "database": "数据库", "image": "图形图像",
           "stream": "流媒体", "self_describing": "自描述格式", "service": "接口服务"}
ITEM_TYPES = {"C": "字符型", "N": "数值型", "Y": "货币型", "D": "日期型", "T": "日期时间型", "L": "逻辑型",
              "M": "备注型", "G": "通用型", "B": "二进制", "I": "整数型", "F": "浮点型"}
METHODS = {"api": "接口调用", "file": "文件下载", "table": "库表交换"}
OPS = {"query": "查询", "verify": "核验", "compare": "批量比对", "subscribe": "订阅"}
CHECKS = {"gb11643": "公民身份号码校验", "gb32100": "统一社会信用代码校验"}
FACET_TITLES = {"level": "层级", "node": "所在节点", "category": "资源分类", "share_type": "共享类型",
                "provider": "提供部门"}
LEVEL_ORDER = ("national", "province", "city", "county")
USE_OPS = ("verify", "query", "compare")


def node_namer(request: web.Request) -> Any:
    """A function from a node id to its name (this node's own, else the one in its certificate, which every
    node holds for the federation's nodes; the id itself when none is known)."""
    config = request.app[CONFIG]
    trust = request.app[FEDERATION].trust

    def name(node_id: str) -> str:
        if node_id == config.node.id:
            return config.node.name
        cert = trust.certificate(node_id) if trust is not None else None
        return str(cert["name"]) if cert and cert.get("name") else node_id

    return name


def node_view(request: web.Request, node_id: str) -> dict[str, str]:
    return {"id": node_id, "name": node_namer(request)(node_id), "level": LEVEL_NAMES[level_of(node_id)]}


# The search page ---------------------------------------------------------------------------------------

def _choice(query: Any, name: str, allowed: Any) -> str | None:
    value = query.get(name, "").strip()
    if not value:
        return None
    if not allowed(value):
        raise InvalidInput(f"检索条件“{FACET_TITLES.get(name, name)}”的取值无效，请从页面上重新选择",
                           [{"field": name, "error": "无效的取值"}])
    return value


def search_terms(query: Any) -> dict[str, Any]:
    """The search as the page's address states it; a value no link of the page makes is refused (400)."""
    q = query.get("q", "").strip()
    if len(q) > 200:
        raise InvalidInput("关键词不能超过 200 个字符", [{"field": "q", "error": "不能超过 200 个字符"}])
    try:
        page = int(query.get("page", "1"))
    except ValueError:
        page = 0
    if not 1 <= page <= MAX_PAGE:
        raise InvalidInput("页码无效", [{"field": "page", "error": "无效的页码"}])
    return {
        "q": q or None,
        "level": _choice(query, "level", LEVEL_NAMES.__contains__),
        "node": _choice(query, "node", lambda v: bool(NODE_ID.match(v))),
        "category": _choice(query, "category", CATEGORIES.__contains__),
        "share_type": _choice(query, "share_type", SHARE_TYPES.__contains__),
        "provider": _choice(query, "provider", lambda v: bool(DEPT_CODE.match(v))),
        "page": page,
    }


def _link(base: str, terms: dict[str, Any], **changes: Any) -> str:
    """The page's address with `changes` (a facet set or cleared goes back to the first page)."""
    merged = {**terms, "page": None, **changes}
    query = urlencode([(k, v) for k, v in merged.items() if v not in (None, "", 1)])
    return f"{base}?{query}" if query else base


def _facets(base: str, terms: dict[str, Any], found: dict[str, Any], names: Any) -> list[dict[str, Any]]:
    providers = found["providers"]
    labels = {
        "level": lambda v: LEVEL_NAMES.get(v, v),
        "node": lambda v: f"{names(v)}",
        "category": lambda v: CATEGORIES.get(v, v),
        "share_type": lambda v: SHARE_TYPES.get(v, v),
        "provider": lambda v: providers.get(v, {}).get("name", v),
    }
    notes = {"provider": lambda v: names(providers[v]["node"]) if v in providers else "",
             "node": lambda v: LEVEL_NAMES[level_of(v)]}
    out = []
    for facet, title in FACET_TITLES.items():
        counts = found["counts"][facet]
        chosen = terms[facet]
        if facet == "level":
            order = [v for v in LEVEL_ORDER if v in counts]
        elif facet in ("category", "share_type"):
            order = [v for v in (CATEGORIES if facet == "category" else SHARE_TYPES) if v in counts]
        else:  # many values: the largest first, then by code, so the page reads the same each time
            order = sorted(counts, key=lambda v: (-counts[v], v))
        if chosen and chosen not in counts:
            order.insert(0, chosen)
        # Only so many values are listed (a province's catalog names thousands of departments); the chosen
        # one always is.
        listed = order[:FACET_LISTED]
        if chosen and chosen not in listed:
            listed.append(chosen)
        values = [{"value": v, "count": counts.get(v, 0), "chosen": v == chosen, "label": labels[facet](v),
                   "note": notes[facet](v) if facet in notes else "",
                   "href": _link(base, terms, **{facet: None if v == chosen else v})} for v in listed]
        out.append({"name": facet, "title": title, "values": values[:FACET_SHOWN], "rest": values[FACET_SHOWN:],
                    "chosen": chosen, "unlisted": max(0, len(order) - len(listed)),
                    "clear": _link(base, terms, **{facet: None})})
    return out


def _pages(base: str, terms: dict[str, Any], page: int, last: int) -> list[dict[str, Any]]:
    """Page links: the first, the last, and two either side of the current one; gaps as None."""
    wanted = sorted({1, last, *range(max(1, page - 2), min(last, page + 2) + 1)})
    out: list[dict[str, Any]] = []
    for n in wanted:
        if out and out[-1]["n"] is not None and n > out[-1]["n"] + 1:
            out.append({"n": None})
        out.append({"n": n, "href": _link(base, terms, page=n), "current": n == page})
    return out


@routes.get("/portal/catalog", name="portal.catalog", template="catalog.html", nav="数据目录", order=20)
async def catalog_page(request: web.Request, person: Person | None) -> dict[str, Any]:
    terms = search_terms(request.query)
    catalog = request.app[CATALOG]
    chosen = {f: terms[f] for f in FACET_TITLES}
    found = await catalog.facets(q=terms["q"], named=FACET_LISTED, **chosen)
    total = found["total"]
    last = max(1, ceil(total / PAGE_SIZE))
    page = min(terms["page"], last)
    entries: list[dict[str, Any]] = []
    if total:
        _, entries = await catalog.search(q=terms["q"], node=terms["node"], level=terms["level"],
                                          category=terms["category"], share_type=terms["share_type"],
                                          provider=terms["provider"], deleted=False, page=page, page_size=PAGE_SIZE,
                                          with_total=False)  # the facets counted them
    names = node_namer(request)
    base = url(request, "portal.catalog")
    return {
        "terms": terms, "total": total, "entries": entries, "page": page, "last": last,
        "first_shown": (page - 1) * PAGE_SIZE + 1 if entries else 0, "last_shown": (page - 1) * PAGE_SIZE + len(entries),
        "facets": _facets(base, terms, found, names), "pages": _pages(base, terms, page, last),
        "prev": _link(base, terms, page=page - 1) if page > 1 else None,
        "next": _link(base, terms, page=page + 1) if page < last else None,
        "any_chosen": any(chosen.values()) or bool(terms["q"]),
        "clear_all": base, "hidden": {f: v for f, v in chosen.items() if v},
        "node_name": names, "level_of": lambda n: LEVEL_NAMES[level_of(n)],
        "share_types": SHARE_TYPES, "cycles": CYCLES, "categories": CATEGORIES,
        "resource_url": lambda code: resource_url(request, code),
    }


def resource_url(request: web.Request, code: str) -> str:
    return url(request, "portal.resource", code=code)


# A resource's page -------------------------------------------------------------------------------------

def apply_url(code: str) -> str:
    """Where a person applies for a grant on `code` (the applications pages)."""
    return str(URL("/portal/applications/new").with_query(resource=code))


def is_own(person: Person, entry: dict[str, Any]) -> bool:
    """Whether the person's department provides the resource (purpose is asked only of the others)."""
    acct = person.account
    return (entry["node"], entry["provider"]["dept"]) == (acct.node, acct.dept)


async def usable_grants(request: web.Request, person: Person, entry: dict[str, Any]) -> dict[str, dict[str, Any] | None]:
    """Per operation, the grant the person's department would call with: the one the sharing service attaches
    to its calls (the applications service's grants, valid now and allowing the operation), or None."""
    sharing = request.app[SHARING]
    if sharing.grant_finder is None:
        return dict.fromkeys(USE_OPS)
    requester = requester_of(person.account)
    return {op: await sharing.grant_finder(entry, op, requester) for op in USE_OPS}


def access_of(entry: dict[str, Any], grants: dict[str, dict[str, Any] | None]) -> dict[str, Any]:
    """What the person may do with the resource, as the sharing rules (SPEC §8) will decide it: per
    operation, open / granted (until when, which items) / needs a grant / never; and the sensitive items a
    query shows masked."""
    sensitive = [i["field"] for i in entry["items"] if i.get("sensitive")]
    ops: dict[str, dict[str, Any]] = {}
    for op in USE_OPS:
        best = grants.get(op)
        if entry["share"]["type"] == "none":
            state = "never"
        elif conditional(entry, op):
            state = "granted" if best else "needs_grant"
        else:
            state = "open"
        fields = best["fields"] if best else []
        # Open: sensitive items come masked unless a grant includes them. Granted (a conditional call): only
        # the grant's items are served at all, in clear.
        masked = [f for f in sensitive if f not in fields] if state == "open" else []
        until = datetime.fromtimestamp(best["valid_until"] / 1000, CST).date().isoformat() if best else None
        ops[op] = {"state": state, "grant": best, "fields": fields, "until": until, "masked": masked}
    return {"ops": ops, "sensitive": sensitive,
            "usable": [op for op, a in ops.items() if a["state"] in ("open", "granted")]}


@routes.get(f"/portal/catalog/{CODE}", name="portal.resource", template="resource.html")
async def resource_page(request: web.Request, person: Person | None) -> dict[str, Any]:
    assert person is not None
    return await resource_context(request, person)


async def resource_context(request: web.Request, person: Person) -> dict[str, Any]:
    """What every page about one resource shows of it (this page, and the pages that use it)."""
    code = request.match_info["code"].replace("%2F", "/")
    entry = await request.app[CATALOG].get(code)
    grants = await usable_grants(request, person, entry)
    names = {i["field"]: i["name"] for i in entry["items"]}
    return {
        "entry": entry, "code": code, "classification": code.split("/")[0],
        "provider_node": node_view(request, entry["node"]),
        "access": access_of(entry, grants), "own": is_own(person, entry), "item_names": names,
        "apply_url": apply_url(code), "resource_href": resource_url(request, code),
        "categories": CATEGORIES, "formats": FORMATS, "item_types": ITEM_TYPES, "methods": METHODS, "ops": OPS,
        "checks": CHECKS, "share_types": SHARE_TYPES, "cycles": CYCLES,
        "related_href": lambda c: resource_url(request, c),
        "current": "portal.catalog",  # the navigation marks the catalog, where the resource was found
    }
