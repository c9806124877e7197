"""Joint reward and punishment lists (联合奖惩名单, SPEC §17): what a department sends, what it gets back, and
the two signed objects that replicate, the list and the list entry."""

from __future__ import annotations

import re
from datetime import date
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, field_validator, model_validator

from node.licences.identifier import HOLDER_CODE_TYPES, holder_code_type, valid_holder_code

CodeType = Literal["111", "001"]
ListKind = Literal["black", "red"]
Scope = Literal["province", "national"]
LIST_CODE = re.compile(r"^\d{6}-\d{4}$")
ULID = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")
MAX_CHECK = 10_000
MAX_ENTRIES = 10_000


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _iso_date(v: str | None) -> str | None:
    if v is not None:
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", v):
            raise ValueError("must be YYYY-MM-DD")
        date.fromisoformat(v)
    return v


Strings = list[str]  # for models with a field named `list`, which shadows the builtin in their bodies


class ListCreate(_Strict):
    """POST /api/v1/lists: the caller's department publishes a list."""

    name: str = Field(min_length=1, max_length=200, description="名单名称, e.g. 重大税收违法失信主体名单")
    kind: ListKind = Field(description="black (黑名单, 惩戒) or red (红名单, 激励)")
    public: StrictBool = Field(description="公开名单: entries carry the subject's name; otherwise only its digest")
    measures: list[str] = Field(default_factory=list, max_length=50,
                                description="联合奖惩措施 applied to every entry (an entry may name its own)")
    basis: str = Field("", max_length=1000, description="设立依据")

    @field_validator("measures")
    @classmethod
    def _measures(cls, v: list[str]) -> list[str]:
        for m in v:
            if not m.strip() or len(m) > 200:
                raise ValueError("each measure is 1 to 200 characters")
        return v


class Subject(_Strict):
    code: str = Field(description="公民身份号码 (GB 11643) or 统一社会信用代码 (GB 32100)", max_length=18)
    code_type: CodeType | None = Field(None, description="111 公民身份号码, 001 统一社会信用代码; inferred when left out")
    name: str | None = Field(None, max_length=200, description="the subject's name (kept only on public lists)")

    @model_validator(mode="after")
    def _checked(self) -> "Subject":
        self.code = self.code.strip().upper()
        code_type = self.code_type or holder_code_type(self.code)
        if code_type is None or not valid_holder_code(self.code, code_type):
            kind = HOLDER_CODE_TYPES.get(code_type or "", "公民身份号码 or 统一社会信用代码")
            raise ValueError(f"the subject code fails the check of a {kind}")
        self.code_type = code_type
        return self


class EntryIn(_Strict):
    """One entry a department adds to (or changes on) its list; the subject is its key within the list."""

    subject: Subject
    reason: str = Field(min_length=1, max_length=2000, description="列入事由")
    basis: str = Field("", max_length=1000, description="列入依据 (文书号, 法规)")
    measures: list[str] | None = Field(None, max_length=50, description="defaults to the list's measures")
    valid_from: str | None = Field(None, description="YYYY-MM-DD; defaults to today (China Standard Time)")
    valid_until: str | None = Field(None, description="YYYY-MM-DD; null: until removed")

    @field_validator("valid_from", "valid_until")
    @classmethod
    def _dates(cls, v: str | None) -> str | None:
        return _iso_date(v)

    @model_validator(mode="after")
    def _order(self) -> "EntryIn":
        if self.valid_from and self.valid_until and self.valid_until < self.valid_from:
            raise ValueError("valid_until is before valid_from")
        return self


class EntriesResult(BaseModel):
    added: int
    changed: int
    unchanged: int
    entries: list[str] = Field(description="the ids of the entries sent, in order")


class Removal(_Strict):
    reason: str = Field(min_length=1, max_length=2000, description="信用修复 or other reason for the removal")


class Issuer(BaseModel):
    node: str
    dept: str
    name: str


class ListDoc(BaseModel):
    """A list exactly as its issuing node signed it."""

    model_config = ConfigDict(extra="allow")

    type: Literal["list"]
    code: str
    node: str
    seq: StrictInt
    version: StrictInt
    deleted: StrictBool
    updated_at: StrictInt
    name: str
    kind: ListKind
    public: StrictBool
    measures: list[str]
    basis: str = ""
    issuer: Issuer
    scope: Scope = "national"
    source: dict | None = None
    signatures: dict[str, dict[str, str]]

    @field_validator("code")
    @classmethod
    def _code(cls, v: str) -> str:
        if not LIST_CODE.match(v):
            raise ValueError("a list code is <node>-<4 digits>")
        return v


class EntrySubject(BaseModel):
    code_type: CodeType
    digest: str = Field(pattern=r"^[0-9a-f]{64}$", description="HMAC-SHA256 of the code with the holder key (SPEC §13)")
    name: str | None = None


class ListEntryDoc(BaseModel):
    """A list entry exactly as its issuing node signed it (SPEC §17)."""

    model_config = ConfigDict(extra="allow")

    type: Literal["list_entry"]
    list: str
    id: str
    node: str
    seq: StrictInt
    version: StrictInt
    deleted: StrictBool
    updated_at: StrictInt
    subject: EntrySubject
    reason: str
    basis: str
    measures: Strings
    valid_from: str
    valid_until: str | None
    issuer: Issuer
    removal: dict | None = None
    scope: Scope = "national"
    signatures: dict[str, dict[str, str]]

    @field_validator("valid_from", "valid_until")
    @classmethod
    def _dates(cls, v: str | None) -> str | None:
        return _iso_date(v)

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not ULID.match(v):
            raise ValueError("an entry id is a ULID")
        return v


class ListSummary(BaseModel):
    list: ListDoc
    entries: int = Field(description="entries in force or not yet removed, as this node holds them")


class ListsPage(BaseModel):
    lists: list[ListSummary]


class EntriesPage(BaseModel):
    entries: list[ListEntryDoc]


class CheckSubject(_Strict):
    code: str = Field(max_length=18)
    code_type: CodeType | None = None


class CheckBody(_Strict):
    """POST /api/v1/lists/check: up to 10,000 subjects, answered from this node's copy of every list."""

    subjects: list[CheckSubject] = Field(min_length=1, max_length=MAX_CHECK)
    purpose: str = Field(min_length=1, max_length=200, description="用途, e.g. 行政许可审查")


class Hit(BaseModel):
    entry: str
    list: dict = Field(description="code, name, kind, public of the list")
    reason: str
    basis: str
    measures: Strings
    valid_from: str
    valid_until: str | None
    issuer: Issuer
    name: str | None = Field(None, description="the subject's name, on public lists only")


class CheckResult(BaseModel):
    code: str
    code_type: str
    hit: bool
    hits: list[Hit]


class CheckAnswer(BaseModel):
    checked: int
    hit_subjects: int
    checked_on: str = Field(description="the date validity was judged on (China Standard Time)")
    results: list[CheckResult]


class SourceBody(_Strict):
    """Keep the list in step with one of the department's own resources: each live record is an entry."""

    resource: str = Field(description="the resource's code (a resource of the caller's department at this node)")
    key_field: str | None = Field(None, description="the field holding the subject code; defaults to the key item")
    code_type: CodeType | None = Field(None, description="inferred per record when left out")
    reason_field: str = Field(description="the field holding the reason (列入事由)")
    name_field: str | None = Field(None, description="the field holding the subject's name (public lists)")
    basis_field: str | None = None
    valid_until_field: str | None = None


class SourceState(BaseModel):
    list: str
    resource: str
    binding: dict
    cursor: int
    synced_at: int | None
    entries: int
    error: str | None


class HitRow(BaseModel):
    entry: str
    list: str
    checked_node: str
    checked_dept: str
    checked_user: str | None
    purpose: str
    checked_at: str
    received_at: str


class HitsView(BaseModel):
    """双反馈: where and when the caller's entries were applied."""

    per_node: list[dict]
    recent: list[HitRow]


class HitMessage(BaseModel):
    """The body of `list.hit` (checking node → issuing node): every hit of one check on the issuer's entries."""

    hits: list[dict] = Field(max_length=200_000)
    checked_by: dict
    purpose: str
    checked_at: StrictInt
