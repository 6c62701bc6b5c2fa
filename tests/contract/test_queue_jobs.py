"""The job queue's job state on every backend: what GET /jobs/{id} answers on any node, and
the idempotency key that makes a repeat return the first job."""

from __future__ import annotations

import uuid

from plugins.queue.jobs import DEAD, QUEUED, SUCCEEDED, JobRecord, idempotency_key


def record(route: str = "/r") -> JobRecord:
    return JobRecord(uuid.uuid4().hex, route, "q")


async def test_a_job_created_on_one_node_is_read_and_updated_on_another(job_stores):
    first, second = await job_stores.node(), await job_stores.node()
    made, new = await first.create(record(), None)
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
    made, new = await first.create(record(), key)
    again, again_new = await second.create(record(), key)
    assert new and not again_new
    assert again.id == made.id
    other, other_new = await second.create(record(), key + "x")
    assert other_new and other.id != made.id
    job_stores.backend.forget_after(made.id)
    job_stores.backend.forget_after(other.id)


async def test_a_discarded_job_and_its_key_are_gone(job_stores):
    store = await job_stores.node()
    key = idempotency_key("/r", f"k-{uuid.uuid4().hex}")
    made, _ = await store.create(record(), key)
    await store.discard(made, key)
    assert await store.get(made.id) is None
    again, new = await store.create(record(), key)  # the key is free for a new job
    assert new and again.id != made.id
    await store.discard(again, key)


async def test_a_finished_job_expires_with_its_ttl(job_stores):
    import asyncio

    store = await job_stores.node()
    made, _ = await store.create(record(), None)
    made.status = DEAD
    await store.save(made, 0.2)
    assert (await store.get(made.id)).status == DEAD
    await asyncio.sleep(0.35)
    assert await store.get(made.id) is None


async def test_unknown_jobs_are_none(job_stores):
    store = await job_stores.node()
    assert await store.get(uuid.uuid4().hex) is None
