"""HTTPS on every hop (SPEC §15, issue 18): a tree whose nodes serve HTTPS with certificates from their own
CA, a peer whose certificate comes from another CA refused, plain HTTP kept to loopback, and secret files
that only their owner may read."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from federation.client import PeerClient, PeerError
from federation.signing import generate_signing_key
from node import tls
from node.federation.http import FEDERATION
from support import LocalCA, init_home, start_federation, start_node, stop_all, wait_for

pytestmark = pytest.mark.asyncio


def _tls_for(ca: LocalCA):
    def extra(code: str) -> dict:
        cert, key = ca.issue(code)
        return {"tls": {"cert": str(cert), "key": str(key), "ca": str(ca.bundle)}}
    return extra


async def test_a_tree_over_https_routes_and_replicates(tmp_path):
    ca = LocalCA(tmp_path / "pki")
    nodes = await start_federation(tmp_path / "nodes", extra_for=_tls_for(ca))
    try:
        assert all(n.url.startswith("https://127.0.0.1:") for n in nodes.values())
        received = []

        async def echo(env: dict) -> dict:
            received.append(env["body"])
            return {"echo": env["body"]}

        nodes["370303"].app[FEDERATION].handlers["licence.verify"] = echo
        # The registry replicated over HTTPS: the other county learns this one's certificate.
        await wait_for(lambda: "370321" in nodes["370303"].app[FEDERATION].trust.known_nodes(), timeout=20,
                       what="the registry at 370303")
        reply = await nodes["370321"].app[FEDERATION].call("licence.verify", "370303", {"n": 1})
        assert reply["echo"] == {"n": 1} and reply["via"] == ["370300", "370303"]
        # Departments reach their node over HTTPS too (the test's client trusts the same CA).
        status, body = await nodes["370000"].call("GET", "/healthz")
        assert status == 200, body
    finally:
        await stop_all(nodes)


async def test_a_peer_with_a_certificate_from_another_ca_is_refused(tmp_path):
    ca, rogue = LocalCA(tmp_path / "pki"), LocalCA(tmp_path / "rogue", "another CA")
    nodes = await start_federation(tmp_path / "nodes", extra_for=_tls_for(ca))
    try:
        # The city comes back presenting a certificate that the federation's CA did not issue.
        city = nodes["370300"]
        await city.stop()
        cert, key = rogue.issue("370300")
        doc = yaml.safe_load((city.config.home / "config.yaml").read_text(encoding="utf-8"))
        doc["tls"].update(cert=str(cert), key=str(key))
        (city.config.home / "config.yaml").write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
        from node.config import load_config
        nodes["370300"] = await start_node(load_config(city.config.home, env={}))
        from node.errors import ApiError
        with pytest.raises(ApiError) as err:
            await nodes["370321"].app[FEDERATION].call("licence.verify", "370000", {"n": 1})
        assert err.value.code == "PEER_UNREACHABLE" and err.value.details["hop"] == "370300"
    finally:
        await stop_all(nodes)


async def test_plain_http_to_a_host_off_loopback_is_refused_before_connecting():
    attempts = []

    class NoNetwork:  # stands in for the HTTP session: any use of it is a connection attempt
        def request(self, *a, **kw):
            attempts.append(a)
            raise AssertionError("a connection was attempted")

    client = PeerClient("370321", lambda: generate_signing_key("1"),
                        refuse=lambda url: tls.plain_http_refusal(url, insecure_http=False))
    client._session = NoNetwork()
    with pytest.raises(PeerError) as err:
        await client.request("370300", "http://192.0.2.10:8300", "GET", "/federation/v1/node")
    assert err.value.code == "PEER_UNREACHABLE" and "plain HTTP" in err.value.message
    assert attempts == []
    assert tls.plain_http_refusal("http://127.0.0.1:8300", False) is None
    assert tls.plain_http_refusal("http://[::1]:8300", False) is None
    assert tls.plain_http_refusal("https://192.0.2.10", False) is None
    assert tls.plain_http_refusal("http://192.0.2.10", True) is None


def _run(home: Path, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "node.cli", "run", "--dir", str(home)], capture_output=True,
                          text=True, timeout=timeout, cwd=str(Path(__file__).resolve().parent.parent))


async def test_plain_http_off_loopback_and_readable_secrets_stop_the_node_with_one_line(tmp_path):
    home = tmp_path / "node"
    config = init_home(home, "370321", "桓台县")
    doc = yaml.safe_load((home / "config.yaml").read_text(encoding="utf-8"))
    doc["listen"] = f"0.0.0.0:{config.port}"
    (home / "config.yaml").write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    done = await asyncio.to_thread(_run, home)
    assert done.returncode == 2 and "plain HTTP" in done.stderr and "insecure_http" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    # A signing key others can read.
    doc["listen"] = f"127.0.0.1:{config.port}"
    (home / "config.yaml").write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    (home / "signing.key").chmod(0o644)
    done = await asyncio.to_thread(_run, home)
    assert done.returncode == 2 and "signing.key is readable by others" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


async def test_insecure_http_serves_off_loopback_and_warns(tmp_path):
    from support import NodeProcess

    home = tmp_path / "node"
    config = init_home(home, "370321", "桓台县", extra={"insecure_http": True})
    doc = yaml.safe_load((home / "config.yaml").read_text(encoding="utf-8"))
    doc["listen"] = f"0.0.0.0:{config.port}"
    doc["endpoint"] = f"http://127.0.0.1:{config.port}"
    (home / "config.yaml").write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    from node.config import load_config
    proc = NodeProcess(load_config(home, env={}))
    try:
        await proc.start()
        await wait_for(lambda: "serving plain HTTP on 0.0.0.0" in proc.log_tail(), what="the warning")
    finally:
        proc.kill()
