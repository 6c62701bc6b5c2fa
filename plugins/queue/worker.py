"""The worker: runs each job's route (the plugins after `queue`, then the target), stores
the result, then acks; at least once, and a job whose result is stored never runs again.

A reply >= 500, a run longer than the route's timeout or an exception is a failed attempt:
retried after the next delay, or dead (the dead-letter queue) after max_attempts. A 4xx
reply is the job's answer (failed, not retried).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time

from node.call import Reply
from node.errors import BackendUnavailable, Rejected
from plugins.queue.broker import REPLAYED, Delivery
from plugins.queue.jobs import (
    DEAD,
    FAILED,
    PENDING_TTL,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    JobRecord,
    is_unrecorded,
    stored_reply,
    unrecorded,
)
from plugins.queue.message import JobMessage
from plugins.queue.service import JobService, QueuedRoute

log = logging.getLogger("scalenode.queue")
MAX_RESULT = 8 * 1024 * 1024  # bytes of a streamed reply kept as a job's result
BACKEND_PAUSE = 1.0  # seconds before a job whose bookkeeping failed goes back to the queue
# Seconds a worker waits for the record of a message that has none before deciding the job
# was never accepted: a gateway writes it as it publishes, so it is late only when the
# gateway's Redis write stalled (see JobQueue.submit).
UNRECORDED_GRACE = 1.0
# Seconds at least that a worker's "unrecorded" record is kept: longer than a gateway goes
# on trying to write the job's own (plugin.py, RECORD_RETRIES), which must keep finding it.
UNRECORDED_MIN_TTL = 300.0


class Worker:
    def __init__(self, service: JobService) -> None:
        self.service = service
        self.running: set[asyncio.Task[None]] = set()
        self.consuming = False

    async def start(self) -> None:
        for name, settings in self.service.queues.items():  # each one a route's
            await self.service.broker.consume(
                name, functools.partial(self.take, name), settings.prefetch
            )
        self.consuming = True

    async def take(self, queue: str, delivery: Delivery) -> None:
        """The broker's callback: each job runs in its own task, tracked for the drain."""
        task = asyncio.current_task()
        if task is not None:
            self.running.add(task)
        try:
            await self.handle(queue, delivery)
        except BackendUnavailable as exc:
            # Redis or the broker failed mid-bookkeeping: the job goes back, unfinished.
            log.warning("job %s put back: %s", delivery.message_id, exc)
            await asyncio.sleep(BACKEND_PAUSE)
            await requeue(delivery)
        finally:
            if task is not None:
                self.running.discard(task)

    async def handle(self, queue: str, delivery: Delivery) -> None:
        service = self.service
        try:
            message = JobMessage.decode(delivery.body)
            queued = service.routes[message.route]
        except (ValueError, KeyError, TypeError) as exc:
            # Not a job this node can run (another version's, or its route is gone):
            # kept for an operator in the dead-letter queue, never dropped.
            log.error(
                "message %s is not a job for this node (%r); dead-lettered",
                delivery.message_id,
                exc,
            )
            await service.broker.publish_dead(queue, delivery.body, delivery.message_id)
            await delivery.ack()
            return
        replayed = delivery.message_id.startswith(REPLAYED)  # an operator's replay
        record = await service.jobs.get(message.job_id)
        if record is None and not replayed:
            record = await self.claim_unrecorded(queued, message)
        if record is None:  # replayed, and its state expired: the operator wants it run
            record = JobRecord(message.job_id, message.route, queued.settings.name)
        elif is_unrecorded(record) and not replayed:
            # Never accepted (no record; this worker's, or one that died before acking).
            await service.broker.publish_dead(queue, delivery.body, delivery.message_id)
            await delivery.ack()
            return
        if record.status in (SUCCEEDED, FAILED):
            await delivery.ack()  # it ran to the end already: never again
            return
        if record.status == DEAD:  # back from the dead-letter queue: a fresh set of attempts
            record.attempts = 0
        await self.run(queued, message, record, delivery)

    async def claim_unrecorded(self, queued: QueuedRoute, message: JobMessage) -> JobRecord:
        """A message with no record: its gateway's write is late, failed (the client was
        answered 503) or its record was lost. After a moment for a late write, the store
        decides (plugin.py, JobQueue.submit): this worker's "unrecorded" record goes in
        only if the key is still free, and then the job does not run (it is dead-lettered,
        kept for an operator); else the record that won is the job's."""
        jobs, settings = self.service.jobs, queued.settings
        await asyncio.sleep(UNRECORDED_GRACE)
        record = await jobs.get(message.job_id)
        if record is not None:
            return record
        mark = unrecorded(message.job_id, message.route, settings.name)
        if await jobs.insert(mark, max(settings.result_ttl, UNRECORDED_MIN_TTL)):
            log.warning("job %s has no record: not run, dead-lettered", message.job_id)
            return mark
        record = await jobs.get(message.job_id)
        if record is None:  # written and gone at once (an expiry): not ours to run either
            raise BackendUnavailable(f"job {message.job_id}'s record came and went")
        return record

    async def run(
        self, queued: QueuedRoute, message: JobMessage, record: JobRecord, delivery: Delivery
    ) -> None:
        service, settings, counts = self.service, queued.settings, queued.plugin.counts
        record.attempts += 1
        record.status, record.started, record.error = RUNNING, time.time(), None
        counts.waited = max(0.0, record.started - record.created)
        await service.jobs.save(record, PENDING_TTL)
        reply, error = await attempt(queued, message)
        if error is None and reply is not None:
            record.status = SUCCEEDED if reply.status < 400 else FAILED
            record.result = stored_reply(reply)
            record.finished = time.time()
            await service.jobs.save(record, settings.result_ttl)
            if record.status == SUCCEEDED:
                counts.completed += 1
            else:
                counts.failed += 1
        elif record.attempts < settings.max_attempts:
            delay = settings.delay_before(record.attempts)
            await service.broker.publish(settings.name, delivery.body, record.id, delay=delay)
            record.status, record.error = QUEUED, error
            await service.jobs.save(record, PENDING_TTL)
            counts.retried += 1
        else:
            await service.broker.publish_dead(settings.name, delivery.body, record.id)
            record.status, record.error, record.finished = DEAD, error, time.time()
            await service.jobs.save(record, settings.result_ttl)
            counts.dead += 1
            log.warning("job %s is dead after %d attempts: %s", record.id, record.attempts, error)
        await delivery.ack()

    async def drain(self, seconds: float) -> None:
        """Stop taking jobs; wait for those running (up to `seconds`), then cancel the rest
        (unacked: the broker gives them to another worker)."""
        if self.consuming:
            self.consuming = False
            await self.service.broker.stop_consuming()
        if self.running:
            _, pending = await asyncio.wait(set(self.running), timeout=seconds)
            for task in pending:
                task.cancel()
            if pending:
                log.warning(
                    "drain timeout: %d job(s) left unfinished for another worker", len(pending)
                )


async def attempt(queued: QueuedRoute, message: JobMessage) -> tuple[Reply | None, str | None]:
    """One run of the job: (the reply, None) or (None, why it failed)."""
    settings, call = queued.settings, message.call
    try:
        # A timeout scope, not wait_for: wait_for runs the job in a task of its own (3.11).
        async with asyncio.timeout(settings.timeout):
            reply = await queued.runner(call)
        if reply.stream is not None:
            reply = await whole(reply)
    except TimeoutError:
        return None, f"the run took longer than {settings.timeout:g} s"
    except Rejected as exc:
        reply = Reply.json({"error": exc.code, "detail": exc.detail}, exc.status, exc.headers)
    except Exception as exc:
        log.exception(
            "job %s (%s) raised (X-Request-Id: %s)", message.job_id, message.route, call.request_id
        )
        return None, f"the run raised {type(exc).__name__}; see the worker's log"
    if reply.status >= 500:
        return None, f"the target answered {reply.status}"
    return reply, None


async def whole(reply: Reply) -> Reply:
    """A streamed reply read into its body (a job's result is stored whole)."""
    stream, chunks, size = reply.stream, [], 0
    assert stream is not None
    try:
        async for chunk in stream:
            size += len(chunk)
            if size > MAX_RESULT:
                raise Rejected(
                    f"the reply is over {MAX_RESULT} bytes", status=502, code="result_too_large"
                )
            chunks.append(chunk)
    finally:
        await stream.aclose()
    return Reply(reply.status, b"".join(chunks), reply.headers, reply.content_type)


async def requeue(delivery: Delivery) -> None:
    with contextlib.suppress(BackendUnavailable):  # else the broker redelivers it itself
        await delivery.requeue()
