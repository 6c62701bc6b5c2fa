"""The JobQueue plugin: a queued route's gateway side. The call is checked by the plugins
before it, stored as a job, published (confirmed by the broker) and answered 202; the rest
of the route's chain, which `bind` receives, is what a worker runs for the job."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from node.call import Call, Handler, Reply
from node.errors import BackendUnavailable, Rejected, ServiceUnavailable
from node.plugin import Plugin
from plugins.queue.broker import QueueFull
from plugins.queue.jobs import PENDING_TTL, JobRecord, idempotency_key, is_unrecorded
from plugins.queue.message import JobMessage
from plugins.queue.settings import QueueSettings

if TYPE_CHECKING:
    from plugins.queue.service import JobService

MAX_IDEMPOTENCY_KEY = 255  # characters; longer keys are a client error
RETRY_AFTER_OUTAGE = "5"  # seconds a client waits before trying an unreachable broker again
RETRY_AFTER_FULL = "30"  # seconds, when the queue is full
# Pauses between writes of a confirmed job's record that failed (~3 s in all): a Redis that
# comes back meanwhile still gets the client its 202 (see JobQueue.submit).
RECORD_RETRIES = (0.05, 0.1, 0.2, 0.4, 0.8, 1.6)
T = TypeVar("T")


class RouteJobs:
    """A queued route's counters: what its plugin published, what workers did with them."""

    __slots__ = ("completed", "dead", "failed", "published", "refused", "retried", "waited")

    def __init__(self) -> None:
        self.published = self.refused = self.completed = self.failed = 0
        self.retried = self.dead = 0
        # Seconds the latest job this node started had waited since it was queued: the
        # queue's latency as this node's worker sees it.
        self.waited = 0.0


class JobQueue(Plugin):
    name = "queue"

    def __init__(self, settings: QueueSettings, route: str, service: JobService) -> None:
        self.settings = settings
        self.route = route
        self.service = service
        self.counts = RouteJobs()

    def bind(self, next: Handler) -> Handler:
        self.service.add_route(self, next)  # what a worker runs for this route's jobs
        return self.enqueue

    async def enqueue(self, call: Call) -> Reply:
        """Store the call as a job, publish it, answer 202 with where to follow it."""
        key = call.headers.get("Idempotency-Key")
        if key is not None and not 0 < len(key) <= MAX_IDEMPOTENCY_KEY:
            raise Rejected(
                f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} characters",
                code="bad_idempotency_key",
            )
        record, _ = await self.submit(call, key)
        href = f"/jobs/{record.id}"
        body = {"id": record.id, "status": record.status, "href": href}
        return Reply.json(body, 202, {"Location": href, "X-Request-Id": call.request_id})

    async def submit(self, call: Call, key: str | None = None) -> tuple[JobRecord, bool]:
        """The job for `call` (a repeat of `key` gets its first job): (record, whether new).
        Raises ServiceUnavailable (503 with Retry-After) unless the broker confirmed it.

        The record's write and the publish are in flight together (one round trip's wait,
        not two; an Idempotency-Key's claim still comes first, alone). 202 needs both: the
        broker's confirm and the record in the store. What makes that safe:

        - Whether a job is accepted is decided once, by the store, on the job's key: the
          gateway's record is written only if the key is free (SET NX), and a worker that
          finds no record for a message waits a moment, then writes a dead "unrecorded"
          record only if the key is still free (worker.py, UNRECORDED). Exactly one wins.
          The gateway's record wins: the job runs (202). The worker's wins: the job never
          runs (its message is kept in the dead-letter queue for an operator) and the
          gateway, whose write then finds the key taken, answers 503.
        - Publish confirmed, record write failed (Redis refused or went away): the job is
          in the broker, so the gateway settles the record before answering: it retries
          the write (NX) for a few seconds; written, or found to be its own (an earlier
          write landed though its reply was lost), is 202: the job runs and has state.
          Found to be the worker's, or the store still away, is 503; the worker then
          finds no record and the job does not run. Left: a first write that landed
          while Redis stayed away for the whole retry: the job runs after a 503, as with
          any answer lost on its way (send an Idempotency-Key to make repeats one job).
        - Publish failed (refused, nacked, or unconfirmed): 503, and the record is
          discarded; a message that reached the broker all the same (a lost confirm)
          finds no record and does not run (unless Redis failed the discard too, or the
          worker read the record first: as before this change, a lost confirm's job may
          run after its 503).
        """
        service, name = self.service, self.settings.name
        idempotency = idempotency_key(self.route, key) if key is not None else None
        # 128 random bits as 32 hex digits, as uuid4().hex but at a fifth of its cost.
        record = JobRecord(os.urandom(16).hex(), self.route, name)
        try:
            message = JobMessage(record.id, self.route, call).encode()
        except orjson.JSONEncodeError:  # lone surrogates: header bytes that are not UTF-8
            raise Rejected(
                "a queued request's header values must be UTF-8 text", code="bad_header"
            ) from None
        if idempotency is not None:
            existing = await self.store(service.jobs.claim(record, idempotency))
            if existing is not None:
                return existing, False
        # Sent first, so the record's bytes leave before the message's in this loop turn.
        stored = service.jobs.insert_soon(record)
        if stored is None:  # the store cannot send it now (connecting, Cluster): record first
            await self.record_first(record)
        try:
            await service.broker.publish(name, message, record.id)
        except (BackendUnavailable, QueueFull) as exc:
            await self.withdraw(record, idempotency, stored)
            if isinstance(exc, QueueFull):
                raise self.unavailable(
                    f"queue {name} is full ({self.settings.max_length} jobs)", RETRY_AFTER_FULL
                ) from None
            raise self.unavailable(f"the broker did not take the job: {exc}") from None
        if stored is not None and not await self.recorded(record, stored):
            self.counts.refused += 1
            raise self.unavailable("job state cannot be stored; the job will not run")
        self.counts.published += 1
        return record, True

    async def store(self, pending: Awaitable[T]) -> T:
        """A job store call before anything is published: its outage is a 503."""
        try:
            return await pending
        except BackendUnavailable as exc:
            self.counts.refused += 1
            raise self.unavailable(f"job state cannot be stored: {exc}") from None

    async def record_first(self, record: JobRecord) -> None:
        if not await self.store(self.service.jobs.insert(record, PENDING_TTL)):
            raise RuntimeError(f"job id {record.id} is taken")  # 128 random bits: never

    async def withdraw(
        self, record: JobRecord, idempotency: str | None, stored: Awaitable[bool] | None
    ) -> None:
        """The broker did not confirm: the record (written, or on its way) goes again, so
        that a message that reached the broker all the same finds none and is not run
        (worker.py, UNRECORDED). A record found taken is a worker's: left as it is."""
        self.counts.refused += 1
        try:
            ours = stored is None or await stored
        except BackendUnavailable:
            ours = True  # perhaps written: removed if the store lets us
        if ours:
            with contextlib.suppress(BackendUnavailable):  # else it stays until it expires
                await self.service.jobs.discard(record, idempotency)

    async def recorded(self, record: JobRecord, stored: Awaitable[bool]) -> bool:
        """After a confirmed publish: is the record in the store, the job's own (it runs)?
        A failed write is tried again for up to ~3 s (see `submit`)."""
        jobs = self.service.jobs
        try:
            if await stored:
                return True
        except BackendUnavailable:
            for pause in RECORD_RETRIES:
                await asyncio.sleep(pause)
                with contextlib.suppress(BackendUnavailable):
                    if await jobs.insert(record, PENDING_TTL):
                        return True
                    break  # taken: by an earlier write of ours, or by a worker
            else:
                return False
        with contextlib.suppress(BackendUnavailable):
            found = await jobs.get(record.id)
            return found is not None and not is_unrecorded(found)
        return False

    @staticmethod
    def unavailable(detail: str, retry_after: str = RETRY_AFTER_OUTAGE) -> ServiceUnavailable:
        return ServiceUnavailable(
            detail, code="queue_unavailable", headers={"Retry-After": retry_after}
        )

    def snapshot(self) -> dict[str, Any]:
        counts = self.counts
        name = self.settings.name
        stats = self.service.stats.get(name)
        gauges: dict[str, float] = {}
        if stats is not None:
            gauges = {
                "depth": stats.ready + stats.delayed,
                "unacked": stats.unacked,
                "consumers": stats.consumers,
                "dead_jobs": stats.dead,
            }
        if name in self.service.oldest:  # read a second ago; the age is now's
            created = self.service.oldest[name]
            age = 0.0 if created is None else max(0.0, time.time() - created)
            gauges["oldest_job_age_seconds"] = round(age, 3)
        return {
            "queue": self.settings.name,
            "scope": self.settings.name,  # routes sharing a queue read one depth
            "card": self.settings.name,  # the dashboard: a card per queue
            "labels": {"queue": self.settings.name},  # /metrics: {node, route, queue}
            "counters": {
                "published": counts.published,
                "refused": counts.refused,
                "completed": counts.completed,
                "failed": counts.failed,
                "retried": counts.retried,
                "dead": counts.dead,
            },
            "cluster_gauges": gauges,  # the broker's and the job store's, the same on every node
            "gauges": {"job_wait_seconds": round(counts.waited, 3)},
        }
