"""Payloads of the sharing calls (SPEC §10): query, verify, compare — the same whether the caller is a
department of this node (HTTP) or of another node (a `service.call` envelope's `params`, SPEC §6).

Values callers send are compared in the stored form of their item type (node.data.rows): e.g. a
decimal `"12.50"` equals a stored `12.5`, a date `2024/1/2` equals `2024-01-02`, `"是"` equals `true`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, model_validator

Key = StrictStr | StrictInt


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Requester(BaseModel):
    """Who asks: a department of this node, or one vouched for by another node's signature (SPEC §6)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    node: str
    dept: str
    # A person of the department (SPEC §15): their username at their node, and what the call is for (用途).
    user: str | None = Field(None, min_length=1, max_length=32)
    purpose: str | None = Field(None, max_length=2000)


class QueryParams(_Strict):
    """`{"key": k}` — one record by its key; or `{"where": {field: value, …}, "limit": N}` — records whose
    fields all equal the values. `fields` names the items to return (default: every item)."""

    key: Key | None = None
    where: dict[str, Any] | None = Field(None, description="field → value, all must be equal")
    fields: list[str] | None = Field(None, max_length=500, description="items to return (default: all)")
    limit: int | None = Field(None, ge=1, description="at most this many records (default 100, at most "
                                                      "limits.query_max_limit)")

    @model_validator(mode="after")
    def _one_way(self) -> "QueryParams":
        if (self.key is None) == (self.where is None):
            raise ValueError("give either key or where")
        if self.where is not None and not self.where:
            raise ValueError("where needs at least one field")
        return self


class QueryResult(BaseModel):
    resource: str
    records: list[dict[str, Any]] = Field(description="the records found, with the fields asked for")
    masked: list[str] = Field(description="fields whose values are masked (sensitive, not granted)")


class VerifyParams(_Strict):
    """Does the record with this key hold these values? Discloses nothing but the match flags."""

    key: Key
    fields: dict[str, Any] = Field(description="field → the value the caller holds")


class VerifyResult(BaseModel):
    match: bool = Field(description="the record exists and every field is equal")
    fields: dict[str, bool] = Field(description="per field: equal (false for every field if no record)")


class CompareParams(_Strict):
    """Batch comparison (比对), set-based: either

    - `{"records": [{"<key field>": k, "name": "张三", …}, …]}` — per record: found, and per field whether
      the stored value equals the one sent (the fields compared are those each record carries besides
      the key; with `fields` given, exactly those, and every record must carry them); or
    - `{"keys": [k, …]}` — per key: found (an existence check; `fields` cannot be used, since fields are
      compared against values).

    The answer lists one result a submitted row, in the order sent, each shaped like a verify answer
    plus the key and `found`.
    """

    records: list[dict[str, Any]] | None = None
    keys: list[Key] | None = None
    fields: list[str] | None = Field(None, max_length=500)

    @model_validator(mode="after")
    def _one_way(self) -> "CompareParams":
        if (self.records is None) == (self.keys is None):
            raise ValueError("give either records or keys")
        if self.keys is not None and self.fields is not None:
            raise ValueError("fields are compared against values: send records with the values, not keys")
        return self


class CompareRow(BaseModel):
    key: Key
    found: bool
    match: bool = Field(description="found and every compared field equal")
    fields: dict[str, bool] = Field(description="per compared field: equal")


class CompareResult(BaseModel):
    resource: str
    total: int
    found: int
    matched: int
    results: list[CompareRow]
