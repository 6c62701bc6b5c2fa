"""Response cache: L1 in-process LRU + L2 (Redis through aiocache), one origin fetch per key
cluster-wide, stale serving, invalidation by write, path prefix and tag."""

from __future__ import annotations

from typing import Any

from node.pipeline import BuildContext
from node.schema import build
from plugins.cache.fill import Filler
from plugins.cache.invalidation import Invalidator
from plugins.cache.plugin import ResponseCache
from plugins.cache.settings import CacheSettings
from plugins.cache.stores import L2Store, MemoryL2, RedisL2


def shared_l2(ctx: BuildContext) -> L2Store:
    """The node's one L2: Redis when configured (never silently memory instead), else memory."""
    resources = ctx.resources
    redis = resources.redis
    if redis is None:
        return resources.shared("cache.l2", MemoryL2)
    # A cache fails open: with Redis away it serves from L1 or bypasses, never an error.
    resources.tolerated.add("redis")
    return resources.shared("cache.l2", lambda: RedisL2(redis))


def shared_invalidator(ctx: BuildContext) -> Invalidator:
    resources = ctx.resources

    def make() -> Invalidator:
        made = Invalidator(shared_l2(ctx), resources.bus, ctx.settings.node.name)
        resources.admin_routes.extend(made.routes())
        return made

    return resources.shared("cache.invalidator", make)


def build_response_cache(table: dict[str, Any], path: str, ctx: BuildContext) -> ResponseCache:
    settings = build(CacheSettings, table, path)
    invalidator = shared_invalidator(ctx)
    filler = Filler(invalidator.l2, settings.lock_timeout)
    cache = ResponseCache(settings, ctx.route.label, filler, invalidator.after_write)
    invalidator.caches.append((ctx.route.label, cache))
    return cache


__all__ = ["CacheSettings", "ResponseCache", "build_response_cache"]
