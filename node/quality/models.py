"""Payloads of data quality (SPEC §10 feedback): reports of wrong values routed to the source, and multi-source
checks (多元校核) between two resources that describe the same subjects."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, field_validator, model_validator

from node.fields import FieldName, NonBlank, ResourceCode
from node.ids import DEPT_CODE

FeedbackStatus = Literal["open", "confirmed", "corrected", "rejected"]
OPEN_FEEDBACK = ("open", "confirmed")  # the provider still owes the reporter a correction or a reason


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FeedbackCreate(_Strict):
    """A suspected data error (数据纠错): which record, which items, what is wrong. Filed at the reporter's own node,
    routed to the node holding the resource, answered by its providing department."""

    resource: ResourceCode
    key: StrictStr | StrictInt | None = Field(None, description="the key of the record found wrong")
    fields: list[FieldName] = Field(min_length=1, max_length=100, description="the items whose values look wrong")
    description: NonBlank = Field(max_length=2000, description="what is wrong, and how it was found")
    expected: dict[str, StrictStr | StrictInt | bool | None] | None = Field(
        None, description="the values the reporter believes right, per item (optional)")

    @field_validator("fields")
    @classmethod
    def _fields(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("fields must not repeat")
        return v

    @model_validator(mode="after")
    def _expected(self) -> "FeedbackCreate":
        if self.expected and not set(self.expected) <= set(self.fields):
            raise ValueError("expected names only items listed in fields")
        return self


class FeedbackAction(_Strict):
    """The providing department's answer: confirm (the value is wrong, a correction follows) or corrected (the
    record was corrected), with an optional note."""

    reason: str = Field("", max_length=2000)


class FeedbackRejection(_Strict):
    """The providing department rejects the feedback: the value is right, and the reason says why."""

    reason: NonBlank = Field(max_length=2000)


class FeedbackQuery(_Strict):
    role: Literal["reporter", "provider"] | None = None
    status: FeedbackStatus | None = None
    overdue: bool | None = None
    resource: str | None = None
    page: int = Field(1, ge=1, le=100_000)
    page_size: int = Field(50, ge=1, le=500)


class Party(BaseModel):
    node: str
    dept: str


class Feedback(BaseModel):
    """A feedback as both nodes hold it (the provider's node is the authority; the reporter's keeps a copy)."""

    id: str
    resource: str
    resource_name: str | None = None
    reporter: Party
    provider: Party
    key: Any = None
    fields: list[str]
    description: str
    expected: dict[str, Any] | None = None
    status: FeedbackStatus
    submitted_at: str
    received_at: str | None = None
    due: str = Field(description="the 10th working day after submission (China's official calendar)")
    overdue: bool
    resolved_at: str | None = None
    late: bool = Field(False, description="resolved after its due date")
    history: list[dict[str, Any]]
    version: int


class FeedbackPage(BaseModel):
    feedback: list[Feedback]
    page: int
    page_size: int
    total: int


class SubmittedFeedback(_Strict):
    """The body of a `feedback.submit` message."""

    id: str = Field(pattern=r"^[0-9A-HJKMNP-TV-Z]{26}$")
    resource: str
    reporter: Party
    provider: Party
    key: StrictStr | StrictInt | None = None
    fields: list[str] = Field(min_length=1, max_length=100)
    description: str = Field(min_length=1, max_length=2000)
    expected: dict[str, Any] | None = None
    submitted_at: int


# Multi-source checks ------------------------------------------------------------------------------------

class FieldPair(_Strict):
    left: FieldName
    right: FieldName


class CheckCreate(_Strict):
    """Declare that two resources (at any nodes) describe the same subjects under the same key, and which items to
    compare (the same field on both sides, or `{"left": …, "right": …}` pairs). The check runs at once and again on
    `POST /api/v1/checks/{id}/run`.

    The left resource's records are read in batches (here if it is held here, else from its change feed, which
    needs a grant with `subscribe`) and compared with the right resource through the federation (`compare`: only
    equality flags come back). Keys only on the right are counted when the right resource can be read the same way.
    Calls are made for `dept` (a department of this node, whose grants apply; default the operator)."""

    name: str = Field(min_length=1, max_length=200)
    left: ResourceCode
    right: ResourceCode
    fields: list[FieldPair | FieldName] = Field(min_length=1, max_length=50)
    dept: str | None = Field(None, pattern=DEPT_CODE.pattern,
                             description="the department of this node the calls are made for")
    batch_size: int = Field(500, ge=1, le=5000)
    samples: int = Field(5, ge=0, le=100, description="disagreeing keys shown per item (masked)")

    @model_validator(mode="after")
    def _distinct(self) -> "CheckCreate":
        if self.left == self.right:
            raise ValueError("left and right must be two resources")
        return self

    def pairs(self) -> list[dict[str, str]]:
        return [{"left": f, "right": f} if isinstance(f, str) else f.model_dump() for f in self.fields]


class Check(BaseModel):
    id: str
    name: str
    left: str
    right: str
    fields: list[dict[str, str]]
    dept: str
    batch_size: int
    samples: int
    created_by: str
    created_at: str
    status: str = Field(description="running, done, failed, interrupted (the node stopped during the run)")
    report: dict[str, Any] | None = Field(description="per item: agree, disagree, missing_left, missing_right and "
                                                      "masked samples; per key: both, only_left, only_right")


class CheckList(BaseModel):
    checks: list[Check]
