"""Queued routes, in-process: 202 and job status, retries and their delays, dead letters and
replay, idempotency, trace headers; every behaviour on the embedded backends and on real
RabbitMQ + Redis (one suite, parametrised)."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from testkit import job_handlers
from testkit.node_server import NodeServer
from testkit.queues import delete_queues

from node.app import RESOURCES, build_app
from node.config import Settings
from node.errors import ConfigError
from node.schema import build

REDIS = "redis://127.0.0.1:6379/0"
AMQP = "amqp://guest:guest@127.0.0.1:5672/"
TOKEN = "queue-admin-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
BACKENDS = {"embedded": {}, "real": {"redis": REDIS, "amqp": AMQP}}

NodeFor = Callable[..., Awaitable[TestClient]]


def settings_for(
    backends: dict[str, str], queue: str, role_routes: list[dict[str, Any]]
) -> Settings:
    data = {
        "node": {"name": f"q-{uuid.uuid4().hex[:6]}", "admin_token": TOKEN},
        "backends": backends,
        "routes": role_routes,
    }
    return build(Settings, data, "")


def queued(path: str, handler: str, queue: str, **options: Any) -> dict[str, Any]:
    table = {"name": queue, "retry_delays": [0.2, 0.4], "max_attempts": 3, **options}
    return {"path": path, "target": f"handler:testkit.job_handlers:{handler}", "queue": table}


@pytest.fixture(params=list(BACKENDS))
def backends(request: pytest.FixtureRequest) -> dict[str, str]:
    return BACKENDS[request.param]


@pytest.fixture
async def queue_name(backends: dict[str, str]) -> AsyncIterator[str]:
    name = f"t{uuid.uuid4().hex[:12]}"
    yield name
    if backends:
        await delete_queues(AMQP, name, delays=(0.2, 0.4))


@pytest.fixture
async def node_for(backends: dict[str, str], queue_name: str) -> AsyncIterator[NodeFor]:
    clients: list[TestClient] = []

    async def start(routes: list[dict[str, Any]], role: str = "all") -> TestClient:
        app = build_app(settings_for(backends, queue_name, routes), role)
        client = TestClient(NodeServer(app, host="127.0.0.1"))
        await client.start_server()
        clients.append(client)
        return client

    yield start
    for client in clients:
        await client.close()


async def post(client: TestClient, path: str, **headers: str) -> tuple[dict[str, Any], str]:
    request_id = headers.pop("request_id", None) or uuid.uuid4().hex
    response = await client.post(
        path, data=b"payload", headers={"X-Request-Id": request_id, **headers}
    )
    body = await response.json()
    assert response.status == 202, body
    assert response.headers["Location"] == f"/jobs/{body['id']}" == body["href"]
    return body, request_id


async def job_when(
    client: TestClient, job_id: str, wanted: set[str], seconds: float = 10.0
) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    while True:
        response = await client.get(f"/jobs/{job_id}")
        job = await response.json()
        if response.status == 200 and job["status"] in wanted:
            return job
        assert time.monotonic() < deadline, f"job stayed {job}"
        await asyncio.sleep(0.05)


async def test_a_queued_route_answers_202_and_the_job_runs(node_for, queue_name):
    client = await node_for([queued("/reports/{id}", "record", queue_name)])
    accepted, request_id = await post(client, "/reports/7?x=1")
    assert accepted["status"] == "queued"
    job = await job_when(client, accepted["id"], {"succeeded"})
    assert (job["route"], job["attempts"], job["error"]) == ("/reports/{id}", 1, None)
    assert job["created"] <= job["started"] <= job["finished"]
    result = await client.get(f"/jobs/{accepted['id']}/result")
    assert result.status == 201  # the target's own reply, kept
    assert result.headers["X-Made-By"] == "record"
    assert await result.json() == {
        "method": "POST",
        "path": "/reports/7",
        "params": {"id": "7"},
        "query": "x=1",
        "body": "payload",
    }
    assert len(job_handlers.runs(request_id)) == 1
    metrics = await (await client.get("/metrics")).text()
    published = [
        line for line in metrics.splitlines() if "scalenode_queue_published_total{" in line
    ]
    assert len(published) == 1 and f'queue="{queue_name}"' in published[0], published
    assert published[0].endswith(" 1.0")


async def test_the_request_id_and_traceparent_reach_the_target(node_for, queue_name):
    client = await node_for([queued("/t", "record", queue_name)])
    trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    accepted, request_id = await post(client, "/t", traceparent=trace)
    await job_when(client, accepted["id"], {"succeeded"})
    seen = job_handlers.SEEN[request_id]
    assert seen["traceparent"] == trace
    assert seen["X-Request-Id"] == request_id


async def test_a_poison_job_is_dead_after_max_attempts_with_the_delays_kept(node_for, queue_name):
    client = await node_for([queued("/p", "poison", queue_name)])
    accepted, request_id = await post(client, "/p")
    job = await job_when(client, accepted["id"], {"dead"})
    assert job["attempts"] == 3
    assert "RuntimeError" in job["error"]
    starts = job_handlers.runs(request_id)
    assert len(starts) == 3
    gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
    assert gaps[0] >= 0.2 and gaps[1] >= 0.4, gaps
    admin = await client.get("/admin/queues", headers=ADMIN)
    assert (await admin.json())["queues"][queue_name]["dead"] == 1


async def test_a_5xx_reply_is_retried_and_a_4xx_reply_is_the_answer(node_for, queue_name):
    client = await node_for(
        [queued("/flaky", "server_error", queue_name), queued("/refused", "refuse", queue_name)]
    )
    flaky, _flaky_id = await post(client, "/flaky")
    refused, refused_id = await post(client, "/refused")
    assert (await job_when(client, flaky["id"], {"succeeded"}))["attempts"] == 3
    failed = await job_when(client, refused["id"], {"failed"})
    assert failed["attempts"] == 1
    result = await client.get(f"/jobs/{refused['id']}/result")
    assert result.status == 422
    assert len(job_handlers.runs(refused_id)) == 1


async def test_a_run_over_its_timeout_is_a_failed_attempt(node_for, queue_name):
    client = await node_for([queued("/slow", "slow", queue_name, timeout=0.2, max_attempts=2)])
    accepted, _ = await post(client, "/slow?s=5")
    job = await job_when(client, accepted["id"], {"dead"})
    assert job["attempts"] == 2
    assert "longer than 0.2 s" in job["error"]


async def test_an_idempotency_key_gives_the_same_job_and_one_run(node_for, queue_name):
    client = await node_for([queued("/once", "record", queue_name)])
    key = f"order-{uuid.uuid4().hex}"  # kept for days on the shared Redis: one per run
    first, request_id = await post(client, "/once", **{"Idempotency-Key": key})
    await job_when(client, first["id"], {"succeeded"})
    again, _ = await post(client, "/once", **{"Idempotency-Key": key})
    assert again["id"] == first["id"]
    assert again["status"] == "succeeded"
    other, _ = await post(client, "/once", **{"Idempotency-Key": key + "-other"})
    assert other["id"] != first["id"]
    await asyncio.sleep(0.3)
    assert len(job_handlers.runs(request_id)) == 1


async def test_dead_jobs_replay_and_purge(node_for, queue_name):
    client = await node_for([queued("/p", "poison", queue_name, max_attempts=1)])
    cured, cured_id = await post(client, "/p")
    doomed, _ = await post(client, "/p")
    await job_when(client, cured["id"], {"dead"})
    await job_when(client, doomed["id"], {"dead"})
    job_handlers.HEALED.add(cured_id)
    replayed = await client.post(f"/admin/queues/{queue_name}/replay", headers=ADMIN)
    assert (await replayed.json())["replayed"] == 2
    assert (await job_when(client, cured["id"], {"succeeded"}))["attempts"] == 1
    await job_when(client, doomed["id"], {"dead"})
    purged = await client.delete(f"/admin/queues/{queue_name}/dead", headers=ADMIN)
    assert (await purged.json())["dropped"] == 1
    assert (await client.post(f"/admin/queues/{queue_name}/replay")).status == 401


async def oldest_age(client: TestClient, queue: str) -> float:
    response = await client.get("/admin/queues", headers=ADMIN)
    return (await response.json())["queues"][queue]["oldest_job_age_seconds"]


async def test_the_oldest_waiting_jobs_age_grows_until_it_runs(node_for, queue_name):
    """A job held up behind a running one (prefetch 1) shows its age in /admin/queues,
    growing; once it has run, no job is waiting."""
    client = await node_for([queued("/slow", "slow", queue_name, prefetch=1)])
    await post(client, "/slow?s=1")
    waiting, _ = await post(client, "/slow?s=0")
    await asyncio.sleep(0.05)  # ages are shown in ms
    first = await oldest_age(client, queue_name)
    await asyncio.sleep(0.3)
    later = await oldest_age(client, queue_name)
    assert 0 < first < later
    await job_when(client, waiting["id"], {"succeeded"})
    assert await oldest_age(client, queue_name) == 0


async def test_unknown_jobs_and_unfinished_results_are_404_json(node_for, queue_name):
    client = await node_for([queued("/slow", "slow", queue_name)])
    for path in ("/jobs/" + "0" * 32, "/jobs/nope", "/jobs/" + "0" * 32 + "/result"):
        response = await client.get(path)
        assert response.status == 404
        assert (await response.json())["error"] == "not_found"
    accepted, _ = await post(client, "/slow?s=0.5")
    pending = await client.get(f"/jobs/{accepted['id']}/result")
    assert (pending.status, (await pending.json())["error"]) == (404, "no_result")


async def test_a_gateway_only_node_publishes_and_another_node_runs_and_answers():
    """Roles on real backends: the gateway queues, the worker runs, both answer for the
    job (its state is in Redis)."""
    name = f"t{uuid.uuid4().hex[:12]}"
    route = [queued("/r", "record", name)]
    try:
        gateway_app = build_app(settings_for(BACKENDS["real"], name, route), "gateway")
        worker_app = build_app(settings_for(BACKENDS["real"], name, route), "worker")
        async with (
            TestClient(NodeServer(gateway_app)) as gateway,
            TestClient(NodeServer(worker_app)) as worker,
        ):
            accepted, request_id = await post(gateway, "/r")
            await job_when(gateway, accepted["id"], {"succeeded"})
            assert (await worker.get(f"/jobs/{accepted['id']}")).status == 200
            assert (await worker.post("/r")).status == 404  # a worker serves no routes
            assert len(job_handlers.runs(request_id)) == 1
    finally:
        await delete_queues(AMQP, name, delays=(0.2, 0.4))


async def test_a_broker_that_is_away_gets_the_client_a_503_never_a_202():
    queue_name = f"t{uuid.uuid4().hex[:12]}"
    settings = settings_for(
        {"redis": REDIS, "amqp": "amqp://guest:guest@127.0.0.1:1/"},
        queue_name,
        [queued("/r", "record", queue_name)],
    )
    async with TestClient(NodeServer(build_app(settings, "gateway"))) as client:
        response = await client.post("/r", data=b"x")
        assert response.status == 503
        assert response.headers["Retry-After"]
        assert (await response.json())["error"] == "queue_unavailable"


def test_amqp_without_redis_is_refused_naming_the_key():
    settings = settings_for({"amqp": AMQP}, "q", [queued("/r", "record", "q")])
    with pytest.raises(ConfigError, match=r"^routes\[0\]\.queue: backends.amqp is set but"):
        build_app(settings, "all")


async def test_a_message_that_is_no_job_is_dead_lettered_on_its_own_queue(
    node_for, queue_name, backends
):
    """Nothing on a queue is dropped, and nothing moves to another queue's dead letters."""
    other = queue_name + "b"
    client = await node_for([queued("/a", "record", queue_name), queued("/b", "record", other)])
    try:
        service = client.app[RESOURCES].find_shared("queue.service")
        await service.broker.publish(other, b"not a job", uuid.uuid4().hex)
        for _ in range(100):
            queues = (await (await client.get("/admin/queues", headers=ADMIN)).json())["queues"]
            if queues[other]["dead"]:
                break
            await asyncio.sleep(0.05)
        assert (queues[other]["dead"], queues[queue_name]["dead"]) == (1, 0)
    finally:
        if backends:
            await delete_queues(AMQP, other, delays=(0.2, 0.4))
