"""Where rate-limit state lives: `MemoryCounter` (per node) and `RedisCounter` (cluster-wide).

Both take all of a request's limits at once and decide atomically: every limit must pass,
and only then does any of them count the request.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from node.autopipe import AutoPipeline, ReplyError, pack
from node.redisconn import RedisConnection
from plugins.ratelimit.algorithms import STEP, Limit, State, Verdict, decide, state_ttl_us

LUA = (Path(__file__).parent / "ratelimit.lua").read_text()
# The embedded store forgets the least recently used clients beyond this many keys.
MEMORY_MAX_KEYS = 100_000


@dataclass(slots=True)
class Decision:
    allowed: bool
    verdicts: list[Verdict]  # one per limit, in order


class CounterStore(Protocol):
    async def hit(
        self, keys: Sequence[str], algorithm: str, limits: Sequence[Limit], cost: int = 1
    ) -> Decision:
        """Count one request of `cost` against `limits` (state `keys[i]` for `limits[i]`)."""
        ...


def wall_clock_us() -> int:
    return time.time_ns() // 1000


class MemoryCounter:
    """The algorithms run in-process; state in a bounded LRU with per-key expiry."""

    def __init__(
        self, clock: Callable[[], int] = wall_clock_us, max_keys: int = MEMORY_MAX_KEYS
    ) -> None:
        self.clock = clock
        self.max_keys = max_keys
        self._states: OrderedDict[str, tuple[State, int]] = OrderedDict()  # key → (state, expiry)

    def _load(self, key: str, now: int) -> State | None:
        entry = self._states.get(key)
        if entry is None:
            return None
        if entry[1] <= now:
            del self._states[key]
            return None
        return entry[0]

    async def hit(
        self, keys: Sequence[str], algorithm: str, limits: Sequence[Limit], cost: int = 1
    ) -> Decision:
        now = self.clock()
        states = self._states
        if len(keys) == 1:  # the common case, without the loops
            key, lim = keys[0], limits[0]
            entry = states.get(key)
            old = entry[0] if entry is not None and entry[1] > now else None
            verdict, state = STEP[algorithm](old, lim, now, cost)
            allowed = verdict.retry_us == 0
            if not allowed:  # report (and keep) the state without this request's cost
                retry = verdict.retry_us
                verdict, state = STEP[algorithm](old, lim, now, 0)
                verdict.retry_us = retry
            verdicts = [verdict]
            states[key] = (state, now + state_ttl_us(algorithm, lim, state, now))
            states.move_to_end(key)
            if len(states) > self.max_keys:
                states.popitem(last=False)
            return Decision(allowed, verdicts)
        allowed, verdicts, new_states = decide(
            algorithm, [self._load(key, now) for key in keys], limits, now, cost
        )
        for key, lim, state in zip(keys, limits, new_states, strict=True):
            states[key] = (state, now + state_ttl_us(algorithm, lim, state, now))
            states.move_to_end(key)
        if len(states) > self.max_keys:
            states.popitem(last=False)
        return Decision(allowed, verdicts)


class RedisCounter:
    """One EVALSHA per request for all its limits, on Redis time; Cluster-safe key tags.

    Concurrent requests' scripts are auto-pipelined (one write per loop tick); the
    command's constant part is packed once per limit set.
    """

    def __init__(self, connection: RedisConnection) -> None:
        self.connection = connection
        self.script = connection.client.register_script(LUA)
        self._packed: dict[tuple[str, tuple[Limit, ...], int], tuple[bytes, bytes]] = {}
        self._loading: asyncio.Future[Any] | None = None

    def packed_parts(
        self, algorithm: str, limits: Sequence[Limit], cost: int
    ) -> tuple[bytes, bytes]:
        """The RESP bytes before the keys (command, sha, key count) and after them (ARGV)."""
        key = (algorithm, tuple(limits), cost)
        parts = self._packed.get(key)
        if parts is None:
            args = [algorithm, cost]
            for lim in limits:
                args += (lim.limit, lim.window_us, lim.burst)
            n_keys = len(limits)
            head = pack(b"EVALSHA", self.script.sha.encode(), str(n_keys).encode())
            # Re-head the array with the full element count: 3 + keys + args.
            head = b"*%d\r\n" % (3 + n_keys + len(args)) + head.split(b"\r\n", 1)[1]
            tail = pack(*(str(a).encode() for a in args)).split(b"\r\n", 1)[1]
            parts = self._packed[key] = (head, tail)
        return parts

    async def _evalsha(self, pipeline: AutoPipeline, command: bytes) -> Any:
        try:
            return await pipeline.execute(command)
        except ReplyError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
            # A restarted or failed-over Redis has lost its scripts: load ours again, once
            # for all the requests that found it missing at the same moment.
            if self._loading is None or self._loading.done():
                self._loading = asyncio.ensure_future(self.connection.client.script_load(LUA))
            await asyncio.shield(self._loading)
            return await pipeline.execute(command)

    async def hit(
        self, keys: Sequence[str], algorithm: str, limits: Sequence[Limit], cost: int = 1
    ) -> Decision:
        pipeline = self.connection.pipeline
        if pipeline is None:  # Redis Cluster: redis-py routes the script to the keys' slot
            args: list[str | int] = [algorithm, cost]
            for lim in limits:
                args += (lim.limit, lim.window_us, lim.burst)
            raw = await self.connection.run(lambda c: self.script(keys=list(keys), args=args))
        else:
            head, tail = self.packed_parts(algorithm, limits, cost)
            packed_keys = b"".join(b"$%d\r\n%s\r\n" % (len(k), k.encode()) for k in keys)
            command = head + packed_keys + tail
            raw = await self.connection.run(lambda _: self._evalsha(pipeline, command))
        verdicts = [
            Verdict(int(raw[i]), int(raw[i + 1]), int(raw[i + 2])) for i in range(1, len(raw), 3)
        ]
        return Decision(bool(raw[0]), verdicts)
