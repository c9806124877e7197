"""Configuration: YAML in the home, validated by pydantic, GOVNODE_* overrides, one clear message."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from node.config import CONFIG_FILE, ENV_OVERRIDES, ConfigError, load_config


def write(home: Path, doc: object) -> None:
    home.mkdir(parents=True, exist_ok=True)
    text = doc if isinstance(doc, str) else yaml.safe_dump(doc, allow_unicode=True)
    (home / CONFIG_FILE).write_text(text, encoding="utf-8")


MINIMAL = {"node": {"id": "370321", "name": "桓台县"}}


def test_minimal_config_gets_defaults(tmp_path):
    write(tmp_path, MINIMAL)
    c = load_config(tmp_path, env={})
    assert c.node.id == "370321" and c.node.name == "桓台县" and c.node.parent_url is None
    assert c.listen == "127.0.0.1:8300" and c.host == "127.0.0.1" and c.port == 8300
    assert c.endpoint == "http://127.0.0.1:8300"
    assert c.database.is_sqlite
    assert c.database.url == f"sqlite+aiosqlite:///{(tmp_path / 'govnode.db').resolve()}"
    assert c.key_path == tmp_path / "signing.key"
    assert c.limits.max_json_bytes == 8 * 1024 * 1024
    assert c.log_level == "INFO"


def test_full_config(tmp_path):
    write(tmp_path, {
        "node": {"id": "370300", "name": "淄博市", "parent_url": "http://10.0.0.1:8300/"},
        "listen": "0.0.0.0:9000",
        "database": {"url": "postgresql+asyncpg://gn:pw@db/gov", "schema": "zibo", "pool_size": 20},
        "limits": {"max_json_bytes": 4096, "query_max_limit": 50},
        "log_level": "debug",
        "sqlite_synchronous": "NORMAL",
        "audit_batch_ms": 5,
    })
    c = load_config(tmp_path, env={})
    assert c.node.parent_url == "http://10.0.0.1:8300"  # trailing slash dropped
    assert c.endpoint == "http://127.0.0.1:9000"  # a wildcard listen address is not an endpoint
    assert not c.database.is_sqlite and c.database.schema_ == "zibo" and c.database.pool_size == 20
    assert c.limits.max_json_bytes == 4096 and c.limits.query_max_limit == 50
    assert c.log_level == "DEBUG" and c.sqlite_synchronous == "NORMAL" and c.audit_batch_ms == 5


def test_every_bad_value_is_named_in_one_message(tmp_path):
    write(tmp_path, {
        "node": {"id": "37032", "name": "", "colour": "red"},
        "listen": "127.0.0.1:99999",
        "endpoint": "ftp://example",
        "database": {"url": "mysql://x/y", "pool_size": 0, "schema": "Bad-Name"},
        "limits": {"max_json_bytes": 5},
        "log_level": "LOUD",
        "surprise": 1,
    })
    with pytest.raises(ConfigError) as ei:
        load_config(tmp_path, env={})
    msg = str(ei.value)
    assert str(tmp_path / CONFIG_FILE) in msg
    for setting in ("node.id", "node.name", "node.colour", "listen", "endpoint", "database.url",
                    "database.pool_size", "database.schema", "limits.max_json_bytes", "log_level", "surprise"):
        assert f"\n  {setting}:" in msg or f"\n  {setting} " in msg, (setting, msg)
    assert "unknown setting" in msg
    assert "Traceback" not in msg


def test_missing_node_section_is_named(tmp_path):
    write(tmp_path, {"listen": "127.0.0.1:8300"})
    with pytest.raises(ConfigError, match=r"node: Field required"):
        load_config(tmp_path, env={})


def test_missing_home(tmp_path):
    with pytest.raises(ConfigError, match="govnode init"):
        load_config(tmp_path / "nowhere", env={})


@pytest.mark.parametrize("text, needle", [
    ("node: [unclosed", "not valid YAML"),
    ("- just\n- a list\n", "mapping of settings"),
])
def test_unreadable_yaml(tmp_path, text, needle):
    write(tmp_path, text)
    with pytest.raises(ConfigError, match=needle):
        load_config(tmp_path, env={})


def test_unquoted_node_id(tmp_path):
    """YAML reads `id: 370321` as a number; it is still the code. An unquoted 000000 is not recoverable."""
    write(tmp_path, "node: {id: 370321, name: 桓台县}\n")
    assert load_config(tmp_path, env={}).node.id == "370321"
    write(tmp_path, "node: {id: 000000, name: 全国}\n")
    with pytest.raises(ConfigError, match=r"node.id: .*in quotes"):
        load_config(tmp_path, env={})


def test_null_database_section_means_default(tmp_path):
    write(tmp_path, "node: {id: '370321', name: x}\ndatabase:\n")
    assert load_config(tmp_path, env={}).database.is_sqlite


def test_env_overrides(tmp_path):
    write(tmp_path, MINIMAL)
    env = {
        "GOVNODE_DATABASE_URL": "postgresql+asyncpg://postgres@127.0.0.1:5432/test",
        "GOVNODE_DATABASE_SCHEMA": "county",
        "GOVNODE_LISTEN": "127.0.0.1:8444",
        "GOVNODE_ENDPOINT": "https://node.example.gov.cn",
        "GOVNODE_LOG_LEVEL": "warning",
    }
    assert set(env) == set(ENV_OVERRIDES)  # the test covers every documented override
    c = load_config(tmp_path, env=env)
    assert c.database.url == env["GOVNODE_DATABASE_URL"] and c.database.schema_ == "county"
    assert c.port == 8444 and c.endpoint == "https://node.example.gov.cn" and c.log_level == "WARNING"
    # The YAML itself is untouched.
    assert yaml.safe_load((tmp_path / CONFIG_FILE).read_text(encoding="utf-8")) == MINIMAL


def test_env_override_wins_over_yaml_and_empty_is_ignored(tmp_path):
    write(tmp_path, {**MINIMAL, "listen": "127.0.0.1:8301"})
    assert load_config(tmp_path, env={"GOVNODE_LISTEN": "127.0.0.1:8302"}).port == 8302
    assert load_config(tmp_path, env={"GOVNODE_LISTEN": ""}).port == 8301


def test_bad_env_override_names_the_variable(tmp_path):
    write(tmp_path, MINIMAL)
    with pytest.raises(ConfigError) as ei:
        load_config(tmp_path, env={"GOVNODE_LISTEN": "nonsense", "GOVNODE_DATABASE_SCHEMA": "Not OK"})
    msg = str(ei.value)
    assert "listen (from GOVNODE_LISTEN):" in msg
    assert "database.schema (from GOVNODE_DATABASE_SCHEMA):" in msg


def test_os_environ_is_the_default_source(tmp_path, monkeypatch):
    write(tmp_path, MINIMAL)
    monkeypatch.setenv("GOVNODE_LISTEN", "127.0.0.1:8555")
    assert load_config(tmp_path).port == 8555
