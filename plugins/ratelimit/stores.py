"""Where rate-limit state lives: `MemoryCounter` (per node) and `RedisCounter` (cluster-wide).

Both take all of a request's limits at once and decide atomically: every limit must pass,
and only then does any of them count the request.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from time import time_ns
from typing import Any, Protocol

import hiredis

from node.cluster.autopipe import AutoPipeline, ReplyError
from node.cluster.redis import RedisConnection
from node.errors import BackendUnavailable
from plugins.ratelimit.algorithms import Limit, State, Verdict, decide

LUA = (Path(__file__).parent / "ratelimit.lua").read_text()
# One tick's checks: each request's keys, its packed arguments and their count, its future.
Batch = list[tuple[Sequence[str], bytes, int, "asyncio.Future[list[int]]"]]
# The embedded store forgets the least recently used clients beyond this many keys.
MEMORY_MAX_KEYS = 100_000


@dataclass(slots=True)
class Decision:
    allowed: bool
    verdicts: list[Verdict]  # one per limit, in order


# What a store can do beyond `hit`, for the rate limiter's faster paths (declared, so a
# store of another backend offers them by saying so, not by being one of these classes).
DECIDE_NOW = "decide_now"  # decides synchronously, in-process: `decide_now`, `states`
BATCHED = "batched"  # a one-limit check is a future on the tick's batch: `enqueue`


class CounterStore(Protocol):
    capabilities: frozenset[str]

    async def hit(
        self, keys: Sequence[str], algorithm: str, limits: Sequence[Limit], cost: int = 1
    ) -> Decision:
        """Count one request of `cost` against `limits` (state `keys[i]` for `limits[i]`)."""
        ...


class MemoryCounter:
    """The algorithms run in-process; state in a bounded LRU.

    States need no expiry here: every algorithm reads a state from an earlier window, or a
    bucket whose arrival time has passed, as empty, so the LRU bound alone keeps memory in
    check. `decide_now` is the synchronous core, `hit` the store interface over it. The
    rate limit's one-limit step reads and writes `states` itself (OneLimitRateLimiter.memory_step):
    a call into the store would cost a Python frame per request.
    """

    capabilities = frozenset({DECIDE_NOW})

    def __init__(
        self, clock: Callable[[], int] | None = None, max_keys: int = MEMORY_MAX_KEYS
    ) -> None:
        # Microseconds; None: the wall clock, read inline (a clock function would cost a
        # Python frame per request).
        self.clock = clock
        self.max_keys = max_keys
        # A plain dict keeps insertion order: re-inserting a key on every hit makes the
        # first key the least recently used.
        self.states: dict[str, State] = {}

    def now(self) -> int:
        return time_ns() // 1000 if self.clock is None else self.clock()

    def decide_now(
        self, keys: Sequence[str], algorithm: str, limits: Sequence[Limit], cost: int = 1
    ) -> Decision:
        states = self.states
        loaded = [states.pop(key, None) for key in keys]
        allowed, verdicts, new_states = decide(algorithm, loaded, limits, self.now(), cost)
        for key, state in zip(keys, new_states, strict=True):
            states[key] = state
        if len(states) > self.max_keys:
            self.trim()
        return Decision(allowed, verdicts)

    def trim(self) -> None:
        """Forget the least recently used states beyond `max_keys`."""
        states = self.states
        while len(states) > self.max_keys:
            del states[next(iter(states))]

    async def hit(
        self, keys: Sequence[str], algorithm: str, limits: Sequence[Limit], cost: int = 1
    ) -> Decision:
        return self.decide_now(keys, algorithm, limits, cost)


def bulk(value: str | int) -> bytes:
    data = str(value).encode()
    return b"$%d\r\n%s\r\n" % (len(data), data)


class RedisCounter:
    """All limits of a request in one script run, on Redis time; Cluster-safe key tags.

    The checks of one event-loop tick travel as ONE script call (a batch: one command to
    write, one reply to parse, one script run), over the auto-pipeline's connection. Each
    request's arguments are packed once per limit set. On Redis Cluster, where one
    script may only touch one slot, each request is its own batch through redis-py.
    """

    def __init__(self, connection: RedisConnection) -> None:
        self.connection = connection
        # Redis Cluster checks go through redis-py, one by one: no batches there.
        self.capabilities = frozenset({BATCHED} if connection.pipeline is not None else ())
        self.script = connection.client.register_script(LUA)
        self._sha = bulk(self.script.sha)
        self._args: dict[tuple[str, tuple[Limit, ...], int], list[str | int]] = {}
        self._packed: dict[tuple[str, tuple[Limit, ...], int], tuple[bytes, int]] = {}
        self._batch: Batch = []
        self._loading: asyncio.Future[Any] | None = None
        self._sending: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    def request_args(self, algorithm: str, limits: Sequence[Limit], cost: int) -> list[str | int]:
        """One request's part of ARGV: its limit count, algorithm, cost and limits."""
        key = (algorithm, tuple(limits), cost)
        args = self._args.get(key)
        if args is None:
            args = [len(limits), algorithm, cost]
            for lim in limits:
                args += (lim.limit, lim.window_us, lim.burst)
            self._args[key] = args
        return args

    def packed_args(self, algorithm: str, limits: Sequence[Limit], cost: int) -> tuple[bytes, int]:
        """The same, packed as RESP, and how many arguments it holds."""
        key = (algorithm, tuple(limits), cost)
        packed = self._packed.get(key)
        if packed is None:
            args = self.request_args(algorithm, limits, cost)
            packed = self._packed[key] = (b"".join(bulk(a) for a in args), len(args))
        return packed

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
            args = [1, *self.request_args(algorithm, limits, cost)]  # a batch of one
            raw = await self.connection.run(lambda c: self.script(keys=list(keys), args=args))
        else:
            packed, count = self.packed_args(algorithm, limits, cost)
            raw = await self.enqueue(keys, packed, count)
        verdicts = [
            Verdict(int(raw[i]), int(raw[i + 1]), int(raw[i + 2])) for i in range(1, len(raw), 3)
        ]
        return Decision(bool(raw[0]), verdicts)

    def enqueue(self, keys: Sequence[str], packed: bytes, count: int) -> asyncio.Future[list[int]]:
        """One request's check (arguments from `packed_args`) in this tick's batch on the
        auto-pipeline: the future of its raw reply, [allowed, then remaining, reset_us,
        retry_us per limit]. Raises BackendUnavailable while Redis is marked down."""
        if not self.connection.available:
            raise BackendUnavailable("redis is unreachable; reconnecting")
        loop = self._loop or self._bind_loop()
        future: asyncio.Future[list[int]] = loop.create_future()
        self._batch.append((keys, packed, count, future))
        if len(self._batch) == 1:
            loop.call_soon(self._flush, self.connection.pipeline)
        return future

    def _bind_loop(self) -> asyncio.AbstractEventLoop:
        # Bound on first use: asyncio.get_running_loop() costs a getpid() system call (3.11).
        self._loop = asyncio.get_running_loop()
        return self._loop

    def _flush(self, pipeline: AutoPipeline) -> None:
        """The tick's checks as one script call. On the open connection the reply is
        settled in a callback (`_settle`): no task, no coroutine per batch. Connecting, or
        reloading the script, takes the coroutine path (`_send`), which waits for either."""
        batch, self._batch = self._batch, []
        loading = self._loading is not None and not self._loading.done()
        if not pipeline.connected or loading:
            self._spawn(self._send(pipeline, batch))
            return
        reply = pipeline.submit(self._command(batch), now=True)
        reply.add_done_callback(functools.partial(self._settle, pipeline, batch))

    def _settle(self, pipeline: AutoPipeline, batch: Batch, reply: asyncio.Future[Any]) -> None:
        if reply.cancelled():
            fail(batch, BackendUnavailable("the redis command was cancelled"))
            return
        error = reply.exception()
        if error is None:
            raw = reply.result()
            if not isinstance(raw, hiredis.ReplyError):
                deliver(batch, raw)
                return
            if str(raw).startswith("NOSCRIPT"):
                self._spawn(self._send(pipeline, batch))  # reloads the script, sends again
                return
            error = ReplyError(str(raw))
        fail(batch, self.connection.failure(error))

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._sending.add(task)  # a task nobody references may be collected mid-flight
        task.add_done_callback(self._sending.discard)

    def _command(self, batch: Batch) -> bytes:
        keys = [key for request in batch for key in request[0]]
        argc = 1 + sum(request[2] for request in batch)
        return b"".join(
            [
                b"*%d\r\n$7\r\nEVALSHA\r\n" % (3 + len(keys) + argc),
                self._sha,
                bulk(len(keys)),
                *(bulk(key) for key in keys),
                bulk(len(batch)),
                *(request[1] for request in batch),
            ]
        )

    async def _send(self, pipeline: AutoPipeline, batch: Batch) -> None:
        command = self._command(batch)
        try:
            raw = await self.connection.run(lambda _: self._evalsha(pipeline, command))
        except Exception as exc:  # every request of the batch learns why, none hangs
            fail(
                batch, exc if isinstance(exc, BackendUnavailable) else BackendUnavailable(str(exc))
            )
            return
        deliver(batch, raw)


def deliver(batch: Batch, raw: list[int]) -> None:
    """Each request of the batch gets its slice of the script's reply."""
    at = 0
    for request_keys, _, _, future in batch:
        width = 1 + 3 * len(request_keys)
        if not future.done():
            future.set_result(raw[at : at + width])
        at += width


def fail(batch: Batch, error: BackendUnavailable) -> None:
    for *_, future in batch:
        if not future.done():
            future.set_exception(error)
