"""The peer client (federation/client.py) against a real aiohttp server on loopback."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from federation.auth import parse_authorization
from federation.client import PeerClient, PeerError
from federation.signing import generate_signing_key

KEY = generate_signing_key("1")


async def test_peer_client_signs_each_request_and_carries_no_cookies() -> None:
    """A hop is authenticated by its signature alone: a cookie a neighbour sets never rides along later."""
    seen: list[dict[str, Any]] = []

    async def answer(request: web.Request) -> web.Response:
        seen.append({"cookie": request.headers.get("Cookie"), "auth": request.headers.get("Authorization"),
                     "body": await request.json()})
        resp = web.json_response({"n": len(seen)})
        resp.set_cookie("session", "abc123")  # what a load balancer or a confused neighbour might send
        return resp

    app = web.Application()
    app.router.add_post("/federation/v1/notify", answer)
    async with TestServer(app, host="127.0.0.1") as server:
        client = PeerClient("370321", lambda: KEY)
        await client.start()
        try:
            # By name, as operators configure endpoints: a default jar ignores cookies set by a bare IP address.
            endpoint = f"http://localhost:{server.port}"
            for i in (1, 2):
                assert await client.request("370300", endpoint, "POST", "/federation/v1/notify", {"feed": "catalog"}) \
                    == {"n": i}
        finally:
            await client.close()
    assert [s["cookie"] for s in seen] == [None, None]
    params = [parse_authorization(s["auth"]) for s in seen]
    assert {(p.origin, p.destination) for p in params} == {("370321", "370300")}
    assert params[0].nonce != params[1].nonce
    assert all(s["body"] == {"feed": "catalog"} for s in seen)


async def test_peer_client_names_the_hop_it_could_not_reach() -> None:
    client = PeerClient("370321", lambda: KEY)
    await client.start()
    try:
        async with TestServer(web.Application(), host="127.0.0.1") as server:
            endpoint = str(server.make_url(""))
        # the server is gone: nothing listens on its port any more
        with pytest.raises(PeerError) as err:
            await client.request("370300", endpoint, "GET", "/federation/v1/node", timeout_s=5)
        assert err.value.code == "PEER_UNREACHABLE" and err.value.details == {"hop": "370300"}
    finally:
        await client.close()


async def test_peer_client_tells_each_round_trip_and_a_broken_figure_changes_no_outcome(caplog) -> None:
    """Every call sent is told to `observe` (peer, endpoint, seconds), answered or not; an `observe` that
    fails is logged, and the call's answer or error stays what it was."""
    told: list[tuple[str, str, float]] = []

    async def answer(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/federation/v1/catalog/changes", answer)
    app.router.add_post("/federation/v1/messages", answer)
    async with TestServer(app, host="127.0.0.1") as server:
        endpoint = str(server.make_url(""))
        client = PeerClient("370321", lambda: KEY)
        await client.start()
        try:
            client.observe = lambda peer, name, seconds: told.append((peer, name, seconds))
            feed = "/federation/v1/catalog/changes?since=5"
            assert await client.request("370300", endpoint, "GET", feed) == {"ok": True}
            assert await client.request("370300", endpoint, "POST", "/federation/v1/messages", {"a": 1},
                                        label="outbox") == {"ok": True}
            with pytest.raises(PeerError) as err:  # answered 404: still a round trip
                await client.request("370300", endpoint, "GET", "/federation/v1/registry")
            assert err.value.status == 404

            def broken(peer: str, name: str, seconds: float) -> None:
                raise OSError("the metrics directory is full")
            client.observe = broken
            assert await client.request("370300", endpoint, "POST", "/federation/v1/messages", {"a": 2}) == {"ok": True}
        finally:
            await client.close()
    assert [(p, n) for p, n, _ in told] == [("370300", "catalog"), ("370300", "outbox"), ("370300", "registry")]
    assert all(0 < s < 5 for _, _, s in told)
    assert "could not be counted" in caplog.text
