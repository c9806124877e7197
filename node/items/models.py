"""Service items (政务服务事项, SPEC §16): what a department or operator sends, the signed item that replicates,
the 一证通办 request and answer, and the 材料减免率 figures."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel, StrictInt, StrictStr, field_validator, model_validator

from node.licences.identifier import HOLDER_CODE_TYPES, holder_code_type, valid_holder_code, valid_type_code

# 事项类型 (SPEC §16): 行政许可, 行政处罚, 行政强制, 行政征收, 行政收费, 行政给付, 行政裁决, 行政确认, 行政奖励,
# 行政检查, 其他行政权力, 公共服务.
ItemType = Literal["XK", "CF", "QZ", "ZS", "SF", "JF", "CJ", "QR", "JL", "JC", "QT", "GG"]
TYPE_NAMES = {"XK": "行政许可", "CF": "行政处罚", "QZ": "行政强制", "ZS": "行政征收", "SF": "行政收费",
              "JF": "行政给付", "CJ": "行政裁决", "QR": "行政确认", "JL": "行政奖励", "JC": "行政检查",
              "QT": "其他行政权力", "GG": "公共服务"}
BASIC_CODE = r"[0-9]{6}-(?:XK|CF|QZ|ZS|SF|JF|CJ|QR|JL|JC|QT|GG)-[0-9]{5}"
ITEM_CODE = rf"{BASIC_CODE}(?:/[0-9]{{9}})?"
BASIC_CODE_RE = re.compile(rf"^{BASIC_CODE}$")
ITEM_CODE_RE = re.compile(rf"^{ITEM_CODE}$")
RESOURCE_CODE = r"^[0-9]{6,9}/[0-9]{7,18}$"
FIELD = r"^[a-z][a-z0-9_]{0,62}$"
Outcome = Literal["obtained", "verified", "mismatch", "not_found", "no_grant", "unreachable", "not_shareable"]
# The four elements a basic item fixes for every level (SPEC §16).
UNIFIED = ("name", "type", "basis", "basic_code")
MAX_MATERIALS = 100


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _text(v: str) -> str:
    v = v.strip()
    if not v:
        raise ValueError("must not be blank")
    return v


class ByResource(_Strict):
    """The material is replaced by a catalog resource: verified (only a match is needed) or queried (the data
    itself is needed), with the applicant's code as the record key."""

    resource: str = Field(pattern=RESOURCE_CODE, description="catalog resource code 分类码/顺序码")
    op: Literal["verify", "query"]
    fields: list[Annotated[str, Field(pattern=FIELD)]] = Field(
        min_length=1, max_length=50,
        description="verify: the items compared with the values the clerk enters; query: the items fetched")


class ByLicence(_Strict):
    """The material is an electronic licence (SPEC §13) of this type, found by holder and verified."""

    licence_type: str = Field(description="证照类型代码 (21 characters)")

    @field_validator("licence_type")
    @classmethod
    def _code(cls, v: str) -> str:
        if not valid_type_code(v):
            raise ValueError("a licence type code is a valid 统一社会信用代码 followed by 3 digits")
        return v


class Material(_Strict):
    id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,16}$", description="unique within the item, e.g. m1")
    name: Annotated[str, Field(min_length=1, max_length=100)]
    required: bool = True
    by_sharing: ByResource | ByLicence | None = Field(
        None, description="what sharing replaces it with, or null when the applicant must bring it")

    _name = field_validator("name")(_text)


class _Elements(_Strict):
    name: Annotated[str, Field(min_length=1, max_length=200, description="事项名称")]
    type: ItemType = Field(description="事项类型: XK 行政许可 … GG 公共服务")
    basis: Annotated[str, Field(min_length=1, max_length=4000, description="设定依据 (法律依据)")]

    _texts = field_validator("name", "basis")(_text)


class BasicItemBody(_Elements):
    """A basic item (基本目录事项), defined by an operator of a province (or the national root)."""

    kind: Literal["basic"]
    basic_code: str | None = Field(None, pattern=rf"^{BASIC_CODE}$",
                                   description="<this node>-<type>-<5 digits>; given by the node when left out")


class ImplementedItemBody(_Elements):
    """An implemented item (实施清单事项), published by the implementing department (the caller): the four
    elements copied unchanged from its basic item."""

    kind: Literal["implemented"]
    basic_code: str = Field(pattern=rf"^{BASIC_CODE}$")
    code: str | None = Field(None, pattern=rf"^{BASIC_CODE}/[0-9]{{9}}$",
                             description="<basic_code>/<this node><3 digits>; given by the node when left out")
    time_limit: StrictInt = Field(ge=0, le=3650, description="承诺办结时限 (working days)")
    materials: list[Material] = Field(max_length=MAX_MATERIALS, description="申请材料")

    @model_validator(mode="after")
    def _unique(self) -> "ImplementedItemBody":
        ids = [m.id for m in self.materials]
        if len(set(ids)) != len(ids):
            raise ValueError("material ids must be unique within the item")
        return self


class ItemBody(RootModel[Annotated[BasicItemBody | ImplementedItemBody, Field(discriminator="kind")]]):
    """`{"kind": "basic", ...}` or `{"kind": "implemented", ...}`."""


class ItemDoc(BaseModel):
    """A service item as its origin signed it (SPEC §16); it replicates through the feed `items`."""

    model_config = ConfigDict(extra="allow")

    kind: Literal["basic", "implemented"]
    code: str
    basic_code: str
    node: str
    seq: StrictInt
    version: StrictInt
    deleted: bool
    updated_at: StrictInt
    scope: Literal["province", "national"]
    name: StrictStr
    type: ItemType
    basis: StrictStr
    dept: dict[str, str] | None = Field(None, description="implemented: the implementing department {dept, name}")
    time_limit: StrictInt | None = None
    materials: list[Material] | None = None
    signatures: dict[str, dict[str, str]]


class ItemQuery(_Strict):
    q: str | None = Field(None, max_length=200)
    node: str | None = Field(None, pattern=r"^[0-9]{6}$")
    kind: Literal["basic", "implemented"] | None = None
    basic_code: str | None = Field(None, pattern=rf"^{BASIC_CODE}$")
    dept: str | None = Field(None, max_length=32)
    page: int = Field(1, ge=1, le=100_000)
    page_size: int = Field(20, ge=1, le=200)


class ItemPage(BaseModel):
    items: list[ItemDoc]
    page: int
    page_size: int
    total: int


class Subject(_Strict):
    code: str = Field(min_length=15, max_length=18, description="公民身份号码 or 统一社会信用代码")
    code_type: Literal["111", "001"] | None = Field(None, description="111 公民身份号码, 001 统一社会信用代码; "
                                                                      "inferred when left out")

    @model_validator(mode="after")
    def _checked(self) -> "Subject":
        self.code = self.code.strip().upper()
        code_type = self.code_type or holder_code_type(self.code)
        if code_type is None or not valid_holder_code(self.code, code_type):
            kind = HOLDER_CODE_TYPES.get(code_type or "", "公民身份号码 or 统一社会信用代码")
            raise ValueError(f"the code fails the check of a {kind}")
        self.code_type = code_type
        return self


class GatherBody(_Strict):
    """一证通办: one applicant, every material that sharing can stand in for."""

    subject: Subject
    purpose: Annotated[str, Field(min_length=1, max_length=2000, description="用途, recorded in every audit record")]
    values: dict[str, StrictStr | StrictInt] = Field(
        default_factory=dict, max_length=50,
        description="item field → the value the applicant states, for the materials that are verified")

    _purpose = field_validator("purpose")(_text)


class Gathered(BaseModel):
    id: str
    name: str
    required: bool
    outcome: Outcome
    via: list[str] = Field(description="the nodes the answer came through (empty when none was asked)")
    resource: str | None = None
    licence_type: str | None = None
    fields: dict[str, bool] | None = Field(None, description="verify: per field, equal")
    record: dict[str, Any] | None = Field(None, description="query: the record's fields as shared")
    masked: list[str] | None = None
    licence: dict[str, Any] | None = Field(None, description="licence: identifier, issuer, status, source")
    error: dict[str, Any] | None = Field(None, description="why it was not obtained: code and message")
    elapsed_ms: int


class GatherResult(BaseModel):
    item: str
    name: str
    subject: dict[str, str] = Field(description="the code type (the code itself is not repeated)")
    materials: list[Gathered]
    total: int
    shareable: int
    replaced: int = Field(description="materials obtained or verified: the applicant need not bring them")
    to_bring: list[str] = Field(description="names of the materials the applicant still brings")
    elapsed_ms: int


class StatsQuery(_Strict):
    dept: str | None = Field(None, max_length=32, description="the implementing department")
    item: str | None = Field(None, pattern=rf"^{ITEM_CODE}$")


class ItemFigures(BaseModel):
    code: str
    name: str
    node: str
    dept: str
    materials: int = Field(description="申请材料 in all")
    shareable: int = Field(description="materials sharing can replace")
    design_rate: float = Field(description="材料减免率 by design: shareable / materials")
    calls: int = Field(description="一证通办 calls made at this node")
    replaced: int = Field(description="materials obtained or verified, over all calls")
    obtained_rate: float = Field(description="replaced / (calls × shareable): how often sharing delivered")
    reduction_rate: float = Field(description="replaced / (calls × materials): 实际材料减免率")
    outcomes: dict[str, int]


class DeptFigures(BaseModel):
    dept: str
    name: str
    items: int
    materials: int
    shareable: int
    design_rate: float
    calls: int
    replaced: int
    reduction_rate: float


class Stats(BaseModel):
    items: list[ItemFigures]
    depts: list[DeptFigures]


class ImportResult(BaseModel):
    published: list[str] = Field(description="codes of the items published, in row order")
    total: int
