"""Field types shared by the payload models, so that the JSON schema in the OpenAPI document and the
validator are one definition; and the rules for names and text that reach a terminal or a log."""

from __future__ import annotations

import re
import unicodedata
from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field

from node.ids import RESOURCE_CODE
from node.workdays import CST

# RESOURCE_CODE without its group names: JSON Schema patterns are ECMA-262 regexes, which spell named groups
# differently, and the document needs none.
RESOURCE_CODE_PATTERN = re.sub(r"\(\?P<\w+>", "(", RESOURCE_CODE.pattern)


def _resource_code(v: str) -> str:
    if not RESOURCE_CODE.match(v):
        raise ValueError("must be a resource code 分类码/顺序码, e.g. 101001/370321000001")
    return v


ResourceCode = Annotated[str, Field(json_schema_extra={"pattern": RESOURCE_CODE_PATTERN}),
                         AfterValidator(_resource_code),
                         Field(description="resource code 分类码/顺序码, e.g. 101001/370321000001")]


FIELD = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


def _field_name(v: str) -> str:
    if not FIELD.match(v):
        raise ValueError(f"{v[:80]!r} is not a field name (^[a-z][a-z0-9_]{{0,62}}$)")
    return v


# A data item's machine name (its `field`).
FieldName = Annotated[str, Field(json_schema_extra={"pattern": FIELD.pattern}), AfterValidator(_field_name)]


def _not_blank(v: str) -> str:
    if not v.strip():
        raise ValueError("must not be blank")
    return v.strip()


# Text that must say something: not empty, not only spaces (kept without its outer spaces).
NonBlank = Annotated[str, Field(min_length=1, pattern=r"\S"), AfterValidator(_not_blank)]


# Query values ---------------------------------------------------------------------------------------------
# An empty query value (`?since=`) means the same as leaving the parameter out: forms and generated clients
# send empty values for unset fields.

def _empty_is_absent(v: Any) -> Any:
    return None if v == "" else v


MAX_MS = 2**62  # below every database's BIGINT, with room to add to it
_INSTANT = (r"^([0-9]{1,19}|[0-9]{4}-[0-9]{2}-[0-9]{2}([T ][0-9]{2}:[0-9]{2}(:[0-9]{2}([.,][0-9]{1,6})?)?"
            r"(Z|[+-][0-9]{2}:?[0-9]{2})?)?)?$")


def to_ms(v: str | None) -> int | None:
    """An Instant's value in epoch milliseconds (a time without a zone is China Standard Time, as every
    date the node shows is, whatever the server's own zone)."""
    if v is None:
        return None
    try:
        if v.isdigit():
            ms = int(v)
        else:
            at = datetime.fromisoformat(v)
            ms = int((at if at.tzinfo else at.replace(tzinfo=CST)).timestamp() * 1000)
    except (ValueError, OverflowError, OSError):
        raise ValueError("must be an ISO 8601 time or epoch milliseconds") from None
    if not 0 <= ms < MAX_MS:
        raise ValueError("is out of range")
    return ms


def _instant(v: str) -> str:
    to_ms(v)
    return v


# The constraints come before the validators in each Annotated, so that pydantic puts them in the JSON schema.
Instant = Annotated[Annotated[str, Field(pattern=_INSTANT), AfterValidator(_instant)] | None,
                    BeforeValidator(_empty_is_absent), Field(
    None, description="ISO 8601 time (YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS][zone]) or epoch milliseconds; an empty "
                      "value is the same as none")]

Cursor = Annotated[int, Field(ge=0, lt=MAX_MS), BeforeValidator(lambda v: 0 if v == "" else v), Field(
    0, description="cursor: the `next` of the previous page; absent or empty = from the start")]


# Names and text that reach a terminal or a log -------------------------------------------------------------

def unsafe_characters(text: str) -> list[str]:
    """The characters of `text` that could forge output: control and format characters (Unicode categories
    Cc and Cf: CR, LF, tabs, ANSI escapes, bidirectional overrides, zero-width characters) and angle brackets
    (HTML). Ordinary spaces are fine."""
    return [ch for ch in text if ch in "<>" or unicodedata.category(ch) in ("Cc", "Cf")]


def check_name(text: str, what: str = "name") -> str:
    """A name as shown in listings, certificates and logs: refused (ValueError) when empty or when it holds a
    character that could forge output; returned without outer spaces."""
    bad = unsafe_characters(text)
    if bad:
        shown = ", ".join(sorted({f"U+{ord(ch):04X}" if ch not in "<>" else ch for ch in bad}))
        raise ValueError(f"{what} must not contain control characters or angle brackets (found {shown})")
    if not text.strip():
        raise ValueError(f"{what} must not be empty")
    return text.strip()


def printable(text: Any) -> str:
    """`text` made safe to print on one line of a terminal: unprintable characters (controls, format
    characters, line and paragraph separators) are shown as escapes; everything else as it is."""
    s = str(text)
    if s.isprintable():
        return s
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in s)


SafeName = Annotated[str, AfterValidator(check_name)]
