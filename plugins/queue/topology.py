"""The queue's RabbitMQ topology: its names (dotted, RabbitMQ's style; the Redis keys are in
plugins/queue/keys.py) and the arguments each queue is declared with."""

from __future__ import annotations

from typing import Any

from plugins.queue.broker import DELIVERY_LIMIT

QUEUE_PREFIX = "sn.q."
DLX = "sn.dlx"  # direct; each dead-letter queue is bound with its own name as routing key


def main_name(queue: str) -> str:
    return f"{QUEUE_PREFIX}{queue}"


def dead_name(queue: str) -> str:
    return f"{QUEUE_PREFIX}{queue}.dead"


def delay_name(queue: str, ms: int) -> str:
    return f"{QUEUE_PREFIX}{queue}.retry.{ms}ms"


def main_arguments(queue: str, max_length: int) -> dict[str, Any]:
    return {
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": DLX,
        "x-dead-letter-routing-key": dead_name(queue),
        # At-least-once dead-lettering needs reject-publish overflow (RabbitMQ's rule).
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
        # A quorum queue refuses a publish only once *more than* x-max-length are ready
        # (rabbit_fifo:is_over_limit), so this makes max_length the most it takes.
        "x-max-length": max(max_length - 1, 0),
        "x-delivery-limit": DELIVERY_LIMIT,
    }


def delay_arguments(queue: str, ms: int) -> dict[str, Any]:
    # Queue-level TTL: per-message TTLs expire only at the head, so mixed delays in one
    # queue would hold each other up. Quorum and at-least-once, so that a message expiring
    # into a full main queue is kept (RabbitMQ retries it minutes later), not dropped.
    return {
        "x-queue-type": "quorum",
        "x-message-ttl": ms,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": main_name(queue),
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


DEAD_ARGUMENTS = {"x-queue-type": "quorum"}
