"""Payloads of the data capability: pushing records, uploading files, the change feed (SPEC §10)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, RootModel

from node.fields import Cursor


class RecordsBody(RootModel[list[dict[str, Any]]]):
    """A batch of records: a JSON array (application/json) or one object a line (application/x-ndjson).

    Each record is keyed by item `field`; `{"<key field>": k, "_deleted": true}` deletes the record `k`.
    Values follow the item types of the entry (see node.data.rows). A batch is all or nothing: one bad row
    refuses it with INVALID_INPUT whose details list `{"row", "field", "error"}`.
    """


class PushResult(BaseModel):
    """What a committed batch did."""

    resource: str
    received: int = Field(description="rows in the batch")
    upserted: int = Field(description="rows that inserted or replaced a record")
    deleted: int = Field(description="rows that deleted a record (tombstones)")
    change: int | None = Field(description="change-feed cursor of the batch's last change (null if empty)")


class ChangesQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    since: Cursor
    limit: int = Field(1000, ge=1, le=10_000)


class Change(BaseModel):
    key: str
    data: dict[str, Any] | None = Field(description="the record; null for a deletion")
    deleted: bool
    change: int


class ChangesPage(BaseModel):
    """Changes in commit order, deletions (tombstones) included."""

    changes: list[Change]
    next: int = Field(description="pass as `since` for the next page")
    more: bool = Field(description="true when more changes follow right away")
