"""Transport security (SPEC §15): HTTPS when the config names a certificate, peers' certificates checked
against the configured CA bundle, plain HTTP only on loopback unless the operator says otherwise, and
secret files in the home readable by their owner alone."""

from __future__ import annotations

import functools
import ipaddress
import logging
import ssl
import stat
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from node.config import KEY_FILE, Config, ConfigError

log = logging.getLogger("govnode.tls")


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and `localhost`: the only hosts plain HTTP may reach by default."""
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@functools.lru_cache(maxsize=1024)
def plain_http_refusal(url: str, insecure_http: bool) -> str | None:
    """Why `url` may not be called, or None: plain HTTP to a host that is not loopback, unless allowed.

    Asked before every call to a neighbour, of a handful of endpoints: remembered, since parsing the URL
    and the address was 3 % of a relay's CPU per relayed call (profiled under the federation benchmark)."""
    parts = urlsplit(url)
    if parts.scheme == "http" and not insecure_http and not is_loopback(parts.hostname or ""):
        return (f"plain HTTP to {parts.hostname} is refused: use https:// (or set insecure_http: true, "
                "which sends personal data readable on the network)")
    return None


def server_context(config: Config) -> ssl.SSLContext | None:
    """The listening socket's TLS context, or None when the node serves plain HTTP."""
    if config.tls is None or config.tls.cert is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(config.tls.cert_path(config.home), config.tls.key_path(config.home))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"tls: the certificate or key cannot be loaded: {exc}") from None
    return ctx


def client_context(config: Config) -> ssl.SSLContext:
    """What the node checks its peers' certificates against: `tls.ca` when set, else the system store."""
    ca = config.tls.ca_path(config.home) if config.tls is not None else None
    try:
        ctx = ssl.create_default_context(cafile=str(ca) if ca else None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"tls.ca: the CA bundle cannot be loaded: {exc}") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def client_session(config: Config, **kw: Any) -> aiohttp.ClientSession:
    """An HTTP client session for the node's own commands (join, admin calls), verifying as the node does."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_context(config)), **kw)


def check_serving(config: Config) -> None:
    """Refuse to serve plain HTTP on an address other hosts reach, unless the operator allowed it; warn
    at every start when it is allowed."""
    if server_context(config) is not None:
        return
    if not is_loopback(config.host):
        if not config.insecure_http:
            raise ConfigError(f"listen {config.listen} is reachable from other hosts, and plain HTTP would carry "
                              "tokens and personal data readable on the network: configure tls (cert, key), "
                              "listen on 127.0.0.1 behind a TLS proxy, or set insecure_http: true")
        log.warning("serving plain HTTP on %s (insecure_http: true): tokens and personal data cross the "
                    "network readable", config.listen)
    elif config.insecure_http:
        log.warning("insecure_http: true: this node may call other nodes and webhooks over plain HTTP")


def secret_files(config: Config) -> list[Path]:
    """The files in (or named by) the home that hold secrets."""
    home = Path(config.home)
    found = [config.key_path, home / "anchor.key", home / "secrets.key"]
    found += sorted(home.glob(f"{KEY_FILE}.*.old"))
    if config.tls is not None and config.tls.key is not None:
        found.append(config.tls.key_path(config.home))
    return [p for p in found if p.exists()]


def check_secret_files(config: Config) -> None:
    """Refuse to start when a secret file can be read (or written) by anyone but its owner."""
    for path in secret_files(config):
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(f"{path} is readable by others (mode {stat.S_IMODE(mode):04o}); "
                              f"run `chmod 600 {path}` and start again")
