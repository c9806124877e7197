"""Payloads of applications and grants (SPEC §8, §10, §11): what departments send and what they get back."""

from __future__ import annotations

import re
from datetime import date
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel, StrictInt, field_validator

from node.fields import FieldName, Instant, NonBlank, ResourceCode

Op = Literal["query", "verify", "compare", "subscribe"]
Status = Literal["submitted", "accepted", "rejected", "approved", "withdrawn"]
OPEN_STATUSES = ("submitted", "accepted")  # a decision is still to come (withdrawal allowed)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _unique(values: list[str], what: str) -> list[str]:
    if len(set(values)) != len(values):
        raise ValueError(f"{what} must not repeat")
    return values


def _date(v: str | None) -> str | None:
    if v is not None:
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", v):
            raise ValueError("must be YYYY-MM-DD")
        date.fromisoformat(v)
    return v


class ApplicationCreate(_Strict):
    """Apply for a grant on a resource of any node (统一受理): the provider's node receives it."""

    resource: ResourceCode = Field(description="resource code (分类码/顺序码) as the catalog lists it")
    ops: list[Op] = Field(min_length=1, max_length=4, description="operations asked for")
    fields: list[FieldName] = Field(min_length=1, max_length=500, description="data items asked for (their `field`)")
    purpose: NonBlank = Field(max_length=2000, description="what the data is for (用途)")
    basis: NonBlank = Field(max_length=2000, description="the law, policy or duty the request rests on (依据)")
    wanted_until: str | None = Field(None, pattern=r"^\d{4}-\d{2}-\d{2}$",
                                     description="YYYY-MM-DD, the last day the grant is wanted for (the period "
                                                 "applied for); the approval's validity defaults to it")

    _wanted_until = field_validator("wanted_until")(_date)

    @field_validator("ops")
    @classmethod
    def _ops(cls, v: list[str]) -> list[str]:
        return _unique(v, "ops")

    @field_validator("fields")
    @classmethod
    def _fields(cls, v: list[str]) -> list[str]:
        return _unique(v, "fields")


class ReviewAccept(_Strict):
    decision: Literal["accept"]
    reason: str = Field("", max_length=2000)


class ReviewReject(_Strict):
    decision: Literal["reject"]
    reason: NonBlank = Field(max_length=2000, description="why the application is rejected (required)")


class Review(RootModel[Annotated[ReviewAccept | ReviewReject, Field(discriminator="decision")]]):
    """The provider node's platform review (operator): accept for the department's decision, or reject with
    its reason."""

    @property
    def decision(self) -> str:
        return self.root.decision

    @property
    def reason(self) -> str:
        return self.root.reason


class Approval(_Strict):
    """An approval issues a signed grant; it may narrow the fields and operations asked for, never widen them."""

    decision: Literal["approve"]
    reason: str = Field("", max_length=2000)
    valid_until: str | None = Field(None, pattern=r"^\d{4}-\d{2}-\d{2}$",
                                    description="YYYY-MM-DD, the last day the grant is valid (China Standard "
                                                "Time); default one year from the approval")
    fields: list[FieldName] | None = Field(None, min_length=1, max_length=500,
                                           description="the fields granted (a subset of those asked)")
    ops: list[Op] | None = Field(None, min_length=1, max_length=4,
                                 description="the operations granted (a subset of those asked)")

    _valid_until = field_validator("valid_until")(_date)

    @field_validator("fields")
    @classmethod
    def _fields(cls, v: list[str] | None) -> list[str] | None:
        return None if v is None else _unique(v, "fields")

    @field_validator("ops")
    @classmethod
    def _ops(cls, v: list[str] | None) -> list[str] | None:
        return None if v is None else _unique(v, "ops")


class Rejection(_Strict):
    decision: Literal["reject"]
    reason: NonBlank = Field(max_length=2000, description="why the application is rejected (required)")


class Decision(RootModel[Annotated[Approval | Rejection, Field(discriminator="decision")]]):
    """The providing department's decision: approve (an approval grants at least one field and one operation;
    to grant none, reject) or reject with its reason."""

    @property
    def decision(self) -> str:
        return self.root.decision

    @property
    def reason(self) -> str:
        return self.root.reason

    @property
    def valid_until(self) -> str | None:
        return self.root.valid_until if isinstance(self.root, Approval) else None

    @property
    def fields(self) -> list[str] | None:
        return self.root.fields if isinstance(self.root, Approval) else None

    @property
    def ops(self) -> list[str] | None:
        return self.root.ops if isinstance(self.root, Approval) else None


class Reason(_Strict):
    """Optional body of a withdrawal or a revocation."""

    reason: str = Field("", max_length=2000)


class Party(BaseModel):
    node: str = Field(pattern=r"^\d{6}$")
    dept: str = Field(pattern=r"^[0-9A-Z]{1,32}$")


class HistoryEntry(BaseModel):
    at: str = Field(description="ISO 8601, China Standard Time")
    by: str = Field(description="<node>/<department> of the actor, or <node>/platform for the node itself")
    status: str = Field(description="the application's status after this event")
    event: str = Field(description="submitted, received, accepted, rejected, approved, withdrawn, "
                                   "withdraw_refused, overdue, revoked, calendar")
    reason: str = ""


class Application(BaseModel):
    """SPEC §11: the application as its provider's node holds it (the applicant's node keeps a copy)."""

    id: str
    resource: str
    resource_name: str | None = None
    applicant: Party
    provider: Party
    ops: list[str]
    fields: list[str]
    purpose: str
    basis: str
    wanted_until: str | None = Field(None, description="the last day the grant is wanted for, as applied for")
    status: Status
    submitted_at: str
    received_at: str | None = Field(None, description="when the provider's node received it")
    review_due: str
    reviewed_at: str | None = None
    decision_due: str | None = None
    decided_at: str | None = None
    overdue: bool
    grant: dict[str, Any] | None = Field(None, description="the signed grant (SPEC §8) once approved")
    revoked_at: str | None = Field(None, description="when the grant was revoked")
    history: list[HistoryEntry]
    version: int = Field(description="the provider's revision of this application; copies apply newer ones only")


class ApplicationQuery(_Strict):
    status: Status | None = None
    role: Literal["applicant", "provider"] | None = Field(
        None, description="applicant: applications made from this node (by the caller's department); "
                          "provider: applications for resources of this node (of the caller's department)")
    overdue: bool | None = Field(None, description="only applications whose current step is past its due date")
    resource: str | None = None
    page: int = Field(1, ge=1, le=100_000)
    page_size: int = Field(20, ge=1, le=200)


class ApplicationPage(BaseModel):
    applications: list[Application]
    page: int
    page_size: int
    total: int


class GrantQuery(_Strict):
    role: Literal["consumer", "provider"] | None = Field(
        None, description="consumer: grants held by the caller's department (or node); provider: grants issued "
                          "on the caller's resources (or by this node)")
    resource: str | None = None
    status: Literal["active", "revoked", "expired"] | None = None
    page: int = Field(1, ge=1, le=100_000)
    page_size: int = Field(20, ge=1, le=200)


class GrantView(BaseModel):
    id: str
    application: str
    resource: str
    consumer: Party
    provider: Party
    ops: list[str]
    fields: list[str]
    valid_from: str
    valid_until: str
    status: Literal["active", "revoked", "expired", "not_yet_valid"]
    revoked_at: str | None
    revoke_reason: str | None
    grant: dict[str, Any] = Field(description="the signed grant exactly as issued (SPEC §8)")


class GrantPage(BaseModel):
    grants: list[GrantView]
    page: int
    page_size: int
    total: int


class StatsQuery(_Strict):
    """The window: `since` defaults to 30 days before `until`, `until` to now (ISO 8601 or epoch ms)."""

    since: Instant
    until: Instant


class Latency(BaseModel):
    mean_ms: float | None
    max_ms: int | None


class CallStats(BaseModel):
    key: str = Field(description="the resource code or the caller (<node>/<department>, or a node id for calls "
                                 "served to another node)")
    calls: int
    errors: int
    latency: Latency


class StepStats(BaseModel):
    done: int = Field(description="steps completed in the window")
    on_time: int = Field(description="completed on or before the due date")
    on_time_rate: float | None = Field(description="on_time / done (null when none done)")
    median_hours: float | None = Field(description="median time from the step's start to its completion")
    overdue_open: int = Field(description="still open and past the due date")


class ApprovalStats(BaseModel):
    dept: str = Field(description="providing department (<node>/<department>)")
    applications: int
    submitted: int
    accepted: int
    approved: int
    rejected: int
    withdrawn: int
    review: StepStats
    decision: StepStats


class CallSummary(BaseModel):
    total: int
    errors: int
    latency: Latency
    by_resource: list[CallStats]
    by_department: list[CallStats]


class Stats(BaseModel):
    node: str
    since: str
    until: str
    calls: CallSummary = Field(description="query, verify and compare calls made at this node by its departments "
                                           "and served here for other nodes (from the audit log)")
    approvals: list[ApprovalStats] = Field(description="applications for this node's resources submitted in the "
                                                       "window, per providing department")


# Wire bodies (SPEC §6: application.submit and application.update messages) --------------------------------

ULID = r"^[0-9A-HJKMNP-TV-Z]{26}$"


class SubmittedApplication(ApplicationCreate):
    """`application.submit` body["application"]: sent by the applicant's node to the provider's node, which
    vouches for the applicant department with its signature on the envelope."""

    id: str = Field(pattern=ULID)
    applicant: Party
    provider: Party = Field(description="the provider as the applicant's catalog names it")
    submitted_at: StrictInt = Field(ge=0, description="epoch milliseconds at the applicant's node")


class Withdrawal(_Strict):
    """`application.update` body["withdraw"]: the applicant's node asks the provider's node to withdraw."""

    id: str = Field(pattern=ULID)
    dept: str = Field(min_length=1, max_length=32)
    reason: str = Field("", max_length=2000)


class GrantDoc(BaseModel):
    """A signed grant (SPEC §8), as presented with a call or received in an application.update."""

    model_config = ConfigDict(extra="allow")

    type: Literal["grant"]
    id: str = Field(pattern=ULID)
    resource: str
    consumer: Party
    ops: list[str]
    fields: list[str]
    purpose: str = ""
    valid_from: StrictInt
    valid_until: StrictInt
    issuer: str
    signatures: dict[str, dict[str, str]]
