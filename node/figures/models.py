"""The signed daily report a node sends its parent (feed `figures`): one node, one day, its own figures only.

A call row is `[kind, resource, dept, op, calls, errors, latency_ms]` (kind `served` or `made`). Workflows are
keyed by kind (`application`, `data_request`, each with its own statuses), each row one
providing department's items submitted that day, with their statuses as of `updated_at`."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

NODE = r"^\d{6}$"
DAY = r"^\d{4}-\d{2}-\d{2}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class WorkflowRow(_Strict):
    dept: str = Field(max_length=80)
    statuses: dict[str, int]
    review_done: int = Field(0, ge=0)
    review_on_time: int = Field(0, ge=0)
    decision_done: int = Field(0, ge=0)
    decision_on_time: int = Field(0, ge=0)


class FeedbackRow(_Strict):
    dept: str = Field(max_length=80)
    received: int = Field(ge=0)
    corrected: int = Field(ge=0)
    resolved: int = Field(ge=0)
    resolved_on_time: int = Field(ge=0)
    resolve_ms: int = Field(0, ge=0, description="the sum over resolved items of the time to resolve")


class CatalogFigures(_Strict):
    entries: int = Field(ge=0)
    with_data: int = Field(ge=0, description="有目录必有数据: entries holding at least one live record")
    judged: int = Field(ge=0, description="entries with a declared cycle the freshness can be judged by")
    fresh: int = Field(ge=0, description="数据鲜活: of those, updated within their cycle")


class FigureReport(_Strict):
    model_config = ConfigDict(extra="allow")  # `signatures`, and fields a later version adds
    type: Literal["figures"]
    node: str = Field(pattern=NODE)
    day: str = Field(pattern=DAY)
    seq: int = Field(ge=1)
    updated_at: int = Field(ge=0)
    calls: list[list[str | int]] = Field(max_length=100_000)
    workflows: dict[str, list[WorkflowRow]] = {}
    feedback: list[FeedbackRow] = []
    catalog: CatalogFigures | None = None
