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
from typing import Any

import hiredis
from redis.asyncio.connection import parse_url
from redis.exceptions import ResponseError


def pack(*parts: bytes) -> bytes:
    """A command as a RESP array of bulk strings."""
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        out.append(b"$%d\r\n%s\r\n" % (len(part), part))
    return b"".join(out)


class ReplyError(ResponseError):
    """Redis answered the command with an error (NOSCRIPT, WRONGTYPE, ...)."""


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
        self._writer: asyncio.StreamWriter | None = None
        self._connecting: asyncio.Future[None] | None = None
        self._waiting: collections.deque[asyncio.Future[Any]] = collections.deque()
        self._batch: list[bytes] = []
        self._reader_task: asyncio.Task[None] | None = None
        self._received = 0  # replies so far, for the watchdog
        self._watchdog: asyncio.TimerHandle | None = None

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

    def submit(self, command: bytes) -> asyncio.Future[Any]:
        """Queue one packed command on the open connection (see `connected`) for this tick's
        write; the future of its reply, where an error reply is a hiredis.ReplyError result.
        For callers that settle replies in callbacks: no coroutine, no task."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._waiting.append(future)
        if not self._batch:
            loop.call_soon(self.flush)
        self._batch.append(command)
        return future

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
            self._watchdog = asyncio.get_running_loop().call_later(
                self.timeout, self._watch, self._received
            )

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
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(self.host, self.port), self.timeout
        )
        parser = hiredis.Reader()
        for command in self.handshake:
            writer.write(command)
            reply = False
            while reply is False:
                data = await asyncio.wait_for(reader.read(4096), self.timeout)
                if not data:
                    raise ConnectionError("redis closed the connection during the handshake")
                parser.feed(data)
                reply = parser.gets()
            if isinstance(reply, hiredis.ReplyError):
                writer.close()
                raise ConnectionError(f"redis refused the handshake: {reply}")
        self._writer = writer
        self._reader_task = asyncio.ensure_future(self._read(reader, parser, writer))

    async def _read(
        self, reader: asyncio.StreamReader, parser: hiredis.Reader, writer: asyncio.StreamWriter
    ) -> None:
        error: Exception = ConnectionError("redis closed the connection")
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                parser.feed(data)
                reply = parser.gets()
                while reply is not False:
                    self._received += 1
                    future = self._waiting.popleft()
                    if not future.done():
                        future.set_result(reply)
                    reply = parser.gets()
        except OSError as exc:
            error = ConnectionError(f"redis connection failed: {type(exc).__name__}")
        if self._writer is writer:  # not a newer connection made since this one failed
            self._fail(error)

    def _fail(self, error: Exception) -> None:
        """Drop the connection and fail every caller still owed a reply."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        self._batch.clear()
        while self._waiting:
            future = self._waiting.popleft()
            if not future.done():
                future.set_exception(error)

    async def close(self) -> None:
        if self._reader_task is not None:
            self._reader_task.cancel()
            await asyncio.gather(self._reader_task, return_exceptions=True)
        self._fail(ConnectionError("closed"))
