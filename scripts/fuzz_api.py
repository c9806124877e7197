"""Deep fuzzing (not a test): schemathesis' stateful run against a real node, for every role.

    python scripts/fuzz_api.py [--minutes 30] [--backend sqlite|postgresql] [--steps 12]

A node (370321 桓台县, SQLite by default) is started on loopback with a department, a second department, an
operator and an auditor. Schemathesis reads the node's own OpenAPI document and links its operations by
the data they share (dependency analysis: a catalog entry's `code` feeds the record push, query, verify,
compare and application of that resource; an application's `id` feeds its review, decision and withdrawal;
and so on), then runs sequences of linked calls with generated valid and invalid data. Each role takes turns
for `--minutes` in all. Every answer is checked: no server error, and status, content type and body as the
document says.

At the end it prints the operations reached, the examples (calls) made by operation and role, the links
followed, and each distinct failure with a call that reproduces it. Exit status 1 when anything failed.
Traffic stays on 127.0.0.1; the node is stopped at the end, also on error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import schemathesis  # noqa: E402
from hypothesis import HealthCheck, Phase, settings  # noqa: E402
from schemathesis.core.failures import FailureGroup  # noqa: E402
from schemathesis.specs.openapi.checks import positive_data_acceptance, use_after_free  # noqa: E402

from support import CIVIL, POLICE, ThreadedNode  # noqa: E402

ACCOUNTS = {
    "dept": (POLICE, "桓台县公安局", "dept"),
    "civil": (CIVIL, "桓台县民政局", "dept"),
    "operator": ("OPERATOR", "桓台县大数据中心", "operator"),
    "auditor": ("AUDITOR", "桓台县审计局", "auditor"),
}


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--backend", choices=["sqlite", "postgresql"], default="sqlite")
    ap.add_argument("--steps", type=int, default=12, help="calls in one sequence at most")
    ap.add_argument("--batch", type=int, default=25, help="sequences a role runs before the next role's turn")
    ap.add_argument("--roles", default=",".join(ACCOUNTS), help="comma-separated: " + ", ".join(ACCOUNTS))
    args = ap.parse_args(argv)
    roles = [r for r in args.roles.split(",") if r]

    with tempfile.TemporaryDirectory(prefix="govnode-fuzz-") as tmp:
        node = ThreadedNode(Path(tmp), args.backend, ACCOUNTS)
        try:
            return fuzz(node, roles, args)
        finally:
            node.close()


# Links the document does not state and dependency analysis cannot infer, because the names differ: a catalog
# entry's `code` is the `{code}` of /resources/... and the `resource` of an application, feedback or
# subscription. With them a sequence can register an entry, push records, query them, apply and be reviewed.
CATALOG_LINKS = {
    ("/api/v1/resources/{code}/records", "post"): {"parameters": {"path.code": "$response.body#/code"}},
    ("/api/v1/resources/{code}/query", "post"): {"parameters": {"path.code": "$response.body#/code"}},
    ("/api/v1/resources/{code}/verify", "post"): {"parameters": {"path.code": "$response.body#/code"}},
    ("/api/v1/resources/{code}/compare", "post"): {"parameters": {"path.code": "$response.body#/code"}},
    ("/api/v1/resources/{code}/changes", "get"): {"parameters": {"path.code": "$response.body#/code"}},
    ("/api/v1/catalog/{code}", "get"): {"parameters": {"path.code": "$response.body#/code"}},
    ("/api/v1/catalog/{code}", "put"): {"parameters": {"path.code": "$response.body#/code"}},
    ("/api/v1/catalog/{code}", "delete"): {"parameters": {"path.code": "$response.body#/code"}},
    ("/api/v1/applications", "post"): {"requestBody": {"resource": "$response.body#/code"}},
    ("/api/v1/feedback", "post"): {"requestBody": {"resource": "$response.body#/code"}},
    ("/api/v1/subscriptions", "post"): {"requestBody": {"resource": "$response.body#/code"}},
}
RECORD_LINKS = {  # after a push, the same resource's records are read back
    ("/api/v1/resources/{code}/query", "post"): {"parameters": {"path.code": "$request.path.code"}},
    ("/api/v1/resources/{code}/verify", "post"): {"parameters": {"path.code": "$request.path.code"}},
    ("/api/v1/resources/{code}/compare", "post"): {"parameters": {"path.code": "$request.path.code"}},
    ("/api/v1/resources/{code}/changes", "get"): {"parameters": {"path.code": "$request.path.code"}},
    ("/api/v1/feedback", "post"): {"requestBody": {"resource": "$request.path.code"}},
}


# Random data almost never makes a catalog entry the rules accept (one key item, a known classification...),
# so a sequence would rarely get past its first step. Each of these bodies is offered beside the generated
# ones (anyOf), so some sequences register a real entry, push records into it and query them back.
PERSON = {"id_number": "11010519491231002X", "name": "张三"}
SEEDS = {
    ("/api/v1/catalog", "post"): {
        "classification": "101001", "name": "桓台县户籍人口基本信息", "category": "base", "format": "database",
        "summary": "户籍人口的基本信息",
        "items": [{"name": "公民身份号码", "field": "id_number", "type": "C", "length": 18, "key": True},
                  {"name": "姓名", "field": "name", "type": "C", "length": 50}],
        "share": {"type": "conditional", "condition": "经审核同意", "methods": ["api"]}, "update_cycle": "realtime"},
    ("/api/v1/resources/{code}/records", "post"): [PERSON, {"id_number": "110105194912310037", "name": "李四"}],
    ("/api/v1/resources/{code}/query", "post"): {"key": PERSON["id_number"], "fields": ["name"]},
    ("/api/v1/resources/{code}/verify", "post"): {"key": PERSON["id_number"], "fields": {"name": "张三"}},
    ("/api/v1/resources/{code}/compare", "post"): {"records": [PERSON], "fields": ["name"]},
    ("/api/v1/applications", "post"): {"resource": "101001/370321000001", "ops": ["query"], "fields": ["name"],
                                       "purpose": "核验户籍信息", "basis": "《社会救助暂行办法》"},
    ("/api/v1/feedback", "post"): {"resource": "101001/370321000001", "key": PERSON["id_number"], "fields": ["name"],
                                   "description": "姓名疑似有误"},
}


def with_seeds(doc: dict) -> None:
    for (path, method), body in SEEDS.items():
        media = doc["paths"].get(path, {}).get(method, {}).get("requestBody", {}).get("content", {}).get("application/json")
        if media is not None:
            media["schema"] = {"anyOf": [{"const": body}, media["schema"]]}


def _ref(path: str, method: str) -> str:
    return "#/paths/" + path.replace("~", "~0").replace("/", "~1") + "/" + method


def with_links(doc: dict) -> tuple[dict, int]:
    """The node's document with the links above added to the answers they start from; (doc, links added)."""
    added = 0
    for (src_path, src_method, status), links in (
            (("/api/v1/catalog", "post", "201"), CATALOG_LINKS),
            (("/api/v1/resources/{code}/records", "post", "200"), RECORD_LINKS)):
        response = doc["paths"].get(src_path, {}).get(src_method, {}).get("responses", {}).get(status)
        if response is None:
            continue
        for (path, method), link in links.items():
            if method in doc["paths"].get(path, {}):
                name = f"{method.upper()} {path}".replace("/", "_").replace("{", "").replace("}", "")
                response.setdefault("links", {})[name] = {"operationRef": _ref(path, method), **link}
                added += 1
    return doc, added


def fuzz(node: ThreadedNode, roles: list[str], args: argparse.Namespace) -> int:
    import json
    import urllib.request

    with urllib.request.urlopen(node.url + "/api/v1/openapi.json", timeout=30) as resp:
        doc, stated = with_links(json.loads(resp.read()))
    with_seeds(doc)
    schema = schemathesis.openapi.from_dict(doc)
    examples: Counter = Counter()  # (role, operation) -> calls
    statuses: Counter = Counter()  # status class -> calls
    failures: dict[str, str] = {}  # first line -> the whole report (with a call that reproduces it)
    failure_roles: dict[str, set[str]] = {}
    refused_valid: Counter = Counter()  # operation -> schema-valid requests answered 400 (rules the schema cannot state)
    sequences = 0

    base = schema.as_state_machine()
    links = sum(len(t.outgoing) for t in getattr(base, "_transitions", None).operations.values()) \
        if hasattr(getattr(base, "_transitions", None), "operations") else None
    operations = [r.ok().label for r in schema.get_all_operations()]

    deadline = time.monotonic() + args.minutes * 60
    turn = 0
    while time.monotonic() < deadline:
        role = roles[turn % len(roles)]
        turn += 1
        headers = {"Authorization": f"Bearer {node.tokens[role]}"}

        class Machine(base):  # type: ignore[valid-type, misc]
            def get_call_kwargs(self, case):  # noqa: ANN001, ANN202
                return {"base_url": node.url, "headers": headers, "timeout": 30}

            def after_call(self, response, case):  # noqa: ANN001, ANN202
                super().after_call(response, case)
                examples[(role, case.operation.label)] += 1
                statuses[f"{response.status_code // 100}xx"] += 1

            def validate_response(self, response, case, **kwargs):  # noqa: ANN001, ANN003, ANN202
                # A request the schema allows may still break a rule the schema cannot state (a check digit, a
                # calendar date, a webhook needing its url): 400 INVALID_INPUT naming the field is the right
                # answer, so "schema-valid request refused" is counted, not failed. Everything else is checked.
                if response.status_code == 400 and case.meta is not None and \
                        getattr(case.meta.generation, "mode", None) is not None and \
                        case.meta.generation.mode.name == "POSITIVE":
                    refused_valid[case.operation.label] += 1
                excluded = [positive_data_acceptance]
                if str((case.query or {}).get("deleted", "")).lower() in ("true", "1"):
                    # `?deleted=true` asks for a withdrawn entry's tombstone (SPEC §7: withdrawal is a tombstone
                    # that replicates): 200 with `deleted: true` is the answer, not a use after free.
                    excluded.append(use_after_free)
                try:
                    case.validate_response(response, excluded_checks=excluded,
                                           transport_kwargs=kwargs or None, recorder=self.recorder)
                except (Exception, FailureGroup) as exc:  # noqa: BLE001 - what failed, and how to call it again
                    group = exc.exceptions if isinstance(exc, BaseExceptionGroup) else [exc]
                    for one in group:
                        key = f"{case.operation.label}: {first_line(one)}"
                        if key not in failures:
                            body = response.text[:600] if hasattr(response, "text") else ""
                            failures[key] = (f"{one}\n   answered {response.status_code}: {body}\n   reproduce: "
                                             f"{case.as_curl_command(headers=headers)}")
                            print(f"found [{role}] {key}", flush=True)
                        failure_roles.setdefault(key, set()).add(role)
                    raise

            def teardown(self):  # noqa: ANN202
                nonlocal sequences
                sequences += 1
                super().teardown()

        try:
            Machine.run(settings=settings(max_examples=args.batch, stateful_step_count=args.steps, deadline=None,
                                          database=None, derandomize=False, suppress_health_check=list(HealthCheck),
                                          phases=[Phase.generate]))
        except (Exception, FailureGroup) as exc:  # noqa: BLE001 - reported below; the run goes on
            if not any(role in r for r in failure_roles.values()):  # not one of the answers checked above
                key = f"(run) {first_line(exc)}"
                failures.setdefault(key, str(exc)[:4000])
                failure_roles.setdefault(key, set()).add(role)
        left = (deadline - time.monotonic()) / 60
        print(f"[{role}] {sum(examples.values())} calls, {sequences} sequences, {len(failures)} distinct failure(s); "
              f"{max(left, 0):.1f} min left", flush=True)

    reached = {op for (_r, op) in examples}
    print(f"\n-- stateful fuzzing: {args.minutes:g} min, roles {', '.join(roles)}, backend {args.backend}")
    print(f"   operations in the document: {len(operations)}; reached: {len(reached)}; links between them"
          f"{f': {links}' if links is not None else ''} ({stated} stated here, the rest inferred); sequences: {sequences}; calls (examples): "
          f"{sum(examples.values())} ({', '.join(f'{k} {v}' for k, v in sorted(statuses.items()))})")
    for role in roles:
        n = sum(v for (r, _op), v in examples.items() if r == role)
        print(f"   {role}: {n} calls over {len({op for (r, op) in examples if r == role})} operations")
    unreached = sorted(set(operations) - reached)
    if unreached:
        print(f"   not reached: {', '.join(unreached)}")
    print("   most called: " + ", ".join(f"{op} {n}" for op, n in Counter(
        {op: sum(v for (r, o), v in examples.items() if o == op) for op in reached}).most_common(8)))
    if refused_valid:
        print("   schema-valid requests refused 400 by rules the document cannot state (not failures): "
              + ", ".join(f"{op} {n}" for op, n in refused_valid.most_common()))
    if failures:
        print(f"   FAILURES ({len(failures)} distinct):")
        for key, text in failures.items():
            print(f"\n   [{', '.join(sorted(failure_roles[key]))}] {key}\n{text}\n")
        return 1
    print("   failures: none")
    return 0


if __name__ == "__main__":
    sys.exit(main())
