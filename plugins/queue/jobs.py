"""Job state: what `GET /jobs/{id}` answers, and what makes a redelivered job run once.

A job's record is one JSON value under its id (Redis: `sn:q:job:<id>`, expiring), so any
node answers for any job and every operation touches one key (Redis Cluster safe). An
`Idempotency-Key` maps to the id of the job it made, for as long as the job is kept.
Each queue's jobs waiting (queued, or back for a retry) are indexed by their creation time
(Redis: the sorted set `sn:q:waiting:<queue>`), for the age of the oldest.
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import orjson

from node.call import Reply, wire_bytes
from plugins.queue.keys import IDEMPOTENCY, JOB

QUEUED, RUNNING, SUCCEEDED, FAILED, DEAD = "queued", "running", "succeeded", "failed", "dead"
FINISHED = frozenset((SUCCEEDED, FAILED, DEAD))
# A job not finished yet is kept this long (a queue may be drained days later); a finished
# one for its route's result_ttl.
PENDING_TTL = 7 * 86400.0
# The oldest waiting job is looked for among this many of the lowest ids at a time, in up
# to this many batches (ids of running jobs are skipped, stale ones dropped).
OLDEST_BATCH, OLDEST_BATCHES = 10, 3


@dataclass(slots=True)
class JobRecord:
    id: str
    route: str
    queue: str
    status: str = QUEUED
    attempts: int = 0
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    error: str | None = None
    result: dict[str, Any] | None = None  # the target's reply: see stored_reply

    def public(self) -> dict[str, Any]:
        """What GET /jobs/{id} shows (the result has its own URL)."""
        shown = asdict(self)
        del shown["result"]
        shown["href"] = f"/jobs/{self.id}"
        return shown

    def to_json(self) -> bytes:
        return orjson.dumps(self)  # a dataclass: orjson writes its fields, 15x asdict's speed

    @classmethod
    def from_json(cls, data: bytes) -> JobRecord:
        return cls(**orjson.loads(data))


def stored_reply(reply: Reply) -> dict[str, Any]:
    """A reply as JSON-safe data (the body in base64: it may be any bytes)."""
    headers = [
        [name, value]
        for name, value in reply.headers.items()
        if name.lower() not in ("content-length", "transfer-encoding", "connection")
    ]
    return {
        "status": reply.status,
        "headers": headers,
        "content_type": reply.content_type,
        "body": base64.b64encode(reply.body).decode(),
    }


def reply_of(stored: dict[str, Any]) -> Reply:
    headers = {name: value for name, value in stored["headers"]}
    body = base64.b64decode(stored["body"])
    return Reply(stored["status"], body, headers, stored["content_type"])


# The record a worker writes for a message that has none (worker.py): the job was never
# accepted (its gateway answered 503, or its record is lost), so it does not run; dead
# with no attempt, which no job that ran can be.
UNRECORDED = "never accepted: no job state was stored for it (kept in the dead-letter queue)"


def unrecorded(job_id: str, route: str, queue: str) -> JobRecord:
    now = time.time()
    return JobRecord(job_id, route, queue, DEAD, 0, now, finished=now, error=UNRECORDED)


def is_unrecorded(record: JobRecord) -> bool:
    return record.status == DEAD and record.attempts == 0


async def _done(value: bool) -> bool:
    return value


def idempotency_key(route: str, key: str) -> str:
    """The store key of a client's Idempotency-Key on a route (digested: any length)."""
    digest = hashlib.sha256(wire_bytes(f"{route}\0{key}")).hexdigest()
    return IDEMPOTENCY + digest


class JobStore(Protocol):
    async def claim(self, record: JobRecord, idempotency: str) -> JobRecord | None:
        """Make `idempotency` name `record`'s job; None when it does now, else the job it
        named already (and still names). A key whose job expired or never ran (unrecorded)
        is taken over."""
        ...

    async def insert(self, record: JobRecord, ttl: float) -> bool:
        """Store `record` only if its job has no record yet (kept `ttl` seconds; a queued
        one waits); whether it was stored. Never overwrites: see worker.py's UNRECORDED."""
        ...

    def insert_soon(self, record: JobRecord) -> Awaitable[bool] | None:
        """`insert(record, PENDING_TTL)` sent now, in this loop turn's write to the store,
        for a caller that awaits something else meanwhile; None when the store cannot send
        it at once (connecting, Redis Cluster): then `insert` it."""
        ...

    async def get(self, job_id: str) -> JobRecord | None: ...

    async def save(self, record: JobRecord, ttl: float) -> None:
        """Store `record` (replacing the job's), kept for `ttl` seconds. A queued job is
        waiting from now on, a running one no longer."""
        ...

    async def discard(self, record: JobRecord, idempotency: str | None) -> None:
        """Forget a job that never reached the queue (its publish failed)."""
        ...

    async def oldest_waiting(self, queue: str) -> float | None:
        """When the oldest job still waiting on `queue` was created (Unix seconds), over
        every node sharing the store; None when none is waiting."""
        ...


async def create(
    store: JobStore, record: JobRecord, idempotency: str | None
) -> tuple[JobRecord, bool]:
    """Store a new queued job, the record first (the gateway sends it with the publish,
    plugin.py); with an idempotency key already used on its route, store nothing and
    return that key's job instead. (record, whether it is new)."""
    if idempotency is not None:
        existing = await store.claim(record, idempotency)
        if existing is not None:
            return existing, False
    await store.insert(record, PENDING_TTL)
    return record, True


class MemoryJobs:
    """The embedded job store: this node's jobs only, gone with the process."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._values: dict[str, tuple[bytes, float]] = {}  # key -> (value, expires at)
        self._waiting: dict[str, dict[str, float]] = {}  # queue -> {job id: created}

    def _get(self, key: str) -> bytes | None:
        found = self._values.get(key)
        if found is None:
            return None
        if found[1] <= self.clock():
            del self._values[key]
            return None
        return found[0]

    def _set(self, key: str, value: bytes, ttl: float) -> None:
        self._values[key] = (value, self.clock() + ttl)
        if len(self._values) % 1024 == 0:  # now and then, drop what expired
            now = self.clock()
            for stale in [k for k, (_, at) in self._values.items() if at <= now]:
                del self._values[stale]

    async def claim(self, record: JobRecord, idempotency: str) -> JobRecord | None:
        known = self._get(idempotency)
        existing = await self.get(known.decode()) if known is not None else None
        if existing is not None and not is_unrecorded(existing):
            return existing
        self._set(idempotency, record.id.encode(), PENDING_TTL)
        return None

    async def insert(self, record: JobRecord, ttl: float) -> bool:
        return self._insert(record, ttl)

    def insert_soon(self, record: JobRecord) -> Awaitable[bool] | None:
        return _done(self._insert(record, PENDING_TTL))  # in-process: stored right now

    def _insert(self, record: JobRecord, ttl: float) -> bool:
        if self._get(JOB + record.id) is not None:
            return False
        self._save(record, ttl)
        return True

    async def get(self, job_id: str) -> JobRecord | None:
        data = self._get(JOB + job_id)
        return JobRecord.from_json(data) if data is not None else None

    async def save(self, record: JobRecord, ttl: float) -> None:
        self._save(record, ttl)

    def _save(self, record: JobRecord, ttl: float) -> None:
        self._set(JOB + record.id, record.to_json(), ttl)
        if record.status == QUEUED:
            self._waiting.setdefault(record.queue, {})[record.id] = record.created
        elif record.status == RUNNING:
            self._waiting.get(record.queue, {}).pop(record.id, None)

    async def discard(self, record: JobRecord, idempotency: str | None) -> None:
        self._values.pop(JOB + record.id, None)
        self._waiting.get(record.queue, {}).pop(record.id, None)
        if idempotency is not None:
            self._values.pop(idempotency, None)

    async def oldest_waiting(self, queue: str) -> float | None:
        # A scan, a few times a second: the embedded queue is not for deep backlogs.
        waiting = self._waiting.get(queue, {})
        for job_id in [job_id for job_id in waiting if self._get(JOB + job_id) is None]:
            del waiting[job_id]  # expired unrun
        return min(waiting.values(), default=None)
