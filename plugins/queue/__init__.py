"""The job queue: any route made asynchronous on RabbitMQ (or in-process, embedded), with
retries, a dead-letter queue and job status; a worker runs the rest of the route."""

from __future__ import annotations

from typing import Any

from node.call import Call
from node.errors import ConfigError
from node.plugin import BuildContext, PluginSpec
from node.schema import build, join
from plugins.queue.jobs import MemoryJobs
from plugins.queue.keys import PREFIX
from plugins.queue.plugin import JobQueue
from plugins.queue.redis_jobs import RedisJobs
from plugins.queue.service import JobService
from plugins.queue.settings import QueueSettings
from plugins.queue.web import JobsWeb
from plugins.queue.worker import Worker

JOB_STORES = {
    "memory": lambda backend: MemoryJobs(),
    "redis": lambda backend: RedisJobs(backend.redis),
    "redis+cluster": lambda backend: RedisJobs(backend.redis),
}


def make_broker(backend: Any, node: str) -> Any:
    if backend.embedded:
        from plugins.queue.memory import MemoryBroker

        return MemoryBroker()
    from plugins.queue.rabbit import RabbitBroker

    return RabbitBroker(backend.url, connection_name=f"scalenode {node}")


def job_service(ctx: BuildContext, path: str) -> JobService:
    """The node's one JobService, made (and tied to the node's life) on first use."""

    def make() -> JobService:
        amqp = ctx.backend("amqp", required=True)
        if not amqp.embedded and not ctx.has_backend("redis"):
            raise ConfigError(
                f"{path}: backends.amqp is set but backends.redis is not: job state would "
                "live in each node's memory, so GET /jobs/<id> on another node would not "
                "find the job; set backends.redis"
            )
        jobs = ctx.store("redis", JOB_STORES, shared_as="queue.jobs", required=True)
        service = JobService(make_broker(amqp, ctx.node_name), jobs)
        if ctx.runs_jobs:
            service.worker = Worker(service)
        web_routes = JobsWeb(service, ctx.node_name)
        ctx.add_public_routes(web_routes.public_routes())
        ctx.add_admin_routes(web_routes.admin_routes())
        ctx.on_start(service.start)
        ctx.on_drain(service.drain)
        ctx.on_stop(service.stop)
        return service

    return ctx.shared("queue.service", make)


def build_job_queue(table: dict[str, Any], path: str, ctx: BuildContext) -> JobQueue:
    settings = build(QueueSettings, table, path)
    service = job_service(ctx, path)
    service.check_queue(settings, join(path, "name"))
    return JobQueue(settings, ctx.route.label, service)


async def enqueue(call: Call, route: str, key: str | None = None) -> str:
    """From handler code: queue `call` as a job of the queued route labelled `route` (its
    `name`, else its path) and return the job's id. Raises node.errors.ServiceUnavailable
    when the broker does not take it, KeyError for a route with no queue table."""
    resources = call.resources
    if resources is None:
        raise RuntimeError("enqueue(call, ...) needs a call the node serves")
    service: JobService | None = resources.find_shared("queue.service")
    if service is None or route not in service.routes:
        raise KeyError(f"no queued route {route!r}")
    record, _ = await service.routes[route].plugin.submit(call, key)
    return record.id


PLUGIN = PluginSpec(
    name="queue",
    build=build_job_queue,
    after=("ratelimit", "cache"),
    before=("shard", "breaker"),
    keys=PREFIX,
    summary="runs the rest of the route as a job on a worker (202, /jobs/<id>)",
)

__all__ = ["PLUGIN", "JobQueue", "QueueSettings", "enqueue"]
