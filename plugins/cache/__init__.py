"""Response cache: L1 in-process LRU + L2 (Redis through aiocache), one origin fetch per key
cluster-wide, stale serving, invalidation by write, path prefix and tag."""

from __future__ import annotations

from typing import Any

from node.plugin import BuildContext, PluginSpec
from node.schema import build
from plugins.cache.fill import Filler
from plugins.cache.invalidation import Invalidator
from plugins.cache.keys import PREFIX
from plugins.cache.plugin import ResponseCache
from plugins.cache.settings import CacheSettings
from plugins.cache.stores import L2Store, MemoryL2, RedisL2

L2_STORES = {
    "memory": lambda backend: MemoryL2(),
    "redis": lambda backend: RedisL2(backend.redis),
    "redis+cluster": lambda backend: RedisL2(backend.redis),
}


def shared_l2(ctx: BuildContext) -> L2Store:
    """The node's one L2 on its Redis backend (never silently memory instead). A cache
    fails open: with Redis away it serves from L1 or bypasses, never an error."""
    return ctx.store("redis", L2_STORES, shared_as="cache.l2", required=False)


def shared_invalidator(ctx: BuildContext) -> Invalidator:
    def make() -> Invalidator:
        made = Invalidator(shared_l2(ctx), ctx.resources.bus, ctx.node_name)
        ctx.add_admin_routes(made.routes())
        return made

    return ctx.shared("cache.invalidator", make)


def build_response_cache(table: dict[str, Any], path: str, ctx: BuildContext) -> ResponseCache:
    settings = build(CacheSettings, table, path)
    invalidator = shared_invalidator(ctx)
    filler = Filler(shared_l2(ctx), settings.lock_timeout)
    cache = ResponseCache(settings, ctx.route.label, filler, invalidator.after_write)
    invalidator.caches.append((ctx.route.label, cache))
    return cache


PLUGIN = PluginSpec(
    name="cache",
    build=build_response_cache,
    after=("ratelimit",),
    before=("queue", "shard", "breaker"),
    keys=PREFIX,
    summary="two-tier response cache, one origin fetch per key cluster-wide (X-Cache)",
)

__all__ = ["PLUGIN", "CacheSettings", "ResponseCache", "build_response_cache"]
