"""Authentication of callers and role checks for handlers: department tokens (Bearer) on the API, people's
session cookies on the portal."""

from __future__ import annotations

from aiohttp import web

from node.accounts.people import PeopleService, Person
from node.accounts.service import Account, AccountService
from node.errors import Forbidden

ACCOUNT = web.RequestKey("account", Account)
PERSON = web.RequestKey("person", Person)
ACCOUNTS = web.AppKey("accounts", AccountService)
PEOPLE = web.AppKey("people", PeopleService)
PUBLIC_PATHS = frozenset({"/api/v1/openapi.json"})
# The portal's session cookie: a random id, never the person's name or anything derived from a password.
SESSION_COOKIE = "gn_session"


@web.middleware
async def auth_middleware(request: web.Request, handler):  # noqa: ANN001, ANN201
    if request.path.startswith("/api/") and request.path not in PUBLIC_PATHS:
        request[ACCOUNT] = await request.app[ACCOUNTS].authenticate(request.headers.get("Authorization"))
    elif request.path.startswith("/portal/") and not request.path.startswith("/portal/static/"):
        # No session is no error here: the portal's pages send whoever has none to the sign-in page.
        person = await request.app[PEOPLE].session(request.cookies.get(SESSION_COOKIE))
        if person is not None:
            request[PERSON] = person
            request[ACCOUNT] = person.account
    return await handler(request)


def account(request: web.Request, *roles: str) -> Account:
    """The caller's account; with roles given, refuse (403) anyone holding another role."""
    acct: Account = request[ACCOUNT]
    if roles and acct.role not in roles:
        raise Forbidden(f"this needs the role {' or '.join(roles)}; the token's role is {acct.role}")
    return acct
