"""Queue workers as real processes on RabbitMQ and Redis: a SIGKILLed worker's job completes
once on another worker; SIGTERM lets a running job finish, then the worker exits 0."""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_harness import request
from testkit.queues import delete_queues

AMQP = "amqp://guest:guest@127.0.0.1:5672/"
CONFIG = """
[node]
drain_timeout = 10.0

[backends]
redis = "redis://127.0.0.1:6379/0"
amqp = "{amqp}"

[[routes]]
path = "/jobs-in/{{tail:.*}}"
methods = ["POST"]
target = "handler:slow_app:job"
queue = {{ name = "{queue}", retry_delays = [0.2] }}
"""


@pytest.fixture
def queue_config(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(config, job log) for a fresh queue, deleted from RabbitMQ afterwards."""
    queue = f"e2e{uuid.uuid4().hex[:10]}"
    config = tmp_path / "queue.toml"
    config.write_text(CONFIG.format(amqp=AMQP, queue=queue))
    log = tmp_path / "jobs.log"
    log.touch()
    yield config, log
    import asyncio

    asyncio.run(delete_queues(AMQP, queue, delays=(0.2,)))


def post_job(port: int, seconds: float) -> tuple[str, str]:
    """(job id, request id) of a job that sleeps `seconds`."""
    import http.client

    request_id = uuid.uuid4().hex
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(
            "POST", f"/jobs-in/x?seconds={seconds}", body=b"", headers={"X-Request-Id": request_id}
        )
        response = conn.getresponse()
        body = json.loads(response.read())
    finally:
        conn.close()
    assert response.status == 202, body
    return body["id"], request_id


def wait_for(predicate, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def lines(log: Path) -> list[list[str]]:
    return [line.split() for line in log.read_text().splitlines()]


def status(port: int, job_id: str) -> str:
    return request(port, f"/jobs/{job_id}").json()["status"]


def test_a_killed_workers_job_completes_once_on_another(start_node, queue_config):
    config, log = queue_config
    env = {"JOB_LOG": str(log)}
    gateway = start_node("--role", "gateway", "--config", str(config), env=env)
    first = start_node("--role", "worker", "--config", str(config), env=env)
    job_id, request_id = post_job(gateway.port, 1.5)
    wait_for(lambda: ["start", str(first.pid), request_id] in lines(log), 10, "no worker took it")
    os.kill(first.pid, signal.SIGKILL)
    first.proc.wait(timeout=5)
    second = start_node("--role", "worker", "--config", str(config), env=env)
    wait_for(lambda: status(gateway.port, job_id) == "succeeded", 20, "the job never completed")
    ends = [entry for entry in lines(log) if entry[0] == "end"]
    assert ends == [["end", str(second.pid), request_id]]
    job = request(gateway.port, f"/jobs/{job_id}").json()
    assert job["attempts"] == 2  # the killed run counts


def test_sigterm_lets_the_running_job_finish_then_exits_0(start_node, queue_config):
    config, log = queue_config
    env = {"JOB_LOG": str(log)}
    worker = start_node("--config", str(config), env=env)  # role all: serves and works
    job_id, request_id = post_job(worker.port, 1.0)
    wait_for(lambda: ["start", str(worker.pid), request_id] in lines(log), 10, "not started")
    assert worker.terminate(timeout=15) == 0
    assert ["end", str(worker.pid), request_id] in lines(log)
    observer = start_node("--role", "gateway", "--config", str(config), env=env)
    assert status(observer.port, job_id) == "succeeded"
