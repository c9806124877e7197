"""What every portal page is made with: `PortalRoutes` (a page's path, the roles it serves, its template and
its place in the navigation), the base context of the one base template, forms checked against the
session's CSRF token, errors shown as pages, and the security headers of every portal answer.

A page handler is `async def page(request, person) -> dict | web.StreamResponse`: a dict is rendered with the
route's template. It reads the person's Account as `person.account` and hands it to the same service method
the API handler calls, so the rules and the audit are those of the API, with the person named.

    routes = PortalRoutes()

    @routes.get("/portal/catalog", name="portal.catalog", template="catalog.html", nav="数据目录", order=20)
    async def catalog(request, person):
        total, entries = await request.app[CATALOG].search(...)
        return {"entries": entries, "total": total}

    @routes.post("/portal/applications", name="portal.apply", roles=("dept",))
    async def apply(request, person):
        form = request[FORM]                                   # checked against the CSRF token already
        show_on_error(request, "apply.html", form=form)        # a refusal shows the form again, with its message
        doc = await request.app[APPLICATIONS].submit(person.account, ApplicationCreate(...))
        return redirect(url(request, "portal.application", id=doc["id"]))
"""

from __future__ import annotations

import hmac
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp_jinja2
from aiohttp import BodyPartReader, MultipartReader, web
from multidict import MultiDictProxy

from node import __version__
from node.accounts.http import PERSON
from node.accounts.people import Person
from node.audit.http import note
from node.context import CONFIG
from node.errors import ApiError, Forbidden, Unauthenticated
from node.ids import level_of
from node.web import error_response

log = logging.getLogger("govnode.portal")

PageHandler = Callable[[web.Request, Person | None], Awaitable[dict[str, Any] | web.StreamResponse]]

# The form of a POST, once its CSRF token was checked (urlencoded forms).
FORM = web.RequestKey("portal_form", MultiDictProxy)
# A multipart POST (file uploads), positioned after its CSRF field: the handler reads the remaining parts.
UPLOAD = web.RequestKey("portal_upload", MultipartReader)
ON_ERROR = web.RequestKey("portal_on_error", tuple)
NAV = web.AppKey("portal_nav", list)

# Before signing in there is no session to tie a form to: the sign-in form's token is also a cookie of its
# own (SameSite=Strict), and the two must agree.
SIGNIN_COOKIE = "gn_signin"
CSRF_FIELD = "csrf"

# No script or style from anywhere but the node itself, none inline, no framing by any site.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; font-src 'self'; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'")

ROLE_NAMES = {"dept": "部门用户", "operator": "平台运营", "auditor": "审计"}
LEVEL_NAMES = {"national": "国家级", "province": "省级", "city": "市级", "county": "县级"}
ERROR_TITLES = {
    "INVALID_INPUT": "填写的内容有误",
    "UNAUTHENTICATED": "请重新登录",
    "FORBIDDEN": "没有权限",
    "NOT_FOUND": "页面或数据不存在",
    "GRANT_REQUIRED": "需要申请授权",
    "FIELD_NOT_GRANTED": "部分数据项未获授权",
    "SHARE_FORBIDDEN": "该资源不予共享",
    "CONFLICT": "操作与当前状态冲突",
    "TOO_LARGE": "提交的内容过大",
    "RATE_LIMITED": "操作过于频繁",
    "METHOD_NOT_ALLOWED": "不支持的操作",
    "PEER_UNREACHABLE": "暂时无法连接其他节点",
    "PEER_TIMEOUT": "其他节点响应超时",
    "UNAVAILABLE": "服务暂时不可用",
    "INTERNAL": "系统内部错误",
}


@dataclass(frozen=True)
class NavEntry:
    label: str
    route: str
    order: int
    roles: tuple[str, ...]


class PortalRoutes:
    """A portal module's pages; `add_to(app)` adds them and their navigation entries."""

    def __init__(self) -> None:
        self._table = web.RouteTableDef()
        self.nav: list[NavEntry] = []

    def page(self, method: str, path: str, *, name: str, template: str | None = None, roles: tuple[str, ...] = (),
             public: bool = False, nav: str | None = None, order: int = 100,
             before_password_change: bool = False, upload: bool = False) -> Callable[[PageHandler], PageHandler]:
        """A page. `public`: open without signing in. `roles`: refuse (403) other people. `nav`: its label in
        the navigation, at `order`, for people of `roles`. `before_password_change`: open to a person who
        must still change the initial password (everything else sends them to change it first). `upload`: a
        form with a file, read part by part (`request[UPLOAD]`); every other form is read whole, urlencoded
        or multipart alike (`request[FORM]`), so a form sent either way gets the same answer."""

        def deco(fn: PageHandler) -> PageHandler:
            async def handler(request: web.Request) -> web.StreamResponse:
                person = request.get(PERSON)
                if person is None and not public:
                    if request.method == "GET":
                        return redirect(request.app.router["portal.login"].url_for().with_query(next=request.path_qs))
                    raise Unauthenticated("您尚未登录，或会话已超时结束，请重新登录")
                if person is not None and person.must_change and not (public or before_password_change):
                    if request.method == "GET":
                        return redirect(url(request, "portal.password"))
                    raise Forbidden("请先修改初始密码")
                # A form from elsewhere is refused as such (and audited so) before anything else is said of it.
                if request.method == "POST":
                    await _check_csrf(request, person, upload)
                if roles and (person is None or person.account.role not in roles):
                    raise Forbidden(f"此功能仅供{'、'.join(ROLE_NAMES[r] for r in roles)}使用")
                result = await fn(request, person)
                if isinstance(result, web.StreamResponse):
                    return result
                if template is None:
                    raise TypeError(f"page {name} returned a context but has no template")
                return render(request, template, result)

            self._table.route(method, path, name=name)(handler)
            if nav is not None:
                self.nav.append(NavEntry(nav, name, order, roles))
            return fn

        return deco

    def get(self, path: str, **kw: Any) -> Callable[[PageHandler], PageHandler]:
        return self.page("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> Callable[[PageHandler], PageHandler]:
        return self.page("POST", path, **kw)

    def add_to(self, app: web.Application) -> None:
        app.router.add_routes(self._table)
        app[NAV].extend(self.nav)
        app[NAV].sort(key=lambda e: e.order)


# Answers -------------------------------------------------------------------------------------------------

def redirect(location: Any) -> web.Response:
    """303 See Other, returned (not raised), so the request's audit record is made like any answer's."""
    return web.Response(status=303, headers={"Location": str(location)})


def url(request: web.Request, name: str, **parts: str) -> str:
    return str(request.app.router[name].url_for(**parts))


def base_context(request: web.Request) -> dict[str, Any]:
    """What the base template needs on every page: the node, the person, the form token, the navigation."""
    config = request.app[CONFIG]
    person: Person | None = request.get(PERSON)
    role = person.account.role if person else None
    route = request.match_info.route.name if request.match_info.route else None
    return {
        "node": {"id": config.node.id, "name": config.node.name, "level": LEVEL_NAMES[level_of(config.node.id)]},
        "person": person,
        "role_name": ROLE_NAMES.get(role or "", ""),
        "csrf": person.csrf if person else request.cookies.get(SIGNIN_COOKIE, ""),
        "nav": [e for e in request.app[NAV] if person and not person.must_change and (not e.roles or role in e.roles)],
        "current": route,
        "version": __version__,
        "error": None,
        "field_errors": {},
    }


def render(request: web.Request, template: str, context: dict[str, Any], status: int = 200) -> web.Response:
    return aiohttp_jinja2.render_template(template, request, {**base_context(request), **context}, status=status)


def show_on_error(request: web.Request, template: str, **context: Any) -> None:
    """If this request ends in an error, show `template` with `context` again (the form as it was sent),
    the error's message on top and each field it names marked, with the error's status."""
    request[ON_ERROR] = (template, context)


def _field_errors(err: ApiError) -> dict[str, str]:
    if not isinstance(err.details, list):
        return {}
    return {str(d["field"]): str(d.get("error") or err.message) for d in err.details
            if isinstance(d, dict) and "field" in d}


def error_page(request: web.Request, err: ApiError, request_id: str) -> web.StreamResponse:
    """Any error under /portal/ as a page (node.web's middleware calls this): the form it came from when the
    handler said so, else a page with a plain title, the message and the request id to quote."""
    try:
        on_error = request.get(ON_ERROR)
        if on_error is not None and err.status < 500:
            template, context = on_error
            return render(request, template, {**context, "error": err, "field_errors": _field_errors(err)},
                          status=err.status)
        return render(request, "error.html", {"error": err, "title": ERROR_TITLES.get(err.code, "出错了"),
                                              "request_id": request_id}, status=err.status)
    except Exception:  # noqa: BLE001 - a page that cannot be shown must still answer
        log.exception("the error page could not be rendered", extra={"request_id": request_id})
        return error_response(err, request_id)


# Forms ---------------------------------------------------------------------------------------------------

def new_signin_token() -> str:
    return secrets.token_urlsafe(24)


async def _check_csrf(request: web.Request, person: Person | None, upload: bool = False) -> None:
    """Refuse (403, audited) a POST whose form lacks the token of the session (or of the sign-in form).
    An upload page reads a multipart form part by part (the file is streamed, never held whole); any other
    page reads its form whole, whichever of the two encodings a browser or a script chose, within the
    node's request size limit."""
    expected = person.csrf if person else request.cookies.get(SIGNIN_COOKIE)
    sent: str | None = None
    if upload and request.content_type == "multipart/form-data":
        reader = await request.multipart()
        part = await reader.next()
        if isinstance(part, BodyPartReader) and part.name == CSRF_FIELD:
            sent = (await part.read_chunk(256)).decode("utf-8", "replace")  # a token is 64 characters
        request[UPLOAD] = reader
    elif request.content_type in ("multipart/form-data", "application/x-www-form-urlencoded", ""):
        form = await request.post()
        value = form.get(CSRF_FIELD)
        sent = value if isinstance(value, str) else None
        request[FORM] = form
    if not expected or not sent or not hmac.compare_digest(sent.encode(), expected.encode()):
        note(request, csrf="missing" if not sent else "wrong")
        raise Forbidden("提交被拒绝：表单校验码缺失或不符（页面已过期，或表单来自其他网站）。请刷新页面后重新提交。")


# Headers -------------------------------------------------------------------------------------------------

async def security_headers(request: web.Request, resp: web.StreamResponse) -> None:
    """Every portal answer: the CSP, no framing, no sniffing; no caching except of static files, since a
    page may show personal data."""
    if request.path != "/" and not request.path.startswith("/portal/"):
        return
    resp.headers["Content-Security-Policy"] = CSP
    resp.headers["X-Frame-Options"] = "DENY"
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["Referrer-Policy"] = "same-origin"
    if request.path.startswith("/portal/static/") and resp.status == 200:
        resp.headers["Cache-Control"] = "public, max-age=3600"  # links carry ?v=<version>
    else:
        resp.headers["Cache-Control"] = "no-store"
