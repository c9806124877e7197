"""The printable licence: one static HTML page (no script), every value escaped, with a QR code (SVG, drawn
by the `qrcode` package without Pillow) that carries the licence identifier."""

from __future__ import annotations

from html import escape
from typing import Any

STATUS_LABELS = {
    "valid": "有效", "revoked": "已注销", "expired": "已过期", "superseded": "已被新版本替代",
    "not_yet_valid": "尚未生效",
}
CODE_TYPE_LABELS = {"111": "公民身份号码", "001": "统一社会信用代码"}

STYLE = """
body { font-family: "Noto Serif CJK SC", "Songti SC", SimSun, serif; margin: 0; background: #f4f1ea; color: #222; }
.licence { max-width: 190mm; margin: 8mm auto; background: #fff; border: 3px double #a3262a; padding: 10mm; }
h1 { text-align: center; color: #a3262a; letter-spacing: .3em; margin: 0 0 2mm; font-size: 22pt; }
h2 { text-align: center; font-weight: normal; margin: 0 0 6mm; font-size: 14pt; }
table { width: 100%; border-collapse: collapse; font-size: 11pt; }
th { text-align: left; width: 32%; padding: 1.5mm 2mm; vertical-align: top; color: #555; font-weight: normal; }
td { padding: 1.5mm 2mm; word-break: break-all; }
.ident { font-family: "DejaVu Sans Mono", monospace; font-size: 9.5pt; }
.foot { display: flex; justify-content: space-between; align-items: flex-end; margin-top: 6mm; }
.qr svg { width: 36mm; height: 36mm; }
.status { font-size: 12pt; padding: 1mm 3mm; border: 1px solid currentColor; }
.status.valid { color: #1b6e2a; } .status.invalid { color: #a3262a; }
.notice { color: #a3262a; font-size: 10pt; margin-top: 4mm; }
@media print { body { background: #fff; } .licence { margin: 0 auto; } }
"""


def qr_svg(text: str) -> str:
    """An inline SVG QR code of `text` (error correction M, 2-module quiet zone)."""
    import qrcode
    import qrcode.image.svg

    qr = qrcode.QRCode(border=2, error_correction=qrcode.constants.ERROR_CORRECT_M,
                       image_factory=qrcode.image.svg.SvgPathImage)
    qr.add_data(text)
    qr.make(fit=True)
    svg = qr.make_image().to_string(encoding="unicode")
    return svg[svg.index("<svg"):] if "<svg" in svg else svg


def _row(label: str, value: Any, cls: str = "") -> str:
    attr = f' class="{cls}"' if cls else ""
    return f"<tr><th>{escape(label)}</th><td{attr}>{escape(str(value))}</td></tr>"


def render(fetched: dict[str, Any]) -> str:
    """The page of a fetched licence (`LicenceService.fetch`): the whole face when the caller may see it, else
    what anyone may see (type, issuer, identifier, validity, status)."""
    index = fetched["index"]
    licence = fetched.get("licence")
    status = fetched["status"]
    identifier = fetched["identifier"]
    type_name = (licence or index)["licence_type"]["name"]
    rows = []
    if licence is not None:
        holder = licence["holder"]
        rows.append(_row("持证主体", holder["name"]))
        rows.append(_row(CODE_TYPE_LABELS.get(holder["code_type"], "持证主体代码"), holder["code"], "ident"))
        rows.append(_row("证照编号", licence["number"]))
        for name, value in licence["face"].items():
            rows.append(_row(name, value))
        for note in licence.get("annotations", []):
            rows.append(_row(f"加注（{note.get('on', '')}）", note.get("text", "")))
        issuer_name = licence["issuer"]["name"]
        issued_on = licence["issued_on"]
    else:
        issuer_name = index["issuer_name"]
        issued_on = None
    valid_until = index.get("valid_until") or "长期"
    rows.append(_row("发证机构", issuer_name))
    if issued_on:
        rows.append(_row("颁证日期", issued_on))
    rows.append(_row("有效期", f"{index['valid_from']} 至 {valid_until}"))
    rows.append(_row("证照标识", identifier, "ident"))
    notice = ""
    if licence is None:
        notice = (f'<p class="notice">照面信息未显示：{escape(fetched.get("face_withheld") or "未获授权")}</p>')
    label = STATUS_LABELS.get(status, status)
    return (
        '<!DOCTYPE html>\n<html lang="zh-CN"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(type_name)} {escape(identifier)}</title><style>{STYLE}</style></head><body>"
        f'<main class="licence"><h1>电子证照</h1><h2>{escape(type_name)}</h2>'
        f"<table>{''.join(rows)}</table>{notice}"
        f'<div class="foot"><span class="status {"valid" if status == "valid" else "invalid"}">'
        f"状态：{escape(label)}</span>"
        f'<div class="qr" title="{escape(identifier)}">{qr_svg(identifier)}</div></div>'
        "</main></body></html>\n"
    )
