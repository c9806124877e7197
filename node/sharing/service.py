"""Sharing rules (SPEC §8) for query, verify and compare.

`SharingService.call(op, code, params, requester, grant=None)` is the single entry point: the local HTTP
handlers call it for departments of this node, and the federation's `service.call` handler calls it for
requesters vouched for by another node. It
- routes calls on resources held at another node to `remote_call` (the federation's hook);
- applies the share type: `none` → SHARE_FORBIDDEN whatever the grant; `conditional` → GRANT_REQUIRED
  without a grant; `unconditional` → served, with `sensitive` items masked unless a grant includes them
  (verify and compare on sensitive items are allowed: they disclose only match flags);
- checks a grant through `grant_checker` (set by the grants capability; until then a grant cannot be
  honoured and the call answers GRANT_REQUIRED); for a department of this node calling without one, it
  attaches the department's grant for that resource found by `grant_finder`, if any;
- treats an operation an unconditional entry lists in `controlled_ops` (管控参数) as conditional: it
  needs a grant allowing it;
- in a conditional call (conditional entry or controlled operation) shows and compares only the fields
  the grant includes: a field asked for explicitly outside them is FIELD_NOT_GRANTED, and a query
  without `fields` returns the granted ones;
- refuses, as INVALID_INPUT, any field the entry does not have.
"""

from __future__ import annotations

import gc
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

from pydantic import BaseModel

from node.catalog.service import CatalogService
from node.config import LimitsConfig
from node.data.rows import RecordSchema, RowError, key_text
from node.data.service import DataService
from node.errors import ApiError, FieldNotGranted, GrantRequired, InvalidInput, NotFound, ShareForbidden
from node.ids import resource_node
from node.sharing.masking import masker
from node.sharing.models import CompareParams, QueryParams, Requester, VerifyParams
from node.web import in_slices, parse_model

OPS: dict[str, type[BaseModel]] = {"query": QueryParams, "verify": VerifyParams, "compare": CompareParams}
DEFAULT_QUERY_LIMIT = 100
# The operations a person states their purpose (用途) for on another department's resource (SPEC §15).
PURPOSE_OPS = frozenset({"query", "compare"})

# (entry, op, requester, grant) → the fields the grant allows (sensitive ones included); raises the
# SPEC §9 error (GRANT_REQUIRED, FIELD_NOT_GRANTED, REVOKED, SIGNATURE_INVALID …) when it does not hold.
GrantChecker = Callable[[dict[str, Any], str, Requester, dict[str, Any]], Awaitable[frozenset[str]]]
# (entry, op, requester) → the grant a department of this node holds for that call, or None.
GrantFinder = Callable[[dict[str, Any], str, Requester], Awaitable[dict[str, Any] | None]]
# (entry, op, params as a dict, requester, grant) → the answer of the node holding the resource.
RemoteRouter = Callable[[dict[str, Any], str, dict[str, Any], Requester, dict[str, Any] | None],
                        Awaitable[dict[str, Any]]]


# A comparison of this many rows or more runs with the cyclic garbage collector paused (see gc_paused).
GC_PAUSE_ROWS = 10_000
_gc_pauses = 0


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a big comparison builds its rows and answer.

    A 100,000-row comparison makes several hundred thousand containers that all stay alive until the
    answer is sent; the generation-2 passes they trigger would each walk the whole heap and cost more than
    the comparison itself. Reference counting still frees everything as usual; only cycles wait, and the
    collector resumes when the last overlapping comparison ends.
    """
    global _gc_pauses
    if _gc_pauses == 0 and not gc.isenabled():
        yield  # paused by someone else: leave it to them
        return
    _gc_pauses += 1
    gc.disable()
    try:
        yield
    finally:
        _gc_pauses -= 1
        if _gc_pauses == 0:
            gc.enable()


class View:
    """How an entry's records are shown without a grant: its schema and the masking of sensitive items."""

    def __init__(self, schema: RecordSchema) -> None:
        self.schema = schema
        self.maskers = {r.field: masker(r.type, r.check) for r in schema.rules if r.sensitive}


def conditional(entry: dict[str, Any], op: str) -> bool:
    """Whether a call needs a grant and sees only its fields: a conditional entry, or an operation the
    entry controls (`controlled_ops`)."""
    return entry["share"]["type"] == "conditional" or op in entry.get("controlled_ops", ())


def needs_purpose(entry: dict[str, Any], op: str, requester: Requester) -> bool:
    """SPEC §15: a person's query or compare on another department's resource states what it is for; a call
    made with a department's token names no person and is not asked."""
    if not requester.user or op not in PURPOSE_OPS or (requester.purpose or "").strip():
        return False
    return (entry["node"], entry["provider"]["dept"]) != (requester.node, requester.dept)


def within_grant(schema: RecordSchema, params: BaseModel, granted: frozenset[str]) -> BaseModel:
    """Refuse (FIELD_NOT_GRANTED) the items a conditional call names outside its grant; a query without
    `fields` gets the granted ones. Looking a record up by its key is always allowed; the key's value is
    returned only when granted."""
    key = schema.key.field
    if isinstance(params, QueryParams):
        asked = list(params.fields or []) + [f for f in params.where or {} if f != key]
    elif isinstance(params, VerifyParams):
        asked = list(params.fields)
    elif isinstance(params, CompareParams):
        asked = list(params.fields or []) + [f for r in params.records or [] for f in r if f != key]
    else:
        asked = []
    outside = sorted({f for f in asked if f in schema.by_field and f not in granted})
    if outside:
        raise FieldNotGranted(f"{len(outside)} field(s) are not in the grant: {', '.join(outside)}",
                              [{"field": f, "error": "not granted"} for f in outside])
    if isinstance(params, QueryParams) and params.fields is None:
        params = params.model_copy(update={"fields": [f for f in schema.fields if f in granted]})
    return params


class SharingService:
    def __init__(self, catalog: CatalogService, data: DataService, node_id: str, limits: LimitsConfig) -> None:
        self.catalog = catalog
        self.data = data
        self.node_id = node_id
        self.limits = limits
        self.grant_checker: GrantChecker | None = None
        self.grant_finder: GrantFinder | None = None
        self.router: RemoteRouter | None = None
        self._views: dict[int, tuple[RecordSchema, View]] = {}

    # The entry point -----------------------------------------------------------------------------

    async def call(self, op: str, code: str, params: BaseModel | dict[str, Any], requester: Requester,
                   grant: dict[str, Any] | None = None) -> dict[str, Any]:
        model = OPS.get(op)
        if model is None:
            raise InvalidInput(f"unknown operation {op!r}; one of {', '.join(OPS)}", [{"field": "op", "error": "unknown"}])
        if not isinstance(params, model):
            params = parse_model(model, params if isinstance(params, dict) else {})
        try:
            entry = await self.catalog.get(code)
        except NotFound:
            origin = resource_node(code)
            if origin is None or origin == self.node_id or self.router is None:
                raise
            # SPEC §18: a resource of another province is not in this node's catalog unless its scope is
            # national, yet calls still route anywhere: the code names its origin, which decides.
            if requester.user and op in PURPOSE_OPS and not (requester.purpose or "").strip():
                raise InvalidInput(f"a person's {op} on another department's resource states its purpose (用途, "
                                   "SPEC §15)", [{"field": "purpose", "error": "required"}]) from None
            return await self.remote_call(op, {"code": code, "node": origin}, params, requester, grant)
        if needs_purpose(entry, op, requester):
            raise InvalidInput(f"a person's {op} on another department's resource states its purpose (用途, SPEC §15)",
                               [{"field": "purpose", "error": "required"}])
        if grant is None and self.grant_finder is not None and requester.node == self.node_id:
            grant = await self.grant_finder(entry, op, requester)
        if entry["node"] != self.node_id:
            return await self.remote_call(op, entry, params, requester, grant)
        granted = await self.authorize(entry, op, requester, grant)
        view = self._view(entry)
        if conditional(entry, op):
            params = within_grant(view.schema, params, granted)
        if op == "query":
            return await self._query(code, view, params, granted)  # type: ignore[arg-type]
        if op == "verify":
            return await self._verify(code, view, params)  # type: ignore[arg-type]
        return await self._compare(code, view, params)  # type: ignore[arg-type]

    async def remote_call(self, op: str, entry: dict[str, Any], params: BaseModel, requester: Requester,
                          grant: dict[str, Any] | None) -> dict[str, Any]:
        """Hook for resources held at another node: the federation sets `router` (or replaces this
        method) to send a `service.call` envelope to `entry["node"]` (SPEC §6)."""
        if self.router is not None:
            return await self.router(entry, op, params.model_dump(exclude_none=True), requester, grant)
        raise ApiError("routing to other nodes is not available yet", code="PEER_UNREACHABLE",
                       details={"node": entry["node"]})

    async def authorize(self, entry: dict[str, Any], op: str, requester: Requester,
                        grant: dict[str, Any] | None) -> frozenset[str]:
        """Apply the share type; return the fields a grant allows beyond the unconditional ones."""
        share = entry["share"]
        if share["type"] == "none":
            raise ShareForbidden(f"{entry['code']} is not shared (basis: {share.get('basis', '')})")
        if grant is not None:
            if self.grant_checker is None:
                raise GrantRequired("this node cannot check grants yet")
            return await self.grant_checker(entry, op, requester, grant)
        if share["type"] == "conditional":
            raise GrantRequired(f"{entry['code']} is shared on condition ({share.get('condition', '')}); "
                                "apply for a grant")
        if conditional(entry, op):
            raise GrantRequired(f"{op} on {entry['code']} is controlled (管控参数); apply for a grant")
        return frozenset()

    async def requested_keys(self, op: str, code: str, params: BaseModel) -> list[Any] | None:
        """The record keys a call asks about, for its audit record."""
        if isinstance(params, (QueryParams, VerifyParams)):
            return None if params.key is None else [params.key]
        if isinstance(params, CompareParams):
            if params.keys is not None:
                return list(params.keys)
            try:
                key_field = self.data.schema(await self.catalog.get(code)).key.field
            except ApiError:
                return None
            return [r.get(key_field) for r in params.records or []]
        return None

    def _view(self, entry: dict[str, Any]) -> View:
        schema = self.data.schema(entry)
        hit = self._views.get(id(schema))
        if hit is None or hit[0] is not schema:
            if len(self._views) > 10_000:
                self._views.clear()
            hit = self._views[id(schema)] = (schema, View(schema))
        return hit[1]

    # Operations ----------------------------------------------------------------------------------

    def _known(self, schema: RecordSchema, fields: list[str], where: str) -> None:
        bad = [{"field": f"{where}.{f}", "error": "not an item of this resource"} for f in fields
               if f not in schema.by_field]
        if bad:
            raise InvalidInput(f"{len(bad)} field(s) are not items of {schema.code}", bad)

    def _value(self, schema: RecordSchema, field: str, value: Any, where: str) -> Any:
        if value is None or value == "":
            raise InvalidInput(f"{where}.{field} needs a value", [{"field": f"{where}.{field}", "error": "empty"}])
        try:
            return schema.normalize(field, value)
        except RowError as exc:
            raise InvalidInput(f"{where}.{field} {exc}", [{"field": f"{where}.{field}", "error": str(exc)}]) from None

    def _key(self, schema: RecordSchema, value: Any) -> str:
        try:
            return schema.normalize_key(value)
        except RowError as exc:
            raise InvalidInput(f"key {exc}", [{"field": "key", "error": str(exc)}]) from None

    async def _query(self, code: str, view: View, p: QueryParams, granted: frozenset[str]) -> dict[str, Any]:
        schema = view.schema
        if p.fields is not None:
            self._known(schema, p.fields, "fields")
            fields = list(dict.fromkeys(p.fields))
        else:
            fields = schema.fields
        max_limit = self.limits.query_max_limit
        if p.limit is not None and p.limit > max_limit:
            raise InvalidInput(f"limit is at most {max_limit}", [{"field": "limit", "error": f"at most {max_limit}"}])
        if p.key is not None:
            rec = await self.data.record(code, self._key(schema, p.key))
            found = [rec] if rec is not None else []
        else:
            assert p.where is not None
            self._known(schema, list(p.where), "where")
            where = {f: self._value(schema, f, v, "where") for f, v in p.where.items()}
            found = await self.data.find(code, where, p.limit or min(DEFAULT_QUERY_LIMIT, max_limit))
        maskers = view.maskers
        masked = [f for f in fields if f in maskers and f not in granted]
        if masked:
            out = []
            for rec in found:
                row = {f: rec.get(f) for f in fields}
                for f in masked:
                    v = row[f]
                    if v is not None:
                        row[f] = maskers[f](v)
                out.append(row)
        else:
            out = [{f: rec.get(f) for f in fields} for rec in found]
        return {"records": out, "resource": code, "masked": masked}

    async def _verify(self, code: str, view: View, p: VerifyParams) -> dict[str, Any]:
        schema = view.schema
        self._known(schema, list(p.fields), "fields")
        wanted = {f: self._value(schema, f, v, "fields") for f, v in p.fields.items()}
        rec = await self.data.record(code, self._key(schema, p.key))
        if rec is None:
            return {"match": False, "fields": {f: False for f in wanted}}
        flags = {f: rec.get(f) == v for f, v in wanted.items()}
        return {"match": all(flags.values()), "fields": flags}

    async def _compare(self, code: str, view: View, p: CompareParams) -> dict[str, Any]:
        n = len(p.keys if p.keys is not None else p.records or [])
        if n < GC_PAUSE_ROWS:
            return await self._compare_rows(code, view, p)
        with gc_paused():
            return await self._compare_rows(code, view, p)

    async def _compare_rows(self, code: str, view: View, p: CompareParams) -> dict[str, Any]:
        schema = view.schema
        max_keys = self.limits.compare_max_keys
        n = len(p.keys if p.keys is not None else p.records or [])
        if n > max_keys:
            raise InvalidInput(f"at most {max_keys} keys in one comparison (limits.compare_max_keys); got {n}")
        errors: list[dict[str, Any]] = []
        error_count = 0
        max_errors = self.limits.max_batch_errors

        def error(row: int, field: str | None, reason: str) -> None:
            nonlocal error_count
            error_count += 1
            if len(errors) < max_errors:
                errors.append({"row": row, "field": field, "error": reason})

        key_field = schema.key.field
        key_conv = schema.key.lenient
        submitted: list[list[Any]] = []
        given_keys: list[Any] = []
        fields: list[str] = []

        def key_of(i: int, k: Any) -> str | None:
            if k is None or k == "":
                error(i, key_field, "the key is required")
                return None
            try:
                nk = key_conv(k)
            except RowError as exc:
                error(i, key_field, str(exc))
                return None
            return nk if type(nk) is str else key_text(nk)

        if p.keys is not None:
            given_keys = p.keys
            async for start, some in in_slices(p.keys):  # big ones a slice at a time, the loop free between
                submitted.extend([key_of(i, k)] for i, k in enumerate(some, start + 1))
        else:
            records = p.records or []
            if p.fields is not None:
                self._known(schema, p.fields, "fields")
                fields = [f for f in dict.fromkeys(p.fields) if f != key_field]
                declared = True
            else:
                present = set().union(*records)
                fields = [f for f in schema.fields if f in present and f != key_field]
                declared = False
            index = {f: i for i, f in enumerate(fields, 1)}
            convs = [schema.by_field[f].lenient for f in fields]
            width = len(fields) + 1
            async for start, some in in_slices(records):
                for i, rec in enumerate(some, start + 1):
                    row: list[Any] = [None] * width
                    k = rec.get(key_field)
                    given_keys.append(k)
                    row[0] = key_of(i, k)
                    for f, v in rec.items():
                        j = index.get(f)
                        if j is None:
                            if f != key_field:
                                error(i, f, "not an item of this resource" if f not in schema.by_field
                                      else "not among the fields compared")
                            continue
                        if v is None or v == "":
                            continue
                        try:
                            row[j] = convs[j - 1](v)
                        except RowError as exc:
                            error(i, f, str(exc))
                    if declared and None in row:
                        for j, f in enumerate(fields, 1):
                            if row[j] is None and rec.get(f) in (None, ""):
                                error(i, f, "missing: every record carries the fields compared")
                    submitted.append(row)
        if error_count:
            if error_count > len(errors):
                errors.append({"row": None, "field": None, "error": f"{error_count - len(errors)} more errors not listed"})
            raise InvalidInput(f"{error_count} problem(s) in the submitted rows; nothing was compared", errors)
        hits = {r[0]: r[1:] for r in await self.data.compare(code, fields, submitted)} if submitted else {}
        results = []
        n_found = n_matched = 0
        async for start, some in in_slices(submitted):
            for i, row in enumerate(some, start):
                hit = hits.get(i)
                complete = None not in row
                if hit is None:
                    if complete:
                        flags = dict.fromkeys(fields, False)
                    else:
                        flags = {f: False for f, v in zip(fields, row[1:]) if v is not None}
                    results.append({"key": given_keys[i], "found": False, "match": False, "fields": flags})
                    continue
                if complete:
                    flags = dict(zip(fields, map(bool, hit)))
                else:
                    flags = {f: bool(m) for f, m, v in zip(fields, hit, row[1:]) if v is not None}
                match = all(flags.values())
                n_found += 1
                n_matched += match
                results.append({"key": given_keys[i], "found": True, "match": match, "fields": flags})
        return {"resource": code, "total": len(results), "found": n_found, "matched": n_matched, "results": results}
