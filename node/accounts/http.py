"""Authentication of department calls (Bearer tokens) and role checks for handlers."""

from __future__ import annotations

from aiohttp import web

from node.accounts.service import Account, AccountService
from node.errors import Forbidden

ACCOUNT = web.RequestKey("account", Account)
ACCOUNTS = web.AppKey("accounts", AccountService)
PUBLIC_PATHS = frozenset({"/api/v1/openapi.json"})


@web.middleware
async def auth_middleware(request: web.Request, handler):  # noqa: ANN001, ANN201
    if request.path.startswith("/api/") and request.path not in PUBLIC_PATHS:
        request[ACCOUNT] = await request.app[ACCOUNTS].authenticate(request.headers.get("Authorization"))
    return await handler(request)


def account(request: web.Request, *roles: str) -> Account:
    """The caller's account; with roles given, refuse (403) anyone holding another role."""
    acct: Account = request[ACCOUNT]
    if roles and acct.role not in roles:
        raise Forbidden(f"this needs the role {' or '.join(roles)}; the token's role is {acct.role}")
    return acct
