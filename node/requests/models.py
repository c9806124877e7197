"""Payloads of data requests (供需对接, SPEC §16): a department asks for data that no catalog entry provides."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, field_validator

from node.applications.models import HistoryEntry
from node.fields import NonBlank, ResourceCode

Status = Literal["submitted", "accepted", "rejected", "fulfilled"]
OPEN_REQUESTS = ("submitted", "accepted")  # the provider's node still owes an answer
DEPT = r"^[0-9A-Z]{1,32}$"
ULID = r"^[0-9A-HJKMNP-TV-Z]{26}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Target(_Strict):
    node: str = Field(pattern=r"^\d{6}$", description="the node asked (its 6-digit division code)")
    dept: str | None = Field(None, pattern=DEPT, description="the department thought to hold the data, if known; "
                                                              "the node's operator assigns the request either way")


class DataRequestCreate(_Strict):
    """Ask a node for data that no catalog entry provides (供需对接). It is received at that node, whose operator
    assigns it to a department (or rejects it) within 10 working days; the department then fulfils it by naming
    the catalog entry that now provides the data (or rejects it), within 10 working days more."""

    to: Target
    name: NonBlank = Field(max_length=200, description="the data wanted, in a few words (需求名称)")
    fields: list[NonBlank] = Field(min_length=1, max_length=100,
                                   description="the data items wanted, by name (e.g. 婚姻状况)")
    purpose: NonBlank = Field(max_length=2000, description="what the data is for (用途)")
    basis: NonBlank = Field(max_length=2000, description="the law, policy or duty the request rests on (依据)")

    @field_validator("fields")
    @classmethod
    def _fields(cls, v: list[str]) -> list[str]:
        v = [f.strip() for f in v]
        if any(len(f) > 100 for f in v):
            raise ValueError("a field name is at most 100 characters")
        if len(set(v)) != len(v):
            raise ValueError("fields must not repeat")
        return v


class Acceptance(_Strict):
    """The asked node's operator assigns the request to one of the node's departments."""

    dept: str = Field(pattern=DEPT, description="the department that is to provide the data")
    reason: str = Field("", max_length=2000)


class Rejection(_Strict):
    """The operator (before assigning) or the assigned department (after) rejects the request, saying why."""

    reason: NonBlank = Field(max_length=2000)


class Fulfilment(_Strict):
    """The assigned department names the catalog entry of its own that now provides the data."""

    entry: ResourceCode = Field(description="the code of the department's catalog entry at this node")
    reason: str = Field("", max_length=2000)


class Requester(BaseModel):
    node: str = Field(pattern=r"^\d{6}$")
    dept: str = Field(pattern=DEPT)


class Provider(BaseModel):
    node: str = Field(pattern=r"^\d{6}$")
    dept: str | None = Field(pattern=DEPT, description="the department assigned (null until assigned)")


class EntryRef(BaseModel):
    code: str
    name: str


class DataRequest(BaseModel):
    """A data request as the asked node holds it (the requester's node keeps a copy)."""

    id: str
    to: Target
    name: str
    fields: list[str]
    purpose: str
    basis: str
    requester: Requester
    provider: Provider
    status: Status
    submitted_at: str
    received_at: str | None = Field(None, description="when the asked node received it")
    assign_due: str = Field(description="the operator's assignment is due (10th working day after submission)")
    assigned_at: str | None = None
    answer_due: str | None = Field(None, description="the department's answer is due (10th working day after "
                                                     "the assignment)")
    answered_at: str | None = None
    overdue: bool
    entry: EntryRef | None = Field(None, description="the catalog entry that now provides the data, once fulfilled")
    history: list[HistoryEntry]
    version: int = Field(description="the asked node's revision; copies apply newer ones only")


class DataRequestQuery(_Strict):
    role: Literal["requester", "provider"] | None = Field(
        None, description="requester: requests made from this node (by the caller's department); provider: "
                          "requests this node received (assigned to the caller's department)")
    status: Status | None = None
    overdue: bool | None = Field(None, description="only requests whose current step is past its due date")
    page: int = Field(1, ge=1, le=100_000)
    page_size: int = Field(20, ge=1, le=200)


class DataRequestPage(BaseModel):
    data_requests: list[DataRequest]
    page: int
    page_size: int
    total: int


class SubmittedDataRequest(DataRequestCreate):
    """`data_request.submit` body["data_request"]: sent by the requester's node to the asked node, which trusts
    the requester department on the envelope's signature."""

    id: str = Field(pattern=ULID)
    requester: Requester
    submitted_at: StrictInt = Field(ge=0, description="epoch milliseconds at the requester's node")
