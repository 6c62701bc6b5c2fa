"""The one-limit rate limit (`OneLimitRateLimiter`): the common case as a step bound to the
rest of the route, on the embedded store or Redis; plugin.py's RateLimiter decides the same."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from time import time_ns
from typing import Any

from node.call import Call, Handler, Reply
from node.errors import BackendUnavailable
from plugins.ratelimit.algorithms import STEP, Limit
from plugins.ratelimit.plugin import (
    KEYS_REMEMBERED,
    LIMIT_LINES,
    RATELIMIT_NAMES,
    RESET_LINES,
    Policy,
    RateLimiter,
    digest,
    header_lines,
)
from plugins.ratelimit.stores import (
    BATCHED,
    DECIDE_NOW,
    MAX_BATCH,
    CounterStore,
    MemoryCounter,
    RedisCounter,
)
from plugins.ratelimit.tiers import TierDirectory


class OneLimitRateLimiter(RateLimiter):
    """The common case, one limit and no tiers, as a step bound to the rest of the route
    (`bind`, which the pipeline uses). On the embedded store the step is a plain function
    that hands back the route's own coroutine, the state read and written in its frame; a
    Redis check is a future on the store's batch. `__call__` (the general path) decides
    the same. The factory picks this class when `fits` says so."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.single: tuple[Limit, ...] = self.policy.default  # type: ignore[assignment]
        self.limit_lines = LIMIT_LINES % self.single[0].limit
        self.peer_is_client = self.by_ip_only and self.trusted.none

    @staticmethod
    def fits(policy: Policy, store: CounterStore, directory: TierDirectory | None) -> bool:
        default = policy.default
        if directory is not None or default is None or len(default) != 1:
            return False
        return bool(store.capabilities & {DECIDE_NOW, BATCHED})

    def keys_for(self, call: Call) -> list[str]:
        if self.peer_is_client:  # keys remembered by peer: no header, no digest
            peer = call.peer
            keys = self._keys.get(peer)
            return keys or self.keys_of(digest(call.client), self.single, peer)
        client = self.identify(call)[0]
        return self._keys.get(client) or self.keys_of(client, self.single)

    def bind(self, next: Handler) -> Handler:
        return self.memory_step(next) if self.memory is not None else self.redis_step(next)

    def memory_step(self, next: Handler) -> Handler:
        memory: MemoryCounter = self.memory  # type: ignore[assignment]
        states, max_keys, clock = memory.states, memory.max_keys, memory.clock
        step, lim, limit_lines = STEP[self.algorithm], self.single[0], self.limit_lines
        counters, keys_for, remembered = self.counters, self.keys_for, self._keys
        by_peer, reset_lines_made = self.peer_is_client, len(RESET_LINES)

        def ratelimit_step(call: Call) -> Awaitable[Reply]:
            # keys_for, its common case inlined: keys remembered by the peer.
            key = ((by_peer and remembered.get(call.peer)) or keys_for(call))[0]
            # MemoryCounter.decide_now's work for one key, in this frame.
            now = time_ns() // 1000 if clock is None else clock()
            state = states.pop(key, None)
            remaining, reset_us, retry_us, states[key] = step(state, lim, now, 1)
            if state is None and len(states) > max_keys:  # only a new key adds one
                memory.trim()
            seconds = -(-reset_us // 1_000_000)  # header_lines, inlined for its common case
            if seconds < reset_lines_made:
                lines = b"%b%d%b" % (limit_lines, remaining, RESET_LINES[seconds])
            else:
                lines = header_lines(limit_lines, remaining, reset_us)
            call.added_headers = (RATELIMIT_NAMES, lines)
            if retry_us:
                self.over_limit(lim.limit, retry_us)
            else:
                counters.allowed += 1
            return next(call)

        return ratelimit_step

    def redis_step(self, next: Handler) -> Handler:
        store: RedisCounter = self.store  # type: ignore[assignment]
        single, limit_lines, counters = self.single, self.limit_lines, self.counters
        packed, count = store.packed_args(self.algorithm, single, 1)
        keys_for, by_peer = self.keys_for, self.peer_is_client
        reset_lines_made = len(RESET_LINES)
        connection, flush, pipeline = store.connection, store.flush, store.connection.pipeline
        batch, key_parts, arg_parts = store.batch, store.key_parts, store.arg_parts
        packed_keys = store.packed_keys
        # peer → its key packed as RESP: one lookup where keys_for and the store's packed
        # keys were two (bounded as the keys are).
        packed_by_peer: dict[object, bytes] = {}

        def enqueue(call: Call) -> asyncio.Future[list[Any]]:
            """store.enqueue for a peer not packed yet, or Redis down (raises)."""
            keys = keys_for(call)
            future = store.enqueue(keys, packed, count)
            if by_peer:
                if len(packed_by_peer) >= KEYS_REMEMBERED:
                    packed_by_peer.clear()
                packed_by_peer[call.peer] = store.packed_key(keys[0])
            return future

        async def ratelimit_step(call: Call) -> Reply:
            try:
                if by_peer:
                    packed_key = packed_by_peer.get(call.peer)
                else:  # a client named by a header or a trusted proxy's forwarding
                    packed_key = packed_keys.get(keys_for(call)[0])
                loop = store._loop
                if packed_key and loop is not None and connection.available:
                    # store.enqueue, inlined for its common case: the key packed already
                    future = loop.create_future()
                    if not batch:
                        loop.call_soon(flush, pipeline)
                    batch.append((future, 4))  # allowed, then the limit's three
                    key_parts.append(packed_key)
                    arg_parts.append(packed)
                    if len(batch) >= MAX_BATCH:
                        flush(pipeline)
                else:
                    future = enqueue(call)
                # remaining comes as the digits of its header line (ratelimit.lua)
                allowed, remaining, reset_us, retry_us = await future
            except BackendUnavailable:
                return await self.without_backend(call, next, keys_for(call), single)
            seconds = -(-reset_us // 1_000_000)  # header_lines, inlined for its common case
            if 0 <= seconds < reset_lines_made:
                lines = limit_lines + remaining + RESET_LINES[seconds]
            else:
                lines = header_lines(limit_lines, int(remaining), reset_us)
            call.added_headers = (RATELIMIT_NAMES, lines)
            if allowed:
                counters.allowed += 1
            else:
                self.over_limit(single[0].limit, retry_us)
            return await next(call)

        return ratelimit_step
