"""The example configurations in config/ load through the node's real loader and mean what they say."""

from __future__ import annotations

import configparser
import shlex
import shutil
from pathlib import Path

from node import tls
from node.cli import build_parser
from node.config import CONFIG_FILE, load_config
from support import LocalCA

CONFIG_DIR = Path(__file__).resolve().parents[1] / "config"


def home_with(tmp_path: Path, example: str, certs: bool = True) -> Path:
    """A node home holding the example as its config.yaml (and PEM files where it names them)."""
    home = tmp_path / example
    home.mkdir()
    shutil.copy(CONFIG_DIR / f"{example}.yaml", home / CONFIG_FILE)
    if certs:
        ca = LocalCA(tmp_path / "ca")
        cert, key = ca.issue(example)
        shutil.copy(cert, home / "tls.pem")
        shutil.copy(key, home / "tls.key")
        (home / "tls.key").chmod(0o600)
        shutil.copy(ca.bundle, home / "ca.pem")
    return home


def test_province_is_postgresql_over_https(tmp_path):
    config = load_config(home_with(tmp_path, "province"), env={})
    assert config.node.id == "370000" and config.node.parent_url is None  # the root
    assert not config.database.is_sqlite and config.database.schema_ == "gov370000"
    assert config.endpoint.startswith("https://")
    assert tls.server_context(config) is not None  # the files it names make a working HTTPS context
    tls.check_serving(config)  # listening on every address is allowed because it serves HTTPS
    tls.check_secret_files(config)
    # The workers the comment promises: `run --workers 4` is refused only on SQLite.
    args = build_parser().parse_args(["run", "--dir", str(config.home), "--workers", "4"])
    assert args.workers == 4


def test_city_is_sqlite_over_https_under_the_province(tmp_path):
    config = load_config(home_with(tmp_path, "city"), env={})
    assert config.node.id == "370300" and config.node.parent_url == "https://gov370000.example.cn:8300"
    assert config.database.is_sqlite and config.database.url.endswith(f"{config.home.resolve()}/govnode.db")
    assert config.sqlite_synchronous == "FULL"
    assert tls.server_context(config) is not None
    tls.check_serving(config)


def test_county_is_sqlite_on_loopback_behind_a_proxy(tmp_path):
    config = load_config(home_with(tmp_path, "county"), env={})
    assert config.node.id == "370321" and config.node.parent_url == "https://gov370300.example.cn:8300"
    assert config.database.is_sqlite
    assert config.host == "127.0.0.1" and config.endpoint == "https://gov370321.example.cn"
    assert tls.server_context(config) is None  # the proxy serves HTTPS ...
    tls.check_serving(config)  # ... and plain HTTP on loopback needs no insecure_http
    assert tls.client_context(config) is not None  # the city's certificate is checked against ca.pem


def test_the_environment_overrides_the_example_database(tmp_path):
    """The province's comment says the password can live in GOVNODE_DATABASE_URL instead of the file."""
    url = "postgresql+asyncpg://govnode:secret@10.0.0.5:5432/govnode"
    config = load_config(home_with(tmp_path, "province"), env={"GOVNODE_DATABASE_URL": url})
    assert config.database.url == url and config.database.schema_ == "gov370000"


def test_systemd_unit_runs_the_node_of_its_instance():
    unit = configparser.ConfigParser(interpolation=None, strict=True)
    unit.optionxform = str  # systemd keys are case-sensitive
    unit.read(CONFIG_DIR / "govnode.service", encoding="utf-8")
    service = unit["Service"]
    argv = shlex.split(service["ExecStart"])
    assert Path(argv[0]).name == "govnode" and argv[1] == "run"
    args = build_parser().parse_args(argv[1:])
    assert args.command_name == "run" and args.dir == "/srv/govnode/%i"
    assert service["KillSignal"] == "SIGTERM"  # the node's clean stop
    assert service["Restart"] == "on-failure" and unit["Install"]["WantedBy"] == "multi-user.target"

