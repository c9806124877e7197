"""The portal (政务数据共享门户), served by every node under /portal/: signing in and out, the password, and
`setup(app)`, which adds the pages of every module in PAGE_MODULES (one more page module: one more entry)."""

from __future__ import annotations

import importlib
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp_jinja2
import jinja2
from aiohttp import web

from node.accounts.http import PEOPLE, SESSION_COOKIE
from node.accounts.people import CST, IDLE_MS, Person, SignInRefused
from node.audit.http import note
from node.errors import InvalidInput
from node.portal.pages import (FORM, NAV, SIGNIN_COOKIE, PortalRoutes, new_signin_token, redirect, render,
                               security_headers, show_on_error, url)

HERE = Path(__file__).parent
# Modules whose `routes` (a PortalRoutes) hold pages, in the order of their navigation entries' `order`.
PAGE_MODULES = ("node.portal.http", "node.portal.home", "node.portal.catalog", "node.portal.data",
                "node.portal.applications", "node.portal.requests", "node.portal.resources", "node.portal.items",
                "node.portal.lists", "node.portal.figures", "node.portal.admin", "node.portal.audit",
                "node.portal.licences", "node.portal.feedback")

routes = PortalRoutes()


def _next(value: Any) -> str:
    """Where to go after signing in: only a path of this portal (never another site, never `//host`)."""
    if (isinstance(value, str) and value.startswith("/portal/") and "//" not in value and "\\" not in value
            and value.isprintable()):  # a CR or LF would break the Location header after the session was made
        return value
    return "/portal/"


def _cookie_flags(request: web.Request) -> dict[str, Any]:
    return {"path": "/portal/", "httponly": True, "secure": request.secure}


@routes.get("/portal/login", name="portal.login", template="login.html", public=True)
async def login_page(request: web.Request, person: Person | None) -> web.StreamResponse:
    if person is not None:
        return redirect(url(request, "portal.home"))
    token = request.cookies.get(SIGNIN_COOKIE) or new_signin_token()
    resp = render(request, "login.html", {"csrf": token, "username": "", "next": _next(request.query.get("next")),
                                          "signed_out": "bye" in request.query})
    resp.set_cookie(SIGNIN_COOKIE, token, samesite="Strict", **_cookie_flags(request))
    return resp


@routes.post("/portal/login", name="portal.login.post", public=True)
async def login(request: web.Request, person: Person | None) -> web.StreamResponse:
    form = request[FORM]
    username, password = str(form.get("username", "")), str(form.get("password", ""))
    target = _next(form.get("next"))
    show_on_error(request, "login.html", username=username, next=target, signed_out=False)
    if not username.strip() or not password:
        raise InvalidInput("请输入用户名和密码")
    try:
        raw, acct, must_change = await request.app[PEOPLE].sign_in(username, password)
    except SignInRefused as refused:
        note(request, caller=refused.account, **(refused.details or {}))
        raise
    note(request, caller=acct)
    resp = redirect(url(request, "portal.password") if must_change else target)
    # A new random id at every sign-in (a session id set before it is never taken over).
    resp.set_cookie(SESSION_COOKIE, raw, samesite="Lax", max_age=None, **_cookie_flags(request))
    resp.del_cookie(SIGNIN_COOKIE, path="/portal/")
    return resp


@routes.post("/portal/logout", name="portal.logout", before_password_change=True)
async def logout(request: web.Request, person: Person | None) -> web.StreamResponse:
    assert person is not None
    await request.app[PEOPLE].sign_out(person)
    resp = redirect(request.app.router["portal.login"].url_for().with_query(bye="1"))
    resp.del_cookie(SESSION_COOKIE, path="/portal/")
    return resp


@routes.get("/portal/password", name="portal.password", template="password.html", before_password_change=True)
async def password_page(request: web.Request, person: Person | None) -> dict[str, Any]:
    return {}


@routes.post("/portal/password", name="portal.password.post", before_password_change=True)
async def change_password(request: web.Request, person: Person | None) -> web.StreamResponse:
    assert person is not None
    form = request[FORM]
    show_on_error(request, "password.html")
    await request.app[PEOPLE].change_password(person, str(form.get("current", "")) or None,
                                              str(form.get("new", "")), str(form.get("confirm", "")))
    return redirect(request.app.router["portal.home"].url_for().with_query(done="password"))


async def root(request: web.Request) -> web.StreamResponse:
    return redirect("/portal/")


def _date(ms: int | None) -> str:
    return datetime.fromtimestamp(ms / 1000, CST).strftime("%Y-%m-%d %H:%M") if ms else ""


def _cached_url(url_for: Any) -> Any:
    """aiohttp-jinja2's `url`, remembering the URL of each route without parts: the routes are fixed once the
    app runs, and building one (router look-up, yarl) costs ~3 µs, a dozen times a page for the navigation and
    the header's forms."""
    made: dict[tuple[int, str], Any] = {}

    @jinja2.pass_context
    def url(context: Any, name: str, query_: Any = None, **parts: Any) -> Any:
        if parts or query_ is not None:
            return url_for(context, name, query_, **parts)
        key = (id(context["app"]), name)
        hit = made.get(key)
        if hit is None:
            hit = made[key] = url_for(context, name)
        return hit

    return url


def setup(app: web.Application) -> None:
    # auto_reload=False: the templates ship inside the package and change only with an upgrade (a restart).
    # Left on, every render asks the file system whether each template it extends or imports changed; the
    # 核验 result page (base, form and resource macros) rendered in 1.64 ms at p50 with it and 1.43 ms
    # without, 600 renders each on a busy 2-core machine.
    aiohttp_jinja2.setup(app, loader=jinja2.PackageLoader("node.portal", "templates"),
                         undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                         auto_reload=False, filters={"datetime": _date})
    env = aiohttp_jinja2.get_env(app)
    env.globals["idle_minutes"] = IDLE_MS // 60_000
    env.globals["url"] = _cached_url(env.globals["url"])
    app[NAV] = []
    for name in PAGE_MODULES:
        importlib.import_module(name).routes.add_to(app)
    app.router.add_get("/", root, name="root")
    app.router.add_static("/portal/static/", HERE / "static", name="portal.static")
    app.on_response_prepare.append(security_headers)
