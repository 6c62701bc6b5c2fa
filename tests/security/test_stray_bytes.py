"""A header value with a byte that is not UTF-8 (obs-text, RFC 9110 section 5.5) is a
client's stray byte, not the node's failure: every plugin that keys on a header (the cache's
vary on the Redis L2, the queue's Idempotency-Key and its job message, the shard router's
key) answers 2xx or a 4xx naming the problem, never a 500."""

from __future__ import annotations

import uuid
from typing import Any

from testkit.rawhttp import exchange, parse

from node.config import Settings
from node.schema import build

REDIS = "redis://127.0.0.1:6379/0"


def request(path: str, header: bytes, method: bytes = b"GET") -> bytes:
    return (
        method + b" " + path.encode() + b" HTTP/1.1\r\nHost: x\r\n" + header + b"\r\n"
        b"Content-Length: 2\r\nConnection: close\r\n\r\nhi"
    )


def routes(marker: str) -> list[dict[str, Any]]:
    return [
        {
            "path": f"/cached-{marker}/{{tail:.*}}",
            "target": "upstream:app",
            "strip_prefix": f"/cached-{marker}",
            "cache": {"ttl": 30, "vary": ["Accept-Language"]},
        },
        {
            "path": f"/jobs-{marker}",
            "methods": ["POST"],
            "target": "handler:testkit.job_handlers:record",
            "queue": {"name": f"stray{marker}"},
        },
        {
            "path": f"/keyed-{marker}/{{tail:.*}}",
            "target": "upstream:app",
            "strip_prefix": f"/keyed-{marker}",
            "ratelimit": {"limit": 100, "window": 60, "key": "header:X-Key"},
        },
    ]


async def test_stray_header_bytes_get_no_500(node_factory, upstream):
    marker = uuid.uuid4().hex[:8]
    data = {
        "node": {"name": "stray"},
        "backends": {"redis": REDIS},
        "upstreams": {"app": {"targets": [upstream.url]}},
        "routes": routes(marker),
    }
    client = await node_factory(build(Settings, data, ""))
    cached = request(f"/cached-{marker}/a", b"Accept-Language: caf\xe9")
    for _ in range(2):  # the miss stores it in L2, the second is a hit
        status, _, _ = parse(await exchange(client, cached))
        assert status.split()[1] == "200", status

    status, _, body = parse(
        await exchange(client, request(f"/jobs-{marker}", b"Idempotency-Key: k\x80", b"POST"))
    )
    assert status.split()[1] in ("202", "400"), (status, body)

    status, _, body = parse(
        await exchange(client, request(f"/jobs-{marker}", b"X-Note: caf\xe9", b"POST"))
    )
    assert status.split()[1] == "400", (status, body)
    assert b'"bad_header"' in body and b"\xe9" not in body

    status, _, body = parse(await exchange(client, request(f"/keyed-{marker}/a", b"X-Key: \x80")))
    assert status.split()[1] == "200", (status, body)
