"""Where rate-limit state lives: `MemoryCounter` (per node) and `RedisCounter` (cluster-wide).

Both take all of a request's limits at once and decide atomically: every limit must pass,
and only then does any of them count the request.
"""

from __future__ import annotations

import asyncio
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
# One tick's checks: each request's future and its reply's width (1 + 3 per limit).
Batch = list[tuple["asyncio.Future[list[int]]", int]]
# The embedded store forgets the least recently used clients beyond this many keys.
MEMORY_MAX_KEYS = 100_000
KEYS_PACKED = 65536  # one-key requests whose key is kept packed as RESP
FRAMINGS_KEPT = 4096  # batch shapes (keys, requests) whose EVALSHA framing is kept made
# A tick's checks go to Redis in batches of at most this many, each written as soon as it
# is full: Redis runs one while the node goes on with the tick's other requests. One batch
# per tick made the two wait on each other in turn (under wrk, the node's CPU 82 % busy and
# the limited route 0.72x the same route without it, also with 256 connections); batches
# of 16: 99 % busy, 0.76x-0.88x over four runs, p99 2.2 -> 1.6-2.0 ms (8 and 32 alike).
MAX_BATCH = 16


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
    rate limit's one-limit step reads and writes `states` itself (one_limit.py,
    OneLimitRateLimiter.memory_step): a call into the store would cost a Python frame per
    request.
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

    The checks of one event-loop tick travel as few script calls (batches of up to
    MAX_BATCH: one command to write, one reply to parse, one script run each), over the
    auto-pipeline's connection. Each request's arguments are packed once per limit set.
    On Redis Cluster, where one script may only touch one slot, each request is its own
    batch through redis-py.
    """

    def __init__(self, connection: RedisConnection) -> None:
        self.connection = connection
        # Redis Cluster checks go through redis-py, one by one: no batches there.
        self.capabilities = frozenset({BATCHED} if connection.pipeline is not None else ())
        self.script = connection.client.register_script(LUA)
        self._sha = bulk(self.script.sha)
        self._args: dict[tuple[str, tuple[Limit, ...], int], list[str | int]] = {}
        self._packed: dict[tuple[str, tuple[Limit, ...], int], tuple[bytes, int]] = {}
        # This tick's batch: its requests, and their keys (one part each) and arguments,
        # packed. The same lists for the store's life (emptied by each flush): the rate
        # limit's one-limit step appends to them itself, as `enqueue` would.
        self.batch: Batch = []
        self.key_parts: list[bytes] = []
        self.arg_parts: list[bytes] = []
        self.packed_keys: dict[str, bytes] = {}  # a one-key request's key as RESP
        self._framing: dict[tuple[int, int], tuple[bytes, bytes]] = {}  # see `_frame`
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
        # remaining comes as digits (bytes; the one-limit step splices them into its header
        # line as they are): int() reads them as it reads the integers
        verdicts = [
            Verdict(int(raw[i]), int(raw[i + 1]), int(raw[i + 2])) for i in range(1, len(raw), 3)
        ]
        return Decision(bool(raw[0]), verdicts)

    def enqueue(self, keys: Sequence[str], packed: bytes, count: int) -> asyncio.Future[list[int]]:
        """One request's check (arguments from `packed_args`: `count` is 3 + 3 per key) in
        this tick's batch on the auto-pipeline: the future of its raw reply, [allowed, then
        remaining, reset_us, retry_us per limit]. Raises BackendUnavailable while Redis is
        marked down."""
        if not self.connection.available:
            raise BackendUnavailable("redis is unreachable; reconnecting")
        loop = self._loop or self._bind_loop()
        future: asyncio.Future[list[int]] = loop.create_future()
        batch = self.batch
        if not batch:
            loop.call_soon(self.flush, self.connection.pipeline)
        batch.append((future, 1 + 3 * len(keys)))
        if len(keys) == 1:  # the common case: its key packed once per client
            self.key_parts.append(self.packed_key(keys[0]))
        else:
            self.key_parts += map(bulk, keys)
        self.arg_parts.append(packed)
        if len(batch) >= MAX_BATCH:
            self.flush(self.connection.pipeline)
        return future

    def packed_key(self, key: str) -> bytes:
        """`key` as RESP, remembered for the clients seen lately."""
        packed = self.packed_keys.get(key)
        if packed is None:
            if len(self.packed_keys) >= KEYS_PACKED:
                self.packed_keys.clear()
            packed = self.packed_keys[key] = bulk(key)
        return packed

    def _bind_loop(self) -> asyncio.AbstractEventLoop:
        # Bound on first use: asyncio.get_running_loop() costs a getpid() system call (3.11).
        self._loop = asyncio.get_running_loop()
        return self._loop

    def flush(self, pipeline: AutoPipeline) -> None:
        """The tick's checks as one script call. On the open connection the reply is
        settled as it is parsed (`Settle`, which is the batch itself): no task, no
        coroutine, no callback per batch. Connecting, or reloading the script, takes the
        coroutine path (`_send`), which waits for either."""
        batch, key_parts, arg_parts = self.batch, self.key_parts, self.arg_parts
        if not batch:  # the tick's batch went out full (MAX_BATCH) and none began since
            return
        settle = Settle(batch)  # this batch's own list (the step appends to `batch`)
        batch.clear()
        framing = self._framing.get((len(key_parts), len(settle)))
        if framing is None:
            framing = self._frame(len(key_parts), len(settle))
        settle.counter = self
        settle.command = command = b"".join([framing[0], *key_parts, framing[1], *arg_parts])
        key_parts.clear()
        arg_parts.clear()
        loading = self._loading
        if (loading is None or loading.done()) and pipeline.submit_to(command, settle):
            return
        self._spawn(self._send(pipeline, command, settle))

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._sending.add(task)  # a task nobody references may be collected mid-flight
        task.add_done_callback(self._sending.discard)

    def _frame(self, keys: int, requests: int) -> tuple[bytes, bytes]:
        """A batch's EVALSHA around its keys and arguments, by its shape (made once each):
        the head up to the keys, and the request count between keys and arguments."""
        if len(self._framing) >= FRAMINGS_KEPT:
            self._framing.clear()
        argc = 1 + 3 * requests + 3 * keys  # the request count, then 3 + 3 per key each
        head = b"*%d\r\n$7\r\nEVALSHA\r\n%b%b" % (3 + keys + argc, self._sha, bulk(keys))
        framing = self._framing[keys, requests] = (head, bulk(requests))
        return framing

    async def _send(self, pipeline: AutoPipeline, command: bytes, batch: Batch) -> None:
        try:
            raw = await self.connection.run(lambda _: self._evalsha(pipeline, command))
        except Exception as exc:  # every request of the batch learns why, none hangs
            fail(
                batch, exc if isinstance(exc, BackendUnavailable) else BackendUnavailable(str(exc))
            )
            return
        deliver(batch, raw)


class Settle(list[tuple["asyncio.Future[list[Any]]", int]]):
    """A batch on its way (AutoPipeline.submit_to's receiver): its requests' futures and
    reply widths, settled as the reply is parsed, in the connection's callback. The batch
    list itself, not an object beside it: one allocation per batch, made in C."""

    __slots__ = ("command", "counter")

    counter: RedisCounter
    command: bytes

    # Never settled before its reply: bool() is False, a C call where a method would run a
    # Python frame per reply.
    done = staticmethod(bool)

    def set_result(self, raw: Any) -> None:
        if type(raw) is list:  # the script's reply (an error reply is a ReplyError)
            if len(self) == 1:  # a batch of one (light load): the whole reply is its own
                future = self[0][0]
                if not future.done():
                    future.set_result(raw)
                return
            at = 0  # deliver(self, raw), inlined: a call less per batch
            try:
                for future, width in self:
                    if not future.done():
                        future.set_result(raw[at : at + width])
                    at += width
            except Exception as exc:  # not the script's reply: no request of it may hang,
                # and the connection's reading side, which called this, must go on
                fail(self, BackendUnavailable(f"unexpected reply from redis: {exc!r}"))
        elif isinstance(raw, hiredis.ReplyError) and str(raw).startswith("NOSCRIPT"):
            counter = self.counter  # reloads the script, sends again
            counter._spawn(counter._send(counter.connection.pipeline, self.command, self))
        elif isinstance(raw, hiredis.ReplyError):
            self.set_exception(ReplyError(str(raw)))
        else:
            fail(self, BackendUnavailable(f"unexpected reply from redis: {raw!r}"))

    def set_exception(self, error: BaseException) -> None:
        fail(self, self.counter.connection.failure(error))


def deliver(batch: Batch, raw: list[int]) -> None:
    """Each request of the batch gets its slice of the script's reply."""
    at = 0
    for future, width in batch:
        if not future.done():
            future.set_result(raw[at : at + width])
        at += width


def fail(batch: Batch, error: BackendUnavailable) -> None:
    for future, _ in batch:
        if not future.done():
            future.set_exception(error)
