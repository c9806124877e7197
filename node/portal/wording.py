"""What the portal's forms say in Chinese: the names of codes a page shows, and the refusals of the services
put in words a clerk reads. The rules stay in the services and their models; a message this module does not
know is shown as the service wrote it."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from node.errors import InvalidInput

OPS = {"verify": "核验", "query": "查询", "compare": "批量比对", "subscribe": "订阅"}
ITEM_TYPES = {"C": "字符型", "N": "数值型", "Y": "货币型", "D": "日期型", "T": "日期时间型", "L": "逻辑型",
              "M": "备注型", "G": "通用型", "B": "二进制", "I": "整型", "F": "浮点型"}
CATEGORIES = {"base": "基础信息资源", "theme": "主题信息资源", "department": "部门信息资源"}
FORMATS = {"database": "数据库", "spreadsheet": "电子表格", "file": "电子文件", "image": "图形图像",
           "stream": "流媒体", "self_describing": "自描述格式", "service": "接口服务"}
METHODS = {"api": "接口调用", "file": "文件下载", "table": "库表交换"}
EVENTS = {"submitted": "提交申请", "received": "平台收到申请", "accepted": "平台审核通过", "approved": "提供部门批准",
          "withdrawn": "申请部门撤回", "withdraw_refused": "撤回未成功（已有决定）", "overdue": "超过办理期限",
          "revoked": "授权被撤销", "calendar": "期限说明"}
# 数据需求 (node.requests): where a request stands, and what each history entry records.
REQUEST_STATUSES = {"submitted": "待平台分派", "accepted": "待承办部门答复", "fulfilled": "已满足", "rejected": "未能满足"}
REQUEST_EVENTS = {"submitted": "提出需求", "received": "平台收到需求", "accepted": "平台分派承办部门",
                  "fulfilled": "承办部门以目录资源满足需求", "rejected": "不予满足", "overdue": "超过办理期限",
                  "calendar": "期限说明", "not_delivered": "未能送达"}


def _sub(patterns: list[tuple[str, str]]) -> Callable[[str], str | None]:
    compiled = [(re.compile(p), t) for p, t in patterns]

    def translate(text: str) -> str | None:
        for pattern, template in compiled:
            m = pattern.fullmatch(text)
            if m:
                return template.format(*m.groups())
        return None

    return translate


# The ValueErrors of the payload models (node.catalog.models, node.applications.models, node.fields).
_model_message = _sub([
    (r"must not be blank", "不能为空"),
    (r"exactly one item must have key: true \(found (\d+)\)", "须指定且只能指定一个主键数据项（现有 {0} 个）"),
    (r"item field '(.*)' appears twice", "字段名“{0}”重复"),
    (r"item name '(.*)' appears twice", "名称“{0}”重复"),
    (r"a conditional share needs its condition", "有条件共享须填写共享条件"),
    (r"a share of type none needs its basis.*", "不予共享须填写依据（法律、法规或政策）"),
    (r"'.*' is not a field name .*", "字段名须以小写英文字母开头，只含小写字母、数字和下划线"),
    (r"must be (?:a date )?YYYY-MM-DD", "日期应为“年-月-日”，如 2026-12-31"),
    (r"must be a resource code .*", "资源代码格式不正确，应如 101001/370321000001"),
    (r"(?:ops|fields|methods|controlled_ops) must not repeat", "选项重复"),
    (r"give either code or classification", "请填写分类码"),
])


def _pydantic_message(error: Mapping[str, Any]) -> str:
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind == "missing":
        return "必填"
    if kind == "string_too_short":
        return "不能为空"
    if kind == "string_too_long":
        return f"不能超过 {ctx.get('max_length')} 个字符"
    if kind == "string_pattern_mismatch":
        return "格式不正确"
    if kind in ("literal_error", "union_tag_invalid", "enum"):
        return "请从所列选项中选择"
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return "须为整数"
    if kind == "greater_than_equal":
        return f"不能小于 {ctx.get('ge')}"
    if kind == "less_than_equal":
        return f"不能大于 {ctx.get('le')}"
    if kind == "too_short":
        return "请至少选择一项"
    if kind == "too_long":
        return f"至多 {ctx.get('max_length')} 项"
    if kind == "value_error":
        msg = str(error["msg"]).removeprefix("Value error, ")
        return _model_message(msg) or msg
    return str(error["msg"])


def parse_form(model: type[BaseModel], data: Any, control: Callable[[tuple[Any, ...], str], str]) -> Any:
    """`model` made from what a form sent; if it does not fit, a refusal naming the form's controls
    (`control(loc, message)` gives the control's name for a place in the model) with Chinese messages, so
    the form is shown again with each control's note."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        details = []
        for error in exc.errors(include_url=False, include_input=False):
            message = _pydantic_message(error)
            details.append({"field": control(tuple(error["loc"]), message), "error": message})
        raise InvalidInput("填写的内容有误，请按提示修改后重新提交。", details) from None


# The reasons node.data gives for a refused row or header (node.data.rows, node.data.service, formats).
_row_reason = _sub([
    (r"required", "必填项为空"),
    (r"the key is required", "主键为空"),
    (r"longer than (\d+) characters", "超过 {0} 个字符"),
    (r"longer than (\d+) bytes once decoded", "超过 {0} 字节"),
    (r"more than (\d+) digits", "超过 {0} 位数字"),
    (r"must be a decimal number(?: or a decimal string)?|must be a finite decimal|must be a (?:finite )?number",
     "须为数字"),
    (r"must be an integer", "须为整数"),
    (r"outside ±\(2\^53−1\)", "数值超出范围"),
    (r"must be a date YYYY-MM-DD", "须为日期（年-月-日）"),
    (r"must be a date without a time", "须为日期，不含时间"),
    (r"is not a real date", "不是有效日期"),
    (r"must be an ISO 8601 date and time", "须为日期时间（如 2026-12-31T09:00:00）"),
    (r"must be true/false, 1/0 or 是/否|must be true or false", "须为“是”或“否”"),
    (r"must be (?:a base64 string|text|a string)|is not standard base64", "内容格式不正确"),
    (r"is not a valid 公民身份号码 .*", "公民身份号码校验位不正确"),
    (r"is not a valid 统一社会信用代码 .*", "统一社会信用代码校验位不正确"),
    (r"must not contain NUL characters", "含有不可见的控制字符"),
    (r"a key is at most (\d+) characters", "主键超过 {0} 个字符"),
    (r"a deletion needs the key", "删除记录须给出主键"),
    (r"unknown field: not an item of this resource|unknown column: not the name or field of an item of this resource",
     "不是本资源的数据项"),
    (r"the same item as column '(.*)'", "与“{0}”列是同一数据项"),
    (r"no column for the key item \((.*) / .*\)", "缺少主键列“{0}”"),
    (r"a value in a column without a header", "有内容的列没有列名"),
    (r"(\d+) more errors not listed", "另有 {0} 处错误未列出"),
    (r"not valid CSV: .*", "不是有效的 CSV 行"),
])


def row_reason(reason: str) -> str:
    return _row_reason(reason) or reason


_upload_message = _sub([
    (r"(\d+) of (\d+) rows are invalid; nothing was stored.*", "文件共 {1} 行数据，其中 {0} 行有误，全部未入库。请改正下列问题后重新上传。"),
    (r"the header row does not match the resource's items; nothing was stored",
     "表头与本资源的数据项不符，全部未入库。第一行应为数据项的名称或字段名。"),
    (r"the file is empty.*|the uploaded file is empty", "文件为空：第一行应为数据项的名称或字段名。"),
    (r"the multipart body holds no file", "请选择要上传的文件。"),
    (r"the upload is larger than (\d+) bytes.*", "文件超过 {0} 字节的上限，请分成几个文件上传。"),
    (r"content type .* is not accepted here.*", "只能上传 CSV 或 XLSX 文件。"),
    (r"not a readable XLSX file.*|the XLSX sheet could not be read.*", "无法读取该 XLSX 文件，请用 Excel 或 WPS 另存为 XLSX 后重试。"),
    (r"the XLSX file has no worksheet", "该 XLSX 文件没有工作表。"),
    (r".*the XLSX file.*", "该 XLSX 文件超出可处理的大小，请分成几个文件上传。"),
])


def upload_message(message: str) -> str:
    return _upload_message(message) or message


# Why the audit chain check stopped (node.audit.service.AuditLog.verify).
_chain_break = _sub([
    (r"its contents do not match its hash \(altered\)", "记录内容与其哈希值不符：该记录在写入后被改动过"),
    (r"its link to the previous record does not match", "记录中保存的前一条记录哈希与前一条记录不符：记录被改动、删除或插入"),
    (r"record (\d+) is missing \(the log ends at (\d+), its head is (\d+)\)",
     "第 {0} 条记录缺失：日志止于第 {1} 条，而链头为第 {2} 条（末尾的记录被删除）"),
    (r"record (\d+) is missing", "第 {0} 条记录缺失（被删除）"),
])


def chain_break(reason: str) -> str:
    return _chain_break(reason) or reason
