"""The JobQueue plugin: a queued route's gateway side. The call is checked by the plugins
before it, stored as a job, published (confirmed by the broker) and answered 202; the rest
of the route's chain, which `bind` receives, is what a worker runs for the job."""

from __future__ import annotations

import contextlib
import os
import time
from typing import TYPE_CHECKING, Any

import orjson

from node.call import Call, Handler, Reply
from node.errors import BackendUnavailable, Rejected, ServiceUnavailable
from node.plugin import Plugin
from plugins.queue.broker import QueueFull
from plugins.queue.jobs import JobRecord, idempotency_key
from plugins.queue.message import JobMessage
from plugins.queue.settings import QueueSettings

if TYPE_CHECKING:
    from plugins.queue.service import JobService

MAX_IDEMPOTENCY_KEY = 255  # characters; longer keys are a client error
RETRY_AFTER_OUTAGE = "5"  # seconds a client waits before trying an unreachable broker again
RETRY_AFTER_FULL = "30"  # seconds, when the queue is full


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
        Raises ServiceUnavailable (503 with Retry-After) unless the broker confirmed it."""
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
        try:
            record, new = await service.jobs.create(record, idempotency)
        except BackendUnavailable as exc:
            self.counts.refused += 1
            raise self.unavailable(f"job state cannot be stored: {exc}") from None
        if not new:
            return record, False
        try:
            await service.broker.publish(name, message, record.id)
        except (BackendUnavailable, QueueFull) as exc:
            self.counts.refused += 1
            with contextlib.suppress(BackendUnavailable):  # else it expires: no message has it
                await service.jobs.discard(record, idempotency)
            if isinstance(exc, QueueFull):
                raise self.unavailable(
                    f"queue {name} is full ({self.settings.max_length} jobs)", RETRY_AFTER_FULL
                ) from None
            raise self.unavailable(f"the broker did not take the job: {exc}") from None
        self.counts.published += 1
        return record, True

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
