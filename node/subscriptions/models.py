"""Payloads of subscriptions (SPEC §12 数据回流) and of the record change feed served to subscribers (SPEC §10)."""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from node.fields import ResourceCode

MAX_WAIT_MS = 15_000


class SubscriptionCreate(BaseModel):
    """Subscribe the caller's department to a resource's changes. Needs a grant that includes `subscribe`
    (the providing department itself needs none for a webhook on its own resource).

    - `replica`: this node keeps a local copy of a resource held at another node, fed through the federation
      from its change feed; the department's query, verify and compare calls on it are then answered here
      (same grant rules, same masking) with `"replica": true` and the replica's lag;
    - `webhook`: batches of changes are POSTed to `url`, signed (see the `secret` in the answer, shown once),
      retried with back-off until the receiver answers 2xx.
    """

    model_config = ConfigDict(extra="forbid")

    resource: ResourceCode
    mode: Literal["replica", "webhook"]
    url: str | None = Field(None, max_length=2000, pattern=r"^https?://\S+$",
                            description="the webhook's http(s) URL (webhook mode)")

    @field_validator("url")
    @classmethod
    def _parseable(cls, v: str | None) -> str | None:
        # The pattern lets through what no client can call ("http://x]y" is an invalid IPv6 host; a port of
        # letters; a host IDNA cannot encode): found by the stateful fuzzer as a 500 from urlsplit.
        if v is None:
            return v
        try:
            parts = urlsplit(v)
            _ = parts.port  # raises for a port that is not a number from 0 to 65535
            host = parts.hostname
            if not host:
                raise ValueError("it names no host")
            host.encode("idna")
        except (ValueError, UnicodeError) as exc:
            raise ValueError(f"not a URL a webhook can be called at ({exc})") from None
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "SubscriptionCreate":
        if self.mode == "webhook" and not self.url:
            raise ValueError("a webhook subscription needs its url")
        if self.mode == "replica" and self.url:
            raise ValueError("a replica has no url")
        return self


class SubscriptionView(BaseModel):
    id: str
    resource: str
    provider_node: str
    dept: str
    mode: str
    url: str | None
    status: str = Field(description="active or cancelled")
    state: str = Field(description="syncing (catching up), live (in step), error (retrying with back-off), "
                                   "suspended (the grant no longer allows it; retried slowly)")
    cursor: int = Field(description="the provider's change id up to which changes are applied or delivered")
    records: int | None = Field(description="records the replica holds (replica mode)")
    lag_ms: int | None = Field(description="0 while in step; else milliseconds since the replica last was")
    in_step_at: str | None
    last_change_at: str | None = Field(description="when the provider committed the last change applied here")
    fields: list[str] | None = Field(description="the items delivered in clear")
    masked: list[str] | None = Field(description="the items delivered masked (sensitive, outside the grant)")
    deliveries: dict[str, int] | None = Field(description="webhook: batches and changes delivered, failed attempts")
    last_error: dict[str, Any] | None
    failures: int
    created_at: str
    secret: str | None = Field(None, description="webhook signing secret: shown once, in the answer to creation")


class SubscriptionList(BaseModel):
    subscriptions: list[SubscriptionView]


class FeedParams(BaseModel):
    """`params` of a `service.call` with `op: "changes"` (the subscriber's pull of the change feed)."""

    model_config = ConfigDict(extra="forbid")

    since: int = Field(0, ge=0)
    limit: int = Field(500, ge=1, le=1000)
    wait_ms: int = Field(0, ge=0, le=MAX_WAIT_MS, description="long poll: wait up to this long for a change when "
                                                              "none is there yet")
