"""Licence identifiers (GB/T 36904 电子证照标识) and their ISO/IEC 7064 MOD 37,36 check character.

An identifier is `1.2.156.3005.2.` followed by four parts and the check character, dot-separated:
- the licence type code: the 统一社会信用代码 of the body that defines the type (18 chars) + 3 digits;
- the issuer code: the issuing organ's 统一社会信用代码 (18 chars), or a 6-digit administrative division
  code (GB/T 2260) for licences an area issues as a whole (the standard's second example uses `340100`);
- the serial: digits (this node makes the issue year + 7 digits, as in `20230000403`);
- the version: 3 digits, `001` for the first issue; 加注/变更 keep the serial and bump it;
- the check character over the four parts joined without dots (alphabet `0-9A-Z`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from node.ids import valid_gb11643, valid_gb32100

PREFIX = "1.2.156.3005.2."
ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_VALUE = {c: i for i, c in enumerate(ALPHABET)}
_M = 36  # MOD 37,36: M = 36, M + 1 = 37

TYPE_CODE = re.compile(r"^[0-9A-Z]{18}\d{3}$")
DIVISION_CODE = re.compile(r"^\d{6}$")
SERIAL = re.compile(r"^\d{1,20}$")
VERSION = re.compile(r"^\d{3}$")
# The shape alone (what a path or a query may carry): prefix, four parts, check character.
IDENTIFIER = re.compile(r"^1\.2\.156\.3005\.2\.[0-9A-Z]{21}\.[0-9A-Z]{6,18}\.\d{1,20}\.\d{3}\.[0-9A-Z]$")

HOLDER_CODE_TYPES = {"111": "公民身份号码", "001": "统一社会信用代码"}


class IdentifierError(ValueError):
    """An identifier that is malformed; `part` names the part at fault."""

    def __init__(self, part: str, message: str) -> None:
        super().__init__(message)
        self.part = part
        self.message = message


def mod37_36(text: str) -> str:
    """The ISO/IEC 7064 MOD 37,36 (hybrid) check character of `text` (characters of `0-9A-Z`)."""
    p = _M
    for ch in text:
        try:
            value = _VALUE[ch]
        except KeyError:
            raise IdentifierError("check", f"{ch!r} is not one of 0-9A-Z") from None
        s = (p + value) % _M or _M
        p = (s * 2) % (_M + 1)
    return ALPHABET[(1 - p) % _M]


@dataclass(frozen=True)
class Identifier:
    type_code: str
    issuer_code: str
    serial: str
    version: str
    check: str

    @property
    def text(self) -> str:
        return f"{PREFIX}{self.type_code}.{self.issuer_code}.{self.serial}.{self.version}.{self.check}"

    @property
    def body(self) -> str:
        """What the check character covers: the four parts joined without dots."""
        return self.type_code + self.issuer_code + self.serial + self.version

    @property
    def check_ok(self) -> bool:
        return mod37_36(self.body) == self.check

    @property
    def version_number(self) -> int:
        return int(self.version)


def valid_type_code(code: str) -> bool:
    return bool(isinstance(code, str) and TYPE_CODE.match(code) and valid_gb32100(code[:18]))


def valid_issuer_code(code: str) -> bool:
    return isinstance(code, str) and (valid_gb32100(code) or bool(DIVISION_CODE.match(code)))


def parse(text: str) -> Identifier:
    """Split an identifier into its parts, checking each part's form (not the check character: see
    `Identifier.check_ok`, so that a verifier can say which of the two failed)."""
    if not isinstance(text, str) or not text.startswith(PREFIX):
        raise IdentifierError("prefix", f"an identifier starts with {PREFIX}")
    parts = text[len(PREFIX):].split(".")
    if len(parts) != 5:
        raise IdentifierError("parts", "an identifier has five parts after the prefix: type code, issuer code, "
                                       "serial, version and check character")
    type_code, issuer_code, serial, version, check = parts
    if not valid_type_code(type_code):
        raise IdentifierError("type_code", "the type code is a valid 统一社会信用代码 (18 characters) followed by "
                                           "3 digits")
    if not valid_issuer_code(issuer_code):
        raise IdentifierError("issuer_code", "the issuer code is a valid 统一社会信用代码 or a 6-digit division code")
    if not SERIAL.match(serial):
        raise IdentifierError("serial", "the serial is 1 to 20 digits")
    if not VERSION.match(version) or version == "000":
        raise IdentifierError("version", "the version is 3 digits, from 001")
    if len(check) != 1 or check not in _VALUE:
        raise IdentifierError("check", "the check character is one of 0-9A-Z")
    return Identifier(type_code, issuer_code, serial, version, check)


def make(type_code: str, issuer_code: str, serial: str, version: int) -> str:
    """A new identifier with its check character."""
    ident = Identifier(type_code, issuer_code, serial, f"{version:03d}", "0")
    ident = Identifier(type_code, issuer_code, serial, ident.version, mod37_36(ident.body))
    parse(ident.text)  # the parts are well formed
    return ident.text


def valid_holder_code(code: str, code_type: str) -> bool:
    """A holder's code checked by its type: 111 公民身份号码 (GB 11643), 001 统一社会信用代码 (GB 32100)."""
    if code_type == "111":
        return valid_gb11643(code)
    if code_type == "001":
        return valid_gb32100(code)
    return False


def holder_code_type(code: str) -> str | None:
    """The type of a holder code given alone (a search by holder), or None when it is neither."""
    if valid_gb11643(code):
        return "111"
    if valid_gb32100(code):
        return "001"
    return None
