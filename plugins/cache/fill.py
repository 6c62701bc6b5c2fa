"""One fetch per cold key across the cluster: the fill lock in L2 (SET NX PX with a token,
released by compare-and-delete) and the other nodes' wait for the value it brings.

Waiters poll L2 with a doubling delay (5 ms up to 100 ms): a cold key costs a waiter a
handful of GETs, and it stops as soon as the value lands, the lock is gone without one
(the fetch was not storable or failed: it fetches itself), or `lock_timeout` passes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from node.call import Call, Handler, Reply
from node.errors import BackendUnavailable
from plugins.cache.entry import HIT_L2, MISS, Entry, decoded
from plugins.cache.stores import L2Store

if TYPE_CHECKING:
    from plugins.cache.plugin import ResponseCache

FIRST_POLL = 0.005  # seconds
MAX_POLL = 0.1
Outcome = tuple[Reply, Entry | None, str]


def new_token() -> str:
    return os.urandom(12).hex()


class Filler:
    def __init__(
        self,
        l2: L2Store,
        lock_timeout: float,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.l2 = l2
        self.lock_timeout = lock_timeout
        self.sleep = sleep
        self.monotonic = monotonic

    async def fill(
        self, cache: ResponseCache, call: Call, next: Handler, key: str, stale: Entry | None
    ) -> Outcome:
        """Fetch under the lock, or wait for the node that holds it."""
        token = new_token()
        try:
            taken = await self.l2.lock(key, token, self.lock_timeout)
        except BackendUnavailable:
            cache.counts["backend_errors"] += 1
            return await cache.fetch(call, next, key, stale, MISS, store=True)
        if not taken:
            cache.counts["lock_waits"] += 1
            entry = await self.wait(cache, call, key)
            if entry is not None:
                return self.hit(cache, key, entry)
            return await cache.fetch(call, next, key, stale, MISS, store=True)
        try:
            # Another node may have filled it between our read and our lock.
            found, _ = await cache.read_l2(key)
            if found is not None and cache.clock() < found.fresh_until and found.fits(call.headers):
                return self.hit(cache, key, found)
            return await cache.fetch(call, next, key, stale, MISS, store=True)
        finally:
            await self.release(key, token)

    @staticmethod
    def hit(cache: ResponseCache, key: str, entry: Entry) -> Outcome:
        now = cache.clock()
        cache.l1.put(key, entry, now)
        cache.counts["hits_l2"] += 1
        return entry.reply(HIT_L2, now), entry, HIT_L2

    async def wait(self, cache: ResponseCache, call: Call, key: str) -> Entry | None:
        """The fresh entry another node stores for `key`, or None (then fetch yourself)."""
        deadline = self.monotonic() + self.lock_timeout
        delay = FIRST_POLL
        while self.monotonic() < deadline:
            await self.sleep(min(delay, max(0.0, deadline - self.monotonic())))
            delay = min(delay * 2, MAX_POLL)
            try:
                blob, locked = await asyncio.gather(self.l2.get(key), self.l2.locked(key))
            except BackendUnavailable:
                return None
            entry = decoded(blob)
            if entry is not None and cache.clock() < entry.fresh_until and entry.fits(call.headers):
                return entry
            if not locked:
                return None
        cache.counts["lock_timeouts"] += 1
        return None

    async def refresh(
        self, cache: ResponseCache, call: Call, next: Handler, key: str, stale: Entry
    ) -> None:
        """A stale entry's background refresh (a revalidation when it has a validator), by
        whichever node takes the lock."""
        token = new_token()
        try:
            taken = await self.l2.lock(key, token, self.lock_timeout)
        except BackendUnavailable:  # Redis away: this node refreshes its own L1 copy
            await cache.fetch(call, next, key, stale, MISS, store=True)
            return
        if not taken:
            return
        try:
            # Another node's refresh may have stored it between our stale read and our lock.
            found, _ = await cache.read_l2(key)
            now = cache.clock()
            if found is not None and now < found.fresh_until:
                cache.l1.put(key, found, now)
                return
            await cache.fetch(call, next, key, stale, MISS, store=True)
        finally:
            await self.release(key, token)

    async def store(self, key: str, entry: Entry, now: float) -> None:
        if not self.l2.available:
            return
        # On failure L1 still has it; the next node to miss fetches it again.
        with contextlib.suppress(BackendUnavailable):
            await self.l2.put(key, entry.encode(), entry.expires - now, entry.path, entry.tags)

    async def release(self, key: str, token: str) -> None:
        with contextlib.suppress(BackendUnavailable):  # else it expires after lock_timeout
            await self.l2.unlock(key, token)
