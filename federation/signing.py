"""Ed25519 keys and the Matrix "Signing JSON" algorithm (SPEC §2), compatible with ``signedjson``.

The signed bytes of an object are the canonical JSON of the object without its ``signatures``
and ``unsigned`` keys; signatures live in ``signatures[<signer>][<key id>]`` as unpadded
standard base64.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nacl.exceptions
import nacl.signing

from federation.canonical import encode_canonical_json
from federation.errors import SignatureError

__all__ = [
    "ALGORITHM",
    "SignatureError",
    "SigningKey",
    "decode_b64",
    "decode_verify_key",
    "encode_b64",
    "generate_signing_key",
    "read_signing_key_file",
    "sign_json",
    "signed_bytes",
    "verify_key_b64",
    "verify_signature",
    "verify_signed_json",
    "write_signing_key_file",
]

ALGORITHM = "ed25519"
_VERSION = re.compile(r"[A-Za-z0-9_]+")
_B64 = re.compile(r"[A-Za-z0-9+/]*")


@dataclass(frozen=True)
class SigningKey:
    """A node's private Ed25519 key and its version (the key id is ``ed25519:<version>``)."""

    nacl_key: nacl.signing.SigningKey
    version: str

    def __post_init__(self) -> None:
        if not _VERSION.fullmatch(self.version):
            raise ValueError(f"key version must match [A-Za-z0-9_]+, got {self.version!r}")

    def __repr__(self) -> str:  # never print key material
        return f"SigningKey({self.key_id!r})"

    @property
    def key_id(self) -> str:
        return f"{ALGORITHM}:{self.version}"

    @property
    def verify_key(self) -> nacl.signing.VerifyKey:
        return self.nacl_key.verify_key

    def sign(self, message: bytes) -> bytes:
        """Return the 64-byte detached Ed25519 signature of ``message``."""
        return self.nacl_key.sign(message).signature


def generate_signing_key(version: str = "1") -> SigningKey:
    """Make a fresh random signing key."""
    return SigningKey(nacl.signing.SigningKey.generate(), version)


def encode_b64(data: bytes) -> str:
    """Standard base64 without padding."""
    return base64.b64encode(data).rstrip(b"=").decode("ascii")


def decode_b64(text: str) -> bytes:
    """Decode standard base64, padded or not; raise ``ValueError`` on anything else.

    Non-canonical encodings (stray bits in the last character, wrong padding) are refused so
    that every byte string has exactly one accepted spelling.
    """
    if not isinstance(text, str):
        raise ValueError("base64 value must be a string")
    unpadded = text.rstrip("=")
    padding = len(text) - len(unpadded)
    if not _B64.fullmatch(unpadded) or len(unpadded) % 4 == 1:
        raise ValueError("not valid base64")
    if padding and (len(text) % 4 or padding > 2):
        raise ValueError("wrong base64 padding")
    try:
        data = base64.b64decode(unpadded + "=" * (-len(unpadded) % 4), validate=True)
    except binascii.Error as exc:
        raise ValueError(f"not valid base64: {exc}") from None
    if encode_b64(data) != unpadded:
        raise ValueError("non-canonical base64")
    return data


def verify_key_b64(key: SigningKey) -> str:
    """The public half of ``key`` as published in certificates."""
    return encode_b64(key.verify_key.encode())


def decode_verify_key(text: str) -> nacl.signing.VerifyKey:
    """Decode a published base64 Ed25519 public key; ``ValueError`` when malformed."""
    raw = decode_b64(text)
    if len(raw) != 32:
        raise ValueError(f"an Ed25519 verify key has 32 bytes, got {len(raw)}")
    return nacl.signing.VerifyKey(raw)


def write_signing_key_file(path: str | os.PathLike[str], key: SigningKey) -> None:
    """Write ``ed25519 <version> <seed b64>`` atomically, readable by its owner only (0600).

    The key is written to a private temporary file in the same directory (``mkstemp`` creates
    it 0600), synced, then renamed over ``path``: the key is never visible partially written
    or with wider permissions.
    """
    target = Path(path)
    line = f"{ALGORITHM} {key.version} {encode_b64(bytes(key.nacl_key))}\n"
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as stream:
            stream.write(line)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_signing_key_file(path: str | os.PathLike[str]) -> SigningKey:
    """Read a key written by :func:`write_signing_key_file` (or by ``signedjson``)."""
    try:
        text = Path(path).read_text(encoding="ascii")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: signing key file is not ASCII text") from None
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) != 1:
        raise ValueError(f"{path}: expected exactly one key line, found {len(lines)}")
    fields = lines[0].split()
    if len(fields) != 3:
        raise ValueError(f"{path}: expected '{ALGORITHM} <version> <base64 seed>'")
    algorithm, version, seed_b64 = fields
    if algorithm != ALGORITHM:
        raise ValueError(f"{path}: unsupported key algorithm {algorithm!r}")
    if not _VERSION.fullmatch(version):
        raise ValueError(f"{path}: bad key version {version!r}")
    try:
        seed = decode_b64(seed_b64)
    except ValueError as exc:
        raise ValueError(f"{path}: bad key seed: {exc}") from None
    if len(seed) != 32:
        raise ValueError(f"{path}: an Ed25519 seed has 32 bytes, got {len(seed)}")
    return SigningKey(nacl.signing.SigningKey(seed), version)


def signed_bytes(obj: Mapping[str, Any], *, checked: bool = False) -> bytes:
    """Canonical JSON of ``obj`` without ``signatures`` and ``unsigned``: what gets signed.

    ``checked=True``: ``obj`` is known to be inside the canonical JSON domain (see ``encode_canonical_json``).
    """
    return encode_canonical_json({k: v for k, v in obj.items() if k not in ("signatures", "unsigned")},
                                 checked=checked)


def sign_json(obj: Mapping[str, Any], signer: str, key: SigningKey, *, message: bytes | None = None) -> dict[str, Any]:
    """Return a copy of ``obj`` with ``signatures[signer][key.key_id]`` added.

    Other signatures are kept; ``unsigned`` is carried over but not signed. ``obj`` is not modified.
    ``message``, when the caller already holds it, is ``signed_bytes(obj)`` (one encoding serves a
    relay's checks and its own signature).
    """
    signature = encode_b64(key.sign(signed_bytes(obj) if message is None else message))
    signatures = {name: dict(by_key) for name, by_key in _signatures_of(obj).items()}
    signatures.setdefault(signer, {})[key.key_id] = signature
    return {**obj, "signatures": signatures}


def verify_signature(verify_key: nacl.signing.VerifyKey, message: bytes, signature_b64: str) -> None:
    """Check one detached signature; raise :class:`SignatureError` when it does not verify."""
    try:
        signature = decode_b64(signature_b64)
    except ValueError as exc:
        raise SignatureError(f"bad base64 in signature: {exc}") from None
    if len(signature) != 64:
        raise SignatureError(f"an Ed25519 signature has 64 bytes, got {len(signature)}")
    try:
        verify_key.verify(message, signature)
    except nacl.exceptions.BadSignatureError:
        raise SignatureError("bad signature") from None


def verify_signed_json(
    obj: Mapping[str, Any],
    signer: str,
    verify_keys: Mapping[str, nacl.signing.VerifyKey | str],
    *,
    message: bytes | None = None,
) -> str:
    """Verify ``signer``'s signature on ``obj`` with one of ``verify_keys`` (key id -> key or b64).

    Returns the key id that verified. Raises :class:`SignatureError` when the signer did not sign,
    signed only with unknown key ids, or every signature with a known key id is bad.
    May raise ``CanonicalJSONError`` when ``obj`` is outside the canonical JSON domain.
    ``message``, when given, is ``signed_bytes(obj)`` already computed by the caller.
    """
    by_key = _signatures_of(obj).get(signer)
    if not by_key:
        raise SignatureError(f"no signature from {signer}", {"signer": signer})
    known = sorted(key_id for key_id in by_key if key_id in verify_keys)
    if not known:
        raise SignatureError(
            f"no signature from {signer} with a known key id (has {sorted(by_key)})",
            {"signer": signer, "key_ids": sorted(by_key)},
        )
    if message is None:
        message = signed_bytes(obj)
    failures: list[str] = []
    for key_id in known:
        try:
            _verify_with(verify_keys[key_id], message, by_key[key_id])
        except SignatureError as exc:
            failures.append(f"{key_id}: {exc.message}")
        else:
            return key_id
    raise SignatureError(f"signature of {signer} does not verify ({'; '.join(failures)})", {"signer": signer})


def _verify_with(key: nacl.signing.VerifyKey | str, message: bytes, signature: object) -> None:
    if isinstance(key, str):
        try:
            key = decode_verify_key(key)
        except ValueError as exc:
            raise SignatureError(f"bad verify key: {exc}") from None
    if not isinstance(signature, str):
        raise SignatureError("signature is not a string")
    verify_signature(key, message, signature)


def _signatures_of(obj: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    signatures = obj.get("signatures", {})
    if not isinstance(signatures, dict) or not all(isinstance(v, dict) for v in signatures.values()):
        raise SignatureError("'signatures' must map signer -> {key id: signature}")
    return signatures
