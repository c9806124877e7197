"""What the stateful fuzzer (scripts/fuzz_api.py) found, each kept as a regression test: bad input gets a
clear 400 in SPEC §9's shape, never a 500."""

from __future__ import annotations

from support import error_code


BAD_URLS = [
    "http://\u009d\u00e2\U000e77de]M*8",  # the fuzzer's own: a ']' makes urlsplit see a broken IPv6 host
    "http://[::1",
    "https://host:port/hook",  # a port that is no number
    "https://" + "a" * 70 + ".example/hook",  # a label IDNA refuses (over 63 characters)
]


async def test_a_webhook_url_no_client_can_call_is_refused_400(node):
    for url in BAD_URLS:
        status, body = await node.call("POST", "/api/v1/subscriptions", "police",
                                       json_body={"resource": "101001/370321000001", "mode": "webhook", "url": url})
        assert (status, error_code(body)) == (400, "INVALID_INPUT"), (url, body)
        assert any(d.get("field") == "url" for d in body["error"]["details"]), (url, body)
