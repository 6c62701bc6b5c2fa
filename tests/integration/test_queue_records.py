"""A job's record and its message, written together (JobQueue.submit): on real RabbitMQ and
Redis, what happens when they disagree. A 202 always has job state and a confirmed
message; a job whose client got a 503 never runs by itself; nothing is dropped (a message
with no record is kept in the dead-letter queue, and an operator's replay runs it)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as redis
from aiohttp.test_utils import TestClient
from multidict import CIMultiDict
from testkit import job_handlers
from testkit.node_server import NodeServer
from testkit.queues import delete_queues

from node.app import RESOURCES, build_app
from node.call import Call
from node.config import Settings
from node.schema import build
from plugins.queue.jobs import UNRECORDED
from plugins.queue.keys import WAITING
from plugins.queue.message import JobMessage

REDIS = "redis://127.0.0.1:6379/0"
AMQP = "amqp://guest:guest@127.0.0.1:5672/"
TOKEN = "queue-records-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
DELAYS = (0.2,)


@pytest.fixture
async def queue_name() -> AsyncIterator[str]:
    name = f"t{uuid.uuid4().hex[:12]}"
    yield name
    await delete_queues(AMQP, name, delays=DELAYS)


def app_for(queue: str, role: str, redis_url: str = REDIS, **options: Any) -> Any:
    table = {"name": queue, "retry_delays": list(DELAYS), "max_attempts": 2, **options}
    route = {"path": "/r", "target": "handler:testkit.job_handlers:record", "queue": table}
    data = {
        "node": {"name": f"q-{uuid.uuid4().hex[:6]}", "admin_token": TOKEN},
        "backends": {"redis": redis_url, "amqp": AMQP},
        "routes": [route],
    }
    return build_app(build(Settings, data, ""), role)


async def post(client: TestClient) -> tuple[int, dict[str, Any], str]:
    request_id = uuid.uuid4().hex
    response = await client.post("/r", data=b"x", headers={"X-Request-Id": request_id})
    return response.status, await response.json(), request_id


async def job_when(client: TestClient, job_id: str, wanted: str) -> dict[str, Any]:
    deadline = time.monotonic() + 15
    while True:
        response = await client.get(f"/jobs/{job_id}")
        if response.status == 200:
            job = await response.json()
            if job["status"] == wanted:
                return job
        assert time.monotonic() < deadline, f"job {job_id} not {wanted}"
        await asyncio.sleep(0.05)


async def dead_count(client: TestClient, queue: str) -> int:
    response = await client.get("/admin/queues", headers=ADMIN)
    return (await response.json())["queues"][queue]["dead"]


async def test_a_confirmed_job_whose_record_write_errs_but_landed_is_202_and_runs_once(
    queue_name,
):
    """The record's SET landed, the waiting index's ZADD in the same write failed: the
    publish is confirmed, so the gateway looks again, finds its record and answers 202
    (the job will run; its state is there). Record-first answered 503 here."""
    store = redis.Redis.from_url(REDIS)
    waiting = WAITING + queue_name
    try:
        async with TestClient(NodeServer(app_for(queue_name, "gateway"))) as gateway:
            assert (await post(gateway))[0] == 202  # connects the auto-pipeline
            await store.delete(waiting)
            await store.set(waiting, "not a sorted set")  # every ZADD on it: WRONGTYPE
            status, body, request_id = await post(gateway)
            assert status == 202, body
            assert (await gateway.get(f"/jobs/{body['id']}")).status == 200
            await store.delete(waiting)
            async with TestClient(NodeServer(app_for(queue_name, "worker"))):
                await job_when(gateway, body["id"], "succeeded")
            assert len(job_handlers.runs(request_id)) == 1
    finally:
        await store.delete(waiting)
        await store.aclose()


async def test_a_confirmed_job_whose_record_cannot_be_stored_is_503_and_never_runs(
    queue_name, redis_server
):
    """Redis refuses every write (maxmemory reached) after the gateway's first job: the
    next job's message is confirmed, its record is not, so the client gets a 503 with
    Retry-After; the worker finds no record and, once Redis takes writes again, marks the
    job never accepted and keeps its message in the dead-letter queue, unrun."""
    async with TestClient(NodeServer(app_for(queue_name, "all", redis_server.url))) as node:
        first, body, _ = await post(node)  # connects the auto-pipeline: the concurrent path
        assert first == 202, body
        await job_when(node, body["id"], "succeeded")
        admin = redis.Redis.from_url(redis_server.url)
        await admin.config_set("maxmemory-policy", "noeviction")
        await admin.config_set("maxmemory", "1")
        try:
            started = time.monotonic()
            response = await node.post("/r", data=b"x", headers={"X-Request-Id": "refused"})
            assert response.status == 503, await response.text()
            assert response.headers["Retry-After"]
            assert (await response.json())["error"] == "queue_unavailable"
            assert time.monotonic() - started >= 2  # the record was tried again
            await asyncio.sleep(1.5)  # the worker has the message and cannot decide yet
        finally:
            await admin.config_set("maxmemory", "0")
        deadline = time.monotonic() + 15
        while await dead_count(node, queue_name) != 1:
            assert time.monotonic() < deadline, "the message was not dead-lettered"
            await asyncio.sleep(0.1)
        assert job_handlers.runs("refused") == []
        dead = [key async for key in admin.scan_iter(match="sn:q:job:*")]
        records = [await node.get(f"/jobs/{key.decode().rpartition(':')[2]}") for key in dead]
        errors = [(await r.json())["error"] for r in records]
        assert UNRECORDED in errors
        await admin.aclose()


async def test_a_message_with_no_record_is_dead_lettered_unrun_and_a_replay_runs_it(queue_name):
    """A message whose record never came (its gateway's write failed) is not run: the job
    is shown dead with no attempt, its message kept; an operator's replay runs it."""
    async with TestClient(NodeServer(app_for(queue_name, "all"))) as node:
        service = node.app[RESOURCES].find_shared("queue.service")
        job_id, request_id = uuid.uuid4().hex, uuid.uuid4().hex
        headers = CIMultiDict({"X-Request-Id": request_id})
        call = Call("POST", "/r", route="/r", headers=headers, body=b"x")
        message = JobMessage(job_id, "/r", call).encode()
        await service.broker.publish(queue_name, message, job_id)
        job = await job_when(node, job_id, "dead")
        assert (job["attempts"], job["error"]) == (0, UNRECORDED)
        deadline = time.monotonic() + 15
        while await dead_count(node, queue_name) != 1:
            assert time.monotonic() < deadline, "the message was not dead-lettered"
            await asyncio.sleep(0.1)
        assert job_handlers.runs(request_id) == []
        replayed = await node.post(f"/admin/queues/{queue_name}/replay", headers=ADMIN)
        assert (await replayed.json())["replayed"] == 1
        assert (await job_when(node, job_id, "succeeded"))["attempts"] == 1
        assert len(job_handlers.runs(request_id)) == 1


async def test_a_job_the_broker_refuses_leaves_no_state_behind(queue_name):
    """A full queue refuses the message sent with the record: 503 with Retry-After, and
    the record written alongside is withdrawn (the waiting index holds the first job only)."""
    store = redis.Redis.from_url(REDIS)
    app = app_for(queue_name, "gateway", max_length=1)
    try:
        async with TestClient(NodeServer(app)) as gateway:
            status, first, _ = await post(gateway)
            assert status == 202, first
            status, body, _ = await post(gateway)
            assert status == 503, body
            members = await store.zrange(WAITING + queue_name, 0, -1)
            assert members == [first["id"].encode()]
            assert await store.exists(f"sn:q:job:{first['id']}") == 1
    finally:
        await store.delete(WAITING + queue_name)
        await store.aclose()
