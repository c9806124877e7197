"""Payloads of table exchange (前置机库表交换, SPEC §12): binding a resource to a department's own database
table, and the state of each binding."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, field_validator, model_validator

from node.fields import FIELD

# A table or column name of the source database: quoted when used, so anything printable is safe; checked
# against the source's own catalog before it is read.
_IDENT = re.compile(r"^[^\x00-\x1f\"`]{1,63}$")


def _ident(v: str, what: str) -> str:
    if not _IDENT.match(v) or v != v.strip():
        raise ValueError(f"{what} must be a name of 1-63 printable characters (no quotes)")
    return v


class SourceCreate(BaseModel):
    """Bind a resource to a table of the providing department's database (SPEC §12).

    `url` is a SQLAlchemy URL whose driver the node uses as named: `sqlite:///path` or `sqlite+aiosqlite:///path`
    (opened read-only), `postgresql+asyncpg://user:password@host/db`; any other installed SQLAlchemy driver works
    too. Credentials in it are sealed at rest and never shown back or logged.

    The whole table is loaded once, in key order and in batches of `batch_size`; then every `interval_s` the rows
    whose `updated_column` moved past the last one seen are pulled. Deleted rows are found by `delete_column`
    (a row whose flag is set, or equals `delete_value`, becomes a deletion) and/or by a key reconciliation every
    `reconcile_interval_s` (source keys against the records held: those no longer in the source are deleted).
    """

    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, max_length=2000, description="SQLAlchemy URL of the source database")
    table: str = Field(description="source table, optionally `schema.table`")
    key_column: str = Field(description="the source column holding the resource's key item")
    updated_column: str = Field(description="a column that moves forward whenever a row changes (timestamp or "
                                            "version number)")
    columns: dict[str, str] = Field(min_length=1, max_length=500,
                                    description="item field → source column (the key item may be left out: it "
                                                "is `key_column`)")
    interval_s: int = Field(60, ge=1, le=86_400, description="seconds between incremental pulls")
    delete_column: str | None = Field(None, description="a column flagging deleted rows (逻辑删除)")
    delete_value: StrictStr | StrictInt | None = Field(
        None, description="the value of `delete_column` that marks a deletion (default: any true-ish value: "
                          "true, non-zero, 'Y', 'true', '是' …)")
    reconcile_interval_s: int | None = Field(None, ge=1, le=30 * 86_400,
                                             description="seconds between key reconciliations (none by default)")
    batch_size: int = Field(5000, ge=10, le=50_000, description="rows read and written per batch")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if "\x00" in v or "://" not in v:
            raise ValueError("must be a SQLAlchemy URL such as postgresql+asyncpg://user:password@host/db")
        return v

    @field_validator("table")
    @classmethod
    def _table(cls, v: str) -> str:
        for part in v.split(".", 1):
            _ident(part, "table")
        return v

    @field_validator("key_column", "updated_column", "delete_column")
    @classmethod
    def _column(cls, v: str | None) -> str | None:
        return None if v is None else _ident(v, "a column")

    @field_validator("columns")
    @classmethod
    def _columns(cls, v: dict[str, str]) -> dict[str, str]:
        for field, col in v.items():
            if not FIELD.match(field):
                raise ValueError(f"{field!r} is not an item field")
            _ident(col, f"the column of {field}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "SourceCreate":
        if self.delete_value is not None and self.delete_column is None:
            raise ValueError("delete_value needs delete_column")
        return self


class SourceError(BaseModel):
    at: str
    kind: str = Field(description="unreachable (connection), schema (table or columns changed), source (other "
                                  "database error), credentials, internal")
    message: str


class SourceProgress(BaseModel):
    phase: str = Field(description="initial (the full history is loading) or incremental")
    loaded: int = Field(description="rows read by the initial load so far")
    total: int | None = Field(description="rows in the source table when the initial load began")
    percent: float | None
    started_at: str | None
    finished_at: str | None
    rows_per_s: float | None = Field(description="initial load speed (rows read / seconds), once finished")


class SourceView(BaseModel):
    """One binding and its state (credentials never shown)."""

    id: str
    resource: str
    dept: str
    url: str = Field(description="the URL with its password hidden (***)")
    table: str
    key_column: str
    updated_column: str
    columns: dict[str, str]
    interval_s: int
    delete_column: str | None
    delete_value: Any
    reconcile_interval_s: int | None
    batch_size: int
    state: str = Field(description="loading (initial load under way), ready (in step, pulling on schedule), "
                                   "error (the last attempt failed; retried with back-off)")
    progress: SourceProgress
    rows: dict[str, int] = Field(description="records written from this source: upserted, deleted; rows rejected "
                                             "(values breaking the resource's item rules)")
    rejects: list[dict[str, Any]] = Field(description="the latest rejected rows: key (masked if sensitive), field, "
                                                      "error")
    last_sync: str | None = Field(description="when the last attempt ended")
    last_success: str | None
    last_reconcile: str | None
    last_error: SourceError | None
    failures: int = Field(description="consecutive failed attempts")
    next_attempt: str | None


class SourceList(BaseModel):
    sources: list[SourceView]
