"""A handler using the node's two-tier cache through aiocache's decorator (`@node_cached`)."""

from __future__ import annotations

from typing import Any

from node.call import Call
from plugins.cache.tiered import node_cache, node_cached

computed: list[str] = []  # what report() really computed, for the tests to count


@node_cached(ttl=30)
async def report(call: Call) -> dict[str, Any]:
    computed.append(call.path)
    return {"path": call.path, "computed": len(computed)}


async def counter(call: Call) -> dict[str, Any]:
    """The cache used directly: an aiocache BaseCache from the call."""
    cache = node_cache(call)
    key = f"counter:{call.params['name']}"
    value = await cache.increment(key)
    return {"value": value}
