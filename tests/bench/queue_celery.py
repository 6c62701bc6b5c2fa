"""The Celery side of queue_bench.py's drain: a no-op task on the same RabbitMQ.

Runs with a Celery venv's python (never the project's: Celery is not a dependency):

    QBENCH_AMQP=amqp://... QBENCH_QUEUE=name python queue_celery.py fill N
    QBENCH_AMQP=... QBENCH_QUEUE=... QBENCH_EXPECT=N QBENCH_DONE=file \\
        python -m celery -A queue_celery worker --pool solo ...   (cwd: this directory)

Celery's fastest reliable setting for a drain: `task_acks_late` (acked after the run, as the
node's worker acks after storing the result), `worker_prefetch_multiplier = 100` (the node's
default prefetch; solo pool, so 100 in flight), no result backend, no events, no remote
control. The queue is a durable quorum queue like the node's (QBENCH_QUEUE_TYPE=classic for
Celery's own default); tasks go through the default exchange, so no exchange is created.

The task itself counts: the first run notes its start, the N-th writes
{"first", "last", "n"} (Unix seconds) to QBENCH_DONE, as the node's job records carry
`started` and `finished`.
"""

from __future__ import annotations

import json
import os
import sys
import time

from celery import Celery
from kombu import Exchange, Queue

AMQP = os.environ["QBENCH_AMQP"]
QUEUE = os.environ["QBENCH_QUEUE"]
QUEUE_TYPE = os.environ.get("QBENCH_QUEUE_TYPE", "quorum")
EXPECT = int(os.environ.get("QBENCH_EXPECT", "0"))
DONE = os.environ.get("QBENCH_DONE", "")

app = Celery("queue_celery", broker=AMQP)
app.conf.update(
    broker_connection_retry_on_startup=True,
    task_acks_late=True,
    worker_prefetch_multiplier=100,
    task_ignore_result=True,
    result_backend=None,
    task_default_queue=QUEUE,
    task_default_exchange="",
    task_default_routing_key=QUEUE,
    task_queues=[
        Queue(
            QUEUE,
            Exchange(""),
            routing_key=QUEUE,
            durable=True,
            queue_arguments={"x-queue-type": QUEUE_TYPE},
        )
    ],
    task_default_delivery_mode="persistent",
    worker_enable_remote_control=False,  # no pidbox queue
    worker_send_task_events=False,
    task_send_sent_event=False,
    worker_hijack_root_logger=False,
)

if QUEUE_TYPE == "quorum":
    # Celery 5.5+ sets up "native delayed delivery" when it sees a quorum queue: ~30
    # broker-wide exchanges and queues (celery_delayed_*) for countdown/ETA tasks, which this
    # benchmark has none of and must not leave behind. Per-consumer QoS (what quorum queues
    # need) is a separate switch, worker_detect_quorum_queues, left on.
    from celery.worker.consumer.delayed_delivery import DelayedDelivery

    DelayedDelivery.include_if = lambda self, c: False  # type: ignore[method-assign]

_state = {"n": 0, "first": 0.0}


@app.task(name="qbench.noop", ignore_result=True)
def noop() -> None:
    n = _state["n"] = _state["n"] + 1
    if n == 1:
        _state["first"] = time.time()
    if n == EXPECT and DONE:
        last = time.time()
        tmp = DONE + ".tmp"
        with open(tmp, "w") as out:
            json.dump({"first": _state["first"], "last": last, "n": n}, out)
        os.replace(tmp, DONE)


def fill(count: int) -> None:
    """`count` tasks onto the queue through one producer (declares the queue)."""
    with app.producer_or_acquire() as producer:
        for _ in range(count):
            noop.apply_async(producer=producer)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "fill":
        sys.exit("usage: queue_celery.py fill N")
    fill(int(sys.argv[2]))
