"""Secrets a node keeps for itself: credentials in source URLs (sealed at rest) and the keys that sign webhook
deliveries (derived, never stored).

One random 32-byte key lives in the node's home as `secrets.key` (owner-readable only), made on first use. It
is not the signing key: rotating the signing key must not make sealed URLs unreadable. Losing the file loses
the sealed URLs (their sources report an error and must be bound again) and changes webhook secrets.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from pathlib import Path

from nacl.exceptions import CryptoError
from nacl.secret import SecretBox

SECRETS_FILE = "secrets.key"


class SealError(Exception):
    """A sealed value cannot be opened (the key file changed or the value was altered)."""


class Sealer:
    def __init__(self, home: Path) -> None:
        self.path = Path(home) / SECRETS_FILE
        self._key = self._load_or_create()
        self._box = SecretBox(self._key)

    def _load_or_create(self) -> bytes:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            key = secrets.token_bytes(32)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, base64.b64encode(key) + b"\n")
            finally:
                os.close(fd)
            return key
        key = base64.b64decode(raw.strip())
        if len(key) != 32:
            raise SealError(f"{self.path} does not hold a 32-byte key")
        return key

    def seal(self, text: str) -> str:
        return base64.b64encode(self._box.encrypt(text.encode("utf-8"))).decode("ascii")

    def open(self, sealed: str) -> str:
        try:
            return self._box.decrypt(base64.b64decode(sealed)).decode("utf-8")
        except (CryptoError, ValueError) as exc:
            raise SealError("the sealed value cannot be opened with this node's secrets.key") from exc

    def derive(self, purpose: str, ident: str) -> str:
        """A stable secret for (purpose, ident), e.g. the signing secret of one webhook subscription."""
        return hmac.new(self._key, f"{purpose}:{ident}".encode(), hashlib.sha256).hexdigest()
