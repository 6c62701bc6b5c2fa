"""queue_bench.py's few broker calls, synchronous (each its own short aio-pika connection):
a queue's ready count (a passive declare) and deleting the queues it created."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable

import aio_pika
from aiormq.exceptions import ChannelNotFoundEntity
from harness import BenchError


async def _ready(url: str, queue: str) -> int | None:
    connection = await aio_pika.connect(url, client_properties={"connection_name": "queue_bench"})
    try:
        channel = await connection.channel(publisher_confirms=False)
        try:
            declared = await channel.declare_queue(queue, passive=True)
        except ChannelNotFoundEntity:
            return None
        return declared.declaration_result.message_count or 0
    finally:
        await connection.close()


def ready_count(url: str, queue: str) -> int | None:
    """Messages ready in `queue` (not those delivered and unacked); None: no such queue."""
    return asyncio.run(_ready(url, queue))


def wait_ready_count(url: str, queue: str, expected: int, timeout: float = 20.0) -> int:
    """Wait until `queue` holds `expected` ready messages (a pre-fill has landed)."""
    deadline = time.monotonic() + timeout
    count = None
    while time.monotonic() < deadline:
        count = ready_count(url, queue)
        if count == expected:
            return count
        time.sleep(0.1)
    raise BenchError(f"queue {queue} holds {count} ready messages, expected {expected}")


async def _delete(url: str, queues: list[str]) -> list[str]:
    deleted = []
    connection = await aio_pika.connect(url, client_properties={"connection_name": "queue_bench"})
    try:
        channel = await connection.channel(publisher_confirms=False)
        for name in queues:
            try:  # passive first: RabbitMQ's delete of a missing queue is no error, but say so
                await channel.declare_queue(name, passive=True)
            except ChannelNotFoundEntity:
                channel = await connection.channel(publisher_confirms=False)
                continue
            await channel.queue_delete(name)
            deleted.append(name)
    finally:
        await connection.close()
    return deleted


def delete_queues(url: str, queues: Iterable[str]) -> list[str]:
    """Delete those of `queues` that exist (with their messages); the names deleted."""
    return asyncio.run(_delete(url, list(queues)))


async def _purge(url: str, queue: str) -> int:
    connection = await aio_pika.connect(url, client_properties={"connection_name": "queue_bench"})
    try:
        channel = await connection.channel(publisher_confirms=False)
        try:
            declared = await channel.declare_queue(queue, passive=True)
        except aio_pika.exceptions.ChannelNotFoundEntity:
            return 0  # not declared yet: nothing in it
        purged = await declared.purge()
        return purged.message_count or 0
    finally:
        await connection.close()


def purge(url: str, queue: str) -> int:
    """Drop the ready messages of `queue` (if it exists); how many there were."""
    return asyncio.run(_purge(url, queue))
