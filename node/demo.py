"""`govnode demo`: a whole sample federation on loopback — 山东省 (province), 淄博市 (city), 桓台县 and
张店区 (counties) — joined through real invite tokens, with departments, sample resources and data holding
valid identities. Everything goes through the same commands and APIs an operator and departments use."""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import signal
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from node.accounts.people import PeopleService
from node.accounts.service import AccountService
from node.cli import command
from node.config import ConfigError, load_config
from node.db import make_engine, upgrade
from node.ids import make_gb11643, make_gb32100

MARKER = ".govnode-demo"

# (node, name, parent, port offset)
TREE = [
    ("370000", "山东省", None, 0),
    ("370300", "淄博市", "370000", 1),
    ("370321", "桓台县", "370300", 2),
    ("370303", "张店区", "370300", 3),
]

SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任沈姚卢"
GIVEN = "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英华玉兰萍红建国志明春梅海燕文博宇轩子涵欣怡浩然雨萱"
STREETS = ["人民路", "柳泉路", "共青团路", "华光路", "中心路", "金晶大道", "张周路", "渔洋街", "齐盛路", "北京路"]


@dataclass
class Dept:
    code: str
    name: str
    role: str = "dept"
    token: str = ""


@dataclass
class Person:
    username: str
    name: str
    dept: Dept
    password: str = ""


@dataclass
class DemoNode:
    node: str
    name: str
    parent: str | None
    port: int
    home: Path
    depts: list[Dept] = field(default_factory=list)
    people: list[Person] = field(default_factory=list)
    runner: web.AppRunner | None = None
    item: str = ""  # the implemented service item of the demo (一证通办), at 桓台县

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def portal(self) -> str:
        return f"{self.url}/portal/"


def _departments(node: str) -> list[Dept]:
    prefix = "11" + node
    main = {
        "370000": "山东省公安厅",
        "370300": "淄博市市场监督管理局",
        "370321": "桓台县民政局",
        "370303": "张店区人力资源和社会保障局",
    }[node]
    region = {"370000": "山东省", "370300": "淄博市", "370321": "桓台县", "370303": "张店区"}[node]
    other = {
        "370000": "山东省发展和改革委员会",
        "370300": "淄博市公安局",
        "370321": "桓台县公安局",
        "370303": "张店区行政审批服务局",
    }[node]
    return [
        Dept(make_gb32100(prefix, 1), main),
        Dept(make_gb32100(prefix, 2), other),
        Dept("OPERATOR", f"{region}大数据中心（平台运营）", "operator"),
        Dept("AUDITOR", f"{region}审计局", "auditor"),
    ]


def _people(depts: list[Dept]) -> list[Person]:
    """A clerk of the department that provides the node's sample resource, an operator and an auditor."""
    by_role = {d.role: d for d in reversed(depts)}
    return [Person("clerk", "王芳", depts[0]), Person("operator", "李强", by_role["operator"]),
            Person("auditor", "赵敏", by_role["auditor"])]


def _person(rng: random.Random, region: str, i: int) -> dict[str, Any]:
    year = rng.randint(1950, 2005)
    birth = f"{year}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"
    name = rng.choice(SURNAMES) + "".join(rng.choice(GIVEN) for _ in range(rng.randint(1, 2)))
    return {
        "id_number": make_gb11643(region, birth, i % 1000),
        "name": name,
        "gender": "男" if rng.random() < 0.5 else "女",
        "birth_date": f"{birth[:4]}-{birth[4:6]}-{birth[6:]}",
        "address": f"山东省淄博市{rng.choice(STREETS)}{rng.randint(1, 300)}号",
    }


def _resources(node: str, rng: random.Random) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """The sample resources of a node and their records."""
    if node == "370000":
        people = [_person(rng, rng.choice(["370321", "370303", "370302"]), i) for i in range(1, 501)]
        return [({
            "classification": "101001", "name": "山东省人口基础信息", "category": "base", "format": "database",
            "summary": "全省户籍人口的身份号码、姓名、性别、出生日期和住址（示例数据）",
            "items": [
                {"name": "公民身份号码", "field": "id_number", "type": "C", "length": 18, "key": True,
                 "sensitive": True, "check": "gb11643"},
                {"name": "姓名", "field": "name", "type": "C", "length": 50, "required": True},
                {"name": "性别", "field": "gender", "type": "C", "length": 2},
                {"name": "出生日期", "field": "birth_date", "type": "D"},
                {"name": "住址", "field": "address", "type": "C", "length": 200, "sensitive": True},
            ],
            "share": {"type": "unconditional", "methods": ["api"]},
            "open": {"public": False}, "update_cycle": "daily",
        }, people)]
    if node == "370300":
        companies = []
        for i in range(1, 201):
            companies.append({
                "credit_code": make_gb32100("91370300", 1000 + i),
                "name": f"淄博{rng.choice(['鲁中', '齐都', '博山', '周村', '华光'])}"
                        f"{rng.choice(['化工', '陶瓷', '机械', '医药', '物流'])}有限公司{i}",
                "legal_rep": rng.choice(SURNAMES) + rng.choice(GIVEN) + rng.choice(GIVEN),
                "registered_on": f"{rng.randint(1995, 2025)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
                "capital": f"{rng.randint(10, 5000)}.00",
            })
        return [({
            "classification": "102001", "name": "淄博市法人单位基础信息", "category": "base", "format": "database",
            "summary": "全市企业法人的统一社会信用代码、名称、法定代表人、成立日期和注册资本（万元，示例数据）",
            "items": [
                {"name": "统一社会信用代码", "field": "credit_code", "type": "C", "length": 18, "key": True,
                 "check": "gb32100"},
                {"name": "单位名称", "field": "name", "type": "C", "length": 200, "required": True},
                {"name": "法定代表人", "field": "legal_rep", "type": "C", "length": 50, "sensitive": True},
                {"name": "成立日期", "field": "registered_on", "type": "D"},
                {"name": "注册资本", "field": "capital", "type": "N"},
            ],
            "share": {"type": "unconditional", "methods": ["api", "table"]},
            "open": {"public": True}, "update_cycle": "daily",
        }, companies)]
    if node == "370321":
        people = [_person(rng, "370321", i) for i in range(1, 101)]
        return [({
            "classification": "301005", "name": "桓台县最低生活保障对象", "category": "department",
            "format": "database", "summary": "桓台县低保对象名单及保障金额（示例数据）",
            "items": [
                {"name": "公民身份号码", "field": "id_number", "type": "C", "length": 18, "key": True,
                 "sensitive": True, "check": "gb11643"},
                {"name": "姓名", "field": "name", "type": "C", "length": 50},
                {"name": "保障金额", "field": "amount", "type": "N"},
            ],
            "share": {"type": "conditional", "condition": "用于社会救助资格核验，须经民政部门同意",
                      "methods": ["api"]},
            "update_cycle": "monthly",
        }, [{"id_number": p["id_number"], "name": p["name"], "amount": f"{random.Random(i).randint(400, 900)}.00"}
            for i, p in enumerate(people)])]
    people = [_person(rng, "370303", i) for i in range(1, 201)]
    return [({
        "classification": "301002", "name": "张店区社会保险参保信息", "category": "department",
        "format": "database", "summary": "张店区城镇职工养老保险参保状态（示例数据）",
        "items": [
            {"name": "公民身份号码", "field": "id_number", "type": "C", "length": 18, "key": True,
             "sensitive": True, "check": "gb11643"},
            {"name": "姓名", "field": "name", "type": "C", "length": 50},
            {"name": "参保状态", "field": "status", "type": "C", "length": 10},
            {"name": "参保日期", "field": "since", "type": "D"},
        ],
        "share": {"type": "unconditional", "methods": ["api"]},
        "update_cycle": "daily",
    }, [{"id_number": p["id_number"], "name": p["name"], "status": random.Random(i).choice(["参保", "暂停", "终止"]),
         "since": f"{random.Random(i).randint(2000, 2025)}-0{random.Random(i).randint(1, 9)}-15"}
        for i, p in enumerate(people)])]


def _port_free(port: int) -> bool:
    """Whether a node could listen on `port`. Asked as the node's own listening socket asks (SO_REUSEADDR,
    as asyncio sets it on Unix), so the connections a demo stopped a moment ago left in TIME_WAIT do not make
    its ports look taken; a port something listens on still does."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _prepare_dir(base: Path) -> None:
    if base.exists() and any(base.iterdir()):
        if not (base / MARKER).exists():
            raise ConfigError(f"{base} exists and is not a demo directory; choose another --dir")
        shutil.rmtree(base)
    base.mkdir(parents=True, exist_ok=True)
    (base / MARKER).write_text("made by `govnode demo`; removed and rebuilt at each demo start\n", encoding="utf-8")


async def _api(session: aiohttp.ClientSession, method: str, url: str, token: str, body: Any = None,
               ndjson: bool = False) -> Any:
    headers = {"Authorization": f"Bearer {token}"}
    data = None
    if ndjson:
        headers["Content-Type"] = "application/x-ndjson"
        data = "\n".join(json.dumps(r, ensure_ascii=False) for r in body).encode("utf-8")
    elif body is not None:
        headers["Content-Type"] = "application/json"
        data = json.dumps(body, ensure_ascii=False).encode("utf-8")
    async with session.request(method, url, data=data, headers=headers) as resp:
        answer = await resp.json(content_type=None)
        if resp.status >= 400:
            raise RuntimeError(f"{method} {url} failed: {resp.status} {answer}")
        return answer


async def _start(n: DemoNode) -> None:
    from node.app import init_app

    config = load_config(n.home)
    n.runner = web.AppRunner(init_app(config), access_log=None)
    await n.runner.setup()
    await web.TCPSite(n.runner, "127.0.0.1", n.port).start()


async def build(base: Path, base_port: int, out: Any = print) -> tuple[list[DemoNode], str, dict[str, Any]]:
    """Create, join, start and fill the demo federation; returns the running nodes, the code of the
    province's population resource and one citizen held in it."""
    from node.commands import create_home
    from node.federation.commands import join_parent
    from node.federation.service import FederationService

    nodes = [DemoNode(code, name, parent, base_port + off, base / code) for code, name, parent, off in TREE]
    busy = [n.port for n in nodes if not _port_free(n.port)]
    if busy:
        raise ConfigError(f"ports {busy} are in use; choose another --base-port")
    by_code = {n.node: n for n in nodes}
    for n in nodes:
        parent = by_code[n.parent] if n.parent else None
        create_home(n.home, n.node, n.name, f"127.0.0.1:{n.port}", parent.url if parent else None)
        config = load_config(n.home)
        engine = make_engine(config.database, config.sqlite_synchronous)
        try:
            await upgrade(engine)
            accounts = AccountService(engine, n.node)
            n.depts = _departments(n.node)
            for d in n.depts:
                d.token = await accounts.add_department(d.code, d.name, d.role)
            people = PeopleService(engine, n.node)
            n.people = _people(n.depts)
            for p in n.people:
                p.password = await people.add(p.username, p.dept.code, display_name=p.name)
            if parent is not None:
                token = await FederationService.create_invite(make_engine(load_config(parent.home).database), n.node)
                out(await join_parent(config, parent.url, token))
        finally:
            await engine.dispose()
        await _start(n)
        out(f"started {n.node} {n.name} at {n.url}")
    rng = random.Random(2260)
    province_code, citizen = "", {}
    codes: dict[str, str] = {}
    async with aiohttp.ClientSession() as session:
        for n in nodes:
            provider = n.depts[0]
            for entry, records in _resources(n.node, rng):
                created = await _api(session, "POST", f"{n.url}/api/v1/catalog", provider.token, entry)
                await _api(session, "POST", f"{n.url}/api/v1/resources/{created['code']}/records", provider.token,
                           records, ndjson=True)
                out(f"  {n.name}: {created['name']} {created['code']} ({len(records)} records)")
                codes[n.node] = created["code"]
                if n.node == "370000":
                    province_code, citizen = created["code"], records[0]
        await _wait_converged(session, nodes)
        await _items(session, by_code, codes, citizen, out)
        await _blacklist(session, by_code["370321"], by_code["370303"], out)
    return nodes, province_code, citizen


BASIC_ITEMS = [
    {"kind": "basic", "name": "最低生活保障金给付", "type": "JF", "basis": "《社会救助暂行办法》第九条、第十一条"},
    {"kind": "basic", "name": "食品经营许可", "type": "XK", "basis": "《中华人民共和国食品安全法》第三十五条"},
]


async def _items(session: aiohttp.ClientSession, by_code: dict[str, DemoNode], codes: dict[str, str],
                 citizen: dict[str, Any], out: Any) -> None:
    """Two basic items defined at the province, and 桓台县民政局's implemented item of the first, whose
    materials the province's population register and 张店区's social insurance records replace (一证通办)."""
    province, county, zhangdian = by_code["370000"], by_code["370321"], by_code["370303"]
    operator = next(d for d in province.depts if d.role == "operator")
    basics = [await _api(session, "POST", f"{province.url}/api/v1/items", operator.token, b) for b in BASIC_ITEMS]
    # The sample citizen is insured at 张店区 too, so that 一证通办 finds both of their records.
    await _api(session, "POST", f"{zhangdian.url}/api/v1/resources/{codes['370303']}/records", zhangdian.depts[0].token,
               [{"id_number": citizen["id_number"], "name": citizen["name"], "status": "参保", "since": "2015-03-15"}])
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while True:  # the basic item replicates down to the county
        async with session.get(f"{county.url}/api/v1/items/{basics[0]['code']}",
                               headers={"Authorization": f"Bearer {county.depts[0].token}"}) as resp:
            if resp.status == 200:
                break
        if loop.time() > deadline:
            raise RuntimeError("the demo's basic items did not reach the county within 30 s")
        await asyncio.sleep(0.2)
    basic = basics[0]
    item = await _api(session, "POST", f"{county.url}/api/v1/items", county.depts[0].token, {
        "kind": "implemented", "basic_code": basic["code"], "name": basic["name"], "type": basic["type"],
        "basis": basic["basis"], "time_limit": 15, "materials": [
            {"id": "m1", "name": "居民户口簿", "by_sharing": {"resource": codes["370000"], "op": "query",
                                                              "fields": ["name", "gender", "birth_date"]}},
            {"id": "m2", "name": "身份证明", "by_sharing": {"resource": codes["370000"], "op": "verify",
                                                             "fields": ["name"]}},
            {"id": "m3", "name": "社会保险参保证明", "by_sharing": {"resource": codes["370303"], "op": "query",
                                                                     "fields": ["name", "status"]}},
            {"id": "m4", "name": "家庭收入及财产状况说明", "by_sharing": None},
        ]})
    county.item = item["code"]
    out(f"  桓台县: 实施清单事项 {item['name']} {item['code']} (4 materials, 3 by sharing)")



# A small blacklist at the county (联合奖惩, SPEC §17), so that a check at the other county hits.
BLACKLISTED = [(make_gb32100("51370321MJ", i), name, reason) for i, name, reason in (
    (1, "桓台县某某养老服务中心", "未按规定报送年度工作报告，被列入活动异常名录满两年"),
    (2, "桓台县某某职业培训学校", "弄虚作假骗取政府补贴，受到行政处罚"),
    (3, "桓台县某某文化交流协会", "被登记管理机关撤销登记"))]


async def _blacklist(session: aiohttp.ClientSession, county: DemoNode, other: DemoNode, out: Any) -> None:
    issuer = county.depts[0]
    lst = await _api(session, "POST", f"{county.url}/api/v1/lists", issuer.token, {
        "name": "社会组织严重违法失信名单", "kind": "black", "public": True,
        "measures": ["不予享受税收优惠", "限制参与政府购买服务", "限制评优评先"],
        "basis": "《社会组织信用信息管理办法》"})
    await _api(session, "POST", f"{county.url}/api/v1/lists/{lst['code']}/entries", issuer.token, [
        {"subject": {"code": code, "name": name}, "reason": reason, "basis": "桓民罚〔2026〕第3号"}
        for code, name, reason in BLACKLISTED])
    out(f"  {county.name}: {lst['name']} {lst['code']} ({len(BLACKLISTED)} entries)")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while loop.time() < deadline:  # until the list has reached the other county
        answer = await _api(session, "POST", f"{other.url}/api/v1/lists/check", other.depts[1].token,
                            {"subjects": [{"code": BLACKLISTED[0][0]}], "purpose": "演示"})
        if answer["hit_subjects"]:
            return
        await asyncio.sleep(0.2)
    raise RuntimeError("the demo blacklist did not reach 张店区 within 30 s")


async def _wait_converged(session: aiohttp.ClientSession, nodes: list[DemoNode], timeout_s: float = 30) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        totals = []
        for n in nodes:
            page = await _api(session, "GET", f"{n.url}/api/v1/catalog", n.depts[0].token)
            totals.append(page["total"])
        if all(t == len(nodes) for t in totals):
            return
        await asyncio.sleep(0.2)
    raise RuntimeError(f"the demo catalog did not converge within {timeout_s} s")


def _banner(nodes: list[DemoNode], province_entry: str, people_sample: dict[str, Any]) -> str:
    lines = ["", "govnode demo federation is running (Ctrl-C stops every node).", "",
             "Open a node's portal (政务数据共享门户) in a browser and sign in with a login below; each person sets",
             f"a new password at the first sign-in. Start as the 桓台县 clerk at {nodes[2].portal}", ""]
    for n in nodes:
        lines.append(f"  {n.portal:<32} {n.name}")
        for p in n.people:
            lines.append(f"      user {p.username:<9} password {p.password}   {p.name}, {p.dept.name} ({p.dept.role})")
    lines += ["", "The department API (SPEC §10), with each department's token:", ""]
    for n in nodes:
        lines.append(f"  {n.node} {n.name:<4} {n.url}   home {n.home}")
        for d in n.depts:
            lines.append(f"      {d.role:<8} {d.code:<18} {d.name}: {d.token}")
    county = nodes[2]
    tok = county.depts[1].token
    lines += [
        "",
        "Try it (a 桓台县 clerk verifies a citizen held by the province; the call is routed county → city → province):",
        f"  curl -s -X POST {county.url}/api/v1/resources/{province_entry}/verify \\",
        f"    -H 'Authorization: Bearer {tok}' -H 'Content-Type: application/json' \\",
        f"    -d '{json.dumps({'key': people_sample['id_number'], 'fields': {'name': people_sample['name']}}, ensure_ascii=False)}'",
        "",
        "Search the whole federation's catalog from the county:",
        f"  curl -s '{county.url}/api/v1/catalog?page_size=10' -H 'Authorization: Bearer {tok}'",
        "",
        "Query the province's population record (sensitive items come back masked):",
        f"  curl -s -X POST {county.url}/api/v1/resources/{province_entry}/query \\",
        f"    -H 'Authorization: Bearer {tok}' -H 'Content-Type: application/json' \\",
        f"    -d '{json.dumps({'key': people_sample['id_number']})}'",
        "",
        "一证通办: one ID, every material sharing replaces for 桓台县's 最低生活保障金给付 (also in the portal:",
        "政务服务事项 → the item → 一证通办):",
        f"  curl -s -X POST {county.url}/api/v1/items/{county.item}/materials \\",
        f"    -H 'Authorization: Bearer {county.depts[0].token}' -H 'Content-Type: application/json' \\",
        f"    -d '{json.dumps({'subject': {'code': people_sample['id_number']}, 'purpose': '最低生活保障资格审核', 'values': {'name': people_sample['name']}}, ensure_ascii=False)}'",
        "",
        "Check a social organisation against every list (联合奖惩) at 张店区; the list was published at 桓台县:",
        f"  curl -s -X POST {nodes[3].url}/api/v1/lists/check \\",
        f"    -H 'Authorization: Bearer {nodes[3].depts[1].token}' -H 'Content-Type: application/json' \\",
        f"    -d '{json.dumps({'subjects': [{'code': BLACKLISTED[0][0]}], 'purpose': '政府购买服务资格审查'}, ensure_ascii=False)}'",
        "",
        "Health, peers and outboxes of the city:",
        f"  curl -s {nodes[1].url}/healthz",
        "",
    ]
    return "\n".join(lines)


async def run_demo(base: Path, base_port: int) -> int:
    _prepare_dir(base)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    nodes: list[DemoNode] = []
    try:
        nodes, province_code, citizen = await build(base, base_port)
        print(_banner(nodes, province_code, citizen), flush=True)
        await stop.wait()
        print("stopping…", flush=True)
    finally:
        for n in reversed(nodes):
            if n.runner is not None:
                await n.runner.cleanup()
    print("all demo nodes stopped", flush=True)
    return 0


def demo(args: argparse.Namespace) -> int:
    from node.logs import setup_logging

    setup_logging("WARNING")
    return asyncio.run(run_demo(Path(args.dir), args.base_port))


def register(sub: argparse._SubParsersAction, home: argparse.ArgumentParser) -> None:
    p = command(sub, "demo", demo, help="a whole sample federation on loopback (province, city, two counties)")
    p.add_argument("--dir", default="./govnode-demo", help="where the demo nodes keep their homes")
    p.add_argument("--base-port", type=int, default=8300, help="the province listens here, the others next")
