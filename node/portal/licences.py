"""电子证照 (SPEC §13) in the portal: find a holder's licences across the federation and verify one (any
person); issue a licence (a department) and open its page, which prints cleanly (the portal's print
stylesheet keeps the licence and drops the page around it). Each action is the API's service method with the
person's Account. A holder's code is personal data: it is sent in a POSTed form, never in a URL."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from node.accounts.people import Person
from node.audit.http import note
from node.errors import InvalidInput, NotFound
from node.licences.http import LICENCES
from node.licences.identifier import IDENTIFIER
from node.licences.models import LicenceIssue
from node.licences.page import CODE_TYPE_LABELS, STATUS_LABELS, qr_svg
from node.portal.applications import form_text
from node.portal.pages import FORM, PortalRoutes, redirect, show_on_error, url
from node.portal.wording import parse_form

routes = PortalRoutes()
IDENT = r"{identifier:1\.2\.156\.3005\.2\.[0-9A-Z.]{30,80}}"
# The issue form's controls for the places of LicenceIssue.
CONTROLS = {("licence_type", "code"): "type_code", ("licence_type", "name"): "type_name",
            ("holder", "name"): "holder_name", ("holder", "code"): "holder_code", ("holder", "code_type"): "holder_code"}
ISSUE_FIELDS = ("type_code", "type_name", "number", "holder_name", "holder_code", "issued_on", "valid_from",
                "valid_until", "face")
VERDICT_CHECKS = {"shape": "格式", "identifier": "证照标识结构", "check_character": "证照标识校验位",
                  "chain": "签发节点证书链", "signature": "签发节点签名", "validity": "有效期", "status": "签发方登记的状态"}
CHECK_RESULTS = {"ok": "通过", "failed": "未通过", "skipped": "未检查"}


def _context(**extra: Any) -> dict[str, Any]:
    return {"holder": "", "found": None, "identifier": "", "verdict": None, "status_labels": STATUS_LABELS,
            "checks": VERDICT_CHECKS, "check_results": CHECK_RESULTS, **extra}


@routes.get("/portal/licences", name="portal.licences", template="licences.html", nav="电子证照", order=55)
async def licences(request: web.Request, person: Person | None) -> dict[str, Any]:
    return _context()


@routes.post("/portal/licences", name="portal.licences.find", template="licences.html")
async def find(request: web.Request, person: Person | None) -> dict[str, Any]:
    holder = form_text(request[FORM], "holder")
    show_on_error(request, "licences.html", **_context(holder=holder))
    if not holder:
        raise InvalidInput("请填写持证主体的公民身份号码或统一社会信用代码", [{"field": "holder", "error": "未填写"}])
    note(request, keys=[holder])
    found = await request.app[LICENCES].find(holder, False)
    return _context(holder=holder, found=found["licences"])


@routes.post("/portal/licences/verify", name="portal.licences.verify", template="licences.html")
async def verify(request: web.Request, person: Person | None) -> dict[str, Any]:
    identifier = form_text(request[FORM], "identifier")
    show_on_error(request, "licences.html", **_context(identifier=identifier))
    verdict = await request.app[LICENCES].verify({"identifier": identifier})
    note(request, keys=[identifier])
    return _context(identifier=identifier, verdict=verdict)


def _issue_context(values: dict[str, str] | None = None) -> dict[str, Any]:
    return {"v": values or {k: "" for k in ISSUE_FIELDS}}


@routes.get("/portal/licences/new", name="portal.licences.new", template="licence_issue.html", roles=("dept",))
async def issue_form(request: web.Request, person: Person | None) -> dict[str, Any]:
    return _issue_context()


def _face(text: str) -> dict[str, str] | str:
    """照面 as the form has it, one item a line: 名称：内容 (a full-width or plain colon)."""
    face: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        name, sep, value = line.replace("：", ":", 1).partition(":")
        if not sep:
            return line
        face[name.strip()] = value.strip()
    return face


@routes.post("/portal/licences/new", name="portal.licences.issue", roles=("dept",))
async def issue(request: web.Request, person: Person | None) -> web.StreamResponse:
    assert person is not None
    values = {k: form_text(request[FORM], k) for k in ISSUE_FIELDS}
    show_on_error(request, "licence_issue.html", **_issue_context(values))
    face = _face(values["face"])
    if isinstance(face, str):
        raise InvalidInput("照面的每一行应为“名称：内容”", [{"field": "face", "error": f"这一行缺少冒号：{face[:40]}"}])
    body = parse_form(LicenceIssue, {
        "licence_type": {"code": values["type_code"], "name": values["type_name"]}, "number": values["number"],
        "holder": {"name": values["holder_name"], "code": values["holder_code"]},
        "issued_on": values["issued_on"] or None, "valid_from": values["valid_from"] or None,
        "valid_until": values["valid_until"] or None, "face": face,
    }, lambda loc, _m: CONTROLS.get(tuple(loc[:2]), str(loc[0]) if loc else "type_code"))
    licence = await request.app[LICENCES].issue(person.account, body)
    note(request, keys=[licence["identifier"]])
    return redirect(url(request, "portal.licence", identifier=licence["identifier"]))


@routes.get(f"/portal/licences/{IDENT}", name="portal.licence", template="licence.html")
async def licence(request: web.Request, person: Person | None) -> dict[str, Any]:
    assert person is not None
    identifier = request.match_info["identifier"]
    if not IDENTIFIER.match(identifier):
        raise NotFound("证照标识格式不正确")
    note(request, keys=[identifier])
    fetched = await request.app[LICENCES].fetch(person.account, identifier)
    return {"fetched": fetched, "lic": fetched.get("licence"), "index": fetched["index"], "identifier": identifier,
            "status": fetched["status"], "status_label": STATUS_LABELS.get(fetched["status"], fetched["status"]),
            "code_types": CODE_TYPE_LABELS, "qr": qr_svg(identifier)}
