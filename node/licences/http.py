"""Licence endpoints of the department API (SPEC §13)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web
from pydantic import BaseModel, Field, RootModel

from node.accounts.http import account
from node.audit.http import note
from node.catalog.http import CATALOG
from node.context import CONFIG, DB, add_routes, json_limit
from node.errors import InvalidInput
from node.federation.http import FEDERATION
from node.licences.identifier import IDENTIFIER
from node.licences.models import (Fetched, HolderLicences, HolderQuery, LicenceDoc, LicenceIssue, LicenceVersion,
                                  Revocation, VerifyResult)
from node.licences.page import render
from node.ops.openapi import ROUTED
from node.licences.service import LicenceService
from node.sharing.http import SHARING
from node.web import ApiRoutes, json_response, parse_json, query_model, read_body, read_model

LICENCES = web.AppKey("licences", LicenceService)
routes = ApiRoutes()
TAGS = ("licences",)
# Not `verify`, so that /api/v1/licences/verify is only the POST route (an OPTIONS or GET there is told so).
IDENT = "{identifier:(?!verify$)[^/]+}"


class IdentifierOnly(BaseModel):
    """Verify by identifier alone (e.g. scanned from the QR code): the check character and the issuer's status;
    the signature is checked only when the licence itself is sent."""

    identifier: str = Field(description="a GB/T 36904 licence identifier")


class VerifyBody(RootModel[LicenceDoc | IdentifierOnly]):
    """A licence exactly as its issuer signed it, or `{"identifier": ...}`."""


class RevokeResult(BaseModel):
    identifier: str
    status: str
    index: dict = Field(description="the new signed index entry (it replicates)")


def _identifier(request: web.Request) -> str:
    identifier = request.match_info["identifier"]
    if not IDENTIFIER.match(identifier):
        raise InvalidInput(f"{identifier[:120]!r} is not a licence identifier (GB/T 36904: 1.2.156.3005.2.<type "
                           "code>.<issuer code>.<serial>.<version>.<check>)", [{"field": "identifier"}])
    return identifier


@routes.post("/api/v1/licences", name="licences.issue",
             summary="Issue a licence (the caller is the issuing department); signed by this node, kept here",
             body=LicenceIssue, response=LicenceDoc, roles=("dept",), status=201, errors=(404, 409), tags=TAGS)
async def issue(request: web.Request) -> web.Response:
    acct = account(request, "dept")
    body = await read_model(request, LicenceIssue, json_limit(request))
    licence = await request.app[LICENCES].issue(acct, body)
    note(request, keys=[licence["identifier"]])
    return json_response(licence, status=201)


@routes.get("/api/v1/licences", name="licences.find",
            summary="A holder's licences across the federation, from this node's replicated index",
            query=HolderQuery, response=HolderLicences, tags=TAGS)
async def find(request: web.Request) -> web.Response:
    account(request)
    q = query_model(request, HolderQuery)
    note(request, keys=[q.holder])
    return json_response(await request.app[LICENCES].find(q.holder, q.all))


@routes.post("/api/v1/licences/verify", name="licences.verify",
             summary="Verify a licence: check character, issuer's signature and chain, validity, issuer's status",
             body=VerifyBody, response=VerifyResult, errors=ROUTED, tags=TAGS)
async def verify(request: web.Request) -> web.Response:
    account(request)
    body = parse_json(await read_body(request, json_limit(request)))
    if not isinstance(body, dict):
        raise InvalidInput('send a licence object, or {"identifier": "..."}')
    result = await request.app[LICENCES].verify(body)
    if result.get("identifier"):
        note(request, keys=[result["identifier"]])
    return json_response(result)


@routes.get(f"/api/v1/licences/{IDENT}.html", name="licences.page",
            summary="The printable licence (HTML): face, issuer, validity, and a QR code of the identifier",
            answers="text/html", errors=(400, 503) + ROUTED, tags=TAGS)
async def page(request: web.Request) -> web.Response:
    acct = account(request)
    identifier = _identifier(request)
    note(request, keys=[identifier])
    fetched = await request.app[LICENCES].fetch(acct, identifier)
    return web.Response(text=render(fetched), content_type="text/html", charset="utf-8", headers={
        "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:",
        "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"})


@routes.get(f"/api/v1/licences/{IDENT}", name="licences.get",
            summary="One licence, from its issuer: the signed licence to those who may see its face, else its "
                    "index entry and status", response=Fetched, errors=(400, 503) + ROUTED, tags=TAGS)
async def get_licence(request: web.Request) -> web.Response:
    acct = account(request)
    identifier = _identifier(request)
    note(request, keys=[identifier])
    return json_response(await request.app[LICENCES].fetch(acct, identifier))


@routes.post(f"/api/v1/licences/{IDENT}/revoke", name="licences.revoke",
             summary="Revoke a licence (its issuing department), with the reason", body=Revocation,
             response=RevokeResult, roles=("dept",), errors=(409,), tags=TAGS)
async def revoke(request: web.Request) -> web.Response:
    acct = account(request, "dept")
    identifier = _identifier(request)
    body = await read_model(request, Revocation, json_limit(request))
    note(request, keys=[identifier])
    return json_response(await request.app[LICENCES].revoke(acct, identifier, body.reason))


@routes.post(f"/api/v1/licences/{IDENT}/versions", name="licences.version",
             summary="A new version (加注 or 变更) of a current licence: same serial, version + 1; the old one is "
                     "superseded", body=LicenceVersion, response=LicenceDoc, roles=("dept",), status=201, errors=(409,),
             tags=TAGS)
async def new_version(request: web.Request) -> web.Response:
    acct = account(request, "dept")
    identifier = _identifier(request)
    body = await read_model(request, LicenceVersion, json_limit(request))
    licence = await request.app[LICENCES].new_version(acct, identifier, body)
    note(request, keys=[identifier, licence["identifier"]])
    return json_response(licence, status=201)


async def _service(app: web.Application) -> AsyncIterator[None]:
    svc = LicenceService(app[DB], app[CONFIG].node.id, app[CATALOG], app[FEDERATION], app[SHARING])
    svc.connect()
    app[LICENCES] = svc
    yield


def setup(app: web.Application) -> None:
    app.cleanup_ctx.append(_service)
    add_routes(app, routes)
