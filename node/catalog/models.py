"""Catalog entries (SPEC §7): the 13 core metadata elements of 《政务信息资源目录编制指南(试行)》."""

from __future__ import annotations

import re
from datetime import date
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, field_validator, model_validator

from node.fields import FieldName, ResourceCode
from node.ids import DEPT_CODE, RESOURCE_CODE

ItemType = Literal["C", "N", "Y", "D", "T", "L", "M", "G", "B", "I", "F"]
Category = Literal["base", "theme", "department"]
Format = Literal["file", "spreadsheet", "database", "image", "stream", "self_describing", "service"]
ShareType = Literal["unconditional", "conditional", "none"]
ShareMethod = Literal["api", "file", "table"]
UpdateCycle = Literal["realtime", "daily", "weekly", "monthly", "quarterly", "yearly", "other"]
Check = Literal["gb11643", "gb32100"]
ControlledOp = Literal["query", "verify", "compare", "subscribe"]

CLASSIFICATION = re.compile(r"^[0-9]{6}([0-9]{3})?$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Item(_Strict):
    """A data item (数据项)."""

    name: str = Field(min_length=1, max_length=100, description="the item's name, e.g. 公民身份号码")
    field: FieldName = Field(description="machine name, ^[a-z][a-z0-9_]{0,62}$")
    type: ItemType = Field(description="the guide's type code: C N Y D T L M G B I F")
    length: int | None = Field(None, ge=1, le=1_000_000)
    key: bool = Field(False, description="the identifier records are looked up by (exactly one item)")
    sensitive: bool = Field(False, description="masked unless a grant includes it")
    required: bool = False
    check: Check | None = Field(None, description="verify check digits: gb11643 (ID number) or gb32100 (credit code)")


class Provider(_Strict):
    dept: str = Field(pattern=DEPT_CODE.pattern)
    name: str = Field(min_length=1, max_length=200)


class Share(_Strict):
    type: ShareType
    condition: str = Field("", max_length=2000)
    basis: str = Field("", max_length=2000)
    methods: list[ShareMethod] = Field(default_factory=lambda: ["api"])

    @model_validator(mode="after")
    def _conditions(self) -> "Share":
        if self.type == "conditional" and not self.condition.strip():
            raise ValueError("a conditional share needs its condition")
        if self.type == "none" and not self.basis.strip():
            raise ValueError("a share of type none needs its basis (the law or policy that forbids sharing)")
        if len(set(self.methods)) != len(self.methods):
            raise ValueError("methods must not repeat")
        return self


class Open(_Strict):
    public: bool = False
    condition: str = Field("", max_length=2000)


class EntryContent(_Strict):
    """What a department writes about its resource (PUT body; POST adds the code)."""

    name: str = Field(min_length=1, max_length=200)
    category: Category
    summary: str = Field("", max_length=4000)
    format: Format
    items: list[Item] = Field(min_length=1, max_length=500)
    share: Share
    open: Open = Open()
    update_cycle: UpdateCycle
    published_at: str | None = Field(None, pattern=r"^\d{4}-\d{2}-\d{2}$",
                                     description="YYYY-MM-DD; defaults to today (China Standard Time)")
    related: list[ResourceCode] = Field(default_factory=list, max_length=100)
    controlled_ops: list[ControlledOp] = Field(
        default_factory=list, max_length=4,
        description="operations that need a grant even on an unconditional resource (管控参数); left out of the "
                    "signed entry when empty")
    scope: Literal["province", "national"] | None = Field(
        None, description="SPEC §18: `national` entries replicate above the province to the whole country; "
                          "`province` (the default, left out of the signed entry) stay within it")

    @field_validator("controlled_ops")
    @classmethod
    def _controlled_ops(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("controlled_ops must not repeat")
        return [op for op in ("query", "verify", "compare", "subscribe") if op in v]

    @field_validator("published_at")
    @classmethod
    def _date(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                date.fromisoformat(v)
            except ValueError:
                raise ValueError("must be a date YYYY-MM-DD") from None
        return v

    # A field validator (not a model validator), so the refusal names `items` rather than the whole body.
    @field_validator("items")
    @classmethod
    def _items(cls, items: list[Item]) -> list[Item]:
        keys = [i for i in items if i.key]
        if len(keys) != 1:
            raise ValueError(f"exactly one item must have key: true (found {len(keys)})")
        for attr in ("field", "name"):
            seen: set[str] = set()
            for i in items:
                v = getattr(i, attr)
                if v in seen:
                    raise ValueError(f"item {attr} {v!r} appears twice")
                seen.add(v)
        return items


class _FilledByTheNode(_Strict):
    """Fields the node fills in itself. A body may carry them (so that what GET returns can be changed and
    sent back) when they agree with what the node would fill in; the service refuses a disagreeing value,
    naming its field (SPEC §10)."""

    type: Literal["catalog_entry"] | None = None
    kind: Literal["resource"] | None = None
    provider: Provider | None = Field(None, description="the caller's department, as the node names it")

    def filled(self) -> dict[str, Any]:
        """The node-filled fields this body carries."""
        return {k: getattr(self, k) for k in _FilledByTheNode.model_fields if getattr(self, k) is not None}


class EntryCreate(EntryContent, _FilledByTheNode):
    """POST body: either the whole `code`, or the `classification` (分类码) and the node numbers it."""

    code: ResourceCode | None = Field(None, description="分类码/顺序码; the 顺序码 must start with this node's id")
    classification: str | None = Field(None, pattern=CLASSIFICATION.pattern,
                                       description="分类码: 类(1) 项(2) 目(3) [细目(3)]")

    @model_validator(mode="after")
    def _code(self) -> "EntryCreate":
        if (self.code is None) == (self.classification is None):
            raise ValueError("give either code or classification")
        return self


class EntryUpdate(EntryContent, _FilledByTheNode):
    """PUT body: the new content. It may also carry the rest of the entry as GET returned it (code, node, seq,
    version, deleted, updated_at, signatures), each of which must be the current entry's."""

    code: ResourceCode | None = None
    node: str | None = None
    seq: StrictInt | None = None
    version: StrictInt | None = None
    deleted: bool | None = None
    updated_at: StrictInt | None = None
    signatures: dict[str, dict[str, str]] | None = None

    def filled(self) -> dict[str, Any]:
        own = ("code", "node", "seq", "version", "deleted", "updated_at", "signatures")
        return {**super().filled(), **{k: getattr(self, k) for k in own if getattr(self, k) is not None}}


class CatalogEntry(BaseModel):
    """A signed catalog entry exactly as its origin signed it (SPEC §7)."""

    model_config = ConfigDict(extra="allow")

    type: Literal["catalog_entry"]
    kind: Literal["resource"]
    code: str
    node: str
    seq: int
    version: int
    deleted: bool
    updated_at: int
    name: str
    category: Category
    provider: Provider
    summary: str
    format: Format
    items: list[Item]
    share: Share
    open: Open
    update_cycle: UpdateCycle
    published_at: str
    related: list[str]
    controlled_ops: list[ControlledOp] = []
    scope: Literal["province", "national"] | None = None
    signatures: dict[str, dict[str, str]]

    @field_validator("code")
    @classmethod
    def _code(cls, v: str) -> str:
        if not RESOURCE_CODE.match(v):
            raise ValueError("not a resource code")
        return v

    @field_validator("provider")
    @classmethod
    def _provider(cls, v: Provider) -> Provider:
        if not DEPT_CODE.match(v.dept):
            raise ValueError("provider.dept is not a department code")
        return v


class SearchQuery(_Strict):
    q: str | None = Field(None, max_length=200, description="text in name, summary or item names")
    node: str | None = Field(None, pattern=r"^[0-9]{6}$")
    category: Category | None = None
    share_type: ShareType | None = None
    provider: str | None = Field(None, description="provider department code")
    deleted: bool = Field(False, description="include withdrawn entries (tombstones)")
    page: int = Field(1, ge=1, le=100_000)
    page_size: int = Field(20, ge=1, le=200)


class EntryQuery(BaseModel):
    deleted: bool = Field(False, description="answer a withdrawn entry (tombstone) too")


class SearchPage(BaseModel):
    entries: list[CatalogEntry]
    page: int
    page_size: int
    total: int
