"""Job state in Redis (`RedisJobs`), shared by every node: the store plugins/queue/jobs.py
describes, over the node's auto-pipeline."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable
from typing import Any

import hiredis

from node.cluster.autopipe import ReplyError, pack
from node.cluster.redis import RedisConnection
from node.errors import BackendUnavailable
from plugins.queue.jobs import (
    FINISHED,
    OLDEST_BATCH,
    OLDEST_BATCHES,
    PENDING_TTL,
    QUEUED,
    RUNNING,
    JobRecord,
    is_unrecorded,
)
from plugins.queue.keys import JOB, WAITING


class RedisJobs:
    """Job state in Redis, shared by every node; one key per operation (Cluster safe).

    Reads and writes of a job's record go through the node's auto-pipeline (a command costs
    ~3 us of CPU there against ~50 us through redis-py); Redis Cluster, which has none,
    through redis-py. A save that changes whether the job is waiting sends the record's
    SET and the waiting set's ZADD or ZREM in the same write (the same round trip)."""

    def __init__(self, connection: RedisConnection) -> None:
        self.connection = connection
        self.pipeline = connection.pipeline

    async def _command(self, packed: bytes) -> Any:
        pipeline = self.pipeline
        assert pipeline is not None
        return await self.connection.run(lambda _client: pipeline.execute(packed))

    async def _commands(self, first: bytes, second: bytes) -> None:
        """Two packed commands in one auto-pipelined write; raises for an error reply."""
        pipeline = self.pipeline
        assert pipeline is not None

        async def send(_client: Any) -> None:
            if not pipeline.connected:  # the first command connects
                await pipeline.execute(first)
                await pipeline.execute(second)
                return
            replies = pipeline.submit(first), pipeline.submit(second)
            for reply in replies:
                if isinstance(await reply, hiredis.ReplyError):
                    raise ReplyError(str(reply.result()))

        await self.connection.run(send)

    async def claim(self, record: JobRecord, idempotency: str) -> JobRecord | None:
        run, ttl = self.connection.run, int(PENDING_TTL)
        if await run(lambda c: c.set(idempotency, record.id, nx=True, ex=ttl)):
            return None
        known = await run(lambda c: c.get(idempotency))
        existing = await self.get(known.decode()) if known is not None else None
        if existing is not None and not is_unrecorded(existing):
            return existing
        # The job it named has expired, or never ran (unrecorded): the key is this job's now.
        await run(lambda c: c.set(idempotency, record.id, ex=ttl))
        return None

    async def insert(self, record: JobRecord, ttl: float) -> bool:
        sent = self.insert_soon(record, ttl)
        if sent is not None:
            return await sent
        if self.pipeline is not None:  # not connected yet: its first command connects it
            store, *index = self._insert_commands(record, ttl)
            if await self._command(store) is None:
                return False
            for command in index:
                with contextlib.suppress(BackendUnavailable):  # as in _inserted
                    await self._command(command)
            return True
        key, value, milliseconds = JOB + record.id, record.to_json(), max(1, int(ttl * 1000))
        run = self.connection.run
        if not await run(lambda c: c.set(key, value, px=milliseconds, nx=True)):
            return False
        if record.status == QUEUED:
            with contextlib.suppress(BackendUnavailable):  # as in _inserted
                await run(lambda c: c.zadd(WAITING + record.queue, {record.id: record.created}))
        return True

    def insert_soon(self, record: JobRecord, ttl: float = PENDING_TTL) -> Awaitable[bool] | None:
        """SET NX and, for a queued job, the waiting set's ZADD, submitted to the open
        auto-pipeline now: no task, no coroutine runs until the caller awaits the result."""
        pipeline = self.pipeline
        if pipeline is None or not pipeline.connected or not self.connection.available:
            return None
        sent = tuple(pipeline.submit(command) for command in self._insert_commands(record, ttl))
        return self._inserted(sent)

    @staticmethod
    def _insert_commands(record: JobRecord, ttl: float) -> list[bytes]:
        key, milliseconds = (JOB + record.id).encode(), b"%d" % max(1, int(ttl * 1000))
        commands = [pack(b"SET", key, record.to_json(), b"PX", milliseconds, b"NX")]
        if record.status == QUEUED:
            created, waiting = repr(record.created).encode(), (WAITING + record.queue).encode()
            commands.append(pack(b"ZADD", waiting, created, record.id.encode()))
        return commands

    async def _inserted(self, sent: tuple[Awaitable[Any], ...]) -> bool:
        """Whether the SET stored the record (an error or a lost connection raises
        BackendUnavailable). The ZADD's reply (there once the SET's is: Redis answers in
        order) is retrieved, not judged: the record is the job's state, the waiting index
        only the oldest job's age, which an id missing from it understates."""
        replies: list[Any] = []
        for future in sent:
            try:
                replies.append(await future)
            except ConnectionError as exc:  # the connection failed: every reply fails alike
                replies.append(exc)
        reply = replies[0]
        if isinstance(reply, ConnectionError):
            raise self.connection.failure(reply) from reply
        if isinstance(reply, hiredis.ReplyError):
            error = ReplyError(str(reply))
            raise self.connection.failure(error) from error
        return reply is not None  # SET NX answers nil when the key is there

    async def get(self, job_id: str) -> JobRecord | None:
        key = JOB + job_id
        if self.pipeline is not None:
            data = await self._command(pack(b"GET", key.encode()))
        else:
            data = await self.connection.run(lambda c: c.get(key))
        return JobRecord.from_json(data) if data is not None else None

    async def save(self, record: JobRecord, ttl: float) -> None:
        key, value, milliseconds = JOB + record.id, record.to_json(), max(1, int(ttl * 1000))
        waiting = WAITING + record.queue
        if self.pipeline is None:
            await self.connection.run(lambda c: c.set(key, value, px=milliseconds))
            if record.status == QUEUED:
                await self.connection.run(lambda c: c.zadd(waiting, {record.id: record.created}))
            elif record.status == RUNNING:
                await self.connection.run(lambda c: c.zrem(waiting, record.id))
            return
        store = pack(b"SET", key.encode(), value, b"PX", b"%d" % milliseconds)
        if record.status == QUEUED:
            created = repr(record.created).encode()
            await self._commands(
                store, pack(b"ZADD", waiting.encode(), created, record.id.encode())
            )
        elif record.status == RUNNING:
            await self._commands(store, pack(b"ZREM", waiting.encode(), record.id.encode()))
        else:
            await self._command(store)

    async def discard(self, record: JobRecord, idempotency: str | None) -> None:
        await self.connection.run(lambda c: c.delete(JOB + record.id))
        await self.connection.run(lambda c: c.zrem(WAITING + record.queue, record.id))
        if idempotency is not None:
            await self.connection.run(lambda c: c.delete(idempotency))

    async def oldest_waiting(self, queue: str) -> float | None:
        """Skips ids whose job is running (its ZREM is on its way) and drops those whose
        record is gone or finished: a job that expired unrun, or a save that failed."""
        key, start = WAITING + queue, 0
        for _ in range(OLDEST_BATCHES):
            end = start + OLDEST_BATCH - 1
            found = await self.connection.run(
                lambda c, s=start, e=end: c.zrange(key, s, e, withscores=True)
            )
            stale = []
            for member, created in found:
                record = await self.get(member.decode())
                if record is not None and record.status == QUEUED:
                    return float(created)
                if record is None or record.status in FINISHED:
                    stale.append(member)
            if stale:
                await self.connection.run(lambda c, ids=stale: c.zrem(key, *ids))
            if len(found) < OLDEST_BATCH:
                return None
            start += OLDEST_BATCH - len(stale)
        return None  # unknown this time: so many running or stale; the next read goes on
