"""Demo handlers that config/local.toml routes to, so a fresh node answers something real."""

from __future__ import annotations

from typing import Any

import orjson

from node.call import JSON_TYPE, Call, Reply


async def hello(call: Call) -> Reply:
    """GET /hello: the smallest JSON answer (also the handler route of the benchmark)."""
    return Reply(200, HELLO, {}, JSON_TYPE)


HELLO = orjson.dumps({"message": "hello from scalenode"})


async def echo(call: Call) -> dict[str, Any]:
    """Any method on /echo/...: what the node saw of the request, as JSON."""
    return {
        "method": call.method,
        "path": call.path,
        "query": dict(call.query),
        "client": call.client,
        "request_id": call.request_id,
        "body_bytes": len(call.body),
        "headers": {str(k): v for k, v in call.headers.items() if k.lower() != "authorization"},
    }
