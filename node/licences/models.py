"""Electronic licences (电子证照, SPEC §13): what a department sends and what it gets back, and the two signed
objects, the licence (GB/T 36903 fields) and its index entry (what replicates)."""

from __future__ import annotations

import re
from datetime import date
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, field_validator, model_validator

from node.licences.identifier import (HOLDER_CODE_TYPES, IDENTIFIER, holder_code_type, valid_holder_code,
                                      valid_type_code)

CodeType = Literal["111", "001"]
IndexStatus = Literal["valid", "revoked", "superseded"]
# What a verification concludes: the index statuses, plus what only a verifier can see.
VerifyStatus = Literal["valid", "revoked", "expired", "superseded", "not_yet_valid", "invalid", "unknown"]
Check = Literal["shape", "identifier", "check_character", "chain", "signature", "validity", "status"]
Outcome = Literal["ok", "failed", "skipped"]
MAX_FACE_ITEMS = 60


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _iso_date(v: str | None) -> str | None:
    if v is not None:
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", v):
            raise ValueError("must be YYYY-MM-DD")
        date.fromisoformat(v)
    return v


def _face(v: dict[str, str] | None) -> dict[str, str] | None:
    if v is None:
        return v
    if len(v) > MAX_FACE_ITEMS:
        raise ValueError(f"at most {MAX_FACE_ITEMS} face items")
    for k, val in v.items():
        if not k.strip() or len(k) > 50:
            raise ValueError(f"face item names are 1 to 50 characters ({k[:60]!r})")
        if len(val) > 2000:
            raise ValueError(f"face item {k!r} is longer than 2000 characters")
    return v


class LicenceType(_Strict):
    code: str = Field(description="证照类型代码: the defining body's 统一社会信用代码 + 3 digits (21 characters)")
    name: str = Field(min_length=1, max_length=100, description="证照类型名称, e.g. 营业执照")

    @field_validator("code")
    @classmethod
    def _code(cls, v: str) -> str:
        if not valid_type_code(v):
            raise ValueError("a type code is a valid 统一社会信用代码 (18 characters) followed by 3 digits")
        return v


class Holder(_Strict):
    name: str = Field(min_length=1, max_length=200, description="持证主体名称")
    code: str = Field(description="持证主体代码: 公民身份号码 (GB 11643) or 统一社会信用代码 (GB 32100)")
    code_type: CodeType | None = Field(None, description="111 公民身份号码, 001 统一社会信用代码; inferred when left out")

    @model_validator(mode="after")
    def _checked(self) -> "Holder":
        code_type = self.code_type or holder_code_type(self.code)
        if code_type is None:
            raise ValueError("the holder code is neither a valid 公民身份号码 (GB 11643) nor a valid "
                             "统一社会信用代码 (GB 32100)")
        if not valid_holder_code(self.code, code_type):
            raise ValueError(f"the holder code fails the check of a {HOLDER_CODE_TYPES[code_type]} "
                             f"({'GB 11643' if code_type == '111' else 'GB 32100'})")
        self.code_type = code_type
        return self


class LicenceIssue(_Strict):
    """POST /api/v1/licences: the issuing department (the caller) issues a licence at its own node."""

    licence_type: LicenceType
    number: str = Field("", max_length=64, description="证照编号 printed on the licence; defaults to the serial")
    holder: Holder
    issued_on: str | None = Field(None, description="颁证日期 YYYY-MM-DD; defaults to today (China Standard Time)")
    valid_from: str | None = Field(None, description="有效期起始 YYYY-MM-DD; defaults to the issue date")
    valid_until: str | None = Field(None, description="有效期截止 YYYY-MM-DD; null for a long-term (长期) licence")
    face: dict[str, str] = Field(default_factory=dict, description="照面: the other items printed on the licence")

    @field_validator("issued_on", "valid_from", "valid_until")
    @classmethod
    def _dates(cls, v: str | None) -> str | None:
        return _iso_date(v)

    @field_validator("face")
    @classmethod
    def _face_ok(cls, v: dict[str, str]) -> dict[str, str]:
        return _face(v)

    @model_validator(mode="after")
    def _order(self) -> "LicenceIssue":
        start = self.valid_from or self.issued_on
        if start and self.valid_until and self.valid_until < start:
            raise ValueError("valid_until is before the start of validity")
        return self


class LicenceVersion(_Strict):
    """POST /api/v1/licences/{identifier}/versions: 加注 (annotation) or 变更 (change) of a current licence.

    The new version keeps the serial and bumps the version; the old one stays verifiable as superseded."""

    kind: Literal["annotation", "change"] = Field(description="annotation (加注) or change (变更)")
    reason: str = Field(min_length=1, max_length=2000)
    annotation: str | None = Field(None, max_length=2000, description="the note an annotation adds (加注内容)")
    holder_name: str | None = Field(None, min_length=1, max_length=200, description="a changed holder name")
    number: str | None = Field(None, max_length=64)
    valid_until: str | None = Field(None, description="a changed end of validity")
    face: dict[str, str] | None = Field(None, description="the whole new face, when it changes")

    @field_validator("valid_until")
    @classmethod
    def _dates(cls, v: str | None) -> str | None:
        return _iso_date(v)

    @field_validator("face")
    @classmethod
    def _face_ok(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        return _face(v)

    @model_validator(mode="after")
    def _something(self) -> "LicenceVersion":
        if self.kind == "annotation" and not (self.annotation or "").strip():
            raise ValueError("an annotation (加注) carries its note in `annotation`")
        if self.kind == "change" and all(v is None for v in (self.holder_name, self.number, self.valid_until,
                                                              self.face)):
            raise ValueError("a change (变更) changes at least one of holder_name, number, valid_until, face")
        return self


class Revocation(_Strict):
    reason: str = Field(min_length=1, max_length=2000, description="why the licence is revoked (注销/吊销原因)")


class HolderQuery(_Strict):
    holder: str = Field(description="the holder's code (公民身份号码 or 统一社会信用代码)")
    all: bool = Field(False, description="include superseded versions")

    @field_validator("holder")
    @classmethod
    def _holder(cls, v: str) -> str:
        v = v.strip().upper()
        if holder_code_type(v) is None:
            raise ValueError("not a valid 公民身份号码 (GB 11643) or 统一社会信用代码 (GB 32100)")
        return v


# The signed objects -----------------------------------------------------------------------------------

class IssuerOf(BaseModel):
    node: str
    dept: str
    name: str
    code: str


class HolderOf(BaseModel):
    name: str
    code: str
    code_type: str


class LicenceDoc(BaseModel):
    """A licence exactly as its issuing node signed it (SPEC §13)."""

    model_config = ConfigDict(extra="allow")

    type: Literal["licence"]
    identifier: str
    licence_type: LicenceType
    number: str
    issuer: IssuerOf
    holder: HolderOf
    issued_on: str
    valid_from: str
    valid_until: str | None
    face: dict[str, str]
    signed_at: StrictInt = Field(description="when the issuer signed it (ms): picks the issuer's key of that time")
    signatures: dict[str, dict[str, str]]

    @field_validator("issued_on", "valid_from", "valid_until")
    @classmethod
    def _dates(cls, v: str | None) -> str | None:
        return _iso_date(v)

    @field_validator("identifier")
    @classmethod
    def _identifier(cls, v: str) -> str:
        if not IDENTIFIER.match(v):
            raise ValueError("not a GB/T 36904 identifier")
        return v


class IndexEntry(BaseModel):
    """What replicates (SPEC §13): a licence's identity and status, signed by its issuing node, with a keyed
    digest of the holder code (never the code) and the digest of the licence's signed bytes."""

    model_config = ConfigDict(extra="allow")

    type: Literal["licence_index"]
    identifier: str
    licence_type: LicenceType
    node: str = Field(pattern=r"^\d{6}$")
    dept: str
    issuer_name: str
    resource: str | None = Field(description="the issuer's catalog resource that grants on licence faces name")
    holder_digest: str = Field(pattern=r"^[0-9a-f]{64}$")
    digest: str = Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256 of the licence's signed bytes")
    status: IndexStatus
    valid_from: str
    valid_until: str | None
    superseded_by: str | None = None
    revoked_at: StrictInt | None = None
    reason: str = ""
    seq: StrictInt
    updated_at: StrictInt
    signatures: dict[str, dict[str, str]]

    @field_validator("identifier", "superseded_by")
    @classmethod
    def _identifier(cls, v: str | None) -> str | None:
        if v is not None and not IDENTIFIER.match(v):
            raise ValueError("not a GB/T 36904 identifier")
        return v


# Answers -------------------------------------------------------------------------------------------------

class Reason(BaseModel):
    check: Check
    message: str


class VerifyResult(BaseModel):
    valid: bool
    status: VerifyStatus
    reasons: list[Reason] = Field(description="each failed check, the first one first")
    checks: dict[str, Outcome] = Field(description="per check: ok, failed, or skipped")
    identifier: str | None = None
    issuer: dict[str, Any] | None = None
    signed_with: str | None = Field(None, description="the issuer key id that verified the signature")
    source: Literal["issuer", "replicated index"] | None = Field(
        None, description="where the status came from: the issuer, asked now, or this node's replicated index")
    issuer_reachable: bool | None = None
    status_as_of: int | None = Field(None, description="when the issuer last changed the status it reports (ms)")
    superseded_by: str | None = None
    revoked_reason: str | None = None


class LicenceSummary(BaseModel):
    identifier: str
    licence_type: dict[str, str]
    issuer: dict[str, str]
    status: VerifyStatus
    index_status: IndexStatus
    valid_from: str
    valid_until: str | None
    superseded_by: str | None
    updated_at: int


class HolderLicences(BaseModel):
    licences: list[LicenceSummary]
    total: int


class Fetched(BaseModel):
    identifier: str
    status: VerifyStatus
    index: dict[str, Any] = Field(description="the issuer's signed index entry")
    licence: dict[str, Any] | None = Field(description="the signed licence, when the caller may see its face")
    face_visible: bool
    face_withheld: str | None = Field(None, description="why the face is not shown")
    via: list[str] | None = None
