"""The job queue's job state on every backend: what GET /jobs/{id} answers on any node, the
idempotency key that makes a repeat return the first job, and the oldest waiting job."""

from __future__ import annotations

import asyncio
import time
import uuid

from plugins.queue.jobs import (
    DEAD,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    JobRecord,
    create,
    idempotency_key,
    is_unrecorded,
    unrecorded,
)


def record(route: str = "/r", queue: str = "") -> JobRecord:
    job_id = uuid.uuid4().hex
    return JobRecord(job_id, route, queue or f"q-{job_id}")  # its waiting index: its own key


async def test_a_job_created_on_one_node_is_read_and_updated_on_another(job_stores):
    first, second = await job_stores.node(), await job_stores.node()
    made, new = await create(first, record(), None)
    job_stores.backend.forget_after(made.id)
    assert new and made.status == QUEUED
    seen = await second.get(made.id)
    assert seen == made
    seen.status, seen.attempts, seen.result = SUCCEEDED, 1, {"status": 200, "body": ""}
    await second.save(seen, 60)
    assert await first.get(made.id) == seen


async def test_an_idempotency_key_gives_every_node_the_first_job(job_stores):
    first, second = await job_stores.node(), await job_stores.node()
    key = idempotency_key("/r", f"order-{uuid.uuid4().hex}")
    job_stores.backend.forget_after(key.rpartition(":")[2])
    made, new = await create(first, record(), key)
    again, again_new = await create(second, record(), key)
    assert new and not again_new
    assert again.id == made.id
    other, other_new = await create(second, record(), key + "x")
    assert other_new and other.id != made.id
    job_stores.backend.forget_after(made.id)
    job_stores.backend.forget_after(other.id)


async def test_a_discarded_job_and_its_key_are_gone(job_stores):
    store = await job_stores.node()
    key = idempotency_key("/r", f"k-{uuid.uuid4().hex}")
    made, _ = await create(store, record(), key)
    await store.discard(made, key)
    assert await store.get(made.id) is None
    again, new = await create(store, record(), key)  # the key is free for a new job
    assert new and again.id != made.id
    await store.discard(again, key)


async def test_a_finished_job_expires_with_its_ttl(job_stores):
    store = await job_stores.node()
    made, _ = await create(store, record(), None)
    job_stores.backend.forget_after(made.id)
    made.status = DEAD
    await store.save(made, 0.2)
    assert (await store.get(made.id)).status == DEAD
    await asyncio.sleep(0.35)
    assert await store.get(made.id) is None


async def test_unknown_jobs_are_none(job_stores):
    store = await job_stores.node()
    assert await store.get(uuid.uuid4().hex) is None


async def test_the_oldest_waiting_job_is_seen_from_every_node(job_stores):
    """Queued jobs wait, the oldest first, on every node; a running one does not; one back
    for a retry waits again, with its age since it was created."""
    first, second = await job_stores.node(), await job_stores.node()
    queue = f"q-{uuid.uuid4().hex}"
    job_stores.backend.forget_after(queue)
    older, newer = record(queue=queue), record(queue=queue)
    older.created -= 5
    for made in (older, newer):
        await create(first, made, None)
        job_stores.backend.forget_after(made.id)
    assert await second.oldest_waiting(queue) == older.created
    older.status = RUNNING
    await second.save(older, 60)
    assert await first.oldest_waiting(queue) == newer.created
    older.status = QUEUED
    await first.save(older, 60)
    assert await second.oldest_waiting(queue) == older.created
    for made in (older, newer):
        made.status = RUNNING
        await second.save(made, 60)
    assert await first.oldest_waiting(queue) is None


async def test_a_waiting_job_expired_or_discarded_is_not_counted(job_stores):
    """A queued job whose state expired unrun, or that was discarded, waits no more."""
    store = await job_stores.node()
    queue = f"q-{uuid.uuid4().hex}"
    job_stores.backend.forget_after(queue)
    expiring, discarded = record(queue=queue), record(queue=queue)
    discarded.created = time.time() + 1  # the younger
    await store.save(expiring, 0.2)
    await create(store, discarded, None)
    job_stores.backend.forget_after(discarded.id)
    assert await store.oldest_waiting(queue) == expiring.created
    await asyncio.sleep(0.35)
    assert await store.oldest_waiting(queue) == discarded.created
    await store.discard(discarded, None)
    assert await store.oldest_waiting(queue) is None


async def test_insert_stores_a_record_only_where_none_is(job_stores):
    """The one write that decides whether a job is accepted (JobQueue.submit): the
    gateway's record or a worker's "unrecorded" one, whichever comes first; never both."""
    first, second = await job_stores.node(), await job_stores.node()
    made = record()
    job_stores.backend.forget_after(made.id)
    sent = first.insert_soon(made)
    assert await (sent if sent is not None else first.insert(made, 60))
    mark = unrecorded(made.id, made.route, made.queue)
    assert not await second.insert(mark, 60)
    assert await second.get(made.id) == made
    other = record()
    job_stores.backend.forget_after(other.id)
    assert await second.insert(unrecorded(other.id, other.route, other.queue), 60)
    late = first.insert_soon(other)
    assert not await (late if late is not None else first.insert(other, 60))
    assert is_unrecorded(await first.get(other.id))


async def test_an_idempotency_key_whose_job_never_ran_is_taken_over(job_stores):
    """A repeat of a key whose job was never accepted (its client got a 503) makes a job."""
    store = await job_stores.node()
    key = idempotency_key("/r", f"k-{uuid.uuid4().hex}")
    job_stores.backend.forget_after(key.rpartition(":")[2])
    refused = record()
    job_stores.backend.forget_after(refused.id)
    assert await store.claim(refused, key) is None
    assert await store.insert(unrecorded(refused.id, refused.route, refused.queue), 60)
    again, new = await create(store, record(), key)
    job_stores.backend.forget_after(again.id)
    assert new and again.id != refused.id
    assert (await create(store, record(), key))[0].id == again.id
