"""The peer client: authenticated HTTP calls to a neighbour (SPEC §4), with failures named by hop."""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from yarl import URL

from federation import nesting
from federation.auth import make_authorization
from federation.canonical import encode_canonical_json
from federation.errors import FederationError
from federation.signing import SigningKey


class PeerError(FederationError):
    """A neighbour could not be reached in time (PEER_UNREACHABLE / PEER_TIMEOUT), or refused the call
    (the code it answered, with its HTTP status in `status`)."""

    def __init__(self, code: str, message: str, details: Any = None, status: int | None = None) -> None:
        super().__init__(code, message, details)
        self.status = status


log = logging.getLogger("govnode.federation.client")

# The largest answer a neighbour may send, counted as inflated: a feed page or a query answer is a few MiB at
# most, and a neighbour's gzip must not inflate into the node's memory without end.
MAX_ANSWER_BYTES = 64 * 1024 * 1024


async def _read_capped(resp: aiohttp.ClientResponse, peer: str) -> bytes:
    chunks, size = [], 0
    async for chunk in resp.content.iter_chunked(65536):
        size += len(chunk)
        if size > MAX_ANSWER_BYTES:
            raise PeerError("PEER_UNREACHABLE", f"{peer} answered with more than {MAX_ANSWER_BYTES} bytes",
                            {"hop": peer})
        chunks.append(chunk)
    return b"".join(chunks)


def endpoint_name(path: str) -> str:
    """The federation endpoint a request path calls, named by its first segment after the version
    (`messages`, `notify`, `registry`, a feed's name …): few enough to label a metric."""
    parts = path.split("?", 1)[0].split("/")
    return parts[3] if len(parts) > 3 and parts[1] == "federation" and parts[3] else "other"


class PeerClient:
    """Signs every request with this node's current key (looked up per call, so rotation takes effect)."""

    def __init__(self, node_id: str, key: Callable[[], SigningKey], timeout_s: float = 10.0, *,
                 ssl_context: ssl.SSLContext | None = None,
                 refuse: Callable[[str], str | None] = lambda url: None) -> None:
        self.node_id = node_id
        self._key = key
        self.timeout_s = timeout_s
        self._ssl = ssl_context
        self._refuse = refuse  # why an endpoint may not be called (plain HTTP off loopback), or None
        self._session: aiohttp.ClientSession | None = None
        # Told (peer, endpoint, seconds) of every call that was sent, answered or not: the node's /metrics.
        self.observe: Callable[[str, str, float], None] | None = None

    async def start(self) -> None:
        # No cookie jar: a hop is authenticated by its signature alone, so nothing a neighbour answers may
        # ride along on later requests. (Keeping and filtering cookies was also ~20 % of a request's CPU.)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, limit_per_host=256, keepalive_timeout=30,
                                           ssl=self._ssl if self._ssl is not None else True),
            cookie_jar=aiohttp.DummyCookieJar(),
            json_serialize=lambda o: json.dumps(o, ensure_ascii=False),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(self, peer: str, endpoint: str, method: str, path: str, content: Any = None,
                      timeout_s: float | None = None, *, origin: str | None = None, checked: bool = False,
                      label: str | None = None) -> Any:
        """Call `peer` at `endpoint`; return the decoded JSON answer of a 2xx, else raise PeerError.

        `label`: what `observe` is told the call was, instead of the endpoint its path names (the outbox's
        sends, told apart from the calls the node waits on).

        `checked=True`: `content` is known to be inside the canonical JSON domain (an envelope this node
        built or checked on receipt, plus signatures), so encoding it skips that check."""
        if self._session is None:
            raise PeerError("PEER_UNREACHABLE", "the peer client is closed", {"hop": peer})
        refusal = self._refuse(endpoint)
        if refusal is not None:  # decided before any connection is opened
            raise PeerError("PEER_UNREACHABLE", f"{peer}: {refusal}", {"hop": peer})
        uri = path
        origin = origin or self.node_id
        data = None if content is None else encode_canonical_json(content, checked=checked)
        headers = {"Authorization": make_authorization(method, uri, origin, peer, self._key(), content=content,
                                                       content_json=data)}
        if data is not None:
            headers["Content-Type"] = "application/json"
        # The signature covers the request target as sent: stop the client from re-quoting it.
        url = URL(endpoint.rstrip("/") + path, encoded=True)
        timeout = timeout_s if timeout_s is not None else self.timeout_s
        started = time.perf_counter()
        try:
            async with asyncio.timeout(max(timeout, 0.001)):
                # No redirects: a hop goes where its endpoint says (the plain-HTTP check above saw only that).
                async with self._session.request(method, url, data=data, headers=headers,
                                                 allow_redirects=False) as resp:
                    raw = await _read_capped(resp, peer)
        except TimeoutError:
            raise PeerError("PEER_TIMEOUT", f"{peer} did not answer within {timeout:.1f} s", {"hop": peer}) from None
        except aiohttp.ClientError as exc:
            host = urlsplit(str(url)).netloc
            raise PeerError("PEER_UNREACHABLE", f"{peer} ({host}) is unreachable: {type(exc).__name__}",
                            {"hop": peer}) from None
        finally:
            if self.observe is not None:
                try:
                    self.observe(peer, label or endpoint_name(path), time.perf_counter() - started)
                except Exception:  # noqa: BLE001 - a figure is never worth a call's outcome
                    log.warning("the round trip to %s could not be counted", peer, exc_info=True)
        try:
            body = nesting.loads(raw) if raw.strip() else None
        except ValueError:  # not JSON, or nested deeper than any answer of the protocol
            raise PeerError("PEER_UNREACHABLE", f"{peer} answered with something that is not JSON",
                            {"hop": peer}, status=resp.status) from None
        if resp.status >= 400:
            err = body.get("error") if isinstance(body, dict) else None
            code = err.get("code") if isinstance(err, dict) else None
            message = err.get("message") if isinstance(err, dict) else None
            raise PeerError(str(code or "PEER_UNREACHABLE"), f"{peer} refused: {message or resp.status}",
                            (err or {}).get("details") if isinstance(err, dict) else None, status=resp.status)
        return body
