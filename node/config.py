"""Node configuration: YAML in the node's home, validated by pydantic, overridable by GOVNODE_* variables.

Every wrong or missing value is reported in one message (`ConfigError`), never as a traceback.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from node.fields import check_name

CONFIG_FILE = "config.yaml"
KEY_FILE = "signing.key"
DEFAULT_HOME = "./govnode-data"

# Environment variables that override the YAML, mapped to their dotted path in the config.
ENV_OVERRIDES = {
    "GOVNODE_DATABASE_URL": "database.url",
    "GOVNODE_DATABASE_SCHEMA": "database.schema",
    "GOVNODE_LISTEN": "listen",
    "GOVNODE_ENDPOINT": "endpoint",
    "GOVNODE_LOG_LEVEL": "log_level",
}

_HOSTPORT = re.compile(r"^(?P<host>\[[0-9a-fA-F:]+\]|[A-Za-z0-9.\-]+):(?P<port>\d{1,5})$")


def _http_url(v: str | None) -> str | None:
    if v is not None and not re.match(r"^https?://[^/\s]+$", v.rstrip("/")):
        raise ValueError("must be an http:// or https:// URL")
    return v.rstrip("/") if v else v


class ConfigError(Exception):
    """The configuration cannot be used; the message names every problem."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NodeIdentity(_Strict):
    id: str = Field(description="6-digit GB/T 2260 division code of the level this node serves")
    name: str = Field(min_length=1, max_length=100)
    parent_url: str | None = None

    @field_validator("id", mode="before")
    @classmethod
    def _unquoted(cls, v: object) -> object:
        # YAML reads `id: 370321` as a number; a 6-digit one is the code itself. Shorter numbers (an
        # unquoted 000000 or a leading-zero code YAML took for octal) cannot be recovered.
        if isinstance(v, int) and not isinstance(v, bool):
            if 100000 <= v <= 999999:
                return str(v)
            raise ValueError("must be a 6-digit GB/T 2260 division code in quotes, e.g. '370321'")
        return v

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_name(v, "the node's name")  # it is shown in listings, certificates and logs

    @field_validator("id")
    @classmethod
    def _six_digits(cls, v: str) -> str:
        if not re.fullmatch(r"\d{6}", v):
            raise ValueError("must be a 6-digit GB/T 2260 division code")
        return v

    @field_validator("parent_url")
    @classmethod
    def _parent_url(cls, v: str | None) -> str | None:
        return _http_url(v)


class DatabaseConfig(_Strict):
    url: str = Field(description="SQLAlchemy URL: sqlite+aiosqlite:///… (default) or postgresql+asyncpg://…")
    schema_: str | None = Field(default=None, alias="schema", description="PostgreSQL schema (search_path)")
    pool_size: int = Field(default=10, ge=1, le=200)
    # Bounds of every wait for PostgreSQL (README, Configuration, says why these defaults).
    connect_timeout_s: float = Field(default=5.0, ge=0.1, le=300, description="longest wait to open a connection")
    statement_timeout_s: float = Field(default=10.0, ge=0.1, le=3600,
                                       description="longest wait for a statement's answer or a pooled connection")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @field_validator("url")
    @classmethod
    def _driver(cls, v: str) -> str:
        if not (v.startswith("sqlite+aiosqlite://") or v.startswith("postgresql+asyncpg://")):
            raise ValueError("must start with sqlite+aiosqlite:// or postgresql+asyncpg://")
        return v

    @field_validator("schema_")
    @classmethod
    def _schema_name(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", v):
            raise ValueError("must be a lower-case SQL identifier")
        return v

    @property
    def is_sqlite(self) -> bool:
        return self.url.startswith("sqlite")


class XlsxLimits(_Strict):
    """Bounds on what one uploaded XLSX may unpack to (issue 14). A department export of 10^6 rows x 50
    columns unpacks to about 1.5-2.6 GiB (measured: 2.6 KB a row with inline strings) and packs 6-15 times;
    a decompression bomb packs 300-1000 times."""

    max_unzipped_bytes: int = Field(default=4 * 1024 ** 3, ge=1024 * 1024,
                                    description="all parts of one XLSX together, as declared and as inflated")
    max_ratio: int = Field(default=100, ge=2, description="how many times its packed size a part may unpack to")
    max_parts: int = Field(default=1000, ge=10, description="members of the zip archive")
    max_part_bytes: int = Field(default=32 * 1024 * 1024, ge=64 * 1024,
                                description="a part read whole (workbook, styles, relationships)")
    max_shared_strings_bytes: int = Field(default=256 * 1024 * 1024, ge=64 * 1024, le=4 * 1024 ** 3 - 1,
                                          description="the shared-strings part, unpacked (kept with 4-byte offsets)")
    max_columns: int = Field(default=1024, ge=16, le=16384, description="cells in one row")
    max_row_bytes: int = Field(default=8 * 1024 * 1024, ge=64 * 1024, description="one row's XML, unpacked")
    max_cell_chars: int = Field(default=32767, ge=256, description="one cell or shared string (Excel's own limit)")


class LimitsConfig(_Strict):
    # A record push is streamed like a file upload, in either form: both are read record by record and
    # spooled (in memory up to 32 MB, then to a temporary file), so the upload limit governs them. Measured
    # on a node pushing 250,000 records (47 MB): peak RSS rose 39 MB for the JSON array and 39 MB for the
    # same NDJSON; json.loads of that array alone holds 121 MB.
    max_json_bytes: int = Field(default=8 * 1024 * 1024, ge=1024,
                                description="largest JSON body of a call; in a record push or a CSV upload, the "
                                            "largest single record")
    max_upload_bytes: int = Field(default=2 * 1024 * 1024 * 1024, ge=1024,
                                  description="largest record push (JSON array or NDJSON) or CSV/XLSX upload")
    max_batch_errors: int = Field(default=100, ge=1, description="bad rows listed in one refusal")
    compare_max_keys: int = Field(default=200_000, ge=1)
    query_max_limit: int = Field(default=1000, ge=1)
    xlsx: XlsxLimits = XlsxLimits()


class FederationConfig(_Strict):
    pull_interval_s: float = Field(30.0, ge=0.5, le=3600, description="scheduled pulls of neighbours' feeds")
    peer_timeout_s: float = Field(10.0, ge=0.1, le=300, description="longest wait for a neighbour's answer")


class FiguresConfig(_Strict):
    report_interval_s: float = Field(300.0, ge=0.5, le=86400,
                                     description="how often the node signs its daily figures for its parent; a "
                                                 "node silent for three intervals is shown as stale")
    outbox_alert: int = Field(100, ge=1, description="messages waiting for one neighbour before an operator is alerted")


class TlsConfig(_Strict):
    """PEM files; a relative path is taken from the node's home."""

    cert: Path | None = Field(None, description="this node's certificate chain (PEM); with key, the node serves HTTPS")
    key: Path | None = Field(None, description="the certificate's private key (PEM), readable by the owner only")
    ca: Path | None = Field(None, description="CA bundle that peers' certificates must chain to (default: system store)")

    @model_validator(mode="after")
    def _pair(self) -> "TlsConfig":
        if (self.cert is None) != (self.key is None):
            raise ValueError("cert and key go together")
        return self

    @staticmethod
    def _in(home: Path, p: Path | None) -> Path | None:
        return None if p is None else (p if p.is_absolute() else Path(home) / p)

    def cert_path(self, home: Path) -> Path | None:
        return self._in(home, self.cert)

    def key_path(self, home: Path) -> Path | None:
        return self._in(home, self.key)

    def ca_path(self, home: Path) -> Path | None:
        return self._in(home, self.ca)


class Config(_Strict):
    home: Path
    node: NodeIdentity
    listen: str = "127.0.0.1:8300"
    endpoint: str | None = None
    database: DatabaseConfig
    limits: LimitsConfig = LimitsConfig()
    federation: FederationConfig = FederationConfig()
    figures: FiguresConfig = FiguresConfig()
    log_level: str = "INFO"
    sqlite_synchronous: str = Field(default="FULL", pattern="^(FULL|NORMAL)$")
    audit_batch_ms: int = Field(default=2, ge=0, le=1000, description="group-commit window for audit records")
    tls: TlsConfig | None = None
    insecure_http: bool = Field(False, description="allow plain HTTP to and from hosts other than loopback")

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        m = _HOSTPORT.match(v)
        if not m or not 0 < int(m["port"]) < 65536:
            raise ValueError("must be HOST:PORT with a port from 1 to 65535")
        return v

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str | None) -> str | None:
        return _http_url(v)

    @field_validator("log_level")
    @classmethod
    def _level(cls, v: str) -> str:
        if v.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("must be DEBUG, INFO, WARNING or ERROR")
        return v.upper()

    @model_validator(mode="after")
    def _defaults(self) -> "Config":
        if self.endpoint is None:
            host, port = self.listen.rsplit(":", 1)
            if host in ("0.0.0.0", "::", "[::]"):
                host = "127.0.0.1"
            scheme = "https" if self.tls is not None and self.tls.cert is not None else "http"
            self.endpoint = f"{scheme}://{host}:{port}"
        return self

    @property
    def host(self) -> str:
        return self.listen.rsplit(":", 1)[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])

    @property
    def key_path(self) -> Path:
        return self.home / KEY_FILE


def default_database_url(home: Path) -> str:
    return f"sqlite+aiosqlite:///{(home / 'govnode.db').resolve()}"


def _set_path(doc: dict, dotted: str, value: str) -> None:
    parts = dotted.split(".")
    for p in parts[:-1]:
        nxt = doc.get(p)
        if not isinstance(nxt, dict):
            nxt = {}
            doc[p] = nxt
        doc = nxt
    doc[parts[-1]] = value


def _format_errors(path: Path, err: ValidationError, from_env: dict[str, str] | None = None) -> str:
    """One line per problem, naming the setting (and the GOVNODE_* variable when one set it)."""
    from_env = from_env or {}
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown setting"
        source = next((f" (from {var})" for dotted, var in from_env.items() if loc == dotted or
                       loc.startswith(dotted + ".")), "")
        lines.append(f"  {loc}{source}: {msg}")
    return f"invalid configuration in {path}:\n" + "\n".join(lines)


def load_config(home: str | Path, env: dict[str, str] | None = None) -> Config:
    """Read `home/config.yaml`, apply GOVNODE_* overrides, validate. Raises ConfigError."""
    home = Path(home)
    env = os.environ if env is None else env
    path = home / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(f"no node home at {home} (missing {CONFIG_FILE}); run `govnode init` first")
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path} must hold a mapping of settings")
    if doc.get("database") is None:
        doc["database"] = {}
    from_env: dict[str, str] = {}
    for var, dotted in ENV_OVERRIDES.items():
        if env.get(var):
            _set_path(doc, dotted, env[var])
            from_env[dotted] = var
    if isinstance(doc["database"], dict):
        doc["database"].setdefault("url", default_database_url(home))
    doc["home"] = home
    try:
        return Config.model_validate(doc)
    except ValidationError as exc:
        raise ConfigError(_format_errors(path, exc, from_env)) from None


def write_config(home: Path, doc: dict) -> Path:
    """Write a new config file (used by `govnode init`)."""
    path = home / CONFIG_FILE
    path.write_text(yaml.safe_dump(doc, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path
