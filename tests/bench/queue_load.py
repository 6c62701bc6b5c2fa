"""queue_bench.py's two enqueuers, each one process that queue_bench pins with taskset.

    python queue_load.py http URL --jobs N --concurrency C [--ids FILE]
    python queue_load.py publish AMQP_URL QUEUE --jobs N --concurrency C [--body-size B]

`http`: C workers on one keep-alive aiohttp session POST to URL until N answers came back;
each 202's job id is appended to FILE (in the order the answers arrived).
`publish`: the bare baseline of the node's enqueue: one aio-pika connection, one channel
with publisher confirms (as the node's publisher: robust, on_return_raises, mandatory), C
tasks each awaiting the confirm of its own persistent message to a durable quorum queue
declared with the node's own arguments (plugins/queue/rabbit.py: main_arguments).

Both print one JSON line: jobs, seconds (first request to last answer), rate, latency
percentiles (ms), its own CPU seconds over them, errors and what they were. uvloop, as
the node.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import orjson
import uvloop

POST_BODY = b'{"bench":true}'


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def drive(jobs: int, concurrency: int, one: Callable[[], Awaitable[str | None]]) -> dict:
    """`concurrency` workers call `one()` until `jobs` calls returned; `one` returns None
    when the job was taken, else a short reason (counted)."""
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    issued = 0

    async def worker() -> None:
        nonlocal issued
        while issued < jobs:
            issued += 1
            started = time.perf_counter()
            try:
                problem = await one()
            except Exception as exc:
                problem = type(exc).__name__
            latencies.append(time.perf_counter() - started)
            if problem is not None:
                errors[problem] += 1

    cpu_before = cpu_seconds()
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    seconds = time.perf_counter() - started
    cpu_used = cpu_seconds() - cpu_before
    latencies.sort()

    def pct(p: float) -> float:
        return round(1000 * latencies[min(len(latencies) - 1, int(p * len(latencies)))], 3)

    return {
        "jobs": jobs,
        "concurrency": concurrency,
        "seconds": round(seconds, 4),
        "rate": jobs / seconds if seconds else 0.0,
        "cpu_s": round(cpu_used, 4),  # this process's, over the measured calls only
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "errors": sum(errors.values()),
        "error_kinds": dict(errors.most_common(5)),
    }


async def http(url: str, jobs: int, concurrency: int, ids_file: Path | None) -> dict:
    import aiohttp

    ids: list[str] = []
    sample: dict[str, object] = {}
    headers = {"Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one() -> str | None:
            async with session.post(url, data=POST_BODY, headers=headers) as resp:
                body = await resp.read()
            if resp.status != 202:
                if not sample:
                    sample.update(status=resp.status, body=body[:300].decode(errors="replace"))
                return f"HTTP {resp.status}"
            ids.append(orjson.loads(body)["id"])
            return None

        result = await drive(jobs, concurrency, one)
    if ids_file is not None:
        with ids_file.open("a") as out:
            out.write("".join(f"{job_id}\n" for job_id in ids))
    result["accepted"] = len(ids)
    if sample:
        result["first_error"] = sample
    return result


async def publish(url: str, queue: str, jobs: int, concurrency: int, body_size: int) -> dict:
    import aio_pika

    from plugins.queue.rabbit import main_arguments

    body = b"x" * body_size
    connection = await aio_pika.connect_robust(
        url, client_properties={"connection_name": "queue_bench bare publisher"}
    )
    try:
        channel = await connection.channel(on_return_raises=True)  # confirms: aio-pika's default
        await channel.declare_queue(queue, durable=True, arguments=main_arguments(queue, 100_000))
        exchange = channel.default_exchange

        async def one() -> str | None:
            message = aio_pika.Message(
                body, message_id=uuid.uuid4().hex, delivery_mode=aio_pika.DeliveryMode.PERSISTENT
            )
            await exchange.publish(message, queue, mandatory=True)  # returns once confirmed
            return None

        result = await drive(jobs, concurrency, one)
    finally:
        await connection.close()
    result["accepted"] = jobs - result["errors"]
    result["body_bytes"] = body_size
    return result


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    for mode in ("http", "publish"):
        p = sub.add_parser(mode)
        p.add_argument("url")
        if mode == "publish":
            p.add_argument("queue")
            p.add_argument("--body-size", type=int, default=512)
        else:
            p.add_argument("--ids", type=Path, default=None)
        p.add_argument("--jobs", type=int, required=True)
        p.add_argument("--concurrency", type=int, required=True)
    args = parser.parse_args(argv)
    if args.mode == "http":
        result = uvloop.run(http(args.url, args.jobs, args.concurrency, args.ids))
    else:
        result = uvloop.run(
            publish(args.url, args.queue, args.jobs, args.concurrency, args.body_size)
        )
    print(orjson.dumps(result).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
