"""Doubles for the ResponseCache unit tests: a settable clock, a counting target, and
plugins ("nodes") built over the memory L2."""

from __future__ import annotations

import asyncio
from typing import Any

from node.call import Call, Reply
from node.schema import build
from plugins.cache.fill import Filler
from plugins.cache.plugin import ResponseCache
from plugins.cache.settings import CacheSettings
from plugins.cache.stores import MemoryL2


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class Origin:
    """A target that counts its calls, answers `headers`, and can fail or be slow."""

    def __init__(self) -> None:
        self.calls = 0
        self.headers: dict[str, str] = {}
        self.failure: Exception | None = None
        self.status = 200
        self.delay = 0.0

    async def __call__(self, call: Call) -> Reply:
        self.calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.failure is not None:
            raise self.failure
        return Reply(self.status, f"v{self.calls}".encode(), dict(self.headers), "text/plain")


def make(clock: Clock, **table: Any) -> tuple[ResponseCache, list[tuple[str, str]]]:
    invalidated: list[tuple[str, str]] = []

    async def invalidate(kind: str, value: str) -> None:
        invalidated.append((kind, value))

    settings = build(CacheSettings, {"ttl": 10, **table}, "cache")
    filler = Filler(MemoryL2(), settings.lock_timeout)
    return ResponseCache(settings, "/r", filler, invalidate, clock), invalidated


async def get(cache: ResponseCache, origin: Origin, path: str = "/x", method: str = "GET") -> Reply:
    return await cache(Call(method, path), origin)


def two_nodes(clock: Clock, **table: Any) -> tuple[ResponseCache, ResponseCache]:
    """Two plugins ("nodes") sharing one L2, as two nodes share Redis."""
    settings = build(CacheSettings, {"ttl": 10, **table}, "cache")
    l2 = MemoryL2()
    return (
        ResponseCache(settings, "/r", Filler(l2, 5), None, clock),  # type: ignore[arg-type]
        ResponseCache(settings, "/r", Filler(l2, 5), None, clock),  # type: ignore[arg-type]
    )
