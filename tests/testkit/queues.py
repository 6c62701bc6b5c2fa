"""Removes what a test's queue left on the shared RabbitMQ."""

from __future__ import annotations

from collections.abc import Iterable

import aio_pika

from plugins.queue.broker import delay_ms
from plugins.queue.topology import dead_name, delay_name, main_name


async def delete_queues(url: str, name: str, delays: Iterable[float] = ()) -> None:
    queues = [main_name(name), dead_name(name)]
    queues += [delay_name(name, delay_ms(delay)) for delay in delays]
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        for queue in queues:
            await channel.queue_delete(queue)
    finally:
        await connection.close()
