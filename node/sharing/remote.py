"""Sharing across nodes: department calls on resources held elsewhere travel as `service.call` envelopes
(SPEC §6) to the resource's node, which answers them through the same `SharingService.call`."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from node.errors import ApiError, Forbidden, InvalidInput
from node.federation.service import FederationService
from node.sharing.models import Requester
from node.sharing.service import OPS, SharingService
from node.web import validation_details


def floats_as_strings(value: Any) -> Any:
    """Signed JSON carries no floats (SPEC §2: decimals travel as strings): F items cross nodes as text."""
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, dict):
        return {k: floats_as_strings(v) for k, v in value.items()}
    if isinstance(value, list):
        return [floats_as_strings(v) for v in value]
    return value


def connect(sharing: SharingService, federation: FederationService) -> None:
    """Route remote resources through the federation and serve `service.call` for other nodes."""

    async def route(entry: dict[str, Any], op: str, params: dict[str, Any], requester: Requester,
                    grant: dict[str, Any] | None) -> dict[str, Any]:
        body = {"resource": entry["code"], "op": op, "params": params,
                "requester": requester.model_dump(exclude_none=True), "grant": grant}
        # The relays cannot read the body: the person travels beside it too, for their audit records (SPEC §15).
        return await federation.call("service.call", entry["node"], body, user=requester.user)

    async def serve(envelope: dict[str, Any]) -> dict[str, Any]:
        body = envelope["body"]
        op, code = body.get("op"), body.get("resource")
        if op not in OPS or not isinstance(code, str):
            raise InvalidInput("a service.call names its resource and an op of query, verify or compare")
        try:
            requester = Requester.model_validate(body.get("requester") or {})
        except ValidationError as exc:
            raise InvalidInput("the requester is malformed", validation_details(exc)) from None
        # The origin vouches for its own departments only (its signature covers the requester).
        if requester.node != envelope["origin"]:
            raise Forbidden(f"{envelope['origin']} cannot vouch for a requester of node {requester.node}")
        entry = await sharing.catalog.get(code)
        if entry["node"] != sharing.node_id:
            raise ApiError(f"{code} is not held at {sharing.node_id}", code="NOT_FOUND")
        grant = body.get("grant")
        if grant is not None and not isinstance(grant, dict):
            raise InvalidInput("grant must be a signed grant object or null")
        return floats_as_strings(await sharing.call(op, code, body.get("params") or {}, requester, grant))

    sharing.router = route
    federation.handlers["service.call"] = serve
