"""Plugins, one module each. FACTORIES is the explicit name→factory table the node builds from.

A plugin named in a route but absent here is a config error, never a silent no-op;
each plugin's issue adds its row (ratelimit, cache, queue, shard, breaker).
"""

from __future__ import annotations

from node.pipeline import PluginFactory
from plugins.breaker import build_circuit_breaker
from plugins.cache import build_response_cache
from plugins.ratelimit import build_rate_limiter
from plugins.shard import build_shard_router

FACTORIES: dict[str, PluginFactory] = {
    "ratelimit": build_rate_limiter,
    "cache": build_response_cache,
    "shard": build_shard_router,
    "breaker": build_circuit_breaker,
}
