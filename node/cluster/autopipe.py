"""Auto-pipelining to Redis: every command issued in one event-loop tick goes out in one
write on one connection, and replies are matched to callers in order (as ioredis does).

redis-py spends ~70 us of CPU per concurrent EVALSHA (a pooled connection each, Python
packing); here a caller hands in a command already packed as RESP bytes and the batch
costs one write and one parse loop, which is what lets a Redis-backed rate limit keep
up with the node. Redis Cluster is not handled here (callers use redis-py there).
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any, Protocol

import hiredis
from redis.asyncio.connection import parse_url
from redis.exceptions import ResponseError


def pack(*parts: bytes) -> bytes:
    """A command as a RESP array of bulk strings."""
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        out.append(b"$%d\r\n%s\r\n" % (len(part), part))
    return b"".join(out)


class Receiver(Protocol):
    """What `AutoPipeline.submit_to` hands a reply to: the part of a future it uses."""

    def done(self) -> bool: ...

    def set_result(self, reply: Any) -> None: ...

    def set_exception(self, error: BaseException) -> None: ...


class ReplyError(ResponseError):
    """Redis answered the command with an error (NOSCRIPT, WRONGTYPE, ...)."""


class Replies(asyncio.Protocol):
    """The connection's reading side: replies parsed by hiredis as their bytes arrive, each
    settling the oldest caller owed one, in the transport's callback (no reader task, no
    stream in between: a task wake-up less per batch)."""

    def __init__(self, pipeline: AutoPipeline) -> None:
        self.pipeline = pipeline
        self.parser = hiredis.Reader()

    def data_received(self, data: bytes) -> None:
        parser, pipeline = self.parser, self.pipeline
        parser.feed(data)
        reply = parser.gets()
        if reply is False:
            return
        waiting = pipeline._waiting  # bound once: most reads carry one reply (a batch's)
        while reply is not False:
            pipeline._received += 1
            future = waiting.popleft()
            if not future.done():
                future.set_result(reply)
            reply = parser.gets()

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is None:
            error = ConnectionError("redis closed the connection")
        else:
            error = ConnectionError(f"redis connection failed: {type(exc).__name__}")
        self.pipeline._lost(self, error)


class AutoPipeline:
    def __init__(self, url: str, timeout: float) -> None:
        options = parse_url(url)
        self.host = options.get("host", "127.0.0.1")
        self.port = int(options.get("port", 6379))
        self.handshake = []
        if options.get("password"):
            user = options.get("username")
            creds = [user.encode()] if user else []
            self.handshake.append(pack(b"AUTH", *creds, str(options["password"]).encode()))
        if options.get("db"):
            self.handshake.append(pack(b"SELECT", str(options["db"]).encode()))
        self.timeout = timeout
        self._writer: asyncio.Transport | None = None  # set once the handshake is done
        self._replies: Replies | None = None  # the open connection's reading side
        self._connecting: asyncio.Future[None] | None = None
        self._waiting: collections.deque[asyncio.Future[Any] | Receiver] = collections.deque()
        self._batch: list[bytes] = []
        self._received = 0  # replies so far, for the watchdog
        self._watchdog: asyncio.TimerHandle | None = None
        # Bound on first use: asyncio.get_running_loop() costs a getpid() system call (3.11).
        self._loop: asyncio.AbstractEventLoop | None = None

    async def execute(self, command: bytes) -> Any:
        """Send one packed command; its reply (an error reply raises ReplyError)."""
        if self._writer is None:
            await self._connect()
        reply = await self.submit(command)
        if isinstance(reply, hiredis.ReplyError):
            raise ReplyError(str(reply))
        return reply

    @property
    def connected(self) -> bool:
        return self._writer is not None

    def submit(self, command: bytes, *, now: bool = False) -> asyncio.Future[Any]:
        """Queue one packed command on the open connection (see `connected`) for this tick's
        write (with `now`, written at once with what is queued); the future of its reply,
        where an error reply is a hiredis.ReplyError result. For callers that settle replies
        in callbacks: no coroutine, no task."""
        loop = self._loop or self._bind_loop()
        future = loop.create_future()
        self._waiting.append(future)
        first = not self._batch
        self._batch.append(command)
        if now:
            self.flush()
        elif first:
            loop.call_soon(self.flush)
        return future

    def submit_to(self, command: bytes, receiver: Receiver) -> bool:
        """Write one packed command on the open connection at once (with what is queued);
        `receiver` is handed its reply (or the connection's failure) as a future would be,
        but called in the reading side's callback itself: no future, no call_soon hop.
        False, and nothing queued, when no connection is open (the caller connects)."""
        writer = self._writer
        if writer is None:
            return False
        self._waiting.append(receiver)
        if self._batch:  # commands queued this tick go first: replies come in order
            self._batch.append(command)
            self.flush()
            return True
        try:  # flush's work for one command, in this frame (a frame and a join less)
            writer.write(command)
        except (RuntimeError, OSError) as exc:  # closed under us (uvloop raises RuntimeError)
            self._fail(ConnectionError(f"redis connection lost: {type(exc).__name__}"))
            return True
        if self._watchdog is None:
            loop = self._loop or self._bind_loop()
            self._watchdog = loop.call_later(self.timeout, self._watch, self._received)
        return True

    def _bind_loop(self) -> asyncio.AbstractEventLoop:
        self._loop = asyncio.get_running_loop()
        return self._loop

    def flush(self) -> None:
        """Write what is queued now (it is written at the end of the tick anyway)."""
        if not self._batch:
            return
        batch, self._batch = self._batch, []
        if self._writer is None:
            self._fail(ConnectionError("redis connection lost"))
            return
        try:
            self._writer.write(b"".join(batch))
        except (RuntimeError, OSError) as exc:  # closed under us (uvloop raises RuntimeError)
            self._fail(ConnectionError(f"redis connection lost: {type(exc).__name__}"))
            return
        if self._watchdog is None:
            loop = self._loop or self._bind_loop()
            self._watchdog = loop.call_later(self.timeout, self._watch, self._received)

    def _watch(self, received_before: int) -> None:
        """Replies are owed: a connection that gave none for `timeout` seconds is dead."""
        self._watchdog = None
        if not self._waiting:
            return
        if self._received == received_before:
            self._fail(ConnectionError("redis connection failed: TimeoutError"))
            return
        self._watchdog = asyncio.get_running_loop().call_later(
            self.timeout, self._watch, self._received
        )

    async def _connect(self) -> None:
        # At most one connection attempt in flight; concurrent callers wait on it.
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._open())
        try:
            await asyncio.shield(self._connecting)
        finally:
            if self._connecting is not None and self._connecting.done():
                self._connecting = None

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        transport, replies = await asyncio.wait_for(
            loop.create_connection(lambda: Replies(self), self.host, self.port), self.timeout
        )
        self._replies = replies
        try:
            for command in self.handshake:  # answered through the same reading side
                future = loop.create_future()
                self._waiting.append(future)
                transport.write(command)
                reply = await asyncio.wait_for(future, self.timeout)
                if isinstance(reply, hiredis.ReplyError):
                    raise ConnectionError(f"redis refused the handshake: {reply}")
        except BaseException:
            self._replies = None
            transport.close()
            raise
        self._writer = transport

    def _lost(self, replies: Replies, error: Exception) -> None:
        """A connection closed: if it is the current one, its callers learn why."""
        if replies is self._replies:  # not an older connection, closed after a newer opened
            self._replies = None
            self._fail(error)

    def _fail(self, error: Exception) -> None:
        """Drop the connection and fail every caller still owed a reply."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._replies = None
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        self._batch.clear()
        while self._waiting:
            future = self._waiting.popleft()
            if not future.done():
                future.set_exception(error)

    async def close(self) -> None:
        self._fail(ConnectionError("closed"))
